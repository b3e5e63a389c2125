"""`pneumoscan serve` under overload, slow and vanishing clients, on 127.0.0.1 (issue 22, item 5): reduced versions
of benchmarks/service_overload.py with bounded request counts, on the tiny trained run."""

import asyncio
import io
import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TinyRun
from service_process import free_port, running_service

httpx = pytest.importorskip("httpx")


def _png(seed: int, size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _multipart(content: bytes, name: str = "film.png") -> tuple[bytes, str]:
    boundary = "pneumoscan-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _status_of(sock: socket.socket) -> int:
    return int(sock.recv(65536).split(b" ", 2)[1])


async def _clients(url: str, films: list[bytes], per_client: int, concurrency: int) -> list[tuple[int, int, dict]]:
    """(film index, status, answer) of every request: `concurrency` clients, one connection each."""
    answers: list[tuple[int, int, dict]] = []

    async def client(first: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60.0) as session:
            for n in range(per_client):
                index = (first + n) % len(films)
                response = await session.post("/v1/predict", files={"files": ("f.png", films[index], "image/png")})
                answers.append((index, response.status_code, {**response.json(), **dict(response.headers)}))

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return answers


def test_overload_answers_200_or_503_with_retry_after_and_every_200_is_right(tiny_run: TinyRun) -> None:
    films = [_png(seed) for seed in range(16)]
    with running_service(str(tiny_run.out_dir), ["--max-queue", "4"]) as (url, _):
        reference = [httpx.post(f"{url}/v1/predict", files={"files": ("f.png", f, "image/png")}).json()
                     ["results"][0]["probability"] for f in films]
        answers = asyncio.run(_clients(url, films, per_client=4, concurrency=64))
    statuses = [status for _, status, _ in answers]
    assert set(statuses) <= {200, 503} and statuses.count(503) > 0 and statuses.count(200) > 0, statuses
    for index, status, answer in answers:
        if status == 503:
            assert int(answer["retry-after"]) >= 1 and "busy" in answer["detail"]
        else:
            assert abs(answer["results"][0]["probability"] - reference[index]) <= 1e-5


def _trickle(url: str, count: int) -> list[socket.socket]:
    """`count` uploads that announce 1 MB and send a few bytes of it."""
    socks = []
    for _ in range(count):
        sock = _connect(url)
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 1000000\r\n\r\n--b\r\n")
        socks.append(sock)
    return socks


def _exited(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def test_trickling_uploads_do_not_hold_up_others_and_sigterm_is_bounded(tiny_run: TinyRun) -> None:
    body, kind = _multipart(_png(1))
    with running_service(str(tiny_run.out_dir), ["--shutdown-timeout-s", "3"]) as (url, pid):
        slow = _trickle(url, 40)
        time.sleep(0.3)
        started = time.perf_counter()
        assert httpx.post(f"{url}/v1/predict", files={"files": ("f.png", _png(2), "image/png")}).status_code == 200
        assert time.perf_counter() - started < 3.0  # the trickling uploads do not keep it waiting
        accepted = _connect(url)  # an accepted request whose body is still coming when SIGTERM arrives
        accepted.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:100])
        time.sleep(0.3)
        os.kill(pid, signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.3)
        accepted.sendall(body[100:])
        assert _status_of(accepted) == 200
        while not _exited(pid) and time.monotonic() - signalled < 15:
            time.sleep(0.1)
        assert _exited(pid) and time.monotonic() - signalled < 10.0
        for sock in [*slow, accepted]:
            sock.close()


def test_an_oversized_body_is_refused_413_with_or_without_content_length(tiny_run: TinyRun) -> None:
    with running_service(str(tiny_run.out_dir), ["--max-upload-mb", "0.01"]) as (url, _):  # body limit ~390 KB
        declared = _connect(url)
        declared.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                         b"Content-Length: 50000000\r\n\r\n")
        assert _status_of(declared) == 413  # answered before one byte of the body is sent
        chunked = _connect(url)
        chunked.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n")
        chunk, sent, status = b"%x\r\n" % 65536 + b"\0" * 65536 + b"\r\n", 0, None
        chunked.settimeout(0.05)
        while status is None and sent < 20_000_000:
            try:
                chunked.sendall(chunk)
                sent += 65536
                status = _status_of(chunked)
            except (TimeoutError, BlockingIOError):
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        chunked.settimeout(5)
        status = status or _status_of(chunked)
        assert status == 413 and sent < 2_000_000  # stopped soon after the limit, not at the end of the stream
        for sock in (declared, chunked):
            sock.close()


def _big_png() -> bytes:
    """A 49-megapixel PNG of a few MB: a fraction of a second to decode."""
    pixels = (np.add.outer(np.arange(7000), np.arange(7000)) % 251).astype(np.uint8)
    pixels[::7] = np.random.default_rng(0).integers(0, 255, (1000, 7000), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def test_a_big_upload_decodes_off_the_event_loop(tiny_run: TinyRun) -> None:
    big, small = [("files", (f"big{i}.png", _big_png(), "image/png")) for i in range(6)], _png(3)
    with running_service(str(tiny_run.out_dir), ["--latency-budget-ms", "60000"]) as (url, _):  # admit all
        with httpx.Client(base_url=url, timeout=60.0) as client:
            def post_small() -> float:
                started = time.perf_counter()
                assert client.post("/v1/predict", files={"files": ("s.png", small, "image/png")}).status_code == 200
                return time.perf_counter() - started

            baseline = sorted(post_small() for _ in range(5))[2]
            started = time.perf_counter()
            assert httpx.post(f"{url}/v1/predict", files=big, timeout=60.0).status_code == 200
            alone = time.perf_counter() - started
            done = threading.Event()
            thread = threading.Thread(target=lambda: (httpx.post(f"{url}/v1/predict", files=big, timeout=60.0),
                                                      done.set()))
            thread.start()
            during = []
            while not done.is_set():
                during.append(post_small())
            thread.join()
    # decoding on the loop would hold a small request for most of the big one's time (six decodes in a row)
    assert max(during) < max(0.5 * alone, 10 * baseline), (baseline, alone, during)


def test_clients_that_go_away_leave_nothing_queued(tiny_run: TinyRun) -> None:
    """In-process server on 127.0.0.1 (the test reads the batcher's counters), scoring slowed down so that a
    queue forms behind a first request; 12 clients send a film and hang up."""
    import uvicorn

    from pneumoscan.models.bundle import load_bundle
    from pneumoscan.serving.service import ServiceConfig, create_app

    app = create_app(load_bundle(tiny_run.out_dir), name="tiny", config=ServiceConfig(latency_budget_ms=60_000))
    batcher = app.state.batcher
    score = batcher.score
    batcher.score = lambda images: (time.sleep(0.5), score(images))[1]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        body, kind = _multipart(_png(4))
        request = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        first = _connect(f"http://127.0.0.1:{port}")
        first.sendall(request)  # keeps the scorer busy while the others queue
        time.sleep(0.1)
        socks = [_connect(f"http://127.0.0.1:{port}") for _ in range(12)]
        for sock in socks:
            sock.sendall(request)
        time.sleep(0.15)
        for sock in socks:
            sock.close()
        assert _status_of(first) == 200
        deadline = time.monotonic() + 10
        while (batcher.pending or app.state.admission.in_flight or batcher.scored + batcher.dropped < 13) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert batcher.pending == 0 and batcher.queue.empty() and app.state.admission.in_flight == 0
        assert batcher.dropped > 0 and batcher.scored < 13, (batcher.scored, batcher.dropped)
    finally:
        server.should_exit = True
        thread.join(10)
