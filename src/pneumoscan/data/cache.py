"""A disk cache of decoded images, keyed by file content and target size.

Decoding and resizing JPEGs is the slowest part of starting a run on the real data. Each image
is stored once per size as a small uint8 .npy named by the SHA-256 of the file's bytes, the
size and the decoder version, so a changed file (same name, new bytes) gets a new key and is
decoded again, and a renamed or copied file is a hit.

The cache is disposable, so it never stops a run: an entry that cannot be loaded or is not a
(size, size) uint8 array (a crash mid-write, a stray file, another program's .npy) is a miss and
is replaced. It is bounded: when it holds more than $PNEUMOSCAN_CACHE_MAX_GB (default 20 GB),
the least recently used entries go first. The size is checked after each cache build and after
every ~5 % of the limit this process wrote, not on each write, so a check (one directory walk)
stays rare.
"""

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumoscan.atomic import atomic_path
from pneumoscan.data.decode import decode_grayscale, read_file_bytes
from pneumoscan.errors import PneumoscanError

DECODER_VERSION = 2  # bump when decode_grayscale's output changes (2: NaN/inf float pixels no longer go black)
DEFAULT_MAX_GB = 20.0
_NPY_HEADER_MAX = 4096  # .npy headers are padded to 64 bytes; a 2-D uint8 array's is 128
MAX_GB_VARIABLE = "PNEUMOSCAN_CACHE_MAX_GB"
PRUNE_TO = 0.9  # a prune leaves the cache at 90 % of its limit, so the next few writes do not prune again
CHECK_EVERY = 0.05  # share of the limit this process writes between two size checks
TOUCH_AFTER_S = 3600.0  # a hit refreshes its entry's mtime (the LRU clock) at most once an hour
STALE_TMP_S = 3600.0  # a half-written entry older than this was left by a killed run
NPY_HEADER = 128  # bytes np.save puts before a 2-D uint8 array


def default_cache_dir() -> Path:
    """$PNEUMOSCAN_CACHE_DIR, else $XDG_CACHE_HOME/pneumoscan/images, else ~/.cache/pneumoscan/images."""
    if os.environ.get("PNEUMOSCAN_CACHE_DIR"):
        return Path(os.environ["PNEUMOSCAN_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pneumoscan" / "images"


def default_max_bytes() -> int:
    """$PNEUMOSCAN_CACHE_MAX_GB (decimal GB, may be fractional) as bytes, else 20 GB."""
    text = os.environ.get(MAX_GB_VARIABLE, "").strip()
    if not text:
        return int(DEFAULT_MAX_GB * 1e9)
    try:
        gigabytes = float(text)
    except ValueError:
        gigabytes = float("nan")
    if not (gigabytes > 0 and np.isfinite(gigabytes)):
        raise PneumoscanError(f"{MAX_GB_VARIABLE}={text!r}: expected a positive number of gigabytes, e.g. 20")
    return int(gigabytes * 1e9)


@dataclass(frozen=True)
class PruneReport:
    """What one size check found and did."""

    entries: int  # entries found before pruning
    bytes_before: int
    removed: int
    bytes_after: int


class ImageCache:
    """decode_grayscale through a content-addressed, size-bounded folder of .npy entries."""

    def __init__(self, root: Path | None = None, max_bytes: int | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.max_bytes = max_bytes if max_bytes is not None else default_max_bytes()
        if self.max_bytes <= 0:
            raise PneumoscanError(f"image cache limit must be positive, got {self.max_bytes} bytes")
        self._written_since_check = 0

    def _entry(self, content: bytes, size: int) -> Path:
        digest = hashlib.sha256(content)
        digest.update(f"|{size}|v{DECODER_VERSION}".encode())
        key = digest.hexdigest()
        return self.root / key[:2] / f"{key}.npy"

    def load(self, entry: Path | str, size: int) -> np.ndarray | None:
        """The entry's pixels if it holds a (size, size) uint8 array; a missing entry is None, and a bad one
        (unloadable, a pickle, another shape or dtype) is deleted and None, so it is decoded again."""
        entry = Path(entry)
        try:
            stat = entry.stat()
        except OSError:
            return None
        modified, pixels = stat.st_mtime, None
        # a (size, size) uint8 .npy is size² bytes plus a header of a few hundred: anything else is bad without
        # reading it (a header declaring 10⁶ x 10⁶ would otherwise make np.load try to allocate a terabyte)
        if size * size <= stat.st_size <= size * size + _NPY_HEADER_MAX:
            try:
                pixels = np.load(entry, allow_pickle=False)
            except (OSError, ValueError, EOFError, MemoryError):
                pixels = None
        if not (isinstance(pixels, np.ndarray) and pixels.shape == (size, size) and pixels.dtype == np.uint8):
            try:
                entry.unlink(missing_ok=True)
            except OSError:
                pass  # a read-only cache: the entry stays bad, and is decoded around each time
            return None
        if time.time() - modified > TOUCH_AFTER_S:
            try:
                os.utime(entry)  # least-recently-used eviction reads the mtime
            except OSError:
                pass
        return pixels

    def decode(self, path: Path | str, size: int) -> np.ndarray:
        """decode_grayscale through the cache; unreadable files are never cached. The file is read by
        decode.read_file_bytes, so a missing, locked or special file is an ImageDecodeError naming it and the
        reason (skipped like a corrupt image), with the same words as the uncached path."""
        return self.decode_with_entry(path, size)[0]

    def decode_with_entry(self, path: Path | str, size: int) -> tuple[np.ndarray, Path | None]:
        """decode, plus the entry that now holds the pixels (None if the cache could not be written), so a
        streamed run can later load the entry without reading and hashing the original file again."""
        content = read_file_bytes(path)
        entry = self._entry(content, size)
        cached = self.load(entry, size)
        if cached is not None:
            return cached, entry
        pixels = decode_grayscale(path, size, content=content)
        try:
            with atomic_path(entry) as tmp:
                with tmp.open("wb") as handle:
                    np.save(handle, pixels, allow_pickle=False)
        except OSError:
            return pixels, None  # a read-only or full cache must not stop training
        self._written_since_check += pixels.nbytes + NPY_HEADER
        if self._written_since_check >= CHECK_EVERY * self.max_bytes:
            self.prune()
        return pixels, entry

    def _scan(self) -> list[tuple[float, int, str]]:
        """(last use, bytes, path) of every entry, oldest last-use first; stale half-written files count too."""
        found: list[tuple[float, int, str]] = []
        now = time.time()
        try:
            shards = [shard for shard in os.scandir(self.root) if shard.is_dir(follow_symlinks=False)]
        except OSError:
            return found
        for shard in shards:
            try:
                items = list(os.scandir(shard.path))
            except OSError:
                continue
            for item in items:
                try:
                    stat = item.stat(follow_symlinks=False)
                except OSError:
                    continue
                if item.name.endswith(".npy"):
                    found.append((max(stat.st_atime, stat.st_mtime), stat.st_size, item.path))
                elif item.name.endswith(".tmp") and now - stat.st_mtime > STALE_TMP_S:
                    found.append((0.0, stat.st_size, item.path))  # a killed run's leftover goes first
        found.sort()
        return found

    def prune(self) -> PruneReport:
        """Bring the cache under its limit by deleting the least recently used entries (by access or
        modification time, whichever is later; hits refresh the mtime) down to 90 % of the limit."""
        self._written_since_check = 0
        entries = self._scan()
        total = sum(size for _, size, _ in entries)
        before, removed = total, 0
        if total > self.max_bytes:
            for _, size, path in entries:
                if total <= PRUNE_TO * self.max_bytes:
                    break
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass  # another process pruned it first
                except OSError:
                    continue
                total -= size
                removed += 1
        return PruneReport(entries=len(entries), bytes_before=before, removed=removed, bytes_after=total)
