"""Larger-than-memory training: does peak memory stay flat as the dataset grows?

Writes N x FACTOR synthetic X-ray-like grayscale PNGs (SOURCE x SOURCE px; smooth random fields with a body
outline, cheap to make and to compress, made in parallel) and a labels CSV for the first N and for all of
them. Then, for each size, two fresh Python processes train one epoch of a small model (`compact` at
--image-size, fp32, CPU) on `--data labels.csv` and package the run (threshold, guard, drift reference):

  streamed   TrainConfig.stream=on: the cache is built in parallel worker processes (cold: a new cache folder
             per size), then every batch is read from it by DataLoader workers
  in memory  TrainConfig.stream=off: the same images, decoded into one tensor (from the now warm cache)

Reported per process: images/s of prepare_data (read the CSV, carve validation, decode or build the cache), of
the training epoch, and of the batches alone (one pass of iter_batches, no model); the main process's peak RSS
(resource.getrusage ru_maxrss, exact) read after prepare_data, after the epoch with its validation pass, and
after packaging (a high-water mark, so each is the peak so far); and the peak anonymous memory of the main
process and its data workers together (proportional set size from /proc/PID/smaps_rollup, sampled 4 times a
second: the workers are forks sharing most pages with the main process, so adding RSS would count them twice).
Packaging fits the guard on every training image's features, which grow with N whatever the path (~16 KB an
image for compact, with scikit-learn's float64 copies). Last, one process alternates an epoch of each path
ROUNDS times on the larger set, so other work on a shared machine slows both alike. Usage:

    .venv/bin/python benchmarks/scale.py [--n 500] [--factor 4] [--source-size 1024] [--image-size 128] \\
        [--rounds 2] [--save docs/results/scale.txt]

The issue's target is 20,000 images at 1024 px; --n 5000 gives that, in hours on 2 cores.
"""

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve()


def _make_image(task: tuple[str, int, int, int]) -> None:
    """One smooth 'radiograph': a low-resolution random field (body, two darker lungs, an opacity for label 1)
    upsampled bicubically, so it costs one resize and compresses to tens of KB."""
    path, seed, label, size = task
    rng = np.random.default_rng(seed)
    low = 48
    yy, xx = np.mgrid[-1:1:complex(low), -1:1:complex(low)]
    body = np.exp(-((xx / 0.85) ** 2 + (yy / 0.95) ** 2) ** 3)
    lungs = sum(np.exp(-(((xx - side * 0.38) / 0.25) ** 2 + ((yy + 0.05) / 0.45) ** 2) ** 2) for side in (-1, 1))
    ribs = 0.04 * np.sin(yy * rng.uniform(18, 24)) * lungs
    field = 0.1 + 0.75 * body - 0.35 * lungs + ribs + 0.015 * rng.standard_normal((low, low))
    if label:
        cx, cy = rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.3)
        field += 0.25 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / 0.03))
    pixels = np.clip(field * rng.uniform(0.8, 1.2) * 255, 0, 255).astype(np.uint8)
    Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BICUBIC).save(path, compress_level=1)


def generate(folder: Path, count: int, size: int, workers: int) -> float:
    """`count` PNGs in folder/images (kept if already there); returns seconds spent."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    tasks = [(str(images / f"{i:06d}.png"), i, i % 2, size) for i in range(count)
             if not (images / f"{i:06d}.png").exists()]
    started = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_make_image, tasks, chunksize=16))
    return time.perf_counter() - started


def write_csv(folder: Path, count: int) -> Path:
    """labels-COUNT.csv: path (relative to the CSV) and label; each image its own patient."""
    path = folder / f"labels-{count}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows([f"images/{i:06d}.png", "PNEUMONIA" if i % 2 else "NORMAL"] for i in range(count))
    return path


def compare_epochs(args: argparse.Namespace) -> None:
    """Epoch throughput of both paths, alternated in one process (ROUNDS times), so load from other work on the
    machine hits both alike; prints one JSON line."""
    from dataclasses import replace

    from rich.console import Console

    from pneumoscan.config import TrainConfig
    from pneumoscan.training.loop import train
    from pneumoscan.training.prepare import prepare_data

    console = Console(quiet=True)
    config = TrainConfig(data=args.csv, arch=args.arch, image_size=args.image_size, epochs=1, batch_size=32,
                         precision="fp32", device="cpu", stream="on")
    data = {"streamed": prepare_data(config, console),
            "in memory": prepare_data(replace(config, stream="off"), console)}
    rates: dict[str, list[float]] = {mode: [] for mode in data}
    for _ in range(args.rounds):
        for mode, prepared in data.items():
            rates[mode].append(train(prepared, config, console).train_images_per_second)
    print(json.dumps(rates))


def child(args: argparse.Namespace) -> None:
    """One measured run in this (fresh) process; prints one JSON line."""
    import torch
    from rich.console import Console

    from pneumoscan.config import TrainConfig
    from pneumoscan.data.batching import iter_batches
    from pneumoscan.data.streaming import StreamedImages
    from pneumoscan.pipeline.packaging import package
    from pneumoscan.training.loop import train
    from pneumoscan.training.prepare import prepare_data

    console = Console(quiet=True)
    config = TrainConfig(data=args.csv, arch=args.arch, image_size=args.image_size, epochs=1, batch_size=32,
                         precision="fp32", device="cpu", stream="on" if args.mode == "streamed" else "off")
    def peak_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    started = time.perf_counter()
    data = prepare_data(config, console)
    prepare_s, prepared_mb = time.perf_counter() - started, peak_mb()
    assert isinstance(data.train.images, StreamedImages) == (args.mode == "streamed")
    trained = train(data, config, console)
    trained_mb = peak_mb()
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    read = sum(len(index) for index, _ in iter_batches(data.train.images, order, config.batch_size))
    read_rate = read / (time.perf_counter() - started)  # the batches alone: can the reader keep ahead of the model?
    started = time.perf_counter()
    package(trained, data, config, Path(args.out), command="benchmarks/scale.py")
    package_s = time.perf_counter() - started
    images = len(data.train) + len(data.val)
    print(json.dumps({
        "images": images, "prepare_s": prepare_s, "prepare_rate": images / prepare_s,
        "epoch_rate": trained.train_images_per_second, "read_rate": read_rate, "package_s": package_s,
        "peak_mb": peak_mb(), "prepared_mb": prepared_mb, "trained_mb": trained_mb,
    }))


def _descendants(root: int) -> list[int]:
    """root and every process below it, from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(name))
    found = [root]
    for pid in found:
        found.extend(children.get(pid, []))
    return found


def tree_pss_mb(root: int) -> float:
    """Anonymous memory (heap, tensors) of a process and its workers together, in MB, as proportional set size:
    pages the workers share with the main process (they are forks of it) count once, split between them. File-
    backed pages (torch's libraries) are left out: their PSS moves with whatever else on the machine maps them."""
    total_kb = 0
    for pid in _descendants(root):
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total_kb += next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss_Anon:")), 0)
    return total_kb / 1024


def run_json(command: list[str], cache: Path) -> dict[str, list[float]]:
    """Run a child with this cache folder and return the JSON line it prints."""
    done = subprocess.run(command, env={**os.environ, "PNEUMOSCAN_CACHE_DIR": str(cache)}, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(csv_path: Path, mode: str, cache: Path, out: Path, args: argparse.Namespace) -> dict[str, float]:
    """Run one measured child; its own figures plus the peak PSS of its process tree, sampled 4 times a second."""
    env = {**os.environ, "PNEUMOSCAN_CACHE_DIR": str(cache)}
    command = [sys.executable, str(SCRIPT), "--child", "--csv", str(csv_path), "--mode", mode, "--out", str(out),
               "--arch", args.arch, "--image-size", str(args.image_size)]
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr, text=True)
        peak_pss = 0.0
        while process.poll() is None:
            peak_pss = max(peak_pss, tree_pss_mb(process.pid))
            time.sleep(0.25)
        stdout.seek(0)
        stderr.seek(0)
        if process.returncode != 0:
            sys.exit(f"{mode} run on {csv_path} failed:\n{stderr.read()[-3000:]}")
        return {**json.loads(stdout.read().strip().splitlines()[-1]), "tree_pss_mb": peak_pss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="images in the smaller set (default 500; at least 430, "
                                                               "so validation fills one scoring batch of 64)")
    parser.add_argument("--factor", type=int, default=4, help="the larger set is N x FACTOR images (default 4)")
    parser.add_argument("--source-size", type=int, default=1024, help="side of the generated PNGs (default 1024)")
    parser.add_argument("--image-size", type=int, default=128, help="model input side (default 128)")
    parser.add_argument("--arch", default="compact")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the images here (default: a temp folder)")
    parser.add_argument("--save", type=Path, default=None, help="also write the report to this file")
    parser.add_argument("--rounds", type=int, default=2, help="back-to-back epoch comparisons on the larger set "
                                                              "(default 2)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--csv", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["streamed", "in memory"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        compare_epochs(args) if args.compare else child(args)
        return

    from rich.console import Console
    from rich.table import Table

    from pneumoscan.data.streaming import default_workers

    workers = default_workers()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="pneumoscan-scale-") as temporary:
        folder = args.workdir or Path(temporary)
        sizes = [args.n, args.n * args.factor]
        generated_s = generate(folder, sizes[-1], args.source_size, workers)
        png_mb = sum(p.stat().st_size for p in (folder / "images").glob("*.png")) / 1e6
        rows = []
        for count in sizes:
            csv_path = write_csv(folder, count)
            for mode in ("streamed", "in memory"):  # streamed first: it builds the (cold) cache for this size
                result = measure(csv_path, mode, folder / f"cache-{count}", folder / f"run-{count}-{mode[:2]}", args)
                rows.append((count, mode, result))
        compared = run_json([sys.executable, str(SCRIPT), "--child", "--compare", "--csv", str(csv_path), "--arch",
                             args.arch, "--image-size", str(args.image_size), "--rounds", str(args.rounds)],
                            folder / f"cache-{sizes[-1]}")

    console = Console(record=True, width=180)
    table = Table(title=f"{args.arch} @ {args.image_size} px, fp32, 1 epoch + packaging, from {args.source_size}x"
                        f"{args.source_size} PNGs ({png_mb / sizes[-1]:.2f} MB each); {workers} data workers, "
                        f"{os.cpu_count()} CPUs")
    for column in ("images", "path", "prepare img/s", "epoch img/s", "batches alone img/s", "packaging s",
                   "decoded set MB", "peak RSS MB: prepared", "+ epoch", "+ packaging", "anon PSS with workers MB"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for count, mode, result in rows:
        what = "cold" if mode == "streamed" else "warm"
        decoded_mb = result["images"] * args.image_size**2 / 1e6
        table.add_row(str(count), mode, f"{result['prepare_rate']:.0f} {what}", f"{result['epoch_rate']:.0f}",
                      f"{result['read_rate']:.0f}", f"{result['package_s']:.1f}", f"{decoded_mb:.1f}",
                      f"{result['prepared_mb']:.0f}", f"{result['trained_mb']:.0f}", f"{result['peak_mb']:.0f}",
                      f"{result['tree_pss_mb']:.0f}")
    console.print(table)
    console.print("prepare: all of prepare_data (read the CSV, carve validation, decode); streamed builds a cold cache "
                  "in worker processes, in memory then loads the warm one. batches alone: one pass of iter_batches "
                  "over the epoch order, no model.", highlight=False)
    found = {(count, mode): result for count, mode, result in rows}
    added = (sizes[1] - sizes[0]) / 1000
    for mode in ("streamed", "in memory"):
        small, large = found[(sizes[0], mode)], found[(sizes[1], mode)]
        growth = ", ".join(f"{label} {(large[key] - small[key]) / added:+.0f}"
                           for label, key in (("prepared", "prepared_mb"), ("+ epoch", "trained_mb"),
                                              ("+ packaging", "peak_mb"), ("with workers", "tree_pss_mb")))
        console.print(f"{mode}: peak memory growth from {sizes[0]} to {sizes[1]} images, MB per 1000 images: {growth}",
                      highlight=False)
    console.print(f"epoch img/s on {sizes[-1]} images, both paths alternated in one process ({args.rounds} rounds, "
                  "so other load hits both alike): " + "; ".join(
                      f"{mode} {', '.join(f'{rate:.0f}' for rate in rates)}" for mode, rates in compared.items()),
                  highlight=False)
    console.print(f"generating {sizes[-1]} PNGs took {generated_s:.0f} s; load average {load_before:.1f} before, "
                  f"{os.getloadavg()[0]:.1f} after (other work on the machine slows the throughput figures)",
                  highlight=False)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(console.export_text())


if __name__ == "__main__":
    main()
