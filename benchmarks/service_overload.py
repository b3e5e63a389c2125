"""Overload and soak test of `pneumoscan serve` from a second process on 127.0.0.1: what the service answers
when more clients come than it can serve in time, and whether its memory stays flat over many requests.

    .venv/bin/python benchmarks/service_overload.py [--model default] [--exported FILE.onnx] [--data FOLDER]
        [--films 120] [--requests 2000] [--concurrency 8 64 256] [--soak 20000] [--soak-concurrency 16]
        [--serve-args "--latency-budget-ms 300"] [--honour-retry-after]

Starts the server as its own process (the way a deployment runs it), then sends POST /v1/predict
requests of one film each, cycling through `--films` distinct 224x224 JPEGs: synthetic film-like
radiographs (pneumoscan.data.synthetic, rendered in memory) or, with `--data`, real films found under
that folder (read, never copied). Every film is first scored once at concurrency 1: the reference
answer. Per concurrency level it reports requests, 200s, 503s (and how many carried Retry-After), any
other status or transport error, p50/p99 latency of the 200s, requests/s, whether every 200 matched
its film's reference probability (within 1e-5), and the server's peak RSS (VmHWM). By default a client
that gets 503 sends its next request at once (the hardest case for the server); with
`--honour-retry-after` it waits the announced seconds first. `--soak N` then sends N more requests at
`--soak-concurrency`, sampling the server's RSS every second: first, last and peak (flat = no growth
beyond noise). The load generator shares the machine's cores with the server: figures are a floor.
"""

import argparse
import asyncio
import collections
import io
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the service-as-a-process helper
from service_process import running_service  # noqa: E402


def _proc_kb(pid: int, field_name: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((224, 224)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def films(count: int, data: str | None) -> list[bytes]:
    """`count` distinct film JPEGs: real ones from `data` (sorted, every k-th), or synthetic ones."""
    if data:
        paths = sorted(p for p in Path(data).rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        if len(paths) < count:
            raise SystemExit(f"{data}: {len(paths)} images, fewer than --films {count}")
        return [_jpeg(np.asarray(Image.open(p).convert("L"))) for p in paths[:: len(paths) // count][:count]]
    from pneumoscan.data.synthetic import render

    return [_jpeg(render([7, i, 1], 224, i % 2 == 1, 0.5, [7, i])[0]) for i in range(count)]


@dataclass
class Level:
    """What one load level saw."""

    concurrency: int
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    ok_ms: list[float] = field(default_factory=list)
    retry_after: int = 0
    wrong: int = 0
    seconds: float = 0.0


async def _one(client: httpx.AsyncClient, index: int, content: bytes) -> tuple[str, float, httpx.Response | None]:
    started = time.perf_counter()
    try:
        response = await client.post("/v1/predict", files={"files": (f"film{index}.jpeg", content, "image/jpeg")})
        return str(response.status_code), (time.perf_counter() - started) * 1000, response
    except httpx.HTTPError as error:
        return type(error).__name__, (time.perf_counter() - started) * 1000, None


async def load(url: str, catalogue: list[bytes], reference: list[float] | None, requests: int, concurrency: int,
               honour_retry_after: bool = False) -> Level:
    """`requests` requests from `concurrency` clients, each on its own connection (one httpx client each, made
    before the clock starts: one shared pool of many connections makes the load generator itself queue
    requests for seconds), each sending its next request when answered."""
    level, counter = Level(concurrency), iter(range(requests))
    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [httpx.AsyncClient(base_url=url, timeout=120.0, limits=one) for _ in range(concurrency)]

    async def worker(client: httpx.AsyncClient) -> None:
        async with client:
            for n in counter:
                index = n % len(catalogue)
                status, ms, response = await _one(client, index, catalogue[index])
                level.statuses[status] += 1
                if status == "200" and response is not None:
                    level.ok_ms.append(ms)
                    probability = response.json()["results"][0]["probability"]
                    level.wrong += reference is not None and abs(probability - reference[index]) > 1e-5
                elif status == "503" and response is not None and "retry-after" in response.headers:
                    level.retry_after += 1
                    if honour_retry_after:
                        await asyncio.sleep(float(response.headers["retry-after"]))

    started = time.perf_counter()
    await asyncio.gather(*(worker(client) for client in clients))
    level.seconds = time.perf_counter() - started
    return level


async def _soak(url: str, catalogue: list[bytes], reference: list[float], requests: int, concurrency: int,
                pid: int) -> tuple[Level, list[float]]:
    """The soak run, with the server's RSS sampled every second while it lasts."""
    samples: list[float] = [_proc_kb(pid, "VmRSS")]
    task = asyncio.ensure_future(load(url, catalogue, reference, requests, concurrency))
    while not task.done():
        await asyncio.wait({task}, timeout=1.0)
        samples.append(_proc_kb(pid, "VmRSS"))
    return task.result(), samples


def _row(level: Level, pid: int) -> list[str]:
    other = {k: v for k, v in level.statuses.items() if k not in ("200", "503")}
    ok = level.ok_ms or [float("nan")]
    answered = sum(level.statuses.values())
    return [str(level.concurrency), str(answered), str(level.statuses["200"]),
            f"{level.statuses['503']} ({level.retry_after})", ", ".join(f"{k}: {v}" for k, v in other.items()) or "0",
            f"{statistics.median(ok):.0f}", f"{np.percentile(ok, 99):.0f}", f"{answered / level.seconds:.0f}",
            f"{level.statuses['200'] / level.seconds:.0f}", "yes" if level.wrong == 0 else f"NO: {level.wrong} wrong",
            f"{_proc_kb(pid, 'VmHWM'):.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--exported", default=None, help="serve with this exported .onnx file (ONNX Runtime)")
    parser.add_argument("--data", default=None, help="a folder of real films to send (default: synthetic films)")
    parser.add_argument("--films", type=int, default=120)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="*", default=[8, 64, 256])
    parser.add_argument("--soak", type=int, default=0, help="requests of the soak run (0: none)")
    parser.add_argument("--soak-concurrency", type=int, default=16)
    parser.add_argument("--serve-args", default="", help="more `pneumoscan serve` options, as one string")
    parser.add_argument("--honour-retry-after", action="store_true")
    args = parser.parse_args()
    extra = (["--exported", args.exported] if args.exported else []) + shlex.split(args.serve_args)
    catalogue = films(args.films, args.data)
    console = Console(width=170)
    with running_service(args.model, extra) as (url, pid):
        backend = httpx.get(f"{url}/health").json().get("backend", "torch")
        first = asyncio.run(load(url, catalogue, None, len(catalogue), 1))  # warm-up, then the references
        assert first.statuses == {"200": len(catalogue)}, first.statuses
        reference = [httpx.post(f"{url}/v1/predict", files={"files": ("f.jpeg", c, "image/jpeg")}
                                ).json()["results"][0]["probability"] for c in catalogue]
        table = Table("concurrency", "requests", "200", "503 (Retry-After)", "other", "p50 ms (200)",
                      "p99 ms (200)", "requests/s", "200/s", "every 200 right", "server peak RSS MB",
                      title=f"pneumoscan serve --model {args.model} ({backend}) {args.serve_args}, "
                            f"{len(catalogue)} distinct films, load generator on the same machine")
        for concurrency in args.concurrency:
            level = asyncio.run(load(url, catalogue, reference, args.requests, concurrency, args.honour_retry_after))
            table.add_row(*_row(level, pid))
        console.print(table)
        if args.soak:
            level, rss = asyncio.run(_soak(url, catalogue, reference, args.soak, args.soak_concurrency, pid))
            soak = Table("requests", "concurrency", "200", "503", "other", "p99 ms (200)", "every 200 right",
                         "RSS first MB", "RSS last MB", "RSS peak MB", "minutes",
                         title="soak: the server's RSS sampled every second")
            row = _row(level, pid)
            soak.add_row(row[1], row[0], row[2], row[3], row[4], row[6], row[9], f"{rss[0]:.0f}", f"{rss[-1]:.0f}",
                         f"{max(rss):.0f}", f"{level.seconds / 60:.1f}")
            console.print(soak)


if __name__ == "__main__":
    main()
