"""DICOM films to grayscale pixels, the way a radiology viewer shows them.

pydicom does the reading; this module applies what a viewer applies before display: the modality
LUT (rescale slope/intercept to stored units), the VOI LUT or window (the ranges the site chose to
show), inversion of MONOCHROME1 (where high values are dark), and for a multi-frame object the
first frame, with a warning. Nothing from the header (patient name, id, dates) leaves this module.
"""

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumoscan.errors import ImageDecodeError

DICOM_MAGIC_OFFSET = 128  # a DICOM Part 10 file: 128-byte preamble, then b"DICM"


def is_dicom(head: bytes) -> bool:
    return head[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM"


@dataclass(frozen=True)
class DicomPixels:
    pixels: np.ndarray  # float32 (H, W), display orientation (MONOCHROME1 already inverted)
    frames: int  # frames in the object (only the first is used)


def read_dicom(path: Path | str, content: bytes, max_pixels: int) -> DicomPixels:
    """Decode the first frame of a DICOM object; raise ImageDecodeError naming the file and the reason."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        dataset = pydicom.dcmread(io.BytesIO(content), force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError) as error:
        raise ImageDecodeError(path, f"not a readable DICOM file ({type(error).__name__})") from None
    if "PixelData" not in dataset and "FloatPixelData" not in dataset:
        raise ImageDecodeError(path, "DICOM file without pixel data")
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    if rows * columns > max_pixels:
        raise ImageDecodeError(path, f"DICOM image declares {columns}x{rows} pixels, more than the limit of "
                                     f"{max_pixels:,} (decompression-bomb guard)", kind="too_large")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            array = dataset.pixel_array
    except Exception as error:  # pydicom raises many types for unsupported or broken pixel data
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        named = f" (transfer syntax {syntax.name})" if syntax is not None else ""
        raise ImageDecodeError(path, f"DICOM pixel data cannot be decoded{named}: {type(error).__name__}") from None
    if frames > 1 or array.ndim == 3 and array.shape[-1] not in (3, 4):
        array = array[0]
    if array.ndim == 3:  # colour (RGB) DICOM: to gray
        array = array[..., :3].astype(np.float32).mean(axis=-1)
    else:
        array = apply_voi_lut(apply_modality_lut(array, dataset), dataset)
    pixels = np.asarray(array, dtype=np.float32)
    if not np.isfinite(pixels).all():
        raise ImageDecodeError(path, "DICOM pixel data holds NaN or infinite values")
    if str(dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        pixels = pixels.max() - pixels  # high values are dark in MONOCHROME1
    return DicomPixels(pixels=pixels, frames=frames)
