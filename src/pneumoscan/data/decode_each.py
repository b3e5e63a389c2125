"""Decode many files in parallel threads, each on its own: an unreadable one is skipped with a warning naming it (or,
with strict, stops the job) and recorded, and never stops the others. Torch-free, so `predict` through ONNX
Runtime decodes with it without importing torch."""

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from pneumoscan.data.records import SkippedFile, printable
from pneumoscan.errors import ImageDecodeError

T = TypeVar("T")
_WORKERS = 4  # PIL releases the GIL while decoding, so threads overlap file I/O and decoding


@dataclass(frozen=True)
class Decoded(Generic[T]):
    """What decode_each kept (items and their arrays, in input order) and what it skipped, with the reasons."""

    kept: list[T]
    arrays: list[np.ndarray]
    skipped: tuple[SkippedFile, ...]


def decode_each(
    items: Sequence[T],
    read: Callable[[T], np.ndarray],
    *,
    strict: bool,
    console: Console,
    description: str = "decoding",
) -> Decoded[T]:
    """Decode items in parallel; warn about (or, if strict, stop at) each unreadable one and record it."""

    def attempt(item: T) -> np.ndarray | ImageDecodeError:
        try:
            return read(item)
        except ImageDecodeError as error:
            if strict:
                raise
            return error

    kept: list[T] = []
    arrays: list[np.ndarray] = []
    skipped: list[SkippedFile] = []
    with Progress(console=console, transient=True) as progress, ThreadPoolExecutor(_WORKERS) as pool:
        task = progress.add_task(description, total=len(items))
        for item, result in zip(items, pool.map(attempt, items), strict=True):
            progress.advance(task)
            if isinstance(result, ImageDecodeError):
                skipped.append(SkippedFile(source=printable(result.path), reason=printable(result.reason),
                                           kind=result.kind))
                console.print(f"[yellow]warning:[/] skipped {escape(str(result.path))}: {escape(result.reason)}",
                              highlight=False, soft_wrap=True)
            else:
                kept.append(item)
                arrays.append(result)
    if skipped:
        console.print(f"[yellow]warning:[/] skipped {len(skipped)} unreadable file(s) of {len(items)}")
    return Decoded(kept=kept, arrays=arrays, skipped=tuple(skipped))
