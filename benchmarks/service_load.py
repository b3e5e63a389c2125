"""Load test of `pneumoscan serve` from a second process on 127.0.0.1: requests/s, p50/p99 latency, errors,
and the server's peak memory, at several concurrency levels (concurrency 1 is the baseline of the run).

    .venv/bin/python benchmarks/service_load.py [--model default] [--exported FILE.onnx] [--requests 2000]
        [--concurrency 1 8 32] [--image runs/...jpeg]

Starts the server as its own process (the way a deployment runs it), waits for /health, then sends
`--requests` POST /v1/predict requests of one 224x224 JPEG each per concurrency level from an asyncio
client (httpx) in this process. Latency is measured per request by the client; peak RSS is the
server's VmHWM from /proc. On one 2-core machine the load generator competes with the server for the
same cores: the figures are a floor for a server with its own machine.
"""

import argparse
import asyncio
import io
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the service-as-a-process helper
from service_process import running_service  # noqa: E402


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _jpeg(path: str | None) -> bytes:
    if path:
        image = Image.open(path).convert("L").resize((224, 224))
    else:  # a film-like synthetic image when no X-ray is given
        rng = np.random.default_rng(0)
        image = Image.fromarray((rng.random((224, 224)) * 80 + 90).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


async def _load(url: str, content: bytes, requests: int, concurrency: int) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    remaining = requests
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as client:
        async def worker() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                try:
                    response = await client.post("/v1/predict", files={"files": ("film.jpeg", content, "image/jpeg")})
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append((time.perf_counter() - started) * 1000)
                errors += not ok

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return latencies, errors, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--exported", default=None, help="serve with this exported .onnx file (ONNX Runtime)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--image", default=None, help="a JPEG X-ray to send (default: a synthetic film-like image)")
    args = parser.parse_args()
    extra = ["--exported", args.exported] if args.exported else []
    with running_service(args.model, extra) as (url, pid):
        backend = httpx.get(f"{url}/health").json().get("backend", "torch")
        content = _jpeg(args.image)
        table = Table("concurrency", "requests", "requests/s", "p50 ms", "p99 ms", "errors", "server peak RSS MB",
                      title=f"pneumoscan serve --model {args.model} ({backend}), one 224x224 JPEG per request, "
                            "load generator on the same machine")
        for concurrency in args.concurrency:
            asyncio.run(_load(url, content, 20, concurrency))  # warm-up
            latencies, errors, seconds = asyncio.run(_load(url, content, args.requests, concurrency))
            table.add_row(str(concurrency), str(len(latencies)), f"{len(latencies) / seconds:.0f}",
                          f"{statistics.median(latencies):.0f}", f"{np.percentile(latencies, 99):.0f}", str(errors),
                          f"{_peak_rss_mb(pid):.0f}")
        Console(width=160).print(table)


if __name__ == "__main__":
    main()
