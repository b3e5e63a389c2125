"""Property: whatever bytes arrive, decode_grayscale returns a (size, size) uint8 image or raises ImageDecodeError,
never anything else, and the same bytes give the same answer from a path and from memory (the cache's and the
web service's way in).

Three generators, each a fixed, derandomized set of examples (so CI is never flaky): random bytes behind random
prefixes of real files' starts (to get past signature checks into the parsers), real files with random bytes
overwritten, and valid images of random size (1..600 px a side, extreme aspect ratios included), mode and format.
"""

import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pneumoscan.data.decode import decode_grayscale
from pneumoscan.errors import ImageDecodeError

# per property (docs/reliability.md reports the total); PNEUMOSCAN_PROPERTY_EXAMPLES=5000 fuzzes deeper locally
EXAMPLES = int(os.environ.get("PNEUMOSCAN_PROPERTY_EXAMPLES", "300"))
PROFILE = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SUFFIXES = (".png", ".jpeg", ".jpg", ".tiff", ".bmp", ".webp", ".dcm", ".gif", "")
# formats -> the modes Pillow can write in them
WRITABLE = {"PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"), "JPEG": ("L", "RGB", "CMYK"),
            "TIFF": ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"), "BMP": ("1", "L", "P", "RGB"),
            "WEBP": ("RGB", "RGBA")}


def _sample(fmt: str, mode: str = "L", **options: object) -> bytes:
    buffer = io.BytesIO()
    pixels = (np.indices((24, 24)).sum(axis=0) * 5).astype(np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    if options.pop("rotated", False):
        options["exif"] = image.getexif()
        options["exif"][0x0112] = 6  # type: ignore[index]
    image.save(buffer, format=fmt, **options)  # type: ignore[arg-type]
    return buffer.getvalue()


def _dicom_sample() -> bytes:
    from test_decode import _ramp, write_dicom

    with tempfile.TemporaryDirectory() as folder:
        return write_dicom(Path(folder) / "x.dcm", _ramp()[:24, :24]).read_bytes()


REAL = (_sample("PNG"), _sample("JPEG"), _sample("TIFF"), _sample("BMP"), _sample("WEBP", "RGB"), _sample("GIF"),
        _sample("PNG", "I;16"), _sample("TIFF", "F"), _sample("PNG", "P", transparency=3), _sample("PNG", "LA"),
        _sample("JPEG", "RGB", rotated=True), _sample("JPEG", "RGB", progressive=True), _sample("JPEG", "CMYK"),
        _sample("TIFF", "RGB", compression="tiff_lzw"), _sample("TIFF", "I;16", rotated=True),
        _sample("WEBP", "RGBA", lossless=True), _sample("BMP", "P"), _dicom_sample())


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for every example (module-scoped: Hypothesis reruns a test body, not its fixtures)."""
    return tmp_path_factory.mktemp("properties")


def _outcome(path: Path, size: int, content: bytes | None) -> np.ndarray | ImageDecodeError:
    """decode_grayscale's answer; anything but an image or ImageDecodeError fails the property."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # InputWarning for NaN pixels or extra DICOM frames
        try:
            pixels = decode_grayscale(path, size, content=content)
        except ImageDecodeError as error:
            assert error.kind in ("unsupported", "too_large", "unreadable") and str(error).startswith(f"{path}: ")
            return error
    assert pixels.shape == (size, size) and pixels.dtype == np.uint8
    return pixels


def _same_from_path_and_memory(tmp_path: Path, name: str, content: bytes, size: int) -> np.ndarray | None:
    path = tmp_path / name
    path.write_bytes(content)
    from_file, from_memory = _outcome(path, size, None), _outcome(path, size, content)
    if isinstance(from_file, ImageDecodeError):
        assert isinstance(from_memory, ImageDecodeError) and from_memory.reason == from_file.reason
        return None
    assert isinstance(from_memory, np.ndarray) and np.array_equal(from_file, from_memory)
    return from_file


@PROFILE
@given(prefix=st.sampled_from(REAL), cut=st.integers(0, 200), tail=st.binary(max_size=512),
       suffix=st.sampled_from(SUFFIXES), size=st.integers(1, 48))
def test_random_bytes_behind_real_signatures(folder: Path, prefix: bytes, cut: int, tail: bytes, suffix: str,
                                             size: int) -> None:
    _same_from_path_and_memory(folder, f"x{suffix}", prefix[:cut] + tail, size)


@PROFILE
@given(original=st.sampled_from(REAL), edits=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)),
                                                      min_size=1, max_size=8),
       suffix=st.sampled_from(SUFFIXES), size=st.integers(1, 48))
def test_real_files_with_bytes_overwritten(folder: Path, original: bytes, edits: list[tuple[int, int]], suffix: str,
                                           size: int) -> None:
    content = bytearray(original)
    for position, value in edits:
        content[position % len(content)] = value
    _same_from_path_and_memory(folder, f"x{suffix}", bytes(content), size)


@st.composite
def images(draw: st.DrawFn) -> tuple[bytes, str, str, tuple[int, int]]:
    fmt = draw(st.sampled_from(sorted(WRITABLE)))
    mode = draw(st.sampled_from(WRITABLE[fmt]))
    width, height = draw(st.integers(1, 600)), draw(st.integers(1, 600))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if mode == "F":
        pixels = rng.normal(size=(height, width)).astype(np.float32) * draw(st.sampled_from([1e-30, 1.0, 1e30]))
        if draw(st.booleans()):
            pixels.flat[rng.integers(0, pixels.size, 1 + pixels.size // 10)] = draw(
                st.sampled_from([np.nan, np.inf, -np.inf]))
        image = Image.fromarray(pixels, mode="F")
    elif mode in ("I", "I;16"):
        top = 65535 if mode == "I;16" else 2**31 - 1
        pixels = rng.integers(0 if mode == "I;16" else -top, top, (height, width), endpoint=True)
        image = Image.fromarray(pixels.astype(np.uint16 if mode == "I;16" else np.int32))
    else:  # random bytes in the mode's own layout (bits for "1", palette indices for "P")
        image = Image.frombytes(mode, (width, height), rng.bytes(len(Image.new(mode, (width, height)).tobytes())))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue(), fmt, mode, (width, height)


@PROFILE
@given(image=images(), size=st.integers(1, 64))
def test_valid_images_of_any_size_mode_and_format_decode(folder: Path, image: tuple[bytes, str, str, tuple[int, int]],
                                                         size: int) -> None:
    content, fmt, mode, _ = image
    suffix = {"JPEG": ".jpeg", "TIFF": ".tiff", "WEBP": ".webp"}.get(fmt, f".{fmt.lower()}")
    pixels = _same_from_path_and_memory(folder, f"x{suffix}", content, size)
    if mode != "F":  # a float image may hold no finite pixel, and that is refused
        assert pixels is not None, (fmt, mode)
