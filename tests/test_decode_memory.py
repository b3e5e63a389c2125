"""Decoding a deep image costs about its own size in memory, not several float copies of it.

A small-scale guard of what benchmarks/decode_rss.py measures at the pixel limit: a 3000 x 3000 float TIFF (with
NaN) and a 16-bit MONOCHROME1 DICOM with a window are decoded in a fresh process, whose peak resident memory
(VmHWM, which starts afresh at exec) over its imports must stay under 2.5 times the image as float32. Windowing
whole float copies of the image, as the decoder once did, costs 5 to 7 times.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_decode import write_dicom

SIDE = 3000
CHILD = """
import json, sys, warnings
import numpy, PIL.Image, pydicom, pydicom.pixels
from pneumoscan.data.decode import decode_grayscale

def peak_kb():
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM")).split()[1])

before = peak_kb()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    pixels = decode_grayscale(sys.argv[1], 224)
print(json.dumps({"mb": (peak_kb() - before) / 1024, "shape": list(pixels.shape)}))
"""

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc for VmHWM")


def _write_float_tiff(path: Path) -> None:
    pixels = np.tile(np.linspace(0.0, 1.0, SIDE, dtype=np.float32), (SIDE, 1))
    pixels[::97] = np.nan
    Image.fromarray(pixels).save(path)


def _write_dicom(path: Path) -> None:
    ramp = np.tile(np.linspace(0, 4000, SIDE), (SIDE, 1)).astype(np.uint16)
    write_dicom(path, ramp, photometric="MONOCHROME1", slope=0.5, intercept=3.0, window=(1000.0, 800.0))


@pytest.mark.parametrize("write", [_write_float_tiff, _write_dicom], ids=["float-tiff", "dicom-16-bit"])
def test_peak_memory_of_a_deep_image_is_about_its_own_size(write, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / ("image.dcm" if write is _write_dicom else "image.tiff")
    write(path)
    result = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True)
    measured = json.loads(result.stdout)
    float_mb = SIDE * SIDE * 4 / 2**20
    assert measured["shape"] == [224, 224]
    assert measured["mb"] < 2.5 * float_mb, f"{measured['mb']:.0f} MB over imports for a {float_mb:.0f} MB image"
