"""Turn a config's data into decoded train and validation sets, split by patient."""

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from pneumoscan import CLASS_NAMES
from pneumoscan.atomic import write_text
from pneumoscan.config import TrainConfig
from pneumoscan.data.cache import ImageCache
from pneumoscan.data.loading import ImageSet, load_images
from pneumoscan.data.patients import carve_validation, patient_subset
from pneumoscan.data.records import DataSummary
from pneumoscan.data.registry import open_source
from pneumoscan.errors import LayoutError, PneumoscanError

# The settings that decide which images a run sees: runs that agree on them can share one PreparedData.
DATA_KEYS = ("data", "image_size", "val_fraction", "val_source", "train_fraction", "split_seed", "hold_out_series",
             "strict", "cache")


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
    held = None if not held_records else load_images(source, held_records, config.image_size, strict=config.strict,
                                                         console=console, description="decoding held-out series")
    train = load_images(source, train_records, config.image_size, strict=config.strict,
                        console=console, description="decoding train")
    val = load_images(source, val_records, config.image_size, strict=config.strict,
                      console=console, description="decoding validation")
    summary = DataSummary(source=source.name, split=split_name, validation=validation,
                          train=train.counts(), val=val.counts(), held_out=None if held is None else held.counts())
    return PreparedData(train=train, val=val, summary=summary, held_out=held)
