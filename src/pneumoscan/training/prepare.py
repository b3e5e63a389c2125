"""Turn a `--data` argument into decoded train and validation sets, split by patient."""

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from pneumoscan import CLASS_NAMES
from pneumoscan.atomic import write_text
from pneumoscan.data.cache import ImageCache
from pneumoscan.data.loading import ImageSet, load_images
from pneumoscan.data.patients import carve_validation
from pneumoscan.data.registry import open_source
from pneumoscan.errors import LayoutError
from pneumoscan.training.config import TrainConfig


@dataclass
class PreparedData:
    train: ImageSet
    val: ImageSet
    summary: dict[str, Any]

    def write_split_csv(self, path: Path) -> None:
        """The exact split (file, patient, label, split), so a run can be audited for leakage."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["file", "patient", "label", "split"])
        for split_name, image_set in (("train", self.train), ("val", self.val)):
            for record in image_set.records:
                writer.writerow([record.source, record.patient, CLASS_NAMES[record.label], split_name])
        write_text(path, buffer.getvalue())


def _describe(image_set: ImageSet) -> dict[str, Any]:
    return {
        "images": len(image_set),
        **{k.lower(): v for k, v in image_set.class_counts().items()},
        "patients": len({r.patient for r in image_set.records}),
    }


def prepare_data(data: str, config: TrainConfig, console: Console) -> PreparedData:
    source = open_source(data, cache=ImageCache() if config.cache else None)
    split_name, records = source.split("train")
    if config.val_source == "official":
        if "val" not in source.splits:
            raise LayoutError(f"{source.name}: --val-source official needs a val/ folder")
        train_records, val_records = records, source.splits["val"]
    else:
        train_records, val_records = carve_validation(records, config.val_fraction, config.split_seed)
    train = load_images(source, train_records, config.image_size, strict=config.strict,
                        console=console, description="decoding train")
    val = load_images(source, val_records, config.image_size, strict=config.strict,
                      console=console, description="decoding validation")
    summary = {
        "source": source.name,
        "split": split_name,
        "validation": (
            "official val/ folder" if config.val_source == "official"
            else f"{config.val_fraction:.0%} carved from {split_name} by patient (seed {config.split_seed})"
        ),
        "train": _describe(train),
        "val": _describe(val),
    }
    return PreparedData(train=train, val=val, summary=summary)
