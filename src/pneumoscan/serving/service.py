"""`pneumoscan serve`: the model as a web service (FastAPI) with a page to drop X-rays on.

The model is loaded once. Uploads are decoded in memory by the same rules as the CLI
(pneumoscan.data.decode: JPEG, PNG, TIFF, BMP, WebP and DICOM by content, a pixel limit against
decompression bombs) and never written to disk. Inference runs off the event loop in one worker
thread, fed by a micro-batcher: requests that arrive within a short, bounded wait are scored as one
batch, so throughput grows with load; past a bounded number of queued images the service answers
503 with Retry-After instead of growing its memory. Access logs are one JSON line per request
(method, path, status, files, bytes, milliseconds) with no file names, pixel data or DICOM header
values.

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
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan import __version__
from pneumoscan.data.decode import MAX_PIXELS, decode_grayscale
from pneumoscan.errors import ImageDecodeError, InputWarning
from pneumoscan.models.manifest import Manifest

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
    max_queue: int = 256  # images waiting; beyond this, 503 with Retry-After


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
            batch = np.concatenate([images for images, _ in items])
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


async def decode_uploads(files: list[Any], config: ServiceConfig, size: int) -> DecodedUploads:
    """Read and decode every upload, each on its own: one bad file never stops the others."""
    decoded = DecodedUploads([], [], {})
    for index, upload in enumerate(files):
        label = upload.filename or f"file {index + 1}"
        content = await upload.read(config.max_upload_bytes + 1)
        if len(content) > config.max_upload_bytes:
            decoded.pixels.append(None)
            decoded.errors.append((413, f"{label}: over the upload limit of {config.max_upload_bytes:,} bytes"))
            continue
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", InputWarning)
                decoded.pixels.append(decode_grayscale(Path(label), size, content=content,
                                                       max_pixels=config.max_pixels))
            decoded.notes[index] = [str(w.message) for w in caught if issubclass(w.category, InputWarning)]
            decoded.errors.append(None)
        except ImageDecodeError as error:
            decoded.pixels.append(None)
            decoded.errors.append((STATUS_FOR_KIND.get(error.kind, 422), f"{label}: {error.reason}"))
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


def _info_router(engine: Any, name: str) -> Any:
    """GET /, /health and /v1/model: the page and what is being served."""
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
                "engine": info.name, "engine_detail": info.to_dict(),
                "backend": info.name if info.file is None else f"{info.name} ({Path(info.file).name})"}  # deprecated

    @router.get("/v1/model")
    async def model() -> dict[str, Any]:
        return model_summary(engine.manifest, name, engine)

    return router


def _predict_router(engine: Any, name: str, config: ServiceConfig, batcher: MicroBatcher) -> Any:
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
        decoded = await decode_uploads(files, config, engine.manifest.preprocess.image_size)
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
    """Grad-CAM needs the network in PyTorch: the engine's bundle, or (behind ONNX Runtime) the bundle loaded on the
    first explained request."""
    import torch

    from pneumoscan.models.bundle import load_bundle
    from pneumoscan.serving.explain import heatmaps_for

    if getattr(engine, "bundle", None) is None:
        engine.bundle = load_bundle(engine.folder)
    return heatmaps_for(engine.bundle, torch.from_numpy(images))


def _access_log(config: ServiceConfig) -> Callable[..., Any]:
    """Middleware: refuse an oversized request body before it is read (413), and log every request as one JSON
    line (method, path, status, bytes, files, milliseconds; never a file name)."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    async def access_log(request: Request, call_next):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        length = int(request.headers.get("content-length") or 0)
        if request.url.path == "/v1/predict" and length > config.max_upload_bytes * config.max_files + 65536:
            response = JSONResponse({"detail": f"request of {length:,} bytes is over the limit of "
                                               f"{config.max_files} files of {config.max_upload_bytes:,} bytes"},
                                    status_code=413)
        else:
            response = await call_next(request)
        ACCESS_LOG.info(json.dumps({"method": request.method, "path": request.url.path,
                                    "status": response.status_code, "bytes": length,
                                    "files": getattr(request.state, "files", None),
                                    "ms": round(1000 * (time.perf_counter() - started), 1)}))
        return response

    return access_log


def create_app(model: Any, name: str = "default", config: ServiceConfig | None = None, backend: Any = None) -> Any:
    """The FastAPI application serving `model`: an engine (pneumoscan.serving.engine.open_engine, opened once by the
    caller), or a loaded Bundle, scored in PyTorch or, with `backend` (a runtime of the bundle's exported file), by
    that file."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from starlette.formparsers import MultiPartParser

    config = config or ServiceConfig()
    # Keep every upload in memory: parts up to the size limit never spill to a temporary file.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, config.max_upload_bytes + 1)
    engine = _as_engine(model, backend)
    batcher = MicroBatcher(_scorer(engine), config.max_batch, config.max_wait_ms, config.max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="pneumoscan", version=__version__, lifespan=lifespan,
                  description="Pneumonia screening on chest X-rays. " + INTENDED_USE)
    app.state.batcher = batcher
    app.middleware("http")(_access_log(config))
    app.include_router(_info_router(engine, name))
    app.include_router(_predict_router(engine, name, config, batcher))
    return app


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
