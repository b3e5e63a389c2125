"""Everything that decides a training run, written to the run folder so it can be repeated."""

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from pneumoscan.data.augment import AugmentConfig
from pneumoscan.errors import PneumoscanError
from pneumoscan.evaluation.thresholds import ThresholdPolicy
from pneumoscan.training.imbalance import check_mode

DEFAULT_LR = {"adam": 1e-3, "sgd": 1e-2}


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "baseline"
    weights: str | None = None  # a local file of pretrained backbone weights (never downloaded)
    optimizer: str = "adam"
    lr: float | None = None  # None: the optimizer's default from DEFAULT_LR
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 30
    batch_size: int = 32
    patience: int = 5  # early stopping, epochs without a better validation loss
    lr_patience: int = 2  # ReduceLROnPlateau
    lr_factor: float = 0.5
    image_size: int = 150
    val_fraction: float = 0.15
    val_source: str = "carve"  # "carve": patient-grouped from train; "official": the val/ folder
    seed: int = 0  # model init, shuffling and augmentation
    split_seed: int = 0  # the validation carve; kept apart so seeds of a study share one split
    precision: str = "auto"  # "auto" | "bf16" | "fp32"
    threshold: str = "fixed:0.5"  # decision-threshold policy, applied to the validation split
    imbalance: str = "none"  # "none" | "weighted" | "sampler" | "focal" (pneumoscan.training.imbalance)
    strict: bool = False
    cache: bool = True  # decoded images on disk, keyed by file content (pneumoscan.data.cache)
    compile: bool = False  # torch.compile the training step: ~40 s to compile per batch shape, then faster steps
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.optimizer not in DEFAULT_LR:
            raise PneumoscanError(f"unknown optimizer '{self.optimizer}'; choose from {', '.join(DEFAULT_LR)}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise PneumoscanError(f"precision must be auto, bf16 or fp32, got '{self.precision}'")
        if self.val_source not in ("carve", "official"):
            raise PneumoscanError(f"val_source must be carve or official, got '{self.val_source}'")
        ThresholdPolicy.parse(self.threshold)
        check_mode(self.imbalance)
        if self.epochs < 1 or self.batch_size < 1:
            raise PneumoscanError("epochs and batch size must be at least 1")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    @property
    def use_bf16(self) -> bool:
        """bf16 autocast where the CPU has native bf16 (AVX-512 BF16 / AMX): ~2x faster training here."""
        if self.precision == "auto":
            return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
        return self.precision == "bf16"

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["learning_rate"] = self.learning_rate
        payload["bf16"] = self.use_bf16
        return payload
