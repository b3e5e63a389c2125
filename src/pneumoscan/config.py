"""Every default of pneumoscan in one place: what decides a training run, and the evaluation options.

The CLI builds its flags from these fields, recipes in `configs/*.toml` set any training field,
and the run folder and bundle store the fully resolved config (preset names and derived values
included), so a run can be repeated from what it wrote. This module sits below training and
evaluation (it imports neither), so a bundle can carry a typed config.
"""

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar

from pneumoscan.data.augment_presets import AUGMENT_PRESETS, AugmentConfig, augment_preset
from pneumoscan.data.modes import FOV_MODES, INTENSITY_MODES
from pneumoscan.data.preprocess import Preprocess
from pneumoscan.data.synthetic import AGES, SyntheticSpec
from pneumoscan.errors import PneumoscanError
from pneumoscan.metrics.thresholds import ThresholdPolicy
from pneumoscan.settings import option

if TYPE_CHECKING:  # torch is imported only where a device or dtype is made: reading settings never needs it
    import torch

DEFAULT_LR = {"adam": 1e-3, "sgd": 1e-2}
IMBALANCE_MODES = ("none", "weighted", "sampler", "focal")  # see pneumoscan.training.imbalance
DEVICES = ("auto", "cpu", "cuda")
MAX_SEED = 2**32 - 1  # numpy, torch and Python's random all take 0 .. 2**32 - 1; a negative seed crashes numpy
DEFAULT_IMAGE_SIZE = 150  # model input side when none is given: TrainConfig and every model factory
MIN_IMAGE_SIZE = 32  # the registered networks downsample 8x (baseline) to 32x (compact, resnet18, densenet121):
# below 32 px their deepest feature map has no pixel left; applied to recipes and to bundles alike
MAX_IMAGE_SIZE = 2048  # model input side: beyond any chest X-ray model, and 4 M pixels per decoded image
MAX_BOOTSTRAP = 100_000  # resamples: past this the confidence interval moves by less than its rounding


def check_seed(name: str, value: int) -> None:
    """A seed every random generator accepts, refused in one line before any work starts."""
    if not 0 <= value <= MAX_SEED:
        raise PneumoscanError(f"{name} must be between 0 and {MAX_SEED}, got {value}")


def resolve_device(name: str) -> "torch.device":
    """auto -> cuda when PyTorch sees a GPU, else cpu; asking for cuda without one is a clear error."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise PneumoscanError("device cuda: PyTorch sees no GPU here (use --device cpu or auto)")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def bf16_supported(device: "torch.device") -> bool:
    """Native bf16: AVX-512 BF16 / AMX on a CPU, Ampere or later on a GPU."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


@dataclass(frozen=True)
class TrainConfig:
    # Old setting names and their new ones. `threshold` held a policy name ("balanced", "youden") while a bundle's
    # `threshold` is the number it chose, so the setting is now `threshold_policy`. Recipes, `--set`, `--vary` and
    # the `--threshold` flag still take the old name with a warning; stored configs (bundles, checkpoints) silently.
    RENAMED: ClassVar[dict[str, str]] = {"threshold": "threshold_policy"}

    data: str = option("", "training data: a folder in the Kaggle layout, a labels CSV (path,label[,patient,group,"
                           "split]; also a run's split.csv), or 'synthetic[:key=value,...]'")
    arch: str = option("baseline", "architecture (see `pneumoscan models`)")
    weights: str | None = option(None, "local file of pretrained weights (safetensors or PyTorch state dict; "
                                       "torchvision/timm/MONAI names, or a pneumoscan bundle's model.safetensors); "
                                       "never downloaded")
    optimizer: str = option("adam", "optimizer", choices=tuple(DEFAULT_LR))
    lr: float | None = option(None, "learning rate (none: Adam 1e-3, SGD 1e-2)")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(0.0, "L2 weight decay")
    epochs: int = option(30, "maximum epochs (early stopping may end sooner)")
    batch_size: int = option(32, "images per optimizer step")
    patience: int = option(5, "early stopping: epochs without a better validation loss")
    lr_patience: int = option(2, "ReduceLROnPlateau patience (epochs)")
    lr_factor: float = option(0.5, "ReduceLROnPlateau factor")
    image_size: int = option(DEFAULT_IMAGE_SIZE, "side of the square model input, in pixels")
    val_fraction: float = option(0.15, "share of patients carved from train for validation")
    val_source: str = option("carve", "carve validation from train by patient, or use the official val/ folder",
                             choices=("carve", "official"))
    train_fraction: float = option(1.0, "share of the remaining training patients to train on (a data-budget "
                                        "study); drawn by patient with split_seed")
    seed: int = option(0, "seed of model init, shuffling and augmentation")
    split_seed: int = option(0, "seed of the validation carve, kept apart so every seed of a study shares one split")
    precision: str = option("auto", "autocast: bf16 where the CPU or GPU has it natively (auto; fp16 with loss "
                                    "scaling on a GPU without bf16), or force one (fp16 needs a GPU); bf16 kernels "
                                    "differ between CPU models, fp32 gives the same result everywhere",
                            choices=("auto", "bf16", "fp16", "fp32"))
    device: str = option("auto", "where training runs: cuda when a GPU is present (auto), or force cpu/cuda; the "
                                 "bundle is always saved for CPU", choices=DEVICES)
    augment: str = option("standard", "augmentation preset: standard (small rotation/shift/zoom, brightness/"
                                      "contrast); shift (adds exposure, noise, blur, wider zoom, for robustness "
                                      "across sites); none", choices=tuple(AUGMENT_PRESETS))
    hflip: bool = option(False, "add horizontal flips (off by default: chest anatomy is not left-right symmetric)")
    erasing: float = option(0.0, "random erasing: share of training images with one random rectangle blanked")
    mixup: float = option(0.0, "mixup alpha: each batch mixed with a shuffled copy by a Beta(alpha, alpha) weight "
                               "(0: off)")
    label_smoothing: float = option(0.0, "label smoothing: targets become eps/2 and 1 - eps/2")
    intensity: str = option("none", "per-image intensity step stored in the bundle and applied by every tool: "
                                    "none, equalize (histogram equalisation) or clahe", choices=INTENSITY_MODES)
    border_crop: float = option(0.0, "share of each side cut away (burnt-in markers, collimation edges), stored in "
                                     "the bundle and applied by every tool")
    fov: str = option("none", "canonical field of view, stored in the bundle and applied by every tool: none; trim "
                              "(cut padding: flat or repeated border rows and columns); lungs (trim, then crop to "
                              "the lung fields found by a classical method), so the film's framing cannot carry the "
                              "label", choices=FOV_MODES)
    hold_out_series: str = option("none", "site-shift proxy: keep the normal films of this acquisition series (e.g. "
                                      "NORMAL2 or IM in the Kermany data) out of training and validation and report "
                                      "the model's specificity on them; none keeps every film")
    threshold_policy: str = option("fixed:0.5", "how the decision threshold is chosen (the bundle stores the "
                                                "number): fixed:P; balanced (the training prevalence); or chosen on "
                                                "the validation split: youden, or sensitivity:S")
    imbalance: str = option("none", "class-imbalance handling: class-weighted loss, balanced sampler or focal loss",
                            choices=IMBALANCE_MODES)
    measure_train_gap: bool = option(False, "each epoch also score a fixed sample of training images without "
                                            "augmentation, so the train-validation gap is measured on equal terms")
    strict: bool = option(False, "stop at an unreadable image instead of skipping it")
    cache: bool = option(True, "keep decoded images in the disk cache ($PNEUMOSCAN_CACHE_DIR or "
                               "~/.cache/pneumoscan/images)")
    stream: str = option("auto", "larger-than-memory data: on reads each batch from the decoded-image cache with "
                                 "worker processes instead of holding every decoded image in memory (same batches, "
                                 "same result); auto streams when the decoded images would exceed a quarter of this "
                                 "machine's memory", choices=("auto", "on", "off"))
    compile: bool = option(False, "torch.compile the training step (needs a C++ compiler; ~40 s per batch shape, "
                                  "then ~7 % faster steps: pays off only on long runs)")

    def __post_init__(self) -> None:
        ThresholdPolicy.parse(self.threshold_policy)
        for name in ("optimizer", "precision", "device", "val_source", "augment", "imbalance", "intensity", "fov"):
            choices = next(f.metadata["choices"] for f in fields(self) if f.name == name)
            if getattr(self, name) not in choices:
                raise PneumoscanError(f"{name} '{getattr(self, name)}': choose from {', '.join(choices)}")
        if self.epochs < 1 or self.batch_size < 2:
            raise PneumoscanError("epochs must be at least 1 and batch_size at least 2")
        if not 0.0 < self.train_fraction <= 1.0:
            raise PneumoscanError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.image_size < MIN_IMAGE_SIZE:
            raise PneumoscanError(f"image_size must be at least {MIN_IMAGE_SIZE} pixels, got {self.image_size}")
        if self.image_size > MAX_IMAGE_SIZE:
            raise PneumoscanError(f"image_size must be at most {MAX_IMAGE_SIZE} pixels, got {self.image_size}")
        check_seed("seed", self.seed)
        check_seed("split_seed", self.split_seed)
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise PneumoscanError(f"lr must be a positive number, got {self.lr}")
        if not 0.0 < self.lr_factor < 1.0:
            raise PneumoscanError(f"lr_factor must be in (0, 1), got {self.lr_factor}")
        if not (0.0 <= self.momentum < 1.0 and 0.0 <= self.weight_decay < 1.0):
            raise PneumoscanError(f"momentum and weight_decay must be in [0, 1), got {self.momentum} and "
                                  f"{self.weight_decay}")
        if self.patience < 1 or self.lr_patience < 0:
            raise PneumoscanError(f"patience must be at least 1 and lr_patience at least 0, got {self.patience} "
                                  f"and {self.lr_patience}")
        if not (0.0 <= self.erasing <= 1.0 and 0.0 <= self.label_smoothing < 0.5 and 0.0 <= self.border_crop < 0.25
                and 0.0 <= self.mixup < math.inf):
            raise PneumoscanError("erasing must be in [0, 1], label_smoothing in [0, 0.5), border_crop in [0, 0.25) "
                                  "and mixup a finite number at least 0")
        if not 0.0 < self.val_fraction < 1.0:
            raise PneumoscanError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    @property
    def torch_device(self) -> "torch.device":
        return resolve_device(self.device)

    @property
    def autocast_dtype(self) -> "torch.dtype | None":
        """The autocast type of the training step: bf16 where the device has it natively (on this CPU, AVX-512 BF16:
        ~2x faster training), fp16 on a GPU without bf16 (the loop scales the loss), None for float32."""
        import torch

        if self.precision == "auto":
            if bf16_supported(self.torch_device):
                return torch.bfloat16
            return torch.float16 if self.torch_device.type == "cuda" else None
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    @property
    def use_bf16(self) -> bool:
        import torch

        return self.autocast_dtype == torch.bfloat16

    @property
    def augmentation(self) -> AugmentConfig:
        return replace(augment_preset(self.augment, hflip=self.hflip), erasing=self.erasing)

    @property
    def preprocess(self) -> Preprocess:
        """The preprocessing the model is trained with, and that its bundle makes every tool apply."""
        return Preprocess(image_size=self.image_size, intensity=self.intensity, border_crop=self.border_crop,
                          fov=self.fov)

    def to_dict(self) -> dict[str, Any]:
        """The settings plus what they resolve to on this machine (learning rate, bf16, augmentation values)."""
        return {**asdict(self), "resolved": {"learning_rate": self.learning_rate, "bf16": self.use_bf16,
                                             "autocast": str(self.autocast_dtype).removeprefix("torch.")
                                             if self.autocast_dtype else "none",
                                             "device": self.torch_device.type,
                                             "augmentation": asdict(self.augmentation)}}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "TrainConfig":
        """Read a stored config back; configs written before presets were named, or under a setting's old name
        (`threshold`, now `threshold_policy`), are migrated without a warning: the user cannot edit a bundle."""
        known = {f.name for f in fields(cls)}
        payload = {cls.RENAMED.get(k, k): v for k, v in payload.items()
                   if not (k in cls.RENAMED and cls.RENAMED[k] in payload)}
        values = {k: v for k, v in payload.items() if k in known}
        if isinstance(values.get("augment"), dict):  # format 1 stored the preset's values, not its name
            stored = dict(values["augment"])
            values["hflip"] = bool(stored.pop("hflip", False))
            values["augment"] = next((name for name, preset in AUGMENT_PRESETS.items()
                                      if asdict(preset) | {"hflip": False} == asdict(preset) | stored | {"hflip": False}
                                      and set(stored) <= set(asdict(preset))), "custom")
            if values["augment"] == "custom":
                raise PneumoscanError("stored augmentation matches no named preset; cannot read this config")
        return cls(**values)


def check_stream(mode: str) -> None:
    """`stream` of the commands that read a labelled split: on, off or auto (pneumoscan.data.loading.streams)."""
    if mode not in ("auto", "on", "off"):
        raise PneumoscanError(f"stream must be auto, on or off, got {mode!r}")


@dataclass(frozen=True)
class EvalConfig:
    """The options of `pneumoscan evaluate` (and the evaluation step of a demo or study)."""

    split: str = option("test", "split of a dataset root to score")
    weeks: int = option(4, "weeks of the temporal simulation")
    tta: bool = option(False, "test-time augmentation: average over the image and four mild zoom/shift views")
    adapt_prior: bool = option(False, "also report label-shift-adapted results (EM on the unlabeled scores; "
                                      "uses no labels)")
    groups: str | None = option(None, "subgroups to report (CSV with columns file,group); default: the subgroup "
                                      "each record carries (pneumonia subtype from Kermany file names)")
    framing: bool = option(True, "score the framing-swap proxy on labelled films: normals zoomed in and given a "
                                 "large marker, pneumonias zoomed out onto black (four passes over the normals, two "
                                 "over the pneumonias; one more over all films with --tta)")
    audit: bool = option(True, "run the shortcut audit (pneumoscan audit) on these films too: its verdict goes into "
                               "metrics.json, the report and the model card (needs --framing)")
    bootstrap: int = option(2000, "bootstrap resamples for the 95 % confidence intervals")
    seed: int = option(0, "seed of the bootstrap, the arrival order of weeks and the figures' picks")
    strict: bool = option(False, "stop at an unreadable image instead of skipping it")
    cache: bool = option(True, "read images through the decoded-image cache")
    stream: str = option("auto", "larger-than-memory data: on reads the films a batch at a time from the "
                                 "decoded-image cache at every pass instead of holding them in memory (same "
                                 "result); auto streams once the decoded films would pass 32 MB",
                         choices=("auto", "on", "off"))

    def __post_init__(self) -> None:
        check_stream(self.stream)
        if self.weeks < 1:
            raise PneumoscanError(f"weeks must be at least 1, got {self.weeks}")
        if self.bootstrap < 100:
            raise PneumoscanError(f"bootstrap needs at least 100 resamples, got {self.bootstrap}")
        if self.bootstrap > MAX_BOOTSTRAP:
            raise PneumoscanError(f"bootstrap takes at most {MAX_BOOTSTRAP:,} resamples, got {self.bootstrap}")
        check_seed("seed", self.seed)


@dataclass(frozen=True)
class AuditConfig:
    """The options of `pneumoscan audit` (a shortcut audit of a model on labelled films)."""

    split: str = option("test", "split of a dataset root to audit")
    attention_films: int = option(100, "pneumonia films whose Grad-CAM is measured against the lung fields (a "
                                       "backward pass each)")
    bootstrap: int = option(1000, "bootstrap resamples for the 95 % confidence intervals")
    seed: int = option(0, "seed of the bootstrap, the swaps' markers and the films picked")
    strict: bool = option(False, "stop at an unreadable image instead of skipping it")
    cache: bool = option(True, "read images through the decoded-image cache")
    stream: str = option("auto", "larger-than-memory data: as `evaluate --stream`", choices=("auto", "on", "off"))

    def __post_init__(self) -> None:
        check_stream(self.stream)
        if self.attention_films < 0:
            raise PneumoscanError(f"attention_films must be at least 0, got {self.attention_films}")
        if not 100 <= self.bootstrap <= MAX_BOOTSTRAP:
            raise PneumoscanError(f"bootstrap takes 100 to {MAX_BOOTSTRAP:,} resamples, got {self.bootstrap}")
        check_seed("seed", self.seed)


@dataclass(frozen=True)
class PretrainConfig:
    """`pneumoscan pretrain`: self-supervised (SimCLR) pre-training of a backbone on training images, no labels.

    The images are the training side of the same patient-grouped carve (and the same held-out series) a
    later `train --weights` run uses, so pre-training never sees a validation or held-out film.
    """

    data: str = option("", "training data (as for train); labels are never read")
    arch: str = option("compact", "architecture whose backbone is pre-trained")
    image_size: int = option(128, "side of the square input, in pixels (128, below train's 150: each image is "
                                  "seen as two views per step; a globally pooled backbone fine-tunes at any size)")
    intensity: str = option("none", "intensity step applied as in training (none, equalize, clahe)",
                            choices=INTENSITY_MODES)
    border_crop: float = option(0.0, "share of each side cut away, as in training")
    epochs: int = option(15, "passes over the training images")
    batch_size: int = option(128, "images per step (each seen as two views; larger batches give more negatives)")
    lr: float = option(1e-3, "Adam learning rate (cosine decay to zero)")
    temperature: float = option(0.2, "NT-Xent temperature")
    projection_dim: int = option(64, "output size of the projection head (discarded after pre-training)")
    val_fraction: float = option(0.15, "share of patients carved for validation and left out of pre-training")
    split_seed: int = option(0, "seed of that carve (use the fine-tuning run's)")
    hold_out_series: str = option("none", "acquisition series of normals also left out (use the fine-tuning run's)")
    seed: int = option(0, "seed of initialisation, order and augmentation")
    precision: str = option("auto", "bf16 autocast where supported (auto), or force one",
                            choices=("auto", "bf16", "fp32"))
    device: str = option("auto", "where pre-training runs: cuda when a GPU is present (auto), or cpu/cuda",
                         choices=DEVICES)
    strict: bool = option(False, "stop at an unreadable image instead of skipping it")
    cache: bool = option(True, "read images through the decoded-image cache")

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 4 or self.projection_dim < 8:
            raise PneumoscanError("epochs must be at least 1, batch_size at least 4 and projection_dim at least 8")
        if not (math.isfinite(self.lr) and self.lr > 0 and 0.0 < self.temperature <= 10.0):
            raise PneumoscanError("lr must be positive and temperature in (0, 10]")
        self.data_config()

    def data_config(self) -> TrainConfig:
        """The TrainConfig whose training side is pre-trained on (and whose preprocessing is used)."""
        return TrainConfig(data=self.data, arch=self.arch, image_size=self.image_size, intensity=self.intensity,
                           border_crop=self.border_crop, val_fraction=self.val_fraction, split_seed=self.split_seed,
                           hold_out_series=self.hold_out_series, seed=self.seed, precision=self.precision,
                           device=self.device, strict=self.strict, cache=self.cache)


ADAPT_METHODS = ("batchnorm", "tent", "self-training")  # see pneumoscan.training.site_adaptation


@dataclass(frozen=True)
class AdaptConfig:
    """The options of `pneumoscan adapt` (label-free adaptation to a site's own images)."""

    method: str = option("batchnorm", "batchnorm: re-estimate the BatchNorm statistics on the site's images (AdaBN); "
                                      "tent: then entropy minimisation over the BatchNorm scales and shifts (needs "
                                      "--tent-steps); self-training: then a few passes on the site's most confident "
                                      "pseudo-labels in the proportions of its EM-estimated prevalence, with a "
                                      "diversity term and framing augmentation (SHOT-style), then AdaBN again",
                         choices=ADAPT_METHODS)
    tent_steps: int = option(0, "passes of entropy minimisation (TENT) over the BatchNorm scales and shifts after "
                                "re-estimating their statistics (0: statistics only); more than 0 with method "
                                "batchnorm selects tent, as before methods were named")
    tent_lr: float = option(1e-3, "TENT learning rate")
    self_training_epochs: int = option(5, "self-training: passes over the site's images")
    self_training_lr: float = option(5e-3, "self-training: Adam learning rate of the BatchNorm scales and shifts")
    confident_share: float = option(0.5, "self-training: share of the site's films pseudo-labelled each pass (the "
                                         "most confident of each class, in the estimated prevalence's proportions)")
    diversity_weight: float = option(1.0, "self-training: weight of the term pulling the mean prediction to the "
                                          "estimated site prevalence")
    self_training_augment: str = option("framing", "self-training: augmentation preset applied to the site's films "
                                                   "(framing keeps the model blind to zoom and padding)",
                                        choices=tuple(AUGMENT_PRESETS))
    max_flip_increase: float = option(0.02, "fall back to statistics only (AdaBN) when the adapted model's labels "
                                            "flip under the framing swaps more often than the unadapted model's, by "
                                            "more than this share of films")
    prior: bool = option(False, "also estimate the site's pneumonia prevalence (EM on the model's outputs, no "
                                "labels) and move the decision threshold to it")
    min_images: int = option(100, "refuse to adapt on fewer images: statistics from a handful of films are noise")
    max_ood_share: float = option(0.75, "refuse when the unadapted model's out-of-distribution guard flags more than "
                                       "this share of the site's images (films unlike the training films, e.g. "
                                       "adults for a paediatric model, must not be adapted to)")
    seed: int = option(0, "seed of TENT's and self-training's batch order and augmentation, and of the guard's "
                          "fit/threshold halves")
    strict: bool = option(False, "stop at an unreadable image instead of skipping it")
    stream: str = option("auto", "larger-than-memory site folders: as `evaluate --stream` (the films decoded once "
                                 "into the decoded-image cache, then read a batch at a time)",
                         choices=("auto", "on", "off"))

    def __post_init__(self) -> None:
        check_stream(self.stream)
        if self.method not in ADAPT_METHODS:
            raise PneumoscanError(f"method '{self.method}': choose from {', '.join(ADAPT_METHODS)}")
        if self.tent_steps < 0 or not (math.isfinite(self.tent_lr) and self.tent_lr > 0):
            raise PneumoscanError("tent_steps must be at least 0 and tent_lr a positive number")
        if self.method == "tent" and self.tent_steps == 0:
            raise PneumoscanError("method tent needs tent_steps of at least 1 (--tent-steps)")
        if self.method == "self-training" and self.tent_steps > 0:
            raise PneumoscanError("tent_steps applies to method tent, not self-training")
        if self.self_training_augment not in AUGMENT_PRESETS:
            raise PneumoscanError(f"self_training_augment '{self.self_training_augment}': choose from "
                                  f"{', '.join(AUGMENT_PRESETS)}")
        if self.self_training_epochs < 1 or not (math.isfinite(self.self_training_lr) and self.self_training_lr > 0):
            raise PneumoscanError("self_training_epochs must be at least 1 and self_training_lr a positive number")
        if not (0.0 < self.confident_share <= 1.0 and 0.0 <= self.diversity_weight < math.inf):
            raise PneumoscanError("confident_share must be in (0, 1] and diversity_weight a finite number at least 0")
        if not 0.0 <= self.max_flip_increase <= 1.0:
            raise PneumoscanError(f"max_flip_increase must be in [0, 1], got {self.max_flip_increase}")
        if self.min_images < 16:
            raise PneumoscanError(f"min_images must be at least 16, got {self.min_images}")
        if not 0.0 < self.max_ood_share <= 1.0:
            raise PneumoscanError(f"max_ood_share must be in (0, 1], got {self.max_ood_share}")
        check_seed("seed", self.seed)

    @property
    def resolved_method(self) -> str:
        """The method that runs: tent_steps above 0 with the default method is tent (the flag predates methods)."""
        return "tent" if self.method == "batchnorm" and self.tent_steps > 0 else self.method


@dataclass(frozen=True)
class DemoConfig:
    """`pneumoscan demo`: a synthetic dataset, an optimizer study on it, and an evaluation of every run.

    Sized to finish in about three minutes on 2 CPU cores, and in float32 so its numbers do not depend
    on which CPU runs it (bf16 kernels differ between CPU models).
    """

    n_per_class: int = option(300, "synthetic training images per class (the test split gets a quarter)")
    size: int = option(128, "side of the synthetic images written, in pixels")
    difficulty: float = option(0.5, "0 (obvious opacities) .. 1 (faint, small)")
    arch: str = option("compact", "architecture trained")
    image_size: int = option(96, "model input side, in pixels (96, below train's 150: the demo trains several "
                                 "runs on a CPU in minutes, and its synthetic images are only `size` px)")
    epochs: int = option(8, "maximum epochs per run")
    patience: int = option(4, "early-stopping patience")
    precision: str = option("fp32", "fp32 gives the same demo on every CPU", choices=("auto", "bf16", "fp32"))
    seeds: int = option(2, "seeds per optimizer")
    optimizers: str = option("adam,sgd", "optimizers compared, comma-separated")

    def __post_init__(self) -> None:
        unknown = [name for name in self.optimizer_names if name not in DEFAULT_LR]
        if unknown or not self.optimizer_names:
            raise PneumoscanError(f"optimizers '{self.optimizers}': give one or more of {', '.join(DEFAULT_LR)}, "
                                  "comma-separated")
        if self.seeds < 1 or self.n_per_class < 8 or not 32 <= self.size <= MAX_IMAGE_SIZE:
            raise PneumoscanError(f"the demo needs seeds >= 1, n_per_class >= 8 and size 32 to {MAX_IMAGE_SIZE}")
        if not 0.0 <= self.difficulty <= 1.0:
            raise PneumoscanError(f"difficulty must be in [0, 1], got {self.difficulty}")
        self.training("")  # the training settings are checked before any file is written

    @property
    def optimizer_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name.strip() for name in self.optimizers.split(",") if name.strip()))

    def training(self, data: str) -> TrainConfig:
        return TrainConfig(data=data, arch=self.arch, image_size=self.image_size, epochs=self.epochs,
                           patience=self.patience, precision=self.precision)


@dataclass(frozen=True)
class ServeConfig:
    """The options of `pneumoscan serve`: where it listens and how it holds under load."""

    host: str = option("127.0.0.1", "address to listen on (127.0.0.1: this machine only)")
    port: int = option(8000, "TCP port")
    max_upload_mb: float = option(20.0, "largest accepted file, in MB")
    max_wait_ms: float = option(5.0, "micro-batching: how long a request waits for others to share its batch")
    max_queue: int = option(256, "images waiting before answering 503 (the memory bound)")
    latency_budget_ms: float = option(150.0, "admission: answer 503 (with Retry-After) when the work in flight "
                                             "would take the scorer longer than this to drain")
    decode_threads: int = option(2, "uploads decoded at once, in threads off the event loop")
    shutdown_timeout_s: float = option(5.0, "on SIGTERM, how long accepted requests may finish before the "
                                            "remaining connections (slow uploads) are dropped")
    api_keys: str | None = option(None, "file of API keys ('<id> <sha-256>' per line; `pneumoscan keys new` "
                                        "makes them), re-read when it changes; with keys (or PNEUMOSCAN_API_KEYS), "
                                        "every endpoint but / and /health needs 'Authorization: Bearer <key>'; "
                                        "required when --host is not loopback")
    rate_limit: int = option(600, "requests a minute per API key before 429 with Retry-After (0: no limit; only "
                                  "with keys)")

    def __post_init__(self) -> None:
        if not (0 < self.port < 65536 and 0 < self.max_upload_mb < math.inf and self.max_queue >= 1
                and 0 <= self.max_wait_ms < math.inf):
            raise PneumoscanError("--port must be 1-65535, --max-upload-mb a positive number, --max-queue at least 1 "
                                  f"and --max-wait-ms a number at least 0; got {self.port}, {self.max_upload_mb}, "
                                  f"{self.max_queue} and {self.max_wait_ms}")
        if not (0 < self.latency_budget_ms < math.inf and self.decode_threads >= 1
                and 0 <= self.shutdown_timeout_s < math.inf):
            raise PneumoscanError("--latency-budget-ms must be a positive number, --decode-threads at least 1 and "
                                  f"--shutdown-timeout-s a number at least 0; got {self.latency_budget_ms}, "
                                  f"{self.decode_threads} and {self.shutdown_timeout_s}")
        if self.rate_limit < 0:
            raise PneumoscanError(f"--rate-limit must be at least 0 (0: no limit), got {self.rate_limit}")


@dataclass(frozen=True)
class MonitorConfig:
    """The options of `pneumoscan monitor` (the drifts themselves are given with `--drift NAME:S`, repeatable)."""

    split: str = option("test", "split of a dataset root to stream")
    weeks: int = option(EvalConfig.weeks, "weeks to split the films into (as `evaluate --weeks`)")
    drift_from_week: int | None = option(None, "first drifted week (default: the middle week)")
    alpha: float = option(0.01, "alarm level of the weekly drift test")
    seed: int = option(0, "arrival order and injected noise")
    strict: bool = option(False, "stop at an unreadable image instead of skipping it")
    stream: str = option("auto", "larger-than-memory data: as `evaluate --stream`", choices=("auto", "on", "off"))

    def __post_init__(self) -> None:
        check_stream(self.stream)
        if self.weeks < 1 or not 0.0 < self.alpha < 1.0:
            raise PneumoscanError(f"--weeks must be at least 1 and --alpha in (0, 1), got {self.weeks} and "
                                  f"{self.alpha}")
        if self.drift_from_week is not None and not 1 <= self.drift_from_week <= self.weeks:
            raise PneumoscanError(f"--drift-from-week must be a week from 1 to --weeks ({self.weeks}), got "
                                  f"{self.drift_from_week}")
        check_seed("--seed", self.seed)

    @property
    def first_drifted_week(self) -> int:
        return self.weeks // 2 + 1 if self.drift_from_week is None else self.drift_from_week


@dataclass(frozen=True)
class ExportConfig:
    """The options of `pneumoscan export` besides the kind of file (`--to`): the sample for the parity check."""

    split: str = option("val", "split of --data to sample")
    n_images: int = option(200, "sample images (parity check, calibration)")

    def __post_init__(self) -> None:
        if self.n_images < 16:
            raise PneumoscanError(f"--n-images must be at least 16, got {self.n_images}")


@dataclass(frozen=True)
class PredictConfig:
    """The options of `pneumoscan predict` and `explain` (the engine is chosen with `--engine`/`--exported`)."""

    format: str = option("table", "how the rows are written to stdout", choices=("table", "json", "csv"))
    tta: bool = option(False, "test-time augmentation: average over the image and four mild zoom/shift views")
    strict: bool = option(False, "stop at an unreadable image instead of skipping it")
    target_layer: str | None = option(None, "Grad-CAM layer (a module name); default: the last spatial feature map")
    batch_size: int = option(64, "with --out: films decoded, scored and appended together (memory holds one batch; "
                                 "under torchrun the ranks take turns by batch)")

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise PneumoscanError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class SynthConfig:
    """The options of `pneumoscan synth`: the defaults are the generator's own (SyntheticSpec), which also checks
    the values."""

    n_per_class: int = option(SyntheticSpec.n_per_class, "training images per class (test gets a quarter)")
    size: int = option(SyntheticSpec.size, "image side in pixels")
    seed: int = option(SyntheticSpec.seed, "seed of every image")
    difficulty: float = option(SyntheticSpec.difficulty, "0 (obvious opacities) .. 1 (faint, small)")
    age: str = option(SyntheticSpec.age, "anatomy: child (the training kind) or adult (to test that the guard "
                                         "refuses adults)", choices=AGES)

    def __post_init__(self) -> None:
        check_seed("--seed", self.seed)
        if self.size > MAX_IMAGE_SIZE:
            raise PneumoscanError(f"--size must be 32 to {MAX_IMAGE_SIZE} pixels, got {self.size}")
