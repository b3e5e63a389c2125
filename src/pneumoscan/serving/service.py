"""`pneumoscan serve`: the model as a web service (FastAPI) with a page to drop X-rays on.

The model is loaded once. Uploads are decoded in memory by the same rules as the CLI
(pneumoscan.data.decode: JPEG, PNG, TIFF, BMP, WebP and DICOM by content, a pixel limit against
decompression bombs) and never written to disk. Inference runs off the event loop in one worker
thread, fed by a micro-batcher: requests that arrive within a short, bounded wait are scored as one
batch, so throughput grows with load. Uploads are decoded in a bounded thread pool, off the event
loop. Admission control (pneumoscan.serving.admission) keeps the answered requests' latency bounded:
a request is admitted only while the work in flight would drain within a latency budget at the
scorer's measured rate, and is otherwise answered 503 with Retry-After at once, before its body is
read; a hard bound on queued images caps memory. Access logs are one JSON line per request
(method, path, status, files, bytes, milliseconds, the id of the API key used) with no file names, pixel
data, keys or DICOM header values.

With a key store (pneumoscan.serving.keys), every path but the page and /health needs an API key, and each
key has a rate limit (pneumoscan.serving.auth): 401, then 429, then admission's 503, in that order. CORS is
off unless origins are named.

Errors are JSON `{"detail": ...}` with the status that says what was wrong: 413 an upload over the
size limit, 415 a type that is not an accepted image, 422 an unreadable image, an image over the
pixel limit, or a request without files. A request with several files answers 200 with a per-file
`error` for the bad ones, unless none could be read.
"""

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan import __version__
from pneumoscan.data.decode import MAX_PIXELS, decode_with_notes
from pneumoscan.errors import ImageDecodeError
from pneumoscan.models.manifest import Manifest
from pneumoscan.serving.admission import TICKET, Admission, AdmissionMiddleware, ThroughputMeter, declared_length
from pneumoscan.serving.auth import KEY_ID, KeyGate
from pneumoscan.serving.keys import KeyStore
from pneumoscan.serving.ratelimit import RateLimiter

ACCESS_LOG = logging.getLogger("pneumoscan.access")
STATUS_FOR_KIND = {"unsupported": 415, "too_large": 422, "unreadable": 422}
INTENDED_USE = ("Research and education only: not a medical device and not a diagnosis. Trained on paediatric "
                "chest X-rays (Guangzhou, Kermany et al. 2018); films unlike those (e.g. adults) are flagged as out of "
                "distribution and their labels should not be trusted.")


@dataclass(frozen=True)
class ServiceConfig:
    max_upload_bytes: int = 20 * 1024 * 1024  # per file
    max_files: int = 32  # per request
    max_pixels: int = MAX_PIXELS  # declared pixels per image (decompression-bomb guard)
    max_batch: int = 32  # images scored together
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for others
    max_queue: int = 256  # images waiting; beyond this, 503 with Retry-After (the memory bound)
    # admission (pneumoscan.serving.admission): work in flight at most what the scorer drains in this budget
    latency_budget_ms: float = 150.0  # 250 let p99 reach 0.98 s at 64 clients on 2 cores (ONNX Runtime)
    min_in_flight: int = 8  # images always admitted, whatever the measured rate (no collapse under contention)
    initial_rate: float = 20.0  # images/s assumed until the first batch is timed
    explain_cost: float = 4.0  # extra weight of an image with ?explain=true (Grad-CAM: forward and backward)
    decode_threads: int = 2  # uploads decoded at once, off the event loop
    rate_limit_per_minute: float = 600.0  # requests a minute per API key (0: off); only with keys
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API from their pages; none: CORS off

    @property
    def max_body_bytes(self) -> int:
        """The largest request body read: every file at the limit, plus room for the multipart framing."""
        return self.max_upload_bytes * self.max_files + 65536


@dataclass(frozen=True)
class Scored:
    probability: float
    ood_score: float | None


class Overloaded(Exception):
    """The queue is full: the client should retry later."""


class MicroBatcher:
    """Collects images from concurrent requests and scores them in batches, one batch at a time, in a thread."""

    def __init__(self, score: Callable[[np.ndarray], list[Scored]], max_batch: int, max_wait_ms: float,
                 max_queue: int) -> None:
        self.score, self.max_batch, self.max_wait = score, max_batch, max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[list[Scored]]]] = asyncio.Queue()
        self.pending = 0  # images queued or being scored
        self.batches = 0  # batches scored so far (how well requests were merged)
        self.scored = self.dropped = 0  # images scored; images dropped unscored (their request was cancelled)
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()

    async def submit(self, images: np.ndarray) -> list[Scored]:
        if self.pending + len(images) > self.max_queue:
            raise Overloaded
        self.pending += len(images)
        future: asyncio.Future[list[Scored]] = asyncio.get_running_loop().create_future()
        await self.queue.put((images, future))
        try:
            return await future
        finally:
            self.pending -= len(images)

    def _live(self, items: list[tuple[np.ndarray, asyncio.Future[list[Scored]]]]
              ) -> list[tuple[np.ndarray, asyncio.Future[list[Scored]]]]:
        """The items whose request still waits: a cancelled one (its client went away) is not scored."""
        live = [item for item in items if not item[1].done()]
        self.dropped += sum(len(images) for images, future in items if future.done())
        return live

    async def _run(self) -> None:
        while True:
            items = [await self.queue.get()]
            count = len(items[0][0])
            deadline = time.perf_counter() + self.max_wait
            while count < self.max_batch:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
                items.append(item)
                count += len(item[0])
            items = self._live(items)
            if not items:
                continue
            batch = np.concatenate([images for images, _ in items])
            self.scored += len(batch)
            try:
                results = await asyncio.to_thread(self.score, batch)
            except Exception as error:  # a scoring failure must fail its requests, not the worker
                for _, future in items:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.batches += 1
            start = 0
            for images, future in items:
                if not future.done():
                    future.set_result(results[start : start + len(images)])
                start += len(images)


def _scorer(engine: Any) -> Callable[[np.ndarray], list[Scored]]:
    """Probabilities and guard scores from the engine (ONNX Runtime by default; pneumoscan.serving.engine)."""
    def score(images: np.ndarray) -> list[Scored]:
        scores = engine.score(images)
        if scores.ood_scores is None:
            return [Scored(float(p), None) for p in scores.probabilities]
        return [Scored(float(p), float(s)) for p, s in zip(scores.probabilities, scores.ood_scores, strict=True)]

    return score


def model_summary(manifest: Manifest, name: str, engine: Any = None) -> dict[str, Any]:
    """What `GET /v1/model` answers: enough to know what the model is, how it decides and what runs it."""
    validation = manifest.validation
    members = manifest.arch_kwargs.get("members") or []
    return {
        "name": name, "arch": manifest.arch, "input": {"size": manifest.preprocess.image_size, "channels": 1,
                                                       "preprocessing": asdict(manifest.preprocess)},
        "threshold": manifest.threshold, "threshold_policy": manifest.threshold_policy,
        "class_names": manifest.class_names, "weights_sha256": manifest.weights_sha256,
        "members": [{"arch": m["arch"], "image_size": m["preprocess"]["image_size"],
                     "intensity": m["preprocess"].get("intensity", "none")} for m in members],
        "adapted": None if manifest.adaptation is None else asdict(manifest.adaptation),
        "validation": None if validation is None else {
            "metrics": {k: v for k, v in asdict(validation.metrics).items() if k != "confusion"},
            "note": "patient-grouped validation split of the training data, not an independent test"},
        "out_of_distribution_guard": manifest.ood is not None, "versions": manifest.versions,
        "created": manifest.created, "intended_use": INTENDED_USE,
        "engine": None if engine is None else engine.info.to_dict(),
    }


@dataclass
class DecodedUploads:
    """Each uploaded file's pixels (None where it could not be read), its (status, reason) error or None, and the
    notes on files read only in part (e.g. one frame of a multi-frame DICOM)."""

    pixels: list[np.ndarray | None]
    errors: list[tuple[int, str] | None]
    notes: dict[int, list[str]]

    @property
    def readable(self) -> list[int]:
        return [i for i, pixels in enumerate(self.pixels) if pixels is not None]


def _decode_one(label: str, content: bytes, size: int, max_pixels: int
                ) -> tuple[np.ndarray | None, tuple[int, str] | None, list[str]]:
    """One upload's (pixels, error, notes), in a worker thread."""
    try:
        pixels, notes = decode_with_notes(Path(label), size, content, max_pixels=max_pixels)
        return pixels, None, notes
    except ImageDecodeError as error:
        return None, (STATUS_FOR_KIND.get(error.kind, 422), f"{label}: {error.reason}"), []


async def decode_uploads(files: list[Any], config: ServiceConfig, size: int,
                         executor: Executor | None = None) -> DecodedUploads:
    """Read and decode every upload, each on its own: one bad file never stops the others. Decoding runs in
    `executor` (a bounded pool; the loop's default one if None), never on the event loop: a 20 MB PNG takes
    a fraction of a second to decode, and other clients must not wait for it."""
    loop = asyncio.get_running_loop()
    decoded = DecodedUploads([], [], {})
    for index, upload in enumerate(files):
        label = upload.filename or f"file {index + 1}"
        content = await upload.read(config.max_upload_bytes + 1)
        if len(content) > config.max_upload_bytes:
            decoded.pixels.append(None)
            decoded.errors.append((413, f"{label}: over the upload limit of {config.max_upload_bytes:,} bytes"))
            continue
        pixels, error, notes = await loop.run_in_executor(executor, _decode_one, label, content, size,
                                                          config.max_pixels)
        decoded.pixels.append(pixels)
        decoded.errors.append(error)
        if error is None:
            decoded.notes[index] = notes
    return decoded


def result_rows(engine: Any, files: list[Any], decoded: DecodedUploads, scored: list[Scored],
                overlays: list[str | None], explain: bool) -> list[dict[str, Any]]:
    """One answer per uploaded file, in upload order: its result, or its error and status."""
    manifest = engine.manifest
    threshold = manifest.threshold
    by_index = dict(zip(decoded.readable, zip(scored, overlays, strict=True), strict=True))
    results = []
    for index, upload in enumerate(files):
        entry: dict[str, Any] = {"file": upload.filename or f"file {index + 1}"}
        error = decoded.errors[index]
        if error is not None:
            entry.update(error=error[1], status=error[0])
        else:
            result, overlay = by_index[index]
            entry.update(probability=result.probability,
                         label=manifest.class_names[int(result.probability >= threshold)],
                         threshold=threshold,
                         in_distribution=None if result.ood_score is None
                         else bool(result.ood_score <= engine.guard.threshold),
                         ood_score=result.ood_score)
            if decoded.notes.get(index):
                entry["warnings"] = decoded.notes[index]
            if explain:
                entry["gradcam_png_base64"] = overlay
        results.append(entry)
    return results


def _info_router(engine: Any, name: str, auth: str = "none") -> Any:
    """GET /, /health and /v1/model: the page and what is being served; /health also says whether an API key is
    needed (`auth`: "bearer" or "none"), which the page reads to ask for one."""
    from fastapi import APIRouter
    from fastapi.responses import HTMLResponse

    router = APIRouter()
    page = (resources.files("pneumoscan.serving") / "static" / "index.html").read_text(encoding="utf-8")

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @router.get("/health")
    async def health() -> dict[str, Any]:
        info = engine.info
        return {"status": "ok", "ready": True, "model": name, "arch": engine.manifest.arch, "version": __version__,
                "auth": auth, "engine": info.name, "engine_detail": info.to_dict(),
                "backend": info.name if info.file is None else f"{info.name} ({Path(info.file).name})"}  # deprecated

    @router.get("/v1/model")
    async def model() -> dict[str, Any]:
        return model_summary(engine.manifest, name, engine)

    return router


def _predict_router(engine: Any, name: str, config: ServiceConfig, batcher: MicroBatcher,
                    decoder: Executor | None = None) -> Any:
    """POST /v1/predict: decode each upload, score the readable ones in a shared micro-batch, answer per file."""
    from fastapi import APIRouter, File, HTTPException, Query, Request, UploadFile

    router = APIRouter()

    @router.post("/v1/predict")
    async def predict(request: Request, files: list[UploadFile] = File(...),  # noqa: B008 (FastAPI's idiom)
                      explain: bool = Query(False, description="add a Grad-CAM overlay PNG (base64) per image")
                      ) -> dict[str, Any]:
        request.state.files = len(files)
        if not files:
            raise HTTPException(422, "no files: send one or more images in the multipart field 'files'")
        if len(files) > config.max_files:
            raise HTTPException(413, f"{len(files)} files: at most {config.max_files} per request")
        ticket = request.scope.get(TICKET)
        if ticket is not None:  # admitted as one image: count the others too
            ticket.add((len(files) - 1) * ticket.weight)
        decoded = await decode_uploads(files, config, engine.manifest.preprocess.image_size, decoder)
        if not decoded.readable:
            status, detail = next(e for e in decoded.errors if e is not None)
            raise HTTPException(status, detail if len(files) == 1 else f"no file could be read; first: {detail}")
        images = np.stack([decoded.pixels[i] for i in decoded.readable])[:, None]
        try:
            scored = await batcher.submit(images)
        except Overloaded:
            raise HTTPException(503, "busy: too many images waiting; retry shortly",
                                headers={"Retry-After": "1"}) from None
        overlays: list[str | None] = [None] * len(images)
        if explain:
            maps = await asyncio.to_thread(_heatmaps, engine, images)
            from pneumoscan.serving.explain import overlay_png

            overlays = [base64.b64encode(overlay_png(images[i, 0], maps[i])).decode("ascii")
                        for i in range(len(images))]
        return {"model": name, "engine": engine.info.name,
                "results": result_rows(engine, files, decoded, scored, overlays, explain)}

    return router


def _heatmaps(engine: Any, images: np.ndarray) -> np.ndarray:
    """Grad-CAM needs the network in PyTorch: the engine's bundle (loaded on the first explained request behind ONNX
    Runtime)."""
    import torch

    from pneumoscan.serving.explain import heatmaps_for

    return heatmaps_for(engine.torch_bundle(), torch.from_numpy(images))


class AccessLog:
    """Pure ASGI middleware (no per-request task group, unlike Starlette's BaseHTTPMiddleware: it is on every
    request, refused ones included, so it must be cheap under overload) that logs every request as one JSON
    line (method, path, status, bytes, files, milliseconds, the id of the API key that authenticated it or
    null; never a file name, a key or its digest). It is the outermost layer, so 401, 429, 503, 413 and 499
    answers are logged too."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        length = declared_length(scope)

        async def logged_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            ACCESS_LOG.info(json.dumps({"method": scope["method"], "path": scope["path"], "status": status,
                                        "bytes": length, "files": scope.get("state", {}).get("files"),
                                        "key": scope.get(KEY_ID),
                                        "ms": round(1000 * (time.perf_counter() - started), 1)}))


def create_app(model: Any, name: str = "default", config: ServiceConfig | None = None, backend: Any = None,
               keys: KeyStore | None = None) -> Any:
    """The FastAPI application serving `model`: an engine (pneumoscan.serving.engine.open_engine, opened once by the
    caller), or a loaded Bundle, scored in PyTorch or, with `backend` (a runtime of the bundle's exported file), by
    that file. With `keys`, every path but the page and /health needs one of them (a Python caller decides who
    may reach the app; `pneumoscan serve` refuses a non-loopback host without keys)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from starlette.formparsers import MultiPartParser

    config = config or ServiceConfig()
    # Keep every upload in memory: parts up to the size limit never spill to a temporary file.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, config.max_upload_bytes + 1)
    engine = _as_engine(model, backend)
    meter = ThroughputMeter(config.initial_rate)
    batcher = MicroBatcher(meter.timed(_scorer(engine)), config.max_batch, config.max_wait_ms, config.max_queue)
    admission = Admission(meter, config.latency_budget_ms / 1000.0, config.min_in_flight, config.max_queue,
                          config.explain_cost)
    decoder = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="pneumoscan-decode")

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        batcher.start()
        yield
        await batcher.stop()
        decoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="pneumoscan", version=__version__, lifespan=lifespan,
                  description="Pneumonia screening on chest X-rays. " + INTENDED_USE)
    app.state.batcher, app.state.admission = batcher, admission
    _add_middleware(app, config, admission, keys)
    app.include_router(_info_router(engine, name, "none" if keys is None else "bearer"))
    app.include_router(_predict_router(engine, name, config, batcher, decoder))
    return app


def _add_middleware(app: Any, config: ServiceConfig, admission: Admission, keys: KeyStore | None) -> None:
    """The layers around the routes, outermost first: access log, CORS (only with origins: it answers browsers'
    preflight requests, which carry no key), API key and rate limit, admission. Starlette wraps each middleware
    added around those added before it, so they are added innermost first; the key check thus runs before
    admission (401 and 429 before 503)."""
    app.add_middleware(AdmissionMiddleware, admission=admission, max_body_bytes=config.max_body_bytes,
                       paths=frozenset({"/v1/predict"}))
    if keys is not None:
        app.state.keys = keys
        app.add_middleware(KeyGate, keys=keys, limiter=RateLimiter(config.rate_limit_per_minute))
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    app.add_middleware(AccessLog)


def _as_engine(model: Any, backend: Any) -> Any:
    """An engine as given, or one for a loaded Bundle (PyTorch, or its exported file's `backend`)."""
    if hasattr(model, "score") and hasattr(model, "info"):
        return model
    from pneumoscan.serving.torch_engine import BackendEngine, TorchEngine

    if backend is None:
        return TorchEngine(model)
    if getattr(backend, "session", None) is not None:  # an ONNX file: the guard from its outputs where it has them
        from pneumoscan.serving.engine import OnnxEngine

        return OnnxEngine(model.path, model.manifest, backend.path, "--exported")
    return BackendEngine(model, backend, "tflite")
