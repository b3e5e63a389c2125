import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_image
from pneumoscan.data.decode import decode_grayscale
from pneumoscan.data.loading import load_images
from pneumoscan.data.sources import FolderSource
from pneumoscan.errors import ImageDecodeError


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA"])
def test_common_modes_decode_to_one_channel(tmp_path: Path, mode: str) -> None:
    path = write_image(tmp_path / f"x_{mode}.png", value=200, size=(60, 30), mode=mode)
    pixels = decode_grayscale(path, 24)
    assert pixels.shape == (24, 24) and pixels.dtype == np.uint8
    assert abs(int(pixels.mean()) - 200) <= 1


def test_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (20, 20), 1)
    image.putpalette([0, 0, 0, 250, 250, 250] + [0] * 762)
    path = tmp_path / "p.png"
    image.save(path, transparency=0)
    assert decode_grayscale(path, 10).mean() > 240


def test_16_bit_png_uses_its_full_range(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(1000, 4000, 64, dtype=np.uint16), (64, 1))  # 12-bit data in a 16-bit file
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    pixels = decode_grayscale(path, 64)
    assert pixels.min() <= 2 and pixels.max() >= 253  # not all black, as a naive >> 8 would give


def test_jpeg_and_exif_orientation(tmp_path: Path) -> None:
    pixels = np.zeros((40, 80), dtype=np.uint8)
    pixels[:, :40] = 255  # left half bright
    image = Image.fromarray(pixels).convert("RGB")
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "rotated.jpeg"
    image.save(path, exif=exif, quality=95)
    decoded = decode_grayscale(path, 40)
    assert decoded[:15].mean() > 200 and decoded[-15:].mean() < 50  # bright half is now on top


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty file"), (b"this is text, not a picture", "not an image"), ("truncated", "corrupt or truncated")],
)
def test_bad_files_raise_with_the_file_name(tmp_path: Path, content: object, reason: str) -> None:
    path = tmp_path / "bad.jpeg"
    if content == "truncated":
        write_image(tmp_path / "good.jpeg", size=(200, 200))
        path.write_bytes((tmp_path / "good.jpeg").read_bytes()[:300])
    else:
        path.write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(ImageDecodeError, match=reason) as info:
        decode_grayscale(path, 32)
    assert "bad.jpeg" in str(info.value)


def test_loader_skips_unreadable_files_with_a_warning_and_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(3):
        write_image(tmp_path / "NORMAL" / f"IM-000{i}-0001.png")
        write_image(tmp_path / "PNEUMONIA" / f"person{i}_virus_1.png")
    (tmp_path / "PNEUMONIA" / "person9_virus_1.png").write_bytes(b"garbage")
    source = FolderSource(tmp_path)
    _, records = source.split("train")
    image_set = load_images(source, records, 16)
    err = capsys.readouterr().err
    assert len(image_set) == 6 and image_set.images.shape == (6, 1, 16, 16)
    assert "person9_virus_1.png" in err and "skipped 1 unreadable file(s) of 7" in err
    with pytest.raises(ImageDecodeError, match="person9_virus_1.png"):
        load_images(source, records, 16, strict=True)


def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", slope: float = 1.0,
                intercept: float = 0.0, window: tuple[float, float] | None = None, frames: int = 1,
                with_pixels: bool = True, patient: str = "Doe^Jane") -> Path:
    """A small uncompressed DICOM file built with pydicom (no sample files needed)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.PatientName, dataset.PatientID, dataset.Modality = patient, "ID-12345", "CR"
    stack = np.stack([pixels] * frames) if frames > 1 else pixels
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    dataset.RescaleSlope, dataset.RescaleIntercept = slope, intercept
    if frames > 1:
        dataset.NumberOfFrames = frames
    if window is not None:
        dataset.WindowCenter, dataset.WindowWidth = window
    if with_pixels:
        dataset.PixelData = stack.astype(np.uint16).tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


def _ramp() -> np.ndarray:
    return np.tile(np.linspace(0, 4000, 64), (64, 1)).astype(np.uint16)  # 12-bit: dark left, bright right


def test_dicom_uses_its_full_range_and_keeps_orientation(tmp_path: Path) -> None:
    pixels = decode_grayscale(write_dicom(tmp_path / "film.dcm", _ramp()), 32)
    assert pixels.shape == (32, 32) and pixels[:, :4].mean() < 20 and pixels[:, -4:].mean() > 235


def test_dicom_is_judged_by_content_not_suffix(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "film.dcm", _ramp())
    renamed = tmp_path / "no_suffix"
    renamed.write_bytes(path.read_bytes())
    assert np.array_equal(decode_grayscale(renamed, 32), decode_grayscale(path, 32))


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    normal = decode_grayscale(write_dicom(tmp_path / "m2.dcm", _ramp()), 32)
    inverted = decode_grayscale(write_dicom(tmp_path / "m1.dcm", _ramp(), photometric="MONOCHROME1"), 32)
    assert inverted[:, :4].mean() > 235 and inverted[:, -4:].mean() < 20
    assert np.abs(inverted.astype(int) + normal.astype(int) - 255).max() <= 1


def test_dicom_window_is_applied(tmp_path: Path) -> None:
    """A VOI window of centre 1000, width 400 shows 800..1200 across the whole grey range."""
    pixels = decode_grayscale(write_dicom(tmp_path / "w.dcm", _ramp(), window=(1000.0, 400.0)), 64)
    row = pixels[32]
    assert row[:10].max() <= 1 and row[-20:].min() >= 254  # below the window black, above it white
    assert ((row > 1) & (row < 254)).sum() >= 4  # a real ramp inside the window


def test_multiframe_dicom_uses_the_first_frame(tmp_path: Path) -> None:
    from pneumoscan.errors import InputWarning

    with pytest.warns(InputWarning, match=r"multi.dcm: multi-frame DICOM \(3 frames\): only the first frame"):
        pixels = decode_grayscale(write_dicom(tmp_path / "multi.dcm", _ramp(), frames=3), 32)
    assert pixels[:, :4].mean() < 20 and pixels[:, -4:].mean() > 235


def test_dicom_without_pixel_data_is_refused(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "empty.dcm", _ramp(), with_pixels=False)
    with pytest.raises(ImageDecodeError, match="empty.dcm: DICOM file without pixel data"):
        decode_grayscale(path, 32)


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    Image.new("L", (3000, 3000)).save(path)
    with pytest.raises(ImageDecodeError, match="3000x3000 pixels, more than the limit") as info:
        decode_grayscale(path, 32, max_pixels=1_000_000)
    assert info.value.kind == "too_large"


def test_formats_outside_the_allow_list_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    Image.new("L", (20, 20), 100).save(path)
    with pytest.raises(ImageDecodeError, match="unsupported image format GIF") as info:
        decode_grayscale(path, 16)
    assert info.value.kind == "unsupported"
    tiff = tmp_path / "film.tiff"
    Image.new("L", (20, 20), 100).save(tiff)
    assert decode_grayscale(tiff, 16).mean() == pytest.approx(100, abs=1)


def test_a_float_image_wider_than_float32_can_subtract_is_not_black(tmp_path: Path) -> None:
    """-3e38 .. +3e38: windowing in float32 would overflow to inf and give a black film; half black, half white."""
    pixels = np.zeros((40, 40), dtype=np.float32)
    pixels[:, :20], pixels[:, 20:] = -3e38, 3e38
    Image.fromarray(pixels, mode="F").save(tmp_path / "wide.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning either
        decoded = decode_grayscale(tmp_path / "wide.tif", 40)
    assert decoded[:, :15].max() == 0 and decoded[:, 25:].min() == 255
