"""DICOM films to grayscale pixels, the way a radiology viewer shows them.

pydicom does the reading; this module applies what a viewer applies before display: the modality
LUT (rescale slope/intercept to stored units), the VOI LUT or window (the ranges the site chose to
show), inversion of MONOCHROME1 (where high values are dark), and for a multi-frame object the
first frame, with a warning. Only the first frame is decoded (a compressed object of a thousand
frames costs one), and the LUTs are applied a strip of rows at a time, so a large film never exists
as one float64 array. Nothing from the header (patient name, id, dates) leaves this module.
"""

import io
import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from pneumoscan.errors import ImageDecodeError

DICOM_MAGIC_OFFSET = 128  # a DICOM Part 10 file: 128-byte preamble, then b"DICM"
_reading = threading.local()


class _QuietWhileReading(logging.Filter):
    """pydicom logs a traceback (logger.exception) for pixel data it cannot decode, which a service that logs
    would print for every bad upload; the failure is already an ImageDecodeError naming the file and the reason,
    so records made while this module reads a file are dropped (other threads' and callers' are kept)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_reading, "active", False)


def _quiet_pydicom_loggers() -> None:
    """Add the filter to pydicom's loggers (its decoders log under their module names); once they exist."""
    if getattr(_quiet_pydicom_loggers, "done", False):
        return
    for name in [name for name in logging.Logger.manager.loggerDict if name.split(".")[0] == "pydicom"]:
        logging.getLogger(name).addFilter(_QuietWhileReading())
    _quiet_pydicom_loggers.done = True  # type: ignore[attr-defined]


def is_dicom(head: bytes) -> bool:
    return head[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM"


@dataclass(frozen=True)
class DicomPixels:
    """The first frame, handed out in strips: `rows(top, bottom)` is a new float32 array of display values
    (modality and VOI LUTs applied; MONOCHROME1 not yet inverted: `invert` says to)."""

    height: int
    width: int
    frames: int  # frames in the object (only the first is used)
    invert: bool  # MONOCHROME1: high values are dark
    rows: Callable[[int, int], np.ndarray]


def read_dicom(path: Path | str, source: bytes | BinaryIO, max_pixels: int) -> DicomPixels:
    """Decode the first frame of a DICOM object; raise ImageDecodeError naming the file and the reason.

    pydicom raises many exception types on malformed headers and pixel data (struct.error, KeyError,
    TypeError, NotImplementedError, ...); every one of them means the file cannot be read, so each
    pydicom step catches Exception and says which step failed.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    _quiet_pydicom_loggers()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else source, force=True)
            has_pixels = "PixelData" in dataset or "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset
            rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
            frames = int(dataset.get("NumberOfFrames", 1) or 1)
            photometric = str(dataset.get("PhotometricInterpretation", "")).strip().upper()
    except Exception as error:  # noqa: BLE001 - see the docstring
        raise ImageDecodeError(path, f"not a readable DICOM file ({type(error).__name__})") from None
    if not has_pixels:
        raise ImageDecodeError(path, "DICOM file without pixel data")
    if rows * columns > max_pixels:
        raise ImageDecodeError(path, f"DICOM image declares {columns}x{rows} pixels, more than the limit of "
                                     f"{max_pixels:,} (decompression-bomb guard)", kind="too_large")
    try:
        _reading.active = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset.pixel_array_options(index=0)  # decode the first frame only
            array = dataset.pixel_array
    except Exception as error:  # noqa: BLE001 - see the docstring
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        named = f" (transfer syntax {getattr(syntax, 'name', syntax)})" if syntax is not None else ""
        raise ImageDecodeError(path, f"DICOM pixel data cannot be decoded{named}: {type(error).__name__}") from None
    finally:
        _reading.active = False
    for name in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if name in dataset:
            delattr(dataset, name)  # the decoded frame is all we need: free the encoded copy
    while array.ndim > 3 or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        array = array[0]
    if array.ndim != 2 and array.ndim != 3 or 0 in array.shape:
        raise ImageDecodeError(path, f"DICOM pixel data of unusable shape {array.shape}")
    return DicomPixels(height=array.shape[0], width=array.shape[1], frames=frames,
                       invert=photometric == "MONOCHROME1", rows=_strips(path, array, dataset,
                                                                       apply_modality_lut, apply_voi_lut))


def _strips(path: Path | str, array: np.ndarray, dataset: Any, modality: Any,
            voi: Any) -> Callable[[int, int], np.ndarray]:
    """Rows of display values: the LUTs are elementwise, so applying them per strip gives the whole-frame result."""

    def rows(top: int, bottom: int) -> np.ndarray:
        part = array[top:bottom]
        if part.ndim == 3:  # colour (RGB) DICOM: to gray
            return part[..., :3].astype(np.float32).mean(axis=-1)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                shown = voi(modality(part, dataset), dataset)
        except Exception as error:  # noqa: BLE001 - see read_dicom
            raise ImageDecodeError(path, f"DICOM modality or VOI LUT cannot be applied ({type(error).__name__})"
                                   ) from None
        return np.array(shown, dtype=np.float32, copy=True)

    return rows
