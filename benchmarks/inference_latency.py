"""Inference time per image for each architecture, measured in one run (fp32, eval mode, CPU).

    .venv/bin/python benchmarks/inference_latency.py [--image-size 224] [--batch-size 1 16] [--repeats 20]

Batch 1 is what `predict` on a single file costs; a larger batch is what `evaluate` pays per image.
"""

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from pneumoscan.models import create_model, list_models


@torch.inference_mode()
def ms_per_image(model: torch.nn.Module, batch: torch.Tensor, repeats: int) -> float:
    model(batch)
    start = time.perf_counter()
    for _ in range(repeats):
        model(batch)
    return (time.perf_counter() - start) / repeats / len(batch) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--arch", nargs="+", default=list_models())
    args = parser.parse_args()
    table = Table(title=f"inference, {args.image_size}x{args.image_size}x1, fp32 channels_last, "
                        f"{torch.get_num_threads()} threads (ms per image)")
    table.add_column("architecture")
    table.add_column("parameters", justify="right")
    for batch_size in args.batch_size:
        table.add_column(f"batch {batch_size}", justify="right")
    for name in args.arch:
        model = create_model(name, image_size=args.image_size).eval().to(memory_format=torch.channels_last)
        cells = []
        for batch_size in args.batch_size:
            batch = torch.randn(batch_size, 1, args.image_size, args.image_size).contiguous(
                memory_format=torch.channels_last)
            cells.append(f"{ms_per_image(model, batch, args.repeats):.1f}")
        table.add_row(name, f"{sum(p.numel() for p in model.parameters()):,}", *cells)
    Console().print(table)


if __name__ == "__main__":
    main()
