"""`predict --out FILE [--resume]`: score a folder of any size, a batch at a time, into a rows file that grows as
it goes, so memory holds one batch of films (never the whole folder) and an interrupted run loses at most the batch
it was on. Torch-free: ranks are whatever the caller hands in (one process by default, torchrun's gloo group from
the CLI).

How a run goes, on every rank of `world` (one process: rank 0 of 1):
1. without `--resume` an existing FILE (or a rank's part of one) is refused; with it, the rows already in FILE and
   in any part an interrupted torchrun left are read, and this rank's own file loses a torn last line;
2. all ranks meet (so nobody appends while another still reads), then rank r takes the batches r, r+world, ... of
   the films in input order; a film whose path and SHA-256 match an earlier row is skipped, the others are
   decoded (skipping unreadable ones with a warning, as without --out), scored, and their rows appended to this
   rank's file (FILE itself on one process, FILE.rank{r}.part under torchrun) with one fsync per batch;
3. rank 0 gathers every rank's rows and rewrites FILE atomically in input order, followed by the earlier rows of
   films that are no longer among the inputs (kept as they were); then the parts are deleted.
"""

import glob
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from rich.console import Console

from pneumoscan.atomic import atomic_path
from pneumoscan.data.decode import decode_grayscale
from pneumoscan.data.decode_each import decode_each
from pneumoscan.data.records import printable
from pneumoscan.errors import PneumoscanError
from pneumoscan.models.manifest import sha256_file
from pneumoscan.serving.predict import predict_images
from pneumoscan.serving.rowfile import Row, RowFormat, append_lines, cut_torn_tail, read_rows, row_format

BATCH = 64  # films decoded, scored and appended together: memory is one batch of films


class Ranks(Protocol):
    """The processes sharing the films (pneumoscan.training.distributed.Distributed under torchrun)."""

    rank: int
    world_size: int

    def gather_objects(self, value: object) -> list[object]: ...

    def barrier(self) -> None: ...


@dataclass(frozen=True)
class OneProcess:
    """Ranks for a run on one process: no one to wait for, nothing to gather."""

    rank: int = 0
    world_size: int = 1

    def gather_objects(self, value: object) -> list[object]:
        return [value]

    def barrier(self) -> None:
        return None


@dataclass
class ArchiveSummary:
    """What a run did (on rank 0: summed over ranks)."""

    rows: int = 0  # rows in FILE at the end (rank 0)
    scored: int = 0  # films scored by this run
    unreadable: int = 0  # films whose bytes did not decode: recorded with their error
    reused: int = 0  # films already in FILE with the same bytes (--resume)
    unhashed: int = 0  # films whose bytes could not be read at all: warned about, no row (tried again on resume)

    def add(self, other: "ArchiveSummary") -> None:
        for name in ("scored", "unreadable", "reused", "unhashed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class _Shard:
    """One rank's rows, with each film's position in the input order, and its counts."""

    rows: list[tuple[int, Row]] = field(default_factory=list)
    summary: ArchiveSummary = field(default_factory=ArchiveSummary)


def part_path(out: Path, rank: int, world_size: int) -> Path:
    """Where a rank appends: FILE itself on one process, FILE.rank{r}.part under torchrun."""
    return out if world_size == 1 else out.with_name(f"{out.name}.rank{rank}.part")


def leftover_parts(out: Path) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(glob.escape(str(out)) + ".rank*.part"))


def file_sha256(path: Path) -> str | None:
    """The SHA-256 of a regular file's bytes; None for anything that cannot be read as one (missing, a FIFO, a
    device, no permission): the decoder then reports it."""
    try:
        return sha256_file(path) if path.is_file() else None
    except OSError:
        return None


def _earlier_rows(out: Path, fmt: RowFormat, resume: bool, own: Path) -> list[Row]:
    """Rows a previous run left (FILE, then the parts of an interrupted torchrun run); refused without --resume."""
    existing = [p for p in (out, *leftover_parts(out)) if p.exists()]
    if existing and not resume:
        raise PneumoscanError(f"{existing[0]}: already exists; add --resume to keep its rows and score only the "
                              f"films it lacks, or delete it")
    cut_torn_tail(own)
    return [row for path in existing for row in read_rows(path, fmt)]


def _new_rows(engine: Any, fmt: RowFormat, todo: list[tuple[int, Path, str | None]], strict: bool,
              console: Console, description: str) -> tuple[list[tuple[int, Row]], ArchiveSummary]:
    """Decode and score one batch's films that need it: a row per scored film and per film whose bytes did not
    decode (with the reason); a film whose bytes could not be read at all gets none."""
    size = engine.manifest.preprocess.image_size
    decoded = decode_each(todo, lambda item: decode_grayscale(item[1], size), strict=strict, console=console,
                          description=description)
    rows, summary = [], ArchiveSummary()
    if decoded.kept:
        predictions = predict_images(engine, [item[1] for item in decoded.kept], np.stack(decoded.arrays)[:, None])
        for (index, _, sha), prediction in zip(decoded.kept, predictions, strict=True):
            rows.append((index, fmt.encode({**asdict(prediction), "sha256": sha})))
        summary.scored = len(predictions)
    reasons = {skipped.source: skipped.reason for skipped in decoded.skipped}
    kept = {item[0] for item in decoded.kept}
    for index, path, sha in todo:
        if index in kept:
            continue
        if sha is None:
            summary.unhashed += 1
        else:
            rows.append((index, fmt.encode({"file": printable(path), "engine": engine.info.name, "sha256": sha,
                                            "error": reasons.get(printable(path), "unreadable")})))
            summary.unreadable += 1
    return sorted(rows, key=lambda item: item[0]), summary


def _score_shard(engine: Any, files: Sequence[Path], part: Path, fmt: RowFormat, earlier: list[Row],
                 strict: bool, console: Console, ranks: Ranks, batch_size: int) -> _Shard:
    """This rank's batches, each appended to `part` (whole lines, fsynced) before the next is decoded."""
    done = {(row.file, row.sha256): row for row in earlier}
    shard = _Shard()
    batches = range(0, len(files), batch_size)
    if fmt.header and (not part.exists() or part.stat().st_size == 0):
        append_lines(part, fmt.header)
    for number in range(ranks.rank, len(batches), ranks.world_size):
        start = batches[number]
        todo: list[tuple[int, Path, str | None]] = []
        for index in range(start, min(start + batch_size, len(files))):
            sha = file_sha256(files[index])
            row = done.get((printable(files[index]), sha or ""))
            if row is not None:
                shard.rows.append((index, row))
                shard.summary.reused += 1
            else:
                todo.append((index, files[index], sha))
        if todo:
            rows, summary = _new_rows(engine, fmt, todo, strict, console, f"batch {number + 1}/{len(batches)}")
            append_lines(part, "".join(row.line for _, row in rows))
            shard.rows.extend(rows)
            shard.summary.add(summary)
    return shard


def _merged(shards: list[_Shard], earlier: list[Row]) -> list[Row]:
    """Every rank's rows in input order, then the earlier rows of films no longer among the inputs (the last row
    written for each, in the order first written)."""
    current = [row for _, row in sorted((item for shard in shards for item in shard.rows), key=lambda i: i[0])]
    present = {row.file for row in current}
    gone: dict[str, Row] = {}
    for row in earlier:
        if row.file not in present:
            gone[row.file] = row
    return current + list(gone.values())


def score_archive(engine: Any, files: Sequence[Path], out: Path, *, resume: bool, strict: bool, console: Console,
                  ranks: Ranks | None = None, batch_size: int = BATCH) -> ArchiveSummary:
    """Score `files` into the rows file `out` (.csv or .jsonl), a batch at a time, resuming from its rows with
    `resume`; returns what was done (on rank 0, over every rank)."""
    ranks = ranks or OneProcess()
    fmt = row_format(out)
    part = part_path(out, ranks.rank, ranks.world_size)
    earlier = _earlier_rows(out, fmt, resume, part)
    ranks.barrier()  # every rank has checked and read before any rank appends
    shard = _score_shard(engine, files, part, fmt, earlier, strict, console, ranks, batch_size)
    shards: list[_Shard] = ranks.gather_objects(shard)  # type: ignore[assignment]
    summary = shard.summary
    if ranks.rank == 0:
        rows = _merged(shards, earlier)
        with atomic_path(out) as tmp:
            tmp.write_text((fmt.header or "") + "".join(row.line for row in rows), encoding="utf-8")
        summary = ArchiveSummary(rows=len(rows))
        for each in shards:
            summary.add(each.summary)
    ranks.barrier()  # FILE holds every row before any part is deleted
    if ranks.world_size > 1:
        part.unlink(missing_ok=True)
    if ranks.rank == 0:
        for leftover in leftover_parts(out):
            leftover.unlink(missing_ok=True)
    return summary
