"""A disk cache of decoded images, keyed by file content and target size.

Decoding and resizing JPEGs is the slowest part of starting a run on the real data. Each image
is stored once per size as a small uint8 .npy named by the SHA-256 of the file's bytes, the
size and the decoder version, so a changed file (same name, new bytes) gets a new key and is
decoded again, and a renamed or copied file is a hit.
"""

import hashlib
import os
from pathlib import Path

import numpy as np

from pneumoscan.atomic import atomic_path
from pneumoscan.data.decode import decode_grayscale
from pneumoscan.errors import ImageDecodeError

DECODER_VERSION = 1  # bump when decode_grayscale's output changes


def default_cache_dir() -> Path:
    """$PNEUMOSCAN_CACHE_DIR, else $XDG_CACHE_HOME/pneumoscan/images, else ~/.cache/pneumoscan/images."""
    if os.environ.get("PNEUMOSCAN_CACHE_DIR"):
        return Path(os.environ["PNEUMOSCAN_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pneumoscan" / "images"


class ImageCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def _entry(self, content: bytes, size: int) -> Path:
        digest = hashlib.sha256(content)
        digest.update(f"|{size}|v{DECODER_VERSION}".encode())
        key = digest.hexdigest()
        return self.root / key[:2] / f"{key}.npy"

    def decode(self, path: Path | str, size: int) -> np.ndarray:
        """decode_grayscale through the cache; unreadable files are never cached."""
        try:
            content = Path(path).read_bytes()
        except FileNotFoundError:
            raise ImageDecodeError(path, "no such file") from None
        entry = self._entry(content, size)
        if entry.is_file():
            try:
                return np.load(entry, allow_pickle=False)
            except (OSError, ValueError):
                entry.unlink(missing_ok=True)  # a damaged entry is just a miss
        pixels = decode_grayscale(path, size, content=content)
        try:
            with atomic_path(entry) as tmp:
                with tmp.open("wb") as handle:
                    np.save(handle, pixels, allow_pickle=False)
        except OSError:
            pass  # a read-only or full cache must not stop training
        return pixels
