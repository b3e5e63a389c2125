"""What crash safety costs: the same training run with and without its per-epoch checkpoint, in one process.

Both arms train the same config on the same prepared data (`compact` at 128 px, float32, synthetic images); the
baseline passes no run folder (no checkpoint), the other writes RUN/checkpoint.pt atomically after every epoch.
Arms alternate, so the shared machine's noise falls on both. Usage:

    .venv/bin/python benchmarks/checkpoint_overhead.py [--images-per-class 400] [--epochs 3] [--repeats 2]
"""

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pneumoscan.config import TrainConfig
from pneumoscan.training.checkpoint import CHECKPOINT_FILE
from pneumoscan.training.loop import train
from pneumoscan.training.prepare import prepare_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-class", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    quiet = Console(quiet=True)
    config = TrainConfig(data=f"synthetic:n_per_class={args.images_per_class},size=128", arch="compact",
                         image_size=128, epochs=args.epochs, patience=args.epochs, precision="fp32", device="cpu")
    data = prepare_data(config, quiet)
    seconds: dict[str, list[float]] = {"no checkpoint (baseline)": [], "checkpoint every epoch": []}
    size = 0
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for arm in seconds:
                run_dir = Path(tmp) / f"run{repeat}" if arm.startswith("checkpoint") else None
                start = time.perf_counter()
                train(data, config, quiet, run_dir=run_dir)
                seconds[arm].append((time.perf_counter() - start) / args.epochs)
                if run_dir is not None:
                    size = (run_dir / CHECKPOINT_FILE).stat().st_size
    table = Table("arm", "s per epoch (each repeat)", "mean", title=f"compact @ 128 px, {len(data.train)} training "
                  f"images, fp32, {args.epochs} epochs x {args.repeats} repeats; checkpoint {size / 1e6:.1f} MB")
    for arm, values in seconds.items():
        table.add_row(arm, ", ".join(f"{v:.2f}" for v in values), f"{sum(values) / len(values):.2f}")
    console = Console(width=120)
    console.print(table)
    base, with_checkpoint = (sum(v) / len(v) for v in seconds.values())
    console.print(f"overhead: {with_checkpoint - base:+.2f} s per epoch ({(with_checkpoint / base - 1):+.1%})")


if __name__ == "__main__":
    main()
