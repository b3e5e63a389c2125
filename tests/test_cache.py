from pathlib import Path

import numpy as np
from PIL import Image

from conftest import write_image
from pneumoscan.data.cache import ImageCache
from pneumoscan.data.decode import decode_grayscale
from pneumoscan.data.registry import open_source


def _entries(cache: ImageCache) -> list[Path]:
    return sorted(cache.root.rglob("*.npy"))


def test_second_read_is_a_hit_with_identical_pixels(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    image = write_image(tmp_path / "a.png", value=90, size=(50, 70))
    first = cache.decode(image, 32)
    assert len(_entries(cache)) == 1
    np.save(_entries(cache)[0], np.full((32, 32), 7, dtype=np.uint8))  # prove the second read uses the entry
    assert (cache.decode(image, 32) == 7).all()
    assert np.array_equal(first, decode_grayscale(image, 32))


def test_a_changed_file_is_decoded_again_and_sizes_are_separate(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    image = write_image(tmp_path / "a.png", value=90)
    assert cache.decode(image, 32).mean() == 90
    Image.new("L", (40, 40), 200).save(image)  # same name, new content
    assert cache.decode(image, 32).mean() == 200
    cache.decode(image, 16)
    assert len(_entries(cache)) == 3


def test_a_damaged_entry_is_a_miss_not_an_error(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    image = write_image(tmp_path / "a.png", value=90)
    cache.decode(image, 32)
    _entries(cache)[0].write_bytes(b"garbage")
    assert cache.decode(image, 32).mean() == 90


def test_training_data_goes_through_the_cache(tiny_synthetic: Path, tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    source = open_source(str(tiny_synthetic), cache=cache)
    record = source.splits["test"][0]
    assert np.array_equal(source.read(record, 24), decode_grayscale(record.source, 24))
    assert len(_entries(cache)) == 1
