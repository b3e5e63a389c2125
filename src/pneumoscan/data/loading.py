"""Decode a list of records once into a uint8 tensor held in memory.

Decoding is the slow part of reading JPEGs; doing it once per run means epochs only do tensor
work. Unreadable files are skipped with a warning naming each one (or, with strict, stop the run), and
recorded (ImageSet.skipped) so every output of the job can say what was left out and why.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from rich.console import Console

from pneumoscan.data.cache import ImageCache
from pneumoscan.data.decode_each import Decoded, decode_each  # noqa: F401  (Decoded re-exported)
from pneumoscan.data.records import Record, SkippedFile, SkippedFiles, SplitCounts, SplitSummary
from pneumoscan.data.registry import open_source
from pneumoscan.data.sources import DataSource
from pneumoscan.data.streaming import Cached, StreamedImages, build_cache
from pneumoscan.errors import ImageDecodeError, PneumoscanError


@dataclass
class ImageSet:
    """Images (N, 1, S, S) uint8, labels (N,) float, and the records they came from. The images are one tensor
    in memory, or a StreamedImages read on demand (pneumoscan.data.streaming) for data larger than memory."""

    images: torch.Tensor | StreamedImages
    labels: torch.Tensor
    records: list[Record]
    skipped: tuple[SkippedFile, ...] = ()  # records that could not be decoded, in input order

    def __len__(self) -> int:
        return len(self.records)

    def counts(self) -> SplitCounts:
        return SplitCounts.of(self.records)

    def skipped_files(self) -> SkippedFiles:
        return SkippedFiles.of(self.skipped)


def load_images(
    source: DataSource,
    records: Sequence[Record],
    size: int,
    *,
    strict: bool = False,
    console: Console | None = None,
    description: str = "decoding",
) -> ImageSet:
    decoded = decode_each(records, lambda record: source.read(record, size), strict=strict,
                          console=console or Console(stderr=True), description=description)
    if not decoded.kept:
        raise PneumoscanError(f"{source.name}: none of the {len(records)} image(s) could be read")
    images = torch.from_numpy(np.stack(decoded.arrays)).unsqueeze(1)
    labels = torch.tensor([r.label for r in decoded.kept], dtype=torch.float32)
    return ImageSet(images, labels, decoded.kept, skipped=decoded.skipped)


STREAM_ABOVE_BYTES = 32 * 1024 * 1024  # `stream auto`: decoded images beyond this are streamed (2,000 films at 128 px)


def streams(mode: str, images: int, size: int) -> bool:
    """Whether a command that reads a labelled split streams it (`on`), holds it in memory (`off`), or (`auto`)
    streams once the decoded images would pass STREAM_ABOVE_BYTES: then its memory no longer grows with the split
    (each pass reads the films a batch at a time from the decoded-image cache), and small sets keep the speed of
    memory."""
    return mode == "on" or (mode == "auto" and images * size * size > STREAM_ABOVE_BYTES)


def load_split(data: str, split: str, size: int, *, strict: bool = False, cache: bool = True,
               console: Console | None = None, stream: str = "off") -> tuple[ImageSet, SplitSummary]:
    """Open a `--data` spec, pick `split` (or a bare folder's only one) and decode it at `size` through the
    decoded-image cache: the one way evaluation, monitoring and benchmarks read labelled images. `stream` (on, off,
    auto; see `streams`): the images are read a batch at a time when used instead of held in memory."""
    source = open_source(data, cache=ImageCache() if cache else None)
    split_name, records = source.split(split)
    if streams(stream, len(records), size):
        image_set = load_streamed(source, records, size, strict=strict, console=console,
                                  description=f"caching {split_name}")
    else:
        image_set = load_images(source, records, size, strict=strict, console=console,
                                description=f"decoding {split_name}")
    return image_set, SplitSummary(source=source.name, split=split_name, counts=image_set.counts(),
                                   skipped=image_set.skipped_files())


_NO_PIXELS = np.zeros(0, dtype=np.uint8)


def load_streamed(source: DataSource, records: Sequence[Record], size: int, *, strict: bool = False,
                  console: Console | None = None, description: str = "caching",
                  workers: int | None = None) -> ImageSet:
    """An ImageSet whose images are streamed: every file decoded once into the cache in parallel (the check that
    it is readable), unreadable ones skipped and recorded exactly as load_images does, and no pixels kept."""
    console = console or Console(stderr=True)
    outcome = dict(zip(map(id, records), build_cache(source, records, size, workers=workers, console=console,
                                                     description=description), strict=True))

    def checked(record: Record) -> np.ndarray:
        result = outcome[id(record)]
        if isinstance(result, ImageDecodeError):
            raise result
        return _NO_PIXELS

    decoded = decode_each(records, checked, strict=strict, console=console, description=description)
    if not decoded.kept:
        raise PneumoscanError(f"{source.name}: none of the {len(records)} image(s) could be read")
    labels = torch.tensor([r.label for r in decoded.kept], dtype=torch.float32)
    entries = [result.entry for result in (outcome[id(r)] for r in decoded.kept) if isinstance(result, Cached)]
    images = StreamedImages(source, decoded.kept, size, workers, entries)
    return ImageSet(images, labels, decoded.kept, skipped=decoded.skipped)  # type: ignore[arg-type]
