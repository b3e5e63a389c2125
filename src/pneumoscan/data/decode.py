"""Decode any accepted X-ray file to one 8-bit grayscale channel at the model's size.

X-rays carry one channel; decoding to RGB would triple the first convolution's cost for nothing.
The format is judged by content, not by suffix: JPEG, PNG, TIFF, BMP and WebP through Pillow, DICOM
through pydicom (pneumoscan.data.dicom). Anything else is refused, and an image that declares more
than MAX_PIXELS pixels is refused before its pixels are decoded (a decompression bomb costs
nothing). The CLI and the web service share these rules.
"""

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pneumoscan.data.dicom import is_dicom, read_dicom
from pneumoscan.errors import ImageDecodeError, InputWarning

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".dcm", ".dicom"})  # what a folder search picks up
PIL_FORMATS = frozenset({"JPEG", "MPO", "PNG", "TIFF", "BMP", "WEBP"})  # MPO: a JPEG with extra frames
MAX_PIXELS = 60_000_000  # ~7,700 x 7,700: above any radiograph, far below a bomb's declared size
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def _window_to_u8(pixels: np.ndarray) -> np.ndarray:
    """Float pixels windowed to their own min..max, as 8-bit."""
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
    return np.round(scaled).astype(np.uint8)


def _to_gray_u8(image: Image.Image) -> Image.Image:
    """Any PIL mode to 'L'. 16-bit and float images are windowed to their own min..max."""
    if image.mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(_window_to_u8(np.asarray(image, dtype=np.float32)), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image if image.mode == "L" else image.convert("L")


def _read_pil(path: Path, source: io.BytesIO | Path, size: int, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source) as image:
            if image.format not in PIL_FORMATS:
                raise ImageDecodeError(path, f"unsupported image format {image.format} (accepted: JPEG, PNG, "
                                             "TIFF, BMP, WebP, DICOM)", kind="unsupported")
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(path, f"image declares {width}x{height} pixels, more than the limit of "
                                             f"{max_pixels:,} (decompression-bomb guard)", kind="too_large")
            image.draft("L", (size, size))  # JPEG: decode large originals at reduced scale
            image = ImageOps.exif_transpose(image)
            return _to_gray_u8(image).resize((size, size), Image.Resampling.BILINEAR)


def decode_grayscale(path: Path | str, size: int, content: bytes | None = None,
                     max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Return a (size, size) uint8 array; raise ImageDecodeError naming the file otherwise.

    The image is squashed to a square (the aspect ratio is not kept), as the reference
    design and the resized Kaggle copies do, so real downloads and resized copies agree.
    `content` is the file's bytes when the caller has already read them (an upload).
    """
    path = Path(path)
    try:
        if (len(content) if content is not None else path.stat().st_size) == 0:
            raise ImageDecodeError(path, "empty file")
        if content is None:
            with path.open("rb") as handle:
                head = handle.read(132)
        else:
            head = content[:132]
        if is_dicom(head) or (path.suffix.lower() in (".dcm", ".dicom") and not head.startswith(b"\xff\xd8")):
            dicom = read_dicom(path, content if content is not None else path.read_bytes(), max_pixels)
            if dicom.frames > 1:
                warnings.warn(f"{path}: multi-frame DICOM ({dicom.frames} frames): only the first frame is used",
                              InputWarning, stacklevel=2)
            gray = Image.fromarray(_window_to_u8(dicom.pixels), mode="L")
            resized = gray.resize((size, size), Image.Resampling.BILINEAR)
        else:
            resized = _read_pil(path, io.BytesIO(content) if content is not None else path, size, max_pixels)
        return np.asarray(resized, dtype=np.uint8).copy()
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError(path, "no such file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(path, "image too large to decode safely (decompression-bomb guard)",
                               kind="too_large") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(path, "not an image (accepted: JPEG, PNG, TIFF, BMP, WebP, DICOM)",
                               kind="unsupported") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageDecodeError(path, f"corrupt or truncated image ({error})") from None
