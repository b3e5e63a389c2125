"""`pneumoscan pretrain`: a backbone pre-trained without labels, written as a weights file for `--weights`.

Writes `backbone.safetensors` (the architecture's tensors except its classifier head, in
pneumoscan's own names, so `train --weights` loads it like any checkpoint), `pretrain.json` (the
config, the data it saw, the per-epoch loss, the command and versions) and `pretrain_curve.png`.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from safetensors.torch import save_file

from pneumoscan.atomic import atomic_path, write_json
from pneumoscan.config import PretrainConfig
from pneumoscan.models.bundle import runtime_versions
from pneumoscan.models.registry import model_spec
from pneumoscan.pipeline.packaging import code_version
from pneumoscan.training.figures import pretrain_curve
from pneumoscan.training.prepare import prepare_data
from pneumoscan.training.self_supervised import PretrainEpoch, pretrain

WEIGHTS_NAME = "backbone.safetensors"


@dataclass
class PretrainResult:
    weights: Path
    history: list[PretrainEpoch]
    images: int


def run_pretraining(config: PretrainConfig, out_dir: Path | str, console: Console | None = None,
                    command: str = "") -> PretrainResult:
    console = console or Console(stderr=True)
    out_dir = Path(out_dir)
    data = prepare_data(config.data_config(), console)
    images = data.train.images
    console.print(f"pre-training {config.arch} on {len(images)} training images, labels unused "
                  f"({data.summary.validation})", highlight=False, soft_wrap=True)
    model, history = pretrain(images, config, console)
    spec = model_spec(config.arch)
    backbone = {k: v.contiguous() for k, v in model.state_dict().items() if not spec.is_head(k)}
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_NAME
    with atomic_path(weights) as tmp:
        save_file(backbone, str(tmp), metadata={"format": "pt", "arch": config.arch, "method": "simclr"})
    write_json(out_dir / "pretrain.json", {
        "command": command, "code_version": code_version(), "versions": runtime_versions(),
        "method": "SimCLR (NT-Xent)",
        "config": asdict(config), "images": len(images), "data": asdict(data.summary),
        "history": [asdict(epoch) for epoch in history], "weights": WEIGHTS_NAME})
    pretrain_curve(history, out_dir / "pretrain_curve.png")
    console.print(f"backbone weights in {weights} (use: pneumoscan train --arch {config.arch} --weights {weights})",
                  highlight=False, soft_wrap=True)
    return PretrainResult(weights=weights, history=history, images=len(images))
