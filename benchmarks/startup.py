"""Start-up: a cold `pneumoscan predict` of one film, and `pneumoscan serve`'s time to its first answer, through ONNX
Runtime (the default) and PyTorch (`--engine torch`), against `import torch` alone, in one run.

    .venv/bin/python benchmarks/startup.py [--model default] [--film X.jpeg] [--repeats 5]

Every measurement is a new process (as a user's command is), the variants taking turns repeat by repeat so that
the host's noise falls on all of them alike; medians (and the range) are reported. "first answer" is the time from
starting `serve` to the first 200 of POST /v1/predict with the film (the client polls /health every 20 ms). The
graph a model needs is made once before timing (the shipped model carries its own).
"""

import argparse
import io
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the service-as-a-process helper
from service_process import free_port  # noqa: E402


def _timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def _first_answer(model: str, engine: str, film: bytes) -> float:
    port = free_port()
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "pneumoscan", "serve", "--model", model, "--engine", engine,
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}/v1/predict", files=[("files", ("f.jpeg", film))],
                                    timeout=30)
                if answer.status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            if server.poll() is not None:
                raise SystemExit(f"serve --engine {engine} exited with {server.returncode}")
            time.sleep(0.02)
    finally:
        server.terminate()
        server.wait(timeout=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--film", type=Path, default=None, help="an X-ray (default: a synthetic film)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.film is None:
        from pneumoscan.data.synthetic import SyntheticSource, SyntheticSpec

        source = SyntheticSource(SyntheticSpec(n_per_class=2, size=224, seed=0))
        pixels = source.read(source.splits["train"][0], 224)
        args.film = Path("/tmp/pneumoscan-startup-film.png")
        Image.fromarray(np.asarray(pixels)).save(args.film)
    buffer = io.BytesIO()
    Image.open(args.film).convert("L").save(buffer, format="JPEG", quality=90)
    film = buffer.getvalue()
    predict = [sys.executable, "-m", "pneumoscan", "predict", "--model", args.model, str(args.film)]
    subprocess.run(predict, check=True, stdout=subprocess.DEVNULL)  # the graph made (or found) before timing
    variants = {
        "import torch (baseline)": lambda: _timed([sys.executable, "-c", "import torch"]),
        "predict, ONNX Runtime (default)": lambda: _timed(predict),
        "predict --engine torch": lambda: _timed([*predict, "--engine", "torch"]),
        "serve, first answer, ONNX Runtime": lambda: _first_answer(args.model, "auto", film),
        "serve --engine torch, first answer": lambda: _first_answer(args.model, "torch", film),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, measure in variants.items():
            times[name].append(measure())
    table = Table("what (a new process each time)", "median s", "min-max s",
                  title=f"start-up, --model {args.model}, {args.repeats} repeats, variants interleaved")
    for name, values in times.items():
        table.add_row(name, f"{statistics.median(values):.2f}", f"{min(values):.2f}-{max(values):.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
