"""Peak memory (RSS) of decoding one file, for the worst files the decoder accepts or refuses.

    .venv/bin/python benchmarks/decode_rss.py [--side 7745] [--keep DIR] [--only NAME ...]

Each case is decoded in a fresh subprocess, twice: from the path (predict, train without the cache) and
from bytes read first with read_file_bytes (the decoded-image cache and the web service hold the whole
file). The figure is the subprocess's peak RSS (getrusage ru_maxrss) minus its RSS after importing
numpy, Pillow, pydicom and pneumoscan.data.decode, and the same for an ordinary 224 px JPEG in the same run
as the baseline. The limit is MAX_PIXELS (60 M pixels: a 7745 x 7745 image); the worst accepted files are
16-bit, 32-bit and float images just under it. Writing the files takes about a minute and ~1.5 GB of
temporary disk.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

CHILD = """
import json, resource, sys, time, warnings
import numpy, PIL.Image, pydicom, pydicom.pixels
from pneumoscan.data.decode import decode_grayscale, read_file_bytes
from pneumoscan.errors import ImageDecodeError
path, mode = sys.argv[1], sys.argv[2]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        content = read_file_bytes(path) if mode == "bytes" else None
        pixels = decode_grayscale(path, 224, content=content)
    outcome = f"accepted {pixels.shape}"
except ImageDecodeError as error:
    outcome = f"refused ({error.kind}): {error.reason}"
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_kb": base, "peak_kb": peak, "outcome": outcome, "s": time.perf_counter() - start}))
"""


def _ramp(side: int, dtype: type, top: float) -> np.ndarray:
    """A smooth ramp with a little noise: compresses like a radiograph, not like pure noise."""
    rng = np.random.default_rng(0)
    values = np.linspace(0.0, top, side, dtype=np.float32)[None, :] + np.zeros((side, 1), dtype=np.float32)
    values += rng.standard_normal((side, side), dtype=np.float32) * (top / 200)
    return np.clip(values, 0, top).astype(dtype)


def _dicom(path: Path, pixels: np.ndarray) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality, dataset.Rows, dataset.Columns = "CR", *pixels.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME1"
    bits = pixels.dtype.itemsize * 8
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = bits, bits, bits - 1, 0
    dataset.RescaleSlope, dataset.RescaleIntercept = 0.5, -10.0
    dataset.WindowCenter = dataset.WindowWidth = round(float(pixels.max()) / 2)
    dataset.PixelData = pixels.tobytes()
    dataset.save_as(path, enforce_file_format=True)


def _bomb(path: Path) -> None:
    """A PNG that declares 60000 x 60000 pixels and holds none."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def cases(side: int) -> dict[str, Callable[[Path], None]]:
    """name -> writer of the file (the name's suffix is the file's)."""
    rng = np.random.default_rng(1)
    return {
        "baseline 224px.jpeg": lambda p: Image.fromarray(_ramp(224, np.uint8, 255)).save(p, quality=90),
        "16-bit gray.png": lambda p: Image.fromarray(_ramp(side, np.uint16, 60000)).save(p, compress_level=1),
        "float32 with NaN.tiff": lambda p: Image.fromarray(
            np.where(rng.random((side, side), dtype=np.float32) < 0.01, np.nan, _ramp(side, np.float32, 1.0))
        ).save(p),
        "int32 gray.tiff": lambda p: Image.fromarray(_ramp(side, np.int32, 1e6)).save(p),
        "RGBA.png": lambda p: Image.fromarray(np.repeat(_ramp(side, np.uint8, 255)[..., None], 4, axis=2)
                                              ).save(p, compress_level=1),
        "RGB.jpeg": lambda p: Image.fromarray(np.repeat(_ramp(side, np.uint8, 255)[..., None], 3, axis=2)
                                              ).save(p, quality=90),
        "16-bit MONOCHROME1 windowed.dcm": lambda p: _dicom(p, _ramp(side, np.uint16, 4000)),
        "32-bit.dcm": lambda p: _dicom(p, _ramp(side, np.uint32, 1e6)),
        "refused: 60000x60000 bomb.png": _bomb,
        "refused: random 200MB.png": lambda p: p.write_bytes(rng.bytes(200 * 1024 * 1024)),
        "refused: 257MiB file.dcm": lambda p: p.write_bytes(b"\0" * (257 * 1024 * 1024)),
    }


def measure(path: Path, mode: str) -> dict[str, object]:
    result = subprocess.run([sys.executable, "-c", CHILD, str(path), mode], capture_output=True, text=True,
                            check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=7745, help="side of the large images (7745^2 < 60 M pixels)")
    parser.add_argument("--keep", type=Path, default=None, help="write the files here and keep them")
    parser.add_argument("--only", nargs="+", default=None, help="case names to run (substrings)")
    parser.add_argument("--write", nargs=2, metavar=("CASE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        cases(args.side)[args.write[0]](Path(args.write[1]))
        return
    console = Console(width=150)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="decode-rss-"))
    folder.mkdir(parents=True, exist_ok=True)
    table = Table("file", "MB on disk", "outcome", "from path: MB over imports (s)",
                  "from bytes: MB over imports (s)", title=f"peak RSS of decoding one file ({args.side} px sides)")
    rows = []
    for name in cases(args.side):
        if args.only and name != "baseline 224px.jpeg" and not any(text in name for text in args.only):
            continue
        path = folder / name.replace(" ", "_").replace(":", "")
        started = time.perf_counter()
        if not path.exists():  # written by a child process: the parent's peak RSS would be inherited by the probes
            subprocess.run([sys.executable, __file__, "--side", str(args.side), "--write", name, str(path)], check=True)
        console.print(f"{name}: written in {time.perf_counter() - started:.1f} s", highlight=False)
        by_path, by_bytes = measure(path, "path"), measure(path, "bytes")
        cells = [f"{(r['peak_kb'] - r['base_kb']) / 1024:.0f} ({r['s']:.1f})"  # type: ignore[operator]
                 for r in (by_path, by_bytes)]
        table.add_row(name, f"{path.stat().st_size / 1e6:.0f}", str(by_path["outcome"])[:60], *cells)
        rows.append({"file": name, "bytes": path.stat().st_size, "path": by_path, "bytes_first": by_bytes})
        if args.keep is None:
            path.unlink()
    console.print(table)
    base = rows[0]["path"]["base_kb"] / 1024  # type: ignore[index]
    console.print(f"RSS after imports: {base:.0f} MB; the peak of a file is that plus its figure above.")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
