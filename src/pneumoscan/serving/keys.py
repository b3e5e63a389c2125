"""API keys of `pneumoscan serve`: made, stored hashed, read back and checked.

A key is `psk_` + 32 random bytes from the operating system's CSPRNG (`secrets.token_urlsafe(32)`, 43
characters): 256 bits of entropy. Only its SHA-256 digest is stored, so a leaked key file or environment gives
no usable key. A fast hash is enough for such keys: slow password hashes (bcrypt, scrypt, Argon2) exist to make
guessing low-entropy passwords expensive, and no number of SHA-256 evaluations searches 2**256 keys; a fast hash
also keeps the check cheap on every request (a slow one would hand any client a way to burn the CPU).

Storage, one key per line, in a file (`--api-keys FILE`) and/or the environment variable PNEUMOSCAN_API_KEYS
(entries separated by newlines or commas):

    <key id> <sha-256 of the key, 64 hex digits>      # comments and blank lines are ignored

The id names the key in the access log and in the rate limiter; the key itself is never stored or logged.
"""

import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pneumoscan.errors import PneumoscanError

ENV_VAR = "PNEUMOSCAN_API_KEYS"
PREFIX = "psk_"  # recognisable in a leaked log or a secret scanner
KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
DIGEST = re.compile(r"[0-9a-f]{64}")
RELOAD_INTERVAL_S = 1.0  # the key file's mtime and size are looked at no more often than this
LOG = logging.getLogger("pneumoscan.serve")


def new_key() -> str:
    """A fresh key: the prefix and 256 random bits."""
    return PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    """The stored form of a key: its SHA-256, in hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class StoredKey:
    """One key as stored: its id and its digest."""

    key_id: str
    digest: str

    def line(self) -> str:
        return f"{self.key_id} {self.digest}"


def parse_entries(lines: Iterable[str], where: str) -> list[StoredKey]:
    """Key entries from lines of `<id> <digest>`; a malformed line or a repeated id is one clear error naming
    `where` and the line number (never the line itself: a line might hold a pasted key)."""
    keys: list[StoredKey] = []
    for number, raw in enumerate(lines, 1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        if len(parts) != 2 or not KEY_ID.fullmatch(parts[0]) or not DIGEST.fullmatch(parts[1].lower()):
            raise PneumoscanError(f"{where}, entry {number}: expected '<key id> <SHA-256 in 64 hex digits>' (ids: "
                                  "letters, digits, '.', '_', '@', '-'; make keys with `pneumoscan keys new`)")
        if any(k.key_id == parts[0] for k in keys):
            raise PneumoscanError(f"{where}, entry {number}: key id '{parts[0]}' appears twice")
        keys.append(StoredKey(parts[0], parts[1].lower()))
    return keys


def read_key_file(path: Path) -> list[StoredKey]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PneumoscanError(f"{path}: no such API key file (make one with `pneumoscan keys new --file "
                              f"{path}`)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise PneumoscanError(f"{path}: cannot read the API key file ({error})") from None
    return parse_entries(text.splitlines(), str(path))


def env_entries(value: str | None) -> list[StoredKey]:
    """The keys in PNEUMOSCAN_API_KEYS (digests, never keys: see the module docstring)."""
    if not value or not value.strip():
        return []
    return parse_entries(re.split(r"[\n,]", value), ENV_VAR)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the key file's companion `.<name>.lock` for a read-modify-write: two `keys new` at the
    same moment must not both read the old file and one of them lose its entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def append_key(path: Path, entry: StoredKey) -> None:
    """Add `entry` to the key file at `path`, atomically and under a lock: the new file (mode 0600) is written
    beside it and renamed over it, so the service never reads half a line, and concurrent appends all land. A
    repeated id is refused."""
    with _locked(path):
        existing = read_key_file(path) if path.exists() else []
        if any(k.key_id == entry.key_id for k in existing):
            raise PneumoscanError(f"{path}: key id '{entry.key_id}' is already there; choose another --id")
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        if text and not text.endswith("\n"):
            text += "\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text + entry.line() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)


def next_key_id(path: Path) -> str:
    """`key-N`, the first N not yet used in the file."""
    used = {k.key_id for k in read_key_file(path)} if path.exists() else set()
    return next(f"key-{n}" for n in range(1, len(used) + 2) if f"key-{n}" not in used)


class KeyStore:
    """The keys the service accepts: those of the environment (fixed at start) and of the key file, re-read
    when its modification time, size or inode change (looked at most once per `RELOAD_INTERVAL_S`, on a
    request: no watcher thread). A file that turns unreadable or malformed refuses every file key until it
    is fixed (fail closed: a typo while revoking a key must not keep it valid); the environment's keys stay."""

    def __init__(self, path: Path | None, fixed: list[StoredKey], clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self.path, self.fixed, self.clock = path, list(fixed), clock
        self._file_keys: list[StoredKey] = []
        self._seen: tuple[int, int, int] | None = None
        self._checked = -float("inf")
        if path is not None:
            self._file_keys = read_key_file(path)  # at start an error stops the service with one line
            self._seen = self._signature()
            self._checked = clock()
        ids = [k.key_id for k in self.fixed + self._file_keys]
        if len(ids) != len(set(ids)):
            raise PneumoscanError(f"a key id is both in {ENV_VAR} and in the key file: ids must be unique")

    @property
    def keys(self) -> list[StoredKey]:
        return self.fixed + self._file_keys

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()  # type: ignore[union-attr]
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def refresh(self) -> None:
        """Re-read the key file if it changed, at most once per interval."""
        if self.path is None or self.clock() - self._checked < RELOAD_INTERVAL_S:
            return
        self._checked = self.clock()
        signature = self._signature()
        if signature == self._seen:
            return
        self._seen = signature
        try:
            keys = read_key_file(self.path)
        except PneumoscanError as error:
            self._file_keys = []
            LOG.warning("API key file changed and cannot be used (%s): its keys are refused until it is fixed",
                        str(error).replace(str(self.path), "the key file"))
            return
        self._file_keys = [k for k in keys if k.key_id not in {f.key_id for f in self.fixed}]
        LOG.info("API key file re-read: %d key(s)", len(self._file_keys))

    def identify(self, key: str) -> str | None:
        """The id of the stored key equal to `key`, or None. Digests are compared in constant time, and every
        stored digest is compared (no early exit), so timing tells nothing about which or how much matched."""
        self.refresh()
        presented = digest(key)
        found = None
        for stored in self.keys:
            if hmac.compare_digest(presented, stored.digest):
                found = stored.key_id
        return found


def open_key_store(path: str | Path | None, environ: dict[str, str] | None = None) -> KeyStore | None:
    """The service's keys from `--api-keys` and PNEUMOSCAN_API_KEYS, or None when neither is set (no auth).
    A key file given but still empty counts as set: every key is refused until `keys new` adds one."""
    fixed = env_entries((os.environ if environ is None else environ).get(ENV_VAR))
    if path is None and not fixed:
        return None
    return KeyStore(None if path is None else Path(path), fixed)
