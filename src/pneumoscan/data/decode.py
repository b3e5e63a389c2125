"""Decode any X-ray file to one 8-bit grayscale channel at the model's size.

X-rays carry one channel; decoding to RGB would triple the first convolution's cost for nothing.
"""

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pneumoscan.errors import ImageDecodeError

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def _to_gray_u8(image: Image.Image) -> Image.Image:
    """Any PIL mode to 'L'. 16-bit and float images are windowed to their own min..max."""
    if image.mode in _HIGH_DEPTH_MODES:
        pixels = np.asarray(image, dtype=np.float32)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
        return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image if image.mode == "L" else image.convert("L")


def decode_grayscale(path: Path | str, size: int, content: bytes | None = None) -> np.ndarray:
    """Return a (size, size) uint8 array; raise ImageDecodeError naming the file otherwise.

    The image is squashed to a square (the aspect ratio is not kept), as the reference
    design and the resized Kaggle copies do, so real downloads and resized copies agree.
    `content` is the file's bytes when the caller has already read them.
    """
    path = Path(path)
    try:
        if (len(content) if content is not None else path.stat().st_size) == 0:
            raise ImageDecodeError(path, "empty file")
        with Image.open(io.BytesIO(content) if content is not None else path) as image:
            image.draft("L", (size, size))  # JPEG: decode large originals at reduced scale
            image = ImageOps.exif_transpose(image)
            gray = _to_gray_u8(image)
            resized = gray.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(resized, dtype=np.uint8).copy()
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError(path, "no such file") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(path, "not an image PIL can read") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageDecodeError(path, f"corrupt or truncated image ({error})") from None
