"""Batch scoring speed (what `evaluate` and a folder `predict` spend their time on): images/s of ONNX Runtime (the
default engine) against PyTorch (`--engine torch`) on the same films in one run, and each as a share of this
machine's measured fp32 matrix-multiply peak.

    .venv/bin/python benchmarks/batch_scoring.py [--model default] [--data DATASET_OR_CSV --split val]
        [--images 256] [--batch 64] [--repeats 3]

The films are decoded once (decoding is not timed: both engines get the same uint8 array) and scored whole by each
engine, guard included, the engines taking turns repeat by repeat; the best of the repeats is reported (the host
is shared). FLOPs per film: PyTorch's FlopCounterMode over one forward pass of the bundle's network (multiply-adds
x 2; the preprocessing's few operations not counted). Peak: the best of several 2048x2048 fp32 matrix products
on all this process's threads, measured in the same run.
"""

import argparse
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from pneumoscan.models.bundle import load_bundle
from pneumoscan.serving.engine import open_engine


def _films(model_size: int, data: str | None, split: str, count: int) -> tuple[np.ndarray, str]:
    if data is None:
        from pneumoscan.serving.export import built_in_sample

        return built_in_sample(model_size, count).numpy(), f"{count} built-in synthetic films"
    from pneumoscan.data.loading import load_split

    image_set, _ = load_split(data, split, model_size, cache=False)
    images = image_set.images[:count].numpy()
    return images, f"{len(images)} films of {data} [{split}]"


def _peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.rand(size, size), torch.rand(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def _flops_per_film(model: str) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    bundle = load_bundle(model)
    size = bundle.preprocess.image_size
    inputs = bundle.preprocess.normalize(torch.zeros(1, 1, size, size, dtype=torch.uint8))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        bundle.model(inputs)
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", default=None)
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    engines = {"ONNX Runtime (default)": open_engine(args.model), "PyTorch (--engine torch)": open_engine(
        args.model, "torch")}
    size = next(iter(engines.values())).manifest.preprocess.image_size
    films, what = _films(size, args.data, args.split, args.images)
    best = {name: float("inf") for name in engines}
    for _ in range(args.repeats):
        for name, engine in engines.items():
            started = time.perf_counter()
            for start in range(0, len(films), args.batch):
                engine.score(films[start : start + args.batch])
            best[name] = min(best[name], time.perf_counter() - started)
    flops, peak = _flops_per_film(args.model), _peak_gflops()
    table = Table("engine", "images/s", "GFLOP/s", "share of fp32 peak", "vs PyTorch",
                  title=f"--model {args.model}: {what}, batch {args.batch}, {torch.get_num_threads()} threads; "
                        f"{flops / 1e9:.2f} GFLOP per film; fp32 matmul peak {peak:.0f} GFLOP/s (same run)")
    torch_rate = len(films) / best["PyTorch (--engine torch)"]
    for name, seconds in best.items():
        rate = len(films) / seconds
        table.add_row(name, f"{rate:.0f}", f"{rate * flops / 1e9:.0f}", f"{rate * flops / 1e9 / peak:.1%}",
                      f"{rate / torch_rate:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
