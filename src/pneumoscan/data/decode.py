"""Decode any accepted X-ray file to one 8-bit grayscale channel at the model's size.

X-rays carry one channel; decoding to RGB would triple the first convolution's cost for nothing.
The format is judged by content, not by suffix: JPEG, PNG, TIFF, BMP and WebP through Pillow (and
only those of Pillow's readers: a PostScript file renamed .png never reaches Ghostscript), DICOM
through pydicom (pneumoscan.data.dicom). Anything else is refused, and an image that declares more
than MAX_PIXELS pixels is refused before its pixels are decoded (a decompression bomb costs
nothing). The CLI, the web service and the decoded-image cache share these rules.

What is not a readable file is said as such before any byte is read: a folder, a FIFO or device
(opening a FIFO would block until a writer comes), a broken link, a file without read permission
(`open_regular_file`, `read_file_bytes`). 16-bit and float images are windowed to their own range
one strip of rows at a time, never as whole float copies, so the worst accepted file (a 32-bit DICOM
at the pixel limit, given as bytes) peaks at about 0.7 GB over the interpreter, not 2 GB
(benchmarks/decode_rss.py); NaN or infinite pixels are shown as black or white with an InputWarning
instead of silently turning the whole film black.
"""

import contextvars
import errno
import io
import math
import os
import stat
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from pneumoscan.data.dicom import is_dicom, read_dicom
from pneumoscan.errors import ImageDecodeError, InputWarning

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".dcm", ".dicom"})  # what a folder search picks up
PIL_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP")  # the only Pillow readers tried (JPEG's also opens MPO)
ACCEPTED = "accepted: JPEG, PNG, TIFF, BMP, WebP, DICOM"
MAX_PIXELS = 60_000_000  # ~7,700 x 7,700: above any radiograph, far below a bomb's declared size
MAX_FILE_BYTES = 256 * 1024 * 1024  # an uncompressed float image at MAX_PIXELS fits; no radiograph comes near
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_STRIP_PIXELS = 1 << 20  # pixels windowed at a time: a few MB of float temporaries, whatever the image's size
# Formats Pillow could read but pneumoscan does not accept, named so a refusal says what the file is.
_SIGNATURES = ((b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"%!PS", "PostScript/EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"),
               (b"%PDF", "PDF"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xffO\xffQ", "JPEG 2000"),
               (b"8BPS", "PSD"), (b"\x00\x00\x01\x00", "ICO"), (b"icns", "ICNS"), (b"qoif", "QOI"))
# The starts of the accepted Pillow formats: a .dcm file that starts like one is read as that image, not as DICOM,
# and a file that starts like one but that Pillow cannot open is a broken image, not an unsupported format.
_PIL_SIGNATURES = ((b"\xff\xd8", "JPEG"), (b"\x89PNG", "PNG"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
                   (b"II+\x00", "TIFF"), (b"MM\x00+", "TIFF"), (b"BM", "BMP"), (b"RIFF", "WebP"))
_FILE_KINDS = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
               (stat.S_ISSOCK, "socket"))
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
# What Pillow's readers raise on malformed input besides OSError/ValueError (their parsers unpack fixed-size
# fields and index tables): each means "this file is broken". tests/test_decode_properties.py checks that
# nothing else escapes.
_MALFORMED = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, KeyError, ZeroDivisionError,
              OverflowError)
# Where `decode_with_notes` collects this thread's InputWarnings instead of issuing them: `warnings.catch_warnings`
# swaps process-wide state, so decoders running in several threads at once would see each other's warnings.
_NOTES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("pneumoscan_decode_notes", default=None)


def _input_warning(message: str, stacklevel: int) -> None:
    """An InputWarning, or a note for the caller of `decode_with_notes` in this thread."""
    notes = _NOTES.get()
    if notes is None:
        warnings.warn(message, InputWarning, stacklevel=stacklevel + 1)
    else:
        notes.append(message)


def _os_error(path: Path, error: OSError) -> ImageDecodeError:
    """An OSError from stat/open as the reason a user can act on (not 'no such file' for a broken link)."""
    if isinstance(error, FileNotFoundError):
        try:
            return ImageDecodeError(path, f"broken link (points to {os.readlink(path)}, which does not exist)")
        except OSError:  # not a link
            pass
        return ImageDecodeError(path, "no such file")
    if isinstance(error, PermissionError):
        return ImageDecodeError(path, "permission denied")
    if isinstance(error, IsADirectoryError):
        return ImageDecodeError(path, "is a folder, not an image file")
    if isinstance(error, NotADirectoryError):
        return ImageDecodeError(path, "no such file (a folder in its path is a file)")
    if error.errno == errno.ELOOP:
        return ImageDecodeError(path, "broken link (a loop of symbolic links)")
    return ImageDecodeError(path, f"cannot read the file ({error.strerror or error})")


def _check_mode(path: Path, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise ImageDecodeError(path, "is a folder, not an image file")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "special file")
        raise ImageDecodeError(path, f"not a regular file ({kind})")


def check_regular_file(path: Path | str) -> os.stat_result:
    """The file's stat if it is a regular file (links followed); else ImageDecodeError with the reason.

    Checked before opening because opening a FIFO blocks until something writes to it."""
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as error:
        raise _os_error(path, error) from None
    _check_mode(path, info.st_mode)
    return info


def open_regular_file(path: Path | str) -> BinaryIO:
    """Open a regular file for reading, or raise ImageDecodeError saying why it is not one.

    The stat check gives the reason; the open is non-blocking and re-checked on the open descriptor, so a
    file swapped for a FIFO between the two cannot hang the reader either."""
    path = Path(path)
    check_regular_file(path)
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as error:
        raise _os_error(path, error) from None
    try:
        _check_mode(path, os.fstat(descriptor).st_mode)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_file_bytes(path: Path | str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """A regular file's bytes; ImageDecodeError (naming the file and the reason) for a missing file, a broken link,
    a folder, a FIFO or device, no read permission, or a file over `max_bytes` (kind too_large).

    For callers that read before decoding (the decoded-image cache hashes the bytes): the same rules and
    messages as decode_grayscale, and a FIFO never blocks."""
    path = Path(path)
    with open_regular_file(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        _check_size(path, size, max_bytes)
        try:
            content = handle.read(max_bytes + 1)
        except OSError as error:
            raise _os_error(path, error) from None
    _check_size(path, len(content), max_bytes)  # it may have grown since the stat
    return content


def _check_size(path: Path, size: int, max_bytes: int) -> None:
    if size == 0:
        raise ImageDecodeError(path, "empty file")
    if size > max_bytes:
        raise ImageDecodeError(path, f"file of {size:,} bytes is over the limit of {max_bytes:,} bytes",
                               kind="too_large")


def window_to_u8(path: Path, height: int, width: int, rows: Callable[[int, int], np.ndarray],
                 invert: bool = False) -> np.ndarray:
    """Float pixels windowed to their own finite min..max, as 8-bit (H, W); `rows(top, bottom)` returns those
    rows as a new, writable float32 array (it is scaled in place).

    Read twice in strips (range, then scaling) so no full-size float copy ever exists. NaN and -inf are shown
    black, +inf white, with an InputWarning; an image without one finite pixel is refused. `invert` (DICOM
    MONOCHROME1) shows high values dark.
    """
    strip = max(1, _STRIP_PIXELS // max(1, width))
    low, high, bad = math.inf, -math.inf, 0
    for top in range(0, height, strip):
        part = rows(top, min(height, top + strip))
        finite = np.isfinite(part)
        count = int(np.count_nonzero(finite))
        bad += part.size - count
        if count:
            values = part if count == part.size else part[finite]
            low, high = min(low, float(values.min())), max(high, float(values.max()))
    if bad == height * width:
        raise ImageDecodeError(path, "no pixel holds a finite value (all NaN or infinite)")
    if bad:
        _input_warning(f"{path}: {bad:,} of {height * width:,} pixels are NaN or infinite; shown as black (NaN, -inf) "
                       "or white (+inf)", stacklevel=3)
    # a range wider than float32 can hold (e.g. -3e38..3e38) is windowed in float64, or it would overflow to black
    wide = high - low > float(np.finfo(np.float32).max)
    if invert:
        offset, span = 0.0, (high - low if wide else float(np.float32(high) - np.float32(low)))
    else:
        offset, span = low, high - low
    scale = 255.0 / span if span > 0 else 0.0
    out = np.empty((height, width), dtype=np.uint8)
    for top in range(0, height, strip):
        part = rows(top, min(height, top + strip))
        if wide:
            part = part.astype(np.float64)
        if bad:
            np.nan_to_num(part, copy=False, nan=low, posinf=high, neginf=low)
        if invert:
            np.subtract(part.dtype.type(high), part, out=part)
        part -= offset
        part *= scale
        out[top : top + strip] = np.rint(part, out=part)
    return out


def _pil_rows(image: Image.Image) -> Callable[[int, int], np.ndarray]:
    width = image.size[0]
    return lambda top, bottom: np.array(image.crop((0, top, width, bottom)), dtype=np.float32)


def _orientation(image: Image.Image) -> Image.Transpose | None:
    """The transpose that EXIF (or XMP) orientation asks for; broken metadata means none, as viewers do."""
    try:
        return _TRANSPOSE.get(image.getexif().get(ExifTags.Base.Orientation, 1))
    except (*_MALFORMED, TypeError):
        return None


def _to_gray_u8(path: Path, image: Image.Image) -> Image.Image:
    """Any PIL mode to 'L'. 16-bit and float images are windowed to their own finite min..max."""
    if image.mode in _HIGH_DEPTH_MODES:
        width, height = image.size
        return Image.fromarray(window_to_u8(path, height, width, _pil_rows(image)), mode="L")
    if image.mode == "LAB":
        return image.getchannel("L")  # lightness is the gray value
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    try:
        return image if image.mode == "L" else image.convert("L")
    except ValueError:
        raise ImageDecodeError(path, f"unsupported pixel layout {image.mode}", kind="unsupported") from None


def _read_pil(path: Path, source: BinaryIO, size: int, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        # Pillow's own warnings about a file's metadata ("Corrupt EXIF data") name no file and change nothing: the
        # file decodes or raises. Ours (InputWarning) are issued outside this block, so they are never hidden.
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(source, formats=PIL_FORMATS)
        try:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(path, f"image declares {width}x{height} pixels, more than the limit of "
                                             f"{max_pixels:,} (decompression-bomb guard)", kind="too_large")
            if width < 1 or height < 1:
                raise ImageDecodeError(path, f"image declares {width}x{height} pixels")
            image.draft("L", (size, size))  # JPEG: decode large originals at reduced scale
            image.load()
            transpose = _orientation(image)
        except BaseException:
            image.close()
            raise
    with image:
        gray = _to_gray_u8(path, image)  # the gray copy, not the original, is rotated: less memory
        if transpose is not None:
            gray = gray.transpose(transpose)
        return gray.resize((size, size), Image.Resampling.BILINEAR)


def _accepted_format(head: bytes) -> str | None:
    """The accepted Pillow format a file's first bytes announce, if any."""
    named = next((name for signature, name in _PIL_SIGNATURES if head.startswith(signature)), None)
    return None if named == "WebP" and head[8:12] != b"WEBP" else named


def _unidentified(path: Path, head: bytes) -> ImageDecodeError:
    """Pillow found no reader: a broken file of an accepted format, a format we do not accept, or not an image."""
    accepted = _accepted_format(head)
    if accepted is not None:
        return ImageDecodeError(path, f"corrupt or truncated image (starts like a {accepted} file, but its header "
                                      "cannot be read)")
    named = next((name for signature, name in _SIGNATURES if head.startswith(signature)), None)
    if named is None:
        return ImageDecodeError(path, f"not an image ({ACCEPTED})", kind="unsupported")
    return ImageDecodeError(path, f"unsupported image format {named} ({ACCEPTED})", kind="unsupported")


def decode_grayscale(path: Path | str, size: int, content: bytes | None = None,
                     max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Return a (size, size) uint8 array; raise ImageDecodeError naming the file otherwise.

    The image is squashed to a square (the aspect ratio is not kept), as the reference
    design and the resized Kaggle copies do, so real downloads and resized copies agree.
    `content` is the file's bytes when the caller has already read them (an upload, the cache).
    """
    path = Path(path)
    handle: BinaryIO | None = None
    try:
        if content is None:
            handle = open_regular_file(path)
            _check_size(path, os.fstat(handle.fileno()).st_size, MAX_FILE_BYTES)
            head = handle.read(132)
            handle.seek(0)
            source: BinaryIO = handle
        else:
            _check_size(path, len(content), MAX_FILE_BYTES)
            head = content[:132]
            source = io.BytesIO(content)
        if is_dicom(head) or (path.suffix.lower() in (".dcm", ".dicom") and _accepted_format(head) is None):
            dicom = read_dicom(path, source, max_pixels)
            if dicom.frames > 1:
                _input_warning(f"{path}: multi-frame DICOM ({dicom.frames} frames): only the first frame is used",
                               stacklevel=2)
            pixels = window_to_u8(path, dicom.height, dicom.width, dicom.rows, invert=dicom.invert)
            resized = Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BILINEAR)
        else:
            try:
                resized = _read_pil(path, source, size, max_pixels)
            except UnidentifiedImageError:
                raise _unidentified(path, head) from None
        return np.asarray(resized, dtype=np.uint8).copy()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError):
        raise ImageDecodeError(path, "image too large to decode safely (decompression-bomb guard)",
                               kind="too_large") from None
    except _MALFORMED as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ImageDecodeError(path, f"corrupt or truncated image ({reason})") from None
    finally:
        if handle is not None:
            handle.close()


def decode_with_notes(path: Path | str, size: int, content: bytes, max_pixels: int = MAX_PIXELS
                      ) -> tuple[np.ndarray, list[str]]:
    """`decode_grayscale` on bytes, with its InputWarnings returned as notes instead of issued: safe to call from
    several threads at once (the web service decodes uploads in a thread pool)."""
    notes: list[str] = []
    token = _NOTES.set(notes)
    try:
        return decode_grayscale(path, size, content=content, max_pixels=max_pixels), notes
    finally:
        _NOTES.reset(token)
