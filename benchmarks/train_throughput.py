"""Training throughput: the naive path against pneumoscan's path, measured in one run.

naive:      a Dataset that opens and decodes each JPEG/PNG with PIL per sample, float32 NCHW,
            per-sample torch ops, DataLoader batching (how most tutorials train).
pneumoscan: images decoded once to a uint8 tensor, batched kornia augmentation, channels_last,
            bf16 autocast where the CPU supports it (what `pneumoscan train` does).

Both train the same architecture at the same image size on the same files. The table also gives
achieved GFLOP/s (forward + backward FLOPs counted by torch) against a matmul peak measured in
the same run. Usage:

    .venv/bin/python benchmarks/train_throughput.py [--data DIR] [--models compact@224 resnet18@160] [--compile]

Without --data it writes a synthetic dataset to a temporary folder first.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from pneumoscan.data.augment import AUGMENT_PRESETS, augment, build_augmentation
from pneumoscan.data.loading import load_images
from pneumoscan.data.preprocess import Preprocess
from pneumoscan.data.registry import open_source
from pneumoscan.data.synthetic import SyntheticSource, SyntheticSpec
from pneumoscan.models import create_model
from pneumoscan.training.loop import train_step


class NaiveDataset(Dataset):
    def __init__(self, files: list[str], labels: list[int], size: int) -> None:
        self.files, self.labels, self.size = files, labels, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        with Image.open(self.files[index]) as image:
            pixels = np.asarray(image.convert("L").resize((self.size, self.size)), dtype=np.float32) / 255.0
        return (torch.from_numpy(pixels)[None] - 0.5) / 0.25, torch.tensor(float(self.labels[index]))


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def train_flops(arch: str, size: int, batch: int) -> float:
    model = create_model(arch, image_size=size)
    with FlopCounterMode(display=False) as counter:
        F.binary_cross_entropy_with_logits(model(torch.randn(batch, 1, size, size)).squeeze(1),
                                           torch.ones(batch)).backward()
    return float(counter.get_total_flops())


def naive(files: list[str], labels: list[int], arch: str, size: int, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = create_model(arch, image_size=size)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    loader = DataLoader(NaiveDataset(files, labels, size), batch_size=batch, shuffle=True)
    seen, start = 0, 0.0
    for step, (x, y) in enumerate(loader):
        if step == 1:
            start, seen = time.perf_counter(), 0  # first step warms up
        loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(y)
        if step == steps:
            break
    return seen / (time.perf_counter() - start)


def project(images: torch.Tensor, labels: torch.Tensor, arch: str, size: int, batch: int, steps: int,
            bf16: bool, compiled: bool = False) -> float:
    torch.manual_seed(0)
    preprocess = Preprocess(image_size=size)
    model = create_model(arch, image_size=size).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    step_model = torch.compile(model) if compiled else model
    augmentation = build_augmentation(AUGMENT_PRESETS["standard"])
    seen, start = 0, 0.0
    warm_up = 2 if compiled else 1  # compiling happens in the first step
    for step in range(steps + warm_up):
        if step == warm_up:
            start, seen = time.perf_counter(), 0
        index = torch.randint(0, len(images), (batch,))
        pixels = augment(augmentation, images[index].float().div_(255))
        train_step(step_model, optimizer, F.binary_cross_entropy_with_logits, preprocess.normalize(pixels),
                   labels[index], torch.bfloat16 if bf16 else None)  # the step `pneumoscan train` runs
        seen += batch
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a folder in the Kaggle layout (default: a temporary synthetic set)")
    parser.add_argument("--models", nargs="+", default=["compact@224", "baseline@150", "resnet18@160"],
                        help="ARCH@SIZE pairs, each measured on all paths in this run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per path (after the warm-up)")
    parser.add_argument("--compile", action="store_true", help="add a row with torch.compile (`train --compile`)")
    args = parser.parse_args()
    console = Console(stderr=True)
    models = [(spec.partition("@")[0], int(spec.partition("@")[2] or 150)) for spec in args.models]
    bf16 = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    table = Table(title=f"training throughput, batch {args.batch_size}, {torch.get_num_threads()} threads "
                        f"(matmul peak now: fp32 {peak32:.0f}, bf16 {peak16:.0f} GFLOP/s)")
    for column in ("model", "path", "images/s", "speed-up", "GFLOP/s", "% of matmul peak"):
        table.add_column(column, justify="left" if column in ("model", "path") else "right")
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = tmp
            SyntheticSource(SyntheticSpec(n_per_class=200)).write(Path(tmp))
        source = open_source(data)
        _, records = source.split("train")
        records = records[: args.batch_size * (args.steps + 2)]
        files = [r.source for r in records]
        labels = [r.label for r in records]
        for arch, size in models:
            image_set = load_images(source, records, size, console=console)
            flops = train_flops(arch, size, args.batch_size) / args.batch_size

            def measure(bf: bool, compiled: bool = False, arch: str = arch, size: int = size,
                        images: torch.Tensor = image_set.images, targets: torch.Tensor = image_set.labels) -> float:
                return project(images, targets, arch, size, args.batch_size, args.steps, bf, compiled)

            rows = [
                ("naive: PIL per sample, fp32 NCHW",
                 naive(files, labels, arch, size, args.batch_size, args.steps), peak32),
                ("decoded once + batched aug, fp32 channels_last", measure(False), peak32),
                (f"pneumoscan: + bf16 autocast ({'on' if bf16 else 'unsupported: fp32'})", measure(bf16),
                 peak16 if bf16 else peak32),
            ]
            if args.compile:
                rows.append(("pneumoscan + torch.compile (optional)", measure(bf16, True), peak16 if bf16 else peak32))
            for name, rate, peak in rows:
                achieved = rate * flops / 1e9
                table.add_row(f"{arch} @ {size} px ({flops / 1e9:.2f} GFLOP/img)", name, f"{rate:.1f}",
                              f"{rate / rows[0][1]:.2f}x", f"{achieved:.0f}", f"{100 * achieved / peak:.0f} %",
                              end_section=name == rows[-1][0])
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
