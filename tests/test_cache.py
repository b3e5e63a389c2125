import errno
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import quiet, write_image
from pneumoscan.data.cache import MAX_GB_VARIABLE, ImageCache, PruneReport
from pneumoscan.data.decode import decode_grayscale
from pneumoscan.data.loading import load_images
from pneumoscan.data.registry import open_source
from pneumoscan.errors import ImageDecodeError, PneumoscanError


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


def _image_entry(cache: ImageCache, image: Path, size: int) -> Path:
    return cache._entry(image.read_bytes(), size)


@pytest.mark.parametrize("bad", ["shape", "dtype", "pickle", "empty", "npz", "huge header"])
def test_an_entry_of_the_wrong_kind_is_replaced_not_trusted(tmp_path: Path, bad: str) -> None:
    """One stray entry (another shape or dtype, a pickle, an empty or .npz file) must not crash every later run."""
    cache = ImageCache(tmp_path / "cache")
    image = write_image(tmp_path / "a.png", value=90)
    entry = _image_entry(cache, image, 32)
    entry.parent.mkdir(parents=True)
    if bad == "shape":
        np.save(entry, np.zeros((10, 10), dtype=np.uint8))
    elif bad == "dtype":
        np.save(entry, np.zeros((32, 32), dtype=np.float64))
    elif bad == "pickle":
        np.save(entry, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif bad == "empty":
        entry.write_bytes(b"")
    elif bad == "huge header":  # declares 10⁶ x 10⁶: np.load would try to allocate a terabyte (MemoryError)
        header = "{'descr': '|u1', 'fortran_order': False, 'shape': (1000000, 1000000), }"
        header += " " * (117 - len(header)) + "\n"
        entry.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(32 * 32))
    else:
        with entry.open("wb") as handle:
            np.savez(handle, pixels=np.zeros((32, 32), dtype=np.uint8))
    pixels = cache.decode(image, 32)
    assert pixels.shape == (32, 32) and pixels.dtype == np.uint8 and pixels.mean() == 90
    stored = np.load(entry, allow_pickle=False)
    assert stored.dtype == np.uint8 and np.array_equal(stored, pixels)


def deny_reading(monkeypatch: pytest.MonkeyPatch, locked: Path) -> None:
    """Make `locked` unreadable as chmod 0 would, also for root (who reads any file): opening it fails with EACCES.
    Forked worker processes inherit the patch."""
    real_open = os.open

    def guarded_open(path: object, *args: object, **kwargs: object) -> int:
        if os.fspath(path) == str(locked):  # type: ignore[arg-type]
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(locked))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", guarded_open)


def test_an_unreadable_file_is_an_image_error_naming_it_not_a_traceback(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    image = write_image(tmp_path / "locked.png")
    deny_reading(monkeypatch, image)
    with pytest.raises(ImageDecodeError, match=r"locked.png: permission denied") as info:
        ImageCache(tmp_path / "cache").decode(image, 32)
    assert info.value.kind == "unreadable"
    with pytest.raises(ImageDecodeError, match=r"missing.png: no such file"):
        ImageCache(tmp_path / "cache").decode(tmp_path / "missing.png", 32)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files without permission")
def test_a_training_image_without_read_permission_is_skipped_and_counted(tiny_synthetic: Path, tmp_path: Path) -> None:
    folder = tmp_path / "data"
    shutil.copytree(tiny_synthetic / "train", folder)
    locked = sorted((folder / "NORMAL").iterdir())[0]
    locked.chmod(0)
    try:
        source = open_source(str(folder), cache=ImageCache(tmp_path / "cache"))
        image_set = load_images(source, source.splits["all"], 24, console=quiet())
    finally:
        locked.chmod(0o644)
    assert len(image_set) == len(source.splits["all"]) - 1
    assert [(s.source, s.kind) for s in image_set.skipped] == [(str(locked), "unreadable")]
    assert image_set.skipped[0].reason == "permission denied"


def _fill(cache: ImageCache, tmp_path: Path, count: int) -> list[Path]:
    """`count` entries whose last use is 1, 2, ... hours ago, oldest first."""
    entries = []
    for index in range(count):
        image = write_image(tmp_path / f"img{index}.png", value=10 + index)
        cache.decode(image, 32)
        entry = _image_entry(cache, image, 32)
        stamp = time.time() - 3600 * (count - index)
        os.utime(entry, (stamp, stamp))
        entries.append(entry)
    return entries


def test_prune_drops_the_least_recently_used_entries(tmp_path: Path) -> None:
    entry_bytes = 32 * 32 + 128
    cache = ImageCache(tmp_path / "cache", max_bytes=100 * entry_bytes)
    entries = _fill(cache, tmp_path, 5)
    cache.max_bytes = 3 * entry_bytes
    report = cache.prune()
    assert report == PruneReport(entries=5, bytes_before=5 * entry_bytes, removed=3, bytes_after=2 * entry_bytes)
    assert [entry.exists() for entry in entries] == [False, False, False, True, True]  # down to 90 % of the limit


def test_a_hit_counts_as_a_use(tmp_path: Path) -> None:
    entry_bytes = 32 * 32 + 128
    cache = ImageCache(tmp_path / "cache", max_bytes=100 * entry_bytes)
    entries = _fill(cache, tmp_path, 3)
    cache.decode(tmp_path / "img0.png", 32)  # the oldest, read again: now the most recent
    cache.max_bytes = 2 * entry_bytes
    cache.prune()
    assert [entry.exists() for entry in entries] == [True, False, False]


def test_the_cache_keeps_itself_under_its_limit_while_writing(tmp_path: Path) -> None:
    entry_bytes = 32 * 32 + 128
    cache = ImageCache(tmp_path / "cache", max_bytes=int(2.5 * entry_bytes))
    for index in range(6):
        cache.decode(write_image(tmp_path / f"img{index}.png", value=10 + index), 32)
    assert sum(p.stat().st_size for p in _entries(cache)) <= cache.max_bytes


def test_the_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(MAX_GB_VARIABLE, raising=False)
    assert ImageCache(tmp_path).max_bytes == 20 * 10**9
    monkeypatch.setenv(MAX_GB_VARIABLE, "0.5")
    assert ImageCache(tmp_path).max_bytes == 5 * 10**8
    for bad in ("lots", "0", "-1", "nan"):
        monkeypatch.setenv(MAX_GB_VARIABLE, bad)
        with pytest.raises(PneumoscanError, match=f"{MAX_GB_VARIABLE}='{bad}': expected a positive number"):
            ImageCache(tmp_path)
