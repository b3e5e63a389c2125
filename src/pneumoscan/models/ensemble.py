"""The ensemble model (EnsembleModel); the command that builds one is pneumoscan.pipeline.ensemble.

An ensemble of trained models that travels as one ordinary bundle.

Its manifest has `arch = "ensemble"` and lists each member (architecture, input size, its own
preprocessing, its origin) in `arch_kwargs["members"]`; the one weights file holds every member's
tensors under `members.<i>.`. So `load_bundle`, predict, evaluate, explain, monitor and adapt
need nothing special: the ensemble is one module that maps an image to one logit.

The ensemble's own preprocessing only scales pixels to [0, 1] at the largest member's size; each
member then applies its own steps (border crop, intensity equalisation, normalisation). A member
with a smaller input gets the image resized by torch (bilinear, antialiased) rather than decoded at
its size, a small difference from what its own bundle would see; members of one size see exactly
what their bundles would. The output is the mean of the members'
probabilities, returned as a logit. Diverse members (architectures, input sizes, preprocessing)
make errors less correlated, which is where an ensemble's gain comes from.
"""

import functools
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pneumoscan.config import DEFAULT_IMAGE_SIZE
from pneumoscan.data.preprocess import Preprocess
from pneumoscan.errors import PneumoscanError
from pneumoscan.models.registry import ModelSpec, create_model, model_spec, register_model

ENSEMBLE_ARCH = "ensemble"
# the ensemble's own step: uint8 -> [0, 1] only; every member normalizes for itself
PASS_THROUGH = {"mean": 0.0, "std": 1.0}


@dataclass(frozen=True)
class MemberSpec:
    """What the ensemble needs to rebuild and feed one member."""

    arch: str
    preprocess: Preprocess
    arch_kwargs: dict[str, Any]
    threshold: float
    source: str  # the member bundle's folder, as given
    weights_sha256: str
    calibrated_prior: float | None = None  # the pneumonia share the member's probabilities are calibrated to
    command: str = ""  # how the member was trained, and its resolved recipe: the ensemble documents every member
    config: dict[str, Any] | None = None
    best_epoch: int | None = None
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "preprocess": asdict(self.preprocess)}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "MemberSpec":
        return cls(arch=str(payload["arch"]), preprocess=Preprocess(**payload["preprocess"]),
                   arch_kwargs=dict(payload.get("arch_kwargs") or {}), threshold=float(payload["threshold"]),
                   source=str(payload.get("source", "")), weights_sha256=str(payload.get("weights_sha256", "")),
                   calibrated_prior=None if payload.get("calibrated_prior") is None
                   else float(payload["calibrated_prior"]), command=str(payload.get("command", "")),
                   config=payload.get("config"), best_epoch=payload.get("best_epoch"), seconds=payload.get("seconds"))


@functools.lru_cache(maxsize=16)
def _resize_matrix(source: int, target: int) -> torch.Tensor:
    """(target, source): torch's antialiased bilinear resize of one axis, as a matrix (it is linear)."""
    identity = torch.eye(source)[None, None]  # resizing the rows of the identity gives the matrix itself
    return F.interpolate(identity, size=(target, source), mode="bilinear", align_corners=False, antialias=True)[0, 0]


def resize_antialiased(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """Square images (N, C, S, S) to (N, C, size, size), antialiased bilinear, as two matrix products: the same
    result as F.interpolate(..., antialias=True), in operations every exporter (ONNX, LiteRT) lowers."""
    return _resize_with(pixels, _resize_matrix(pixels.shape[-2], size), _resize_matrix(pixels.shape[-1], size))


def _resize_with(pixels: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    return rows.to(pixels.dtype) @ pixels @ columns.to(pixels.dtype).T


class EnsembleModel(nn.Module):
    """[0, 1] pixels (N, C, S, S) at the largest member size -> mean member probability as a logit (N, 1)."""

    def __init__(self, members: list[nn.Module], specs: list[MemberSpec]) -> None:
        super().__init__()
        if len(members) < 2 or len(members) != len(specs):
            raise PneumoscanError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)
        self.specs = list(specs)
        largest = max(spec.preprocess.image_size for spec in self.specs)  # the ensemble's own input size
        for spec in self.specs:  # resize matrices made now, so an exporter's trace sees constants, not a resize
            size = spec.preprocess.image_size
            if size != largest and not hasattr(self, f"_resize_{largest}_{size}"):
                self.register_buffer(f"_resize_{largest}_{size}", _resize_matrix(largest, size), persistent=False)

    def member_input(self, index: int, pixels: torch.Tensor) -> torch.Tensor:
        """What member `index` sees of the ensemble's [0, 1] pixels: resized to its size, its preprocessing."""
        spec = self.specs[index]
        size = spec.preprocess.image_size
        matrix = getattr(self, f"_resize_{pixels.shape[-1]}_{size}", None)
        inputs = (pixels if pixels.shape[-1] == size else resize_antialiased(pixels, size) if matrix is None
                  or pixels.shape[-2] != pixels.shape[-1] else _resize_with(pixels, matrix, matrix))
        return spec.preprocess.normalize(inputs.clamp(0.0, 1.0))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        probabilities = []
        for index, member in enumerate(self.members):
            logits = member(self.member_input(index, pixels).contiguous(memory_format=torch.channels_last))
            probabilities.append(torch.sigmoid(logits.float()))
        mean = torch.stack(probabilities).mean(0).clamp(1e-7, 1 - 1e-7)
        return torch.logit(mean)


def ensemble_spec(arch_kwargs: dict[str, Any]) -> ModelSpec:
    """The first member's facts under its `members.0.` prefix: Grad-CAM and the guard look at that member. Its
    input is the largest member size, passed through (each member normalizes for itself)."""
    members = [MemberSpec.from_dict(member) for member in arch_kwargs["members"]]
    spec = model_spec(members[0].arch)
    prefix = "members.0."
    return replace(spec, name=ENSEMBLE_ARCH, first_conv=prefix + spec.first_conv, head="members",
                   feature_stages=tuple(prefix + stage for stage in spec.feature_stages),
                   gradcam_layer=prefix + spec.explained_layer, derive=None,
                   input_size=max(member.preprocess.image_size for member in members),
                   mean=PASS_THROUGH["mean"], std=PASS_THROUGH["std"])


@register_model(ENSEMBLE_ARCH, first_conv="members.0", head="members", feature_stages=("members.0",),
                derive=ensemble_spec, mean=PASS_THROUGH["mean"], std=PASS_THROUGH["std"])
def build_ensemble_model(in_channels: int = 1, image_size: int = DEFAULT_IMAGE_SIZE,
                         members: list[dict[str, Any]] | None = None, **_: Any) -> EnsembleModel:
    """`image_size` is ignored: each member is built for its own stored size, and the ensemble takes the largest
    (its derived spec's `input_size`)."""
    if not members:
        raise PneumoscanError("an ensemble bundle must list its members in arch_kwargs")
    specs = [MemberSpec.from_dict(member) for member in members]
    models = [create_model(spec.arch, in_channels=in_channels, image_size=spec.preprocess.image_size,
                           **spec.arch_kwargs) for spec in specs]
    return EnsembleModel(models, specs)


def ensemble_preprocess(specs: list[MemberSpec]) -> Preprocess:
    channels = {spec.preprocess.channels for spec in specs}
    if len(channels) != 1:
        raise PneumoscanError("ensemble members must take the same number of input channels")
    return Preprocess(image_size=max(spec.preprocess.image_size for spec in specs), channels=channels.pop(),
                      **PASS_THROUGH)
