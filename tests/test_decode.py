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
