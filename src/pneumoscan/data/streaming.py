"""Images read on demand, for datasets larger than memory.

The in-memory path decodes a split once into one uint8 tensor: fast, but 20,000 films at 512 px
take 5 GB and a million take a machine. A streamed set holds only the records (and their labels);
each image is read from the decoded-image cache when a batch needs it, by torch DataLoader worker
processes that run ahead of the model, so memory stays flat as the dataset grows.

Before a streamed run starts, every file is decoded once, in parallel worker processes, into the
cache (decoding large PNGs and JPEGs is CPU-bound, so processes, not threads). That pass is also
the validation: a file that cannot be read is skipped and recorded exactly as the in-memory path
skips it, before training starts, not halfway through an epoch.

A streamed set answers the indexing the training and packaging code does on an image tensor (len,
slices, index tensors), returning uint8 tensors of just the images asked for; `iter_chunks` and
`StreamedImages.batches` are the fast paths that read through workers. Batches come back in exactly
the order asked for, with exactly the pixels the in-memory path holds, so a run is the same
either way.
"""

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from torch.utils.data import DataLoader, Dataset

from pneumoscan.data.records import Record
from pneumoscan.data.sources import DataSource
from pneumoscan.errors import ImageDecodeError, PneumoscanError

WORKERS_VARIABLE = "PNEUMOSCAN_DATA_WORKERS"
PREFETCH = 2  # batches each worker prepares ahead: enough to hide a read behind a training step
BUILD_CHUNK = 16  # images one cache-build task decodes, so inter-process traffic stays small per image
PARALLEL_MIN = 64  # fewer images than this are read in-process: starting workers (~0.1 s) would cost more


def default_workers() -> int:
    """$PNEUMOSCAN_DATA_WORKERS, else the CPUs this process may use, at most 4 (decoding scales with cores, but
    streamed reads only have to keep up with the model, and each worker costs its own memory)."""
    text = os.environ.get(WORKERS_VARIABLE, "").strip()
    if text:
        try:
            workers = int(text)
        except ValueError:
            workers = -1
        if workers < 0:
            raise PneumoscanError(f"{WORKERS_VARIABLE}={text!r}: expected a whole number of worker processes "
                                  "(0: read in the main process)")
        return workers
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return min(4, cpus)


@dataclass(frozen=True)
class _Failure:
    """An ImageDecodeError's fields, sent from a worker process (the exception itself does not survive pickling)."""

    path: str
    reason: str
    kind: str

    @classmethod
    def of(cls, error: ImageDecodeError) -> "_Failure":
        return cls(str(error.path), error.reason, error.kind)

    def error(self) -> ImageDecodeError:
        return ImageDecodeError(self.path, self.reason, kind=self.kind)


def _identity(item: Any) -> Any:
    """collate_fn that leaves a worker's result as it is (module level, so a spawned worker can import it)."""
    return item


def _index_list(index: object, length: int) -> list[int]:
    """A tensor-style index (int, slice, int or bool tensor/array/list) as a list of positions."""
    if isinstance(index, slice):
        return list(range(*index.indices(length)))
    if isinstance(index, torch.Tensor):
        index = index.cpu().numpy()
    array = np.asarray(index)
    if array.dtype == bool:
        if array.shape != (length,):
            raise IndexError(f"boolean index of shape {array.shape} for {length} images")
        return np.flatnonzero(array).tolist()
    if array.ndim > 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        raise IndexError(f"streamed images take an int, a slice or a 1-D index, got {type(index).__name__}")
    positions = array.reshape(-1).astype(np.int64)
    if positions.size and (positions.max() >= length or positions.min() < -length):
        raise IndexError(f"index out of range for {length} images")
    return [int(p) % length if length else int(p) for p in positions]


class _BatchReader(Dataset):
    """One item per batch: a list of positions in, their (k, 1, S, S) uint8 tensor (or the first failure) out."""

    def __init__(self, images: "StreamedImages") -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, positions: Sequence[int]) -> torch.Tensor | _Failure:
        try:
            return self.images.read_batch(positions)
        except ImageDecodeError as error:
            return _Failure.of(error)


class StreamedImages:
    """The images of `records` at `size`, read when indexed: stands in for the (N, 1, S, S) uint8 tensor of the
    in-memory path wherever the code indexes images rather than computing on all of them at once.

    `entries` are the cache files the build wrote (load_streamed passes them): an image is then one small .npy
    read, not the original file read and hashed again, so an epoch reads the cache's bytes (50 KB an image at
    224 px), not the originals' (often 1 MB or more). An entry evicted or damaged since is decoded again from
    the original through the source."""

    dtype = torch.uint8

    def __init__(self, source: DataSource, records: Sequence[Record], size: int, workers: int | None = None,
                 entries: Sequence[str | None] | None = None) -> None:
        self.source = source
        self.records = list(records)
        self.image_size = size
        self.workers = default_workers() if workers is None else workers
        self.entries = list(entries) if entries is not None else [None] * len(self.records)
        if len(self.entries) != len(self.records):
            raise ValueError(f"{len(self.entries)} cache entries for {len(self.records)} records")

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"StreamedImages({len(self)} images of {self.image_size}x{self.image_size} from {self.source.name})"

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), 1, self.image_size, self.image_size))

    @property
    def nbytes(self) -> int:
        """What the in-memory path would hold for these images."""
        return len(self) * self.image_size * self.image_size

    def size(self, dim: int | None = None) -> torch.Size | int:
        """As Tensor.size: the (N, 1, S, S) shape, or one of its sides."""
        return self.shape if dim is None else self.shape[dim]

    def read_batch(self, positions: Sequence[int]) -> torch.Tensor:
        """The images at `positions`, in that order, as one (k, 1, S, S) uint8 tensor read in this process."""
        batch = torch.empty((len(positions), 1, self.image_size, self.image_size), dtype=torch.uint8)
        for row, position in enumerate(positions):
            batch[row, 0] = torch.from_numpy(self._read(position))
        return batch

    def _read(self, position: int) -> np.ndarray:
        entry, cache = self.entries[position], self.source.cache
        if entry is not None and cache is not None:
            pixels = cache.load(entry, self.image_size)
            if pixels is not None:
                return pixels
        return self.source.read(self.records[position], self.image_size)

    def __getitem__(self, index: object) -> torch.Tensor:
        if isinstance(index, tuple):  # images[i, 0], images[:, 0]: read the rows, then index the rest as a tensor
            rows = self[index[0]]
            return rows[index[1:]] if rows.ndim == 3 else rows[(slice(None), *index[1:])]
        if isinstance(index, int | np.integer) or (isinstance(index, torch.Tensor) and index.ndim == 0):
            position = int(index)
            if not -len(self) <= position < len(self):
                raise IndexError(f"index {position} out of range for {len(self)} images")
            return self.read_batch([position % len(self)])[0]
        return self.read_batch(_index_list(index, len(self)))

    def subset(self, index: object) -> "StreamedImages":
        """The images at `index` as another streamed set (no pixels read)."""
        positions = _index_list(index, len(self))
        return StreamedImages(self.source, [self.records[i] for i in positions], self.image_size, self.workers,
                              [self.entries[i] for i in positions])

    def batches(self, index_batches: Iterable[Sequence[int] | torch.Tensor]) -> Iterator[torch.Tensor]:
        """One uint8 tensor per index batch, in the order given, read ahead by worker processes (in this process
        when workers is 0, or for a single batch or fewer than PARALLEL_MIN images, where starting workers would
        cost more than it saves)."""
        batches = [[int(i) for i in batch] for batch in index_batches]
        workers = self.workers if len(batches) > 1 and sum(map(len, batches)) >= PARALLEL_MIN else 0
        loader = DataLoader(_BatchReader(self), batch_size=None, sampler=batches, num_workers=workers,
                            collate_fn=_identity, prefetch_factor=PREFETCH if workers else None,
                            generator=torch.Generator())  # its own: seeding workers must not draw from the
        # global generator, or augmentation (and the run) would differ from the in-memory path
        for result in loader:
            if isinstance(result, _Failure):
                raise result.error()
            yield result


ImageBatchSource = torch.Tensor | StreamedImages


def take(images: ImageBatchSource, index: object) -> ImageBatchSource:
    """images[index] without reading pixels when streamed (a subset that is still streamed, e.g. one rank's shard
    of the validation set); a tensor is indexed as usual."""
    return images.subset(index) if isinstance(images, StreamedImages) else images[index]  # type: ignore[index]


class FilmRows:
    """A set's films as (S, S) uint8 rows read only where indexed: what a figure or the guard's probes pick a few
    films from, without the whole set becoming one array (images[:, 0].numpy() read every streamed film)."""

    def __init__(self, images: ImageBatchSource) -> None:
        self.images = images
        self.shape = (len(images), *images.shape[-2:])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: object) -> np.ndarray:
        if isinstance(index, int | np.integer):
            return self.images[int(index)][0].numpy()
        positions = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return self.images[positions][:, 0].numpy()


def iter_chunks(images: ImageBatchSource, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive batches of `images` as uint8 tensors: slices of a tensor, worker-read batches of a streamed
    set. The one loop predict_with, image_statistics and the guard use, so each works in bounded memory."""
    if isinstance(images, StreamedImages):
        yield from images.batches(range(start, min(start + batch_size, len(images)))
                                  for start in range(0, len(images), batch_size))
        return
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


@dataclass(frozen=True)
class Cached:
    """A record the cache build read: `entry` is the cache file that holds its pixels (None: the source has no
    cache, or the cache could not be written, so a streamed read decodes the original again)."""

    entry: str | None


class _CacheBuilder(Dataset):
    """One item per chunk of records: decode each through the source (writing the cache); its entry or failure."""

    def __init__(self, source: DataSource, records: Sequence[Record], size: int) -> None:
        self.source, self.records, self.size = source, records, size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, positions: Sequence[int]) -> list[Cached | _Failure]:
        results: list[Cached | _Failure] = []
        for position in positions:
            try:
                _, entry = self.source.read_cached(self.records[position], self.size)
                results.append(Cached(None if entry is None else str(entry)))
            except ImageDecodeError as error:
                results.append(_Failure.of(error))
        return results


def build_cache(source: DataSource, records: Sequence[Record], size: int, *, workers: int | None = None,
                console: Console | None = None, description: str = "building cache") -> list[Cached | ImageDecodeError]:
    """Decode every record once through `source` (so into its cache, when it has one) in parallel worker
    processes; per record, where its pixels are cached, or the error that made it unreadable. Afterwards the
    cache is brought under its size limit (once per build, not per write)."""
    workers = default_workers() if workers is None else workers
    chunks = [list(range(start, min(start + BUILD_CHUNK, len(records))))
              for start in range(0, len(records), BUILD_CHUNK)]
    workers = workers if len(records) >= PARALLEL_MIN else 0
    loader = DataLoader(_CacheBuilder(source, records, size), batch_size=None, sampler=chunks, num_workers=workers,
                        collate_fn=_identity, prefetch_factor=PREFETCH if workers else None,
                        generator=torch.Generator())
    results: list[Cached | ImageDecodeError] = []
    with Progress(console=console or Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=len(records))
        for chunk in loader:
            results.extend(item.error() if isinstance(item, _Failure) else item for item in chunk)
            progress.advance(task, len(chunk))
    if source.cache is not None:
        source.cache.prune()
    return results
