"""Turn a config's data into decoded train and validation sets, split by patient.

The sets are held in memory as one uint8 tensor each, or, for data larger than memory (TrainConfig.stream),
streamed: cached once in parallel, then read a batch at a time (pneumoscan.data.streaming)."""

import csv
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from pneumoscan import CLASS_NAMES
from pneumoscan.atomic import write_text
from pneumoscan.config import TrainConfig
from pneumoscan.data.cache import MAX_GB_VARIABLE, ImageCache, default_max_bytes
from pneumoscan.data.loading import ImageSet, load_images, load_streamed
from pneumoscan.data.patients import carve_validation, patient_subset
from pneumoscan.data.records import DataSummary, Record, data_fingerprint
from pneumoscan.data.registry import open_source
from pneumoscan.data.sources import DataSource
from pneumoscan.errors import LayoutError, PneumoscanError

# The settings that decide which images a run sees: runs that agree on them can share one PreparedData.
DATA_KEYS = ("data", "image_size", "val_fraction", "val_source", "train_fraction", "split_seed", "hold_out_series",
             "strict", "cache")
STREAM_MEMORY_SHARE = 0.25  # stream auto: the share of memory the decoded images may take before they are streamed
FALLBACK_MEMORY = 8 * 10**9  # assumed when the machine's memory cannot be read


@dataclass
class PreparedData:
    train: ImageSet
    val: ImageSet
    summary: DataSummary
    held_out: ImageSet | None = None  # normals of the held-out acquisition series (the site-shift proxy)

    def split_csv(self) -> str:
        """The exact split with each image's metadata (file, patient, label, subgroup, series, split), so a run
        can be audited for leakage and its validation split re-scored."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["file", "patient", "label", "subgroup", "series", "split"])
        sets = [("train", self.train), ("val", self.val)] + ([("held_out", self.held_out)] if self.held_out else [])
        for split_name, image_set in sets:
            for r in image_set.records:
                writer.writerow([r.source, r.patient, CLASS_NAMES[r.label], r.subgroup or "", r.series or "",
                                 split_name])
        return buffer.getvalue()

    def write_split_csv(self, path: Path) -> None:
        write_text(path, self.split_csv())


def memory_limit() -> int | None:
    """Bytes of memory this process may use: the machine's, or a container's (cgroup) limit where lower."""
    limits = []
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        pass
    for cgroup in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(cgroup).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    return min(limits) if limits else None


def decide_streaming(setting: str, images: int, image_size: int) -> tuple[bool, str]:
    """(stream?, why) for TrainConfig.stream: on, off, or auto = stream when the decoded uint8 images would take
    more than STREAM_MEMORY_SHARE of memory (the rest is for the model, its activations and the batches)."""
    decoded = images * image_size * image_size
    if setting in ("on", "off"):
        return setting == "on", f"stream {setting}"
    if setting != "auto":
        raise PneumoscanError(f"stream '{setting}': choose from auto, on, off")
    memory = memory_limit() or FALLBACK_MEMORY
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))  # torchrun: each holds its own copy
    budget = STREAM_MEMORY_SHARE * memory / processes
    if decoded > budget:
        shared = f", shared by {processes} processes" if processes > 1 else ""
        return True, (f"stream auto: {images} decoded images would take {decoded / 1e9:.1f} GB, over "
                      f"{STREAM_MEMORY_SHARE:.0%} of {memory / 1e9:.1f} GB memory{shared}")
    return False, "stream auto: fits in memory"


def image_loader(source: DataSource, config: TrainConfig, images: int,
                 console: Console) -> Callable[[Sequence[Record], str], ImageSet]:
    """How this run reads a list of records: decoded once into memory, or (TrainConfig.stream) cached and streamed."""
    stream, why = decide_streaming(config.stream, images, config.image_size)
    if stream:
        console.print(f"streaming images from the decoded-image cache ({why})", highlight=False, soft_wrap=True)
        needed, limit = images * config.image_size**2, default_max_bytes()
        if needed > 0.9 * limit:  # eviction prunes to 90 %: entries would be decoded again every epoch
            console.print(f"[yellow]warning:[/] the decoded images take {needed / 1e9:.1f} GB, more than the cache "
                          f"keeps ({limit / 1e9:.1f} GB, ${MAX_GB_VARIABLE}): evicted images are decoded again each "
                          f"epoch; raise ${MAX_GB_VARIABLE} to stream from the cache alone", highlight=False,
                          soft_wrap=True)

    def load(records: Sequence[Record], name: str) -> ImageSet:
        if stream:
            return load_streamed(source, records, config.image_size, strict=config.strict, console=console,
                                 description=f"caching {name}")
        return load_images(source, records, config.image_size, strict=config.strict, console=console,
                           description=f"decoding {name}")

    return load


def prepare_data(config: TrainConfig, console: Console) -> PreparedData:
    if not config.data:
        raise PneumoscanError("no training data: give --data or set `data` in the recipe")
    source = open_source(config.data, cache=ImageCache() if config.cache else None)
    split_name, records = source.split("train")
    if config.val_source == "official":
        if "val" not in source.splits:
            raise LayoutError(f"{source.name}: val_source official needs a val/ folder")
        train_records, val_records = records, source.splits["val"]
        validation = "official val/ folder"
    else:
        train_records, val_records = carve_validation(records, config.val_fraction, config.split_seed)
        validation = f"{config.val_fraction:.0%} carved from {split_name} by patient (seed {config.split_seed})"
    if config.train_fraction < 1.0:
        train_records = patient_subset(train_records, config.train_fraction, config.split_seed)
        validation += f"; training on {config.train_fraction:.0%} of the remaining patients"
    held_records = []
    if config.hold_out_series.lower() != "none":
        series = config.hold_out_series.upper()
        held_records = [r for r in train_records + val_records if r.label == 0 and (r.series or "").upper() == series]
        if not held_records:
            found = sorted({r.series for r in records if r.label == 0 and r.series})
            raise PneumoscanError(f"hold_out_series {config.hold_out_series}: no normal film of that series in "
                                  f"{source.name} (series of its normals: {', '.join(found) or 'none'})")
        held_ids = {id(r) for r in held_records}
        train_records = [r for r in train_records if id(r) not in held_ids]
        val_records = [r for r in val_records if id(r) not in held_ids]
        validation += f"; normals of series {series} held out of training and validation"
    load = image_loader(source, config, len(train_records) + len(val_records) + len(held_records), console)
    held = None if not held_records else load(held_records, "held-out series")
    train = load(train_records, "train")
    val = load(val_records, "validation")
    sets = [("train", train), ("val", val)] + ([("held_out", held)] if held is not None else [])
    summary = DataSummary(source=source.name, split=split_name, validation=validation,
                          train=train.counts(), val=val.counts(), held_out=None if held is None else held.counts(),
                          skipped={name: image_set.skipped_files() for name, image_set in sets},
                          data_sha256=data_fingerprint((name, image_set.records) for name, image_set in sets))
    return PreparedData(train=train, val=val, summary=summary, held_out=held)
