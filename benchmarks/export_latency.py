"""Single-image latency and batch throughput: PyTorch eager (the baseline) against ONNX Runtime fp32 and INT8,
all measured in one run on the same images.

    .venv/bin/python benchmarks/export_latency.py [--model default] [--data runs/default-model/split.csv]
        [--split val] [--n-images 200] [--repeats 200] [--threads 2] [--against OTHER_BUNDLE ...]

Exports the model to a temporary folder first (`pneumoscan.serving.export`: fp32 ONNX, and INT8 twice, with the
shipped settings (7-bit weights, `INT8_SETTINGS`) and with the full-range int8 weights used before issue 22,
whose u8s8 pair sums saturate int16 on x86 CPUs without VNNI), and to TFLite where the optional extra
pneumoscan[tflite] is installed; scores `--n-images` films (a seeded random sample of the split, as `pneumoscan
export` draws it) with PyTorch and each file (label agreement, max |Δp|, and whether `pneumoscan export` would
refuse the file); then times each backend on those films: batch 1 (what one request costs; median and 95th
percentile over `--repeats` calls) and batch 32 (images per second). Every backend runs the whole
model including its preprocessing, from [0, 1] pixels to probabilities. `--against` adds other bundles'
ONNX fp32 exports (each fed the same films at its own input size) to the same interleaved run, e.g. a
new default against the one it replaces.
"""

import argparse
import importlib.util
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from pneumoscan.data.loading import load_split
from pneumoscan.models.bundle import Bundle, load_bundle
from pneumoscan.models.inference import predict_probabilities
from pneumoscan.serving.export import (
    INT8_FULL_RANGE,
    INT8_SETTINGS,
    Int8Settings,
    OnnxBackend,
    ParityReport,
    TfliteBackend,
    export_bundle,
    export_onnx,
    parity,
    parity_failure,
    quantize_int8,
)


def _describe(settings: Int8Settings) -> str:
    return (f"{'7-bit' if settings.reduce_range else 'full-range'} {settings.weight_type} weights "
            f"({'per channel, ' if settings.per_channel else ''}reduce_range={settings.reduce_range}), "
            f"{settings.activation_type} activations")


def _unchecked_export(bundle: Bundle, fmt: str, path: Path, images: torch.Tensor,
                      settings: Int8Settings | None) -> ParityReport:
    """The exported file and its comparison with PyTorch, *without* export_bundle's refusal: the benchmark measures
    settings that `pneumoscan export` would refuse (the old INT8 settings on a CPU without VNNI)."""
    started = time.perf_counter()
    if settings is None:
        export_onnx(bundle, path)
    else:
        fp32 = path.with_name(path.name + ".fp32.onnx")
        export_onnx(bundle, fp32, with_guard=False)
        quantize_int8(fp32, path, images.float().div(255.0).numpy(), settings)
    return replace(parity(bundle, path, fmt, images, time.perf_counter() - started), quantisation=settings)


def _int8_kernel() -> str:
    """Which u8s8 kernel ONNX Runtime picks on this CPU (Linux flags): the INT8 figures depend on it."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "CPU flags unknown"
    if flags & {"avx512_vnni", "avx_vnni"}:
        return "VNNI CPU (int32 sums)"
    return "CPU without VNNI (int16 pair sums)" if "avx2" in flags else "CPU without AVX2"


def interleaved(runs: list[Callable[[torch.Tensor], object]], one: torch.Tensor, batch: torch.Tensor,
                repeats: int) -> list[tuple[float, float, float]]:
    """Per backend (median ms, p95 ms) for batch 1 and images/s for the batch. The backends take turns call by
    call, so the shared host's noise falls on all of them alike."""
    for run in runs:
        for _ in range(5):
            run(one)
        run(batch)
    single: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for index, run in enumerate(runs):
            started = time.perf_counter()
            run(one)
            single[index].append((time.perf_counter() - started) * 1000)
    rounds = max(3, repeats // 20)
    seconds = [0.0] * len(runs)
    for _ in range(rounds):
        for index, run in enumerate(runs):
            started = time.perf_counter()
            run(batch)
            seconds[index] += time.perf_counter() - started
    return [(statistics.median(times), float(np.percentile(times, 95)), rounds * len(batch) / total)
            for times, total in zip(single, seconds, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", default="runs/default-model/split.csv")
    parser.add_argument("--split", default="val")
    parser.add_argument("--n-images", type=int, default=200, help="films scored (a seeded random sample of --split)")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2, help="threads for every backend (this machine: 2 cores)")
    parser.add_argument("--against", nargs="*", default=[], help="other bundles whose ONNX fp32 export is timed "
                                                               "in the same run (e.g. the previous default)")
    args = parser.parse_args()
    console = Console(width=170)
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.model)
    samples, _ = load_split(args.data, args.split, bundle.preprocess.image_size)
    pick = np.sort(np.random.default_rng(0).permutation(len(samples))[: args.n_images])  # as `pneumoscan export`
    images = samples.images[pick]
    one, batch = images[:1], images[:32]
    rows = [("PyTorch eager (baseline)", lambda x: predict_probabilities(bundle, x, batch_size=64), None)]
    with tempfile.TemporaryDirectory() as folder:
        for name, fmt, settings in (("ONNX Runtime fp32", "onnx", None),
                                    ("ONNX Runtime INT8 (shipped settings)", "onnx-int8", INT8_SETTINGS),
                                    ("ONNX Runtime INT8 (before issue 22)", "onnx-int8", INT8_FULL_RANGE)):
            path = Path(folder) / f"{len(rows)}.onnx"
            report = _unchecked_export(bundle, fmt, path, images, settings)
            backend = OnnxBackend(path, threads=args.threads)
            rows.append((name, backend.probabilities, report))
        for index, other_path in enumerate(args.against):
            other = load_bundle(other_path)
            films = load_split(args.data, args.split, other.preprocess.image_size)[0].images[pick]
            path = Path(folder) / f"against-{index}.onnx"
            report = _unchecked_export(other, "onnx", path, films, None)
            backend = OnnxBackend(path, threads=args.threads)

            def run_other(x: torch.Tensor, backend=backend, films=films) -> object:  # type: ignore[no-untyped-def]
                return backend.probabilities(films[:len(x)])  # the same films, at this bundle's own size

            rows.append((f"ONNX Runtime fp32: {other_path} ({other.manifest.arch}, "
                         f"{other.preprocess.image_size} px)", run_other, report))
        if importlib.util.find_spec("litert_torch") is not None:  # the optional extra pneumoscan[tflite]
            path = Path(folder) / "model.tflite"
            report = export_bundle(bundle, "tflite", path, images[:50])
            rows.append(("TFLite (LiteRT, batch 1 per call)", TfliteBackend(path).probabilities, report))
        table = Table("backend", "batch 1: median ms", "batch 1: p95 ms", "batch 32: images/s", "vs PyTorch (median)",
                      "max |Δp| vs PyTorch", "labels agree", "export check", "file MB",
                      title=f"{args.model} ({bundle.manifest.arch}, {bundle.preprocess.image_size} px), "
                            f"{args.threads} threads, {len(images)} {args.split} films, {_int8_kernel()}")
        measured = interleaved([run for _, run, _ in rows], one, batch, args.repeats)
        baseline = measured[0][0]
        for (name, _, report), (median, p95, per_second) in zip(rows, measured, strict=True):
            size = "" if report is None else f"{Path(report.file).stat().st_size / 1e6:.1f}"
            table.add_row(name, f"{median:.1f}", f"{p95:.1f}", f"{per_second:.0f}", f"{median / baseline:.2f}x",
                          "" if report is None else f"{report.max_abs_diff:.1e}",
                          "" if report is None else f"{report.label_agreement:.1%}",
                          "" if report is None else "refused" if parity_failure(report) else "passes", size)
    console.print(table)
    console.print(f"INT8 shipped settings: {_describe(INT8_SETTINGS)}; before issue 22: {_describe(INT8_FULL_RANGE)}. "
                  "export check: what `pneumoscan export` decides (fp32: max |Δp| <= 1e-4 and every label off the "
                  "threshold equal; INT8: labels agree on >= 99 %).", highlight=False)


if __name__ == "__main__":
    main()
