"""Admission control for `pneumoscan serve`: bound the latency of the requests it answers, not just its memory.

A queue bounded only by memory (256 images) lets every request in and answers each one late: at 256
concurrent clients the last of them waits for the whole queue to drain. Here the service measures how fast
its scorer drains images (a moving average of images per second over recent batches, each batch timed
from the moment the scorer takes it to its results) and admits a request only while the work in flight
would drain within a latency budget:

    limit = clamp(rate x budget, min_in_flight, max_queue)
    admit a request of weight w  iff  in_flight + w <= limit  (or nothing is in flight)

`in_flight` counts, in images, every admitted request from the moment its headers arrive until its
answer is sent: uploading, decoding, queued, being scored, being explained. A request weighs one image
per file (its file count is known once its body is parsed, and added then); `?explain=true` adds
`explain_cost` per image, since a Grad-CAM pass costs several forward passes. An upload still arriving
after `budget` seconds (a slow or trickling client) stops counting until its body is complete: it
holds no scorer time, so it must not keep others out. A refused request is answered at once, before its
body is read: 503 with `Retry-After` = the seconds the work in flight needs to drain at the measured
rate, at least 1.

A body whose Content-Length is over the limit is answered 413 before admission. The ASGI middleware also
reads the body itself, so a body without Content-Length (chunked) is stopped and answered 413 as soon as it
passes the limit, and it watches the connection once the body is in: a
client that goes away cancels its request, whose images are then dropped before they are scored.
"""

import asyncio
import collections
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

TICKET = "pneumoscan.admission"  # the scope key under which the handler finds its request's ticket
_TRUE = {"1", "true", "on", "yes", "t", "y"}  # what FastAPI reads as a true boolean query parameter

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ThroughputMeter:
    """Images per second the scorer drains: the ratio of moving averages of images and seconds per batch, so
    a batch of 1 and a batch of 32 weigh by their size. `initial_rate` stands until the first batch is timed."""

    def __init__(self, initial_rate: float, smoothing: float = 0.2) -> None:
        self.smoothing = smoothing
        self._images, self._seconds = initial_rate, 1.0
        self.batches = 0

    @property
    def rate(self) -> float:
        return self._images / self._seconds

    def record(self, images: int, seconds: float) -> None:
        a = 1.0 if self.batches == 0 else self.smoothing  # the first measurement replaces the guess
        self._images += a * (images - self._images)
        self._seconds += a * (max(seconds, 1e-6) - self._seconds)
        self.batches += 1

    def timed(self, score: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """`score` (a batch of images -> per-image results), timed into this meter on every call."""
        def timed_score(images: Any) -> Any:
            started = time.perf_counter()
            results = score(images)
            self.record(len(images), time.perf_counter() - started)
            return results

        return timed_score


class Ticket:
    """One admitted request's share of the work in flight."""

    __slots__ = ("weight", "since", "body_done", "released", "admission")

    def __init__(self, admission: "Admission", weight: float) -> None:
        self.admission, self.weight, self.since = admission, weight, time.monotonic()
        self.body_done = self.released = False

    def add(self, weight: float) -> None:
        """More work than guessed at admission (more files than one): counted, never refused (the body is read)."""
        if not self.released and weight > 0:
            self.weight += weight
            if self.body_done:
                self.admission.working += weight
            elif self in self.admission._receiving:
                self.admission._receiving_weight += weight

    def body_received(self) -> None:
        self.admission._body_received(self)

    def release(self) -> None:
        self.admission._release(self)


class Admission:
    """The admission rule (module docstring): the work in flight against what the scorer drains in `budget_s`."""

    def __init__(self, meter: ThroughputMeter, budget_s: float, min_in_flight: int, max_in_flight: int,
                 explain_cost: float) -> None:
        self.meter, self.budget_s, self.explain_cost = meter, budget_s, explain_cost
        self.min_in_flight, self.max_in_flight = min_in_flight, max(min_in_flight, max_in_flight)
        self.working = 0.0  # weight of requests whose body is in
        self._receiving: collections.OrderedDict[Ticket, None] = collections.OrderedDict()  # oldest first
        self._receiving_weight = 0.0  # of those still within `budget_s` of their arrival
        self.admitted = self.refused = 0

    @property
    def limit(self) -> int:
        return int(min(self.max_in_flight, max(self.min_in_flight, self.meter.rate * self.budget_s)))

    @property
    def in_flight(self) -> float:
        self._expire()
        return self.working + self._receiving_weight

    def retry_after(self) -> int:
        """Whole seconds the work in flight needs to drain at the measured rate (at least 1, at most 60)."""
        return int(min(60, max(1, math.ceil(self.in_flight / max(self.meter.rate, 1e-3)))))

    def try_admit(self, weight: float) -> Ticket | None:
        in_flight = self.in_flight
        if in_flight > 0 and in_flight + weight > self.limit:
            self.refused += 1
            return None
        ticket = Ticket(self, weight)
        self._receiving[ticket] = None
        self._receiving_weight += weight
        self.admitted += 1
        return ticket

    def _expire(self) -> None:
        """Uploads arriving for longer than the budget stop counting (they are slow clients, not work)."""
        horizon = time.monotonic() - self.budget_s
        while self._receiving:
            ticket = next(iter(self._receiving))
            if ticket.since > horizon:
                break
            del self._receiving[ticket]
            self._receiving_weight -= ticket.weight

    def _forget_receiving(self, ticket: Ticket) -> None:
        if ticket in self._receiving:  # else it had already stopped counting (`_expire`)
            del self._receiving[ticket]
            self._receiving_weight -= ticket.weight

    def _body_received(self, ticket: Ticket) -> None:
        if ticket.released or ticket.body_done:
            return
        ticket.body_done = True
        self._forget_receiving(ticket)
        self.working += ticket.weight

    def _release(self, ticket: Ticket) -> None:
        if ticket.released:
            return
        ticket.released = True
        if ticket.body_done:
            self.working -= ticket.weight
        else:
            self._forget_receiving(ticket)
        if not self._receiving and self.working < 1e-9:  # no drift from float sums: idle is exactly zero
            self.working = self._receiving_weight = 0.0


def explain_requested(scope: Scope) -> bool:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("explain", [])
    return bool(values) and values[-1].strip().lower() in _TRUE


def declared_length(scope: Scope) -> int:
    """The request's Content-Length, 0 when it declares none (or a malformed one: the body limit still holds)."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            return int(value) if value.strip().isdigit() else 0
    return 0


async def answer_json(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class AdmissionMiddleware:
    """Pure ASGI middleware on POST to `paths`: admit or refuse (503) before the body is read, read the body
    with a size limit (413 once it is passed, Content-Length or not), then run the app on the buffered body
    while watching for the client's disconnect (which cancels the request)."""

    def __init__(self, app: Any, admission: Admission, max_body_bytes: int, paths: frozenset[str]) -> None:
        self.app, self.admission, self.max_body_bytes, self.paths = app, admission, max_body_bytes, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        length = declared_length(scope)
        if length > self.max_body_bytes:  # refused before admission and before a byte of the body is read
            await answer_json(send, 413, f"request of {length:,} bytes is over the limit of {self.max_body_bytes:,} "
                                         "bytes", [(b"connection", b"close")])
            return
        weight = 1.0 + (self.admission.explain_cost if explain_requested(scope) else 0.0)
        ticket = self.admission.try_admit(weight)
        if ticket is None:
            seconds = self.admission.retry_after()
            await answer_json(send, 503, f"busy: more work in flight than the scorer drains in "
                                     f"{self.admission.budget_s:g} s; retry after {seconds} s",
                          [(b"retry-after", str(seconds).encode())])
            return
        try:
            chunks = await self._read_body(receive, send)
            if chunks is not None:
                ticket.body_received()
                scope[TICKET] = ticket
                await self._run_watched(scope, receive, send, chunks)
        finally:
            ticket.release()

    async def _read_body(self, receive: Receive, send: Send) -> collections.deque[bytes] | None:
        """The whole body, or None once answered (413) or the client is gone."""
        chunks: collections.deque[bytes] = collections.deque()
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                await answer_json(send, 499, "client closed the request")  # nobody reads it; the access log does
                return None
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_body_bytes:
                await answer_json(send, 413, f"request body over the limit of {self.max_body_bytes:,} bytes",
                              [(b"connection", b"close")])
                return None
            if body:
                chunks.append(body)
            if not message.get("more_body", False):
                return chunks

    async def _run_watched(self, scope: Scope, receive: Receive, send: Send, chunks: collections.deque[bytes]
                           ) -> None:
        """Run the app on the buffered body; if the client disconnects before the answer is sent, cancel it."""
        gone = asyncio.Event()
        started = False

        async def replay() -> Message:
            if chunks:
                return {"type": "http.request", "body": chunks.popleft(), "more_body": bool(chunks)}
            await gone.wait()  # the body was delivered: what is left to hear is the disconnect
            return {"type": "http.disconnect"}

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = True  # from now on the answer is on its way: let it finish
            await send(message)

        if not chunks:
            chunks.append(b"")
        async def disconnected() -> None:
            # a server may still hand over an empty last piece of the body before it can report a disconnect
            while (await receive())["type"] != "http.disconnect":
                pass

        app = asyncio.ensure_future(self.app(scope, replay, tracked_send))
        watcher = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({app, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not app.done() and not started:
                gone.set()
                app.cancel()
                try:
                    await app
                except asyncio.CancelledError:
                    pass
                await answer_json(send, 499, "client closed the request")  # for the access log; the client is gone
                return
            await app
        finally:
            watcher.cancel()
            if not app.done():
                app.cancel()
