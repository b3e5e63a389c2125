"""Atomic file writes, so an interrupted run never leaves a half-written artefact behind, and the check of an
output folder every command makes before it starts work, so a folder it cannot write into fails in a second
with one line instead of after an hour of decoding and training."""

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pneumoscan.errors import PneumoscanError

MIN_FREE_BYTES = 50 * 1024 * 1024  # a run folder with figures and a bundle; a disk with less fails midway


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; it replaces `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        tmp_path.chmod(0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: Path, payload: Any) -> None:
    write_text(target, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()  # pragma: no cover - a relative path's parents end at '.', which exists


def check_output_dir(path: Path | str, *, min_free_bytes: int = MIN_FREE_BYTES) -> Path:
    """Make sure a job can write its outputs into folder `path` before it starts any slow work: the path is not a
    file and not below one, the folder (or, when it does not exist yet, the nearest existing folder above it,
    where it will be created) is writable, probed with a temporary file since permission bits lie on some file
    systems, and its disk has at least `min_free_bytes` free. Nothing is left behind, so a job refused later for
    another reason has written nothing. Raises PneumoscanError naming the folder and the reason; returns the path."""
    folder = Path(path)
    existing = _nearest_existing(folder)
    if existing == folder and not folder.is_dir():
        raise PneumoscanError(f"{folder}: is an existing file, not a folder; give a folder to write into")
    if not existing.is_dir():
        raise PneumoscanError(f"{folder}: cannot create this output folder, {existing} is a file")
    where = "the output folder" if existing == folder else f"{existing}, where the output folder would be created,"
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PneumoscanError(f"{folder}: {where} is not writable")
    try:
        fd, probe = tempfile.mkstemp(prefix=".pneumoscan-probe.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise PneumoscanError(f"{folder}: {where} is not writable ({error.strerror or error})") from None
    free = shutil.disk_usage(existing).free
    if free < min_free_bytes:
        raise PneumoscanError(f"{folder}: only {free / 1e6:.0f} MB free on its disk; at least "
                              f"{min_free_bytes / 1e6:.0f} MB are needed to write the outputs")
    return folder


def check_output_file(path: Path | str, *, min_free_bytes: int = MIN_FREE_BYTES) -> Path:
    """check_output_dir for a command whose output is one file (e.g. `export --out model.onnx`): the file's
    folder must pass, and the path must not be a folder. Returns the file's path."""
    target = Path(path)
    if target.is_dir():
        raise PneumoscanError(f"{target}: is a folder; give the file to write")
    check_output_dir(target.parent, min_free_bytes=min_free_bytes)
    return target


def discard(path: Path) -> None:
    """Delete a previous run's marker file (a bundle's manifest, an evaluation's metrics.json) before a rerun
    writes anything, so a rerun that is interrupted never passes for a finished one; the marker is written last."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError as error:
        raise PneumoscanError(f"{path}: cannot remove the previous run's file ({error.strerror or error})") from None
