"""Self-supervised pre-training (SimCLR, Chen et al. 2020) of a registered architecture's backbone.

No pretrained weights can be downloaded here, so the only "pretrained backbone" this project can
offer is one it makes itself from the training films, without their labels. Each image is seen as
two strongly augmented views (crop and zoom, rotation, exposure, contrast, blur, noise); the
backbone plus a small projection head is trained so the two views of one film are closer to each
other than to any other film in the batch (NT-Xent loss). The representation is the global
average of the architecture's last declared feature stage, so any registered model works; the
projection head is discarded and the backbone's weights are what `train --weights` loads.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from pneumoscan.config import PretrainConfig
from pneumoscan.models.registry import create_model, model_spec


@dataclass(frozen=True)
class PretrainEpoch:
    epoch: int
    loss: float
    view_accuracy: float  # share of views whose nearest other view is their own pair (a sanity signal)
    lr: float
    seconds: float


def ssl_views(image_size: int) -> nn.Module:
    """The two-view augmentation: stronger than supervised training's, as contrastive learning needs."""
    return nn.Sequential(
        K.RandomResizedCrop((image_size, image_size), scale=(0.35, 1.0), ratio=(0.8, 1.25), p=1.0),
        K.RandomAffine(degrees=10.0, p=0.7, padding_mode="border"),
        K.ColorJiggle(brightness=0.4, contrast=0.4, p=0.8),
        K.RandomGamma(gamma=(0.6, 1.6), p=0.5),
        K.RandomGaussianBlur(kernel_size=(5, 5), sigma=(0.1, 1.5), p=0.5),
        K.RandomGaussianNoise(mean=0.0, std=0.03, p=0.3),
    )


class _Encoder(nn.Module):
    """The model up to its last declared feature stage, globally averaged, plus a projection MLP."""

    def __init__(self, model: nn.Module, last_stage: str, projection_dim: int, image_size: int) -> None:
        super().__init__()
        self.model = model
        self._features: torch.Tensor | None = None
        self.hook = dict(model.named_modules())[last_stage].register_forward_hook(self._keep)
        with torch.no_grad():
            model.eval()
            model(torch.zeros(2, 1, image_size, image_size))
        assert self._features is not None
        width = self._features.shape[1]
        self.projection = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True),
                                        nn.Linear(width, projection_dim))

    def _keep(self, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        self._features = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.model(x)  # the hook keeps the last stage's output; the classifier head's output is ignored
        features = self._features
        assert features is not None
        pooled = features.float().mean(dim=(2, 3)) if features.dim() == 4 else features.float().flatten(1)
        return self.projection(pooled)


def nt_xent(projections: torch.Tensor, temperature: float) -> tuple[torch.Tensor, float]:
    """NT-Xent over 2N projections where rows i and i+N are the two views of one image; returns (loss,
    share of rows whose most similar other row is their pair)."""
    z = F.normalize(projections.float(), dim=1)
    n = len(z) // 2
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    loss = F.cross_entropy(similarity, targets)
    accuracy = float((similarity.argmax(1) == targets).float().mean())
    return loss, accuracy


def pretrain(images: torch.Tensor, config: PretrainConfig, console: Console,
             on_epoch: Callable[[PretrainEpoch], None] | None = None) -> tuple[nn.Module, list[PretrainEpoch]]:
    """SimCLR on uint8 images (N, 1, S, S); returns the architecture's model (head untouched) and the history."""
    torch.manual_seed(config.seed)
    spec = model_spec(config.arch)
    preprocess = config.data_config().preprocess
    model = create_model(config.arch, in_channels=1, image_size=config.image_size)
    encoder = _Encoder(model, spec.feature_stages[-1], config.projection_dim, config.image_size)
    device = config.data_config().torch_device
    encoder = encoder.to(device, memory_format=torch.channels_last)
    views = ssl_views(config.image_size).to(device)
    steps_per_epoch = max(1, len(images) // config.batch_size)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=config.lr, weight_decay=1e-6)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / (config.epochs * steps_per_epoch), 1.0))))
    bf16 = config.data_config().use_bf16
    generator = torch.Generator().manual_seed(config.seed)
    history: list[PretrainEpoch] = []
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        encoder.train()
        order = torch.randperm(len(images), generator=generator)
        total, correct, seen = 0.0, 0.0, 0
        for step in range(steps_per_epoch):  # full batches only: the loss needs many negatives
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            pixels = images[index].to(device).float().div_(255.0)
            with torch.no_grad():
                pair = torch.cat([views(pixels), views(pixels)]).clamp_(0.0, 1.0)
            inputs = preprocess.normalize(pair).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                projections = encoder(inputs)
            loss, accuracy = nt_xent(projections, config.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total, correct, seen = total + float(loss.detach()) * len(index), correct + accuracy * len(index), \
                seen + len(index)
        record = PretrainEpoch(epoch=epoch, loss=round(total / max(seen, 1), 6),
                               view_accuracy=round(correct / max(seen, 1), 6), lr=optimizer.param_groups[0]["lr"],
                               seconds=round(time.perf_counter() - started, 2))
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        console.print(f"pretrain {config.arch} epoch {epoch:>2}: NT-Xent {record.loss:.4f} | pair found "
                      f"{record.view_accuracy:.3f} | lr {record.lr:.2g} | {record.seconds:.0f}s", highlight=False)
    encoder.hook.remove()
    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    return model, history
