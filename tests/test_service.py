"""The web service (pneumoscan.serving.service) through FastAPI's test client, on the tiny trained run."""

import asyncio
import base64
import io
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TinyRun, write_image
from pneumoscan.data.decode import decode_grayscale
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.inference import predict_probabilities
from pneumoscan.serving.service import MicroBatcher, Scored, ServiceConfig, create_app
from test_decode import _ramp, write_dicom

fastapi_testclient = pytest.importorskip("fastapi.testclient")


def _client(run: TinyRun, **config: object):  # type: ignore[no-untyped-def]
    app = create_app(load_bundle(run.out_dir), name="tiny", config=ServiceConfig(**config))  # type: ignore[arg-type]
    return fastapi_testclient.TestClient(app)


@pytest.fixture(scope="module")
def client(tiny_run: TinyRun):  # type: ignore[no-untyped-def]
    with _client(tiny_run) as test_client:
        yield test_client


def _png(tmp_path: Path, name: str = "film.png", value: int = 120) -> bytes:
    return write_image(tmp_path / name, value=value, size=(80, 64)).read_bytes()


def test_health_model_and_page(client, tiny_run: TinyRun) -> None:  # type: ignore[no-untyped-def]
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["ready"] is True and health["model"] == "tiny"
    model = client.get("/v1/model").json()
    manifest = load_bundle(tiny_run.out_dir).manifest
    assert model["arch"] == "baseline" and model["input"]["size"] == 32
    assert model["threshold"] == manifest.threshold and "not a medical device" in model["intended_use"]
    assert model["validation"]["metrics"]["roc_auc"] == manifest.validation.metrics.roc_auc  # type: ignore[union-attr]
    page = client.get("/").text
    assert "not a diagnosis" in page and 'id="drop"' in page and "/v1/predict" in page
    assert client.get("/docs").status_code == 200 and "/v1/predict" in client.get("/openapi.json").json()["paths"]


def test_predict_answers_like_the_library(client, tiny_run: TinyRun, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    content = _png(tmp_path)
    response = client.post("/v1/predict", files=[("files", ("film.png", content, "image/png"))])
    assert response.status_code == 200
    (result,) = response.json()["results"]
    bundle = load_bundle(tiny_run.out_dir)
    pixels = torch.from_numpy(decode_grayscale(tmp_path / "film.png", 32))[None, None]
    expected = float(predict_probabilities(bundle, pixels)[0])
    assert result["probability"] == pytest.approx(expected, abs=1e-6)
    assert result["label"] == ("PNEUMONIA" if expected >= bundle.manifest.threshold else "NORMAL")
    assert result["threshold"] == bundle.manifest.threshold and result["file"] == "film.png"
    assert isinstance(result["in_distribution"], bool) and "gradcam_png_base64" not in result


def test_explain_returns_an_overlay_png(client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/v1/predict?explain=true", files=[("files", ("film.png", _png(tmp_path), "image/png"))])
    (result,) = response.json()["results"]
    overlay = Image.open(io.BytesIO(base64.b64decode(result["gradcam_png_base64"])))
    assert overlay.format == "PNG" and overlay.size == (32, 32) and overlay.mode == "RGB"


def test_dicom_uploads_are_scored_and_no_header_value_leaks(client, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                            caplog: pytest.LogCaptureFixture) -> None:
    dicom = write_dicom(tmp_path / "film.dcm", _ramp(), patient="Secret^Patient").read_bytes()
    with caplog.at_level(logging.INFO, logger="pneumoscan.access"):
        response = client.post("/v1/predict", files=[("files", ("upload.dcm", dicom, "application/dicom"))])
    assert response.status_code == 200 and 0.0 <= response.json()["results"][0]["probability"] <= 1.0
    everything = response.text + " ".join(r.getMessage() for r in caplog.records)
    assert "Secret" not in everything and "ID-12345" not in everything
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if "/v1/predict" in r.getMessage()]
    assert line["status"] == 200 and line["files"] == 1 and line["ms"] > 0
    assert all("upload.dcm" not in r.getMessage() for r in caplog.records)  # no file names in the logs


def _bad_uploads(tmp_path: Path) -> dict[str, tuple[bytes, int, str]]:
    good = _png(tmp_path)
    assert len(good) < 20_000
    Image.new("L", (20, 20)).save(tmp_path / "a.gif")
    Image.new("L", (3000, 3000)).save(tmp_path / "bomb.png")  # 9 MP declared in a few KB
    assert (tmp_path / "bomb.png").stat().st_size < 20_000
    write_image(tmp_path / "whole.jpeg", size=(200, 200))
    return {
        "too large": (good + b"\0" * 30_000, 413, "over the upload limit"),
        "bomb": ((tmp_path / "bomb.png").read_bytes(), 422, "decompression-bomb guard"),
        "wrong type": (b"plain text, not an image at all", 415, "not an image"),
        "gif": ((tmp_path / "a.gif").read_bytes(), 415, "unsupported image format GIF"),
        "corrupt": ((tmp_path / "whole.jpeg").read_bytes()[:300], 422, "corrupt or truncated"),
        "empty": (b"", 422, "empty file"),
        "dicom without pixels": (write_dicom(tmp_path / "np.dcm", _ramp(), with_pixels=False).read_bytes(), 422,
                                 "DICOM file without pixel data"),
    }


def test_each_bad_upload_gets_its_status_and_the_server_keeps_serving(tiny_run: TinyRun, tmp_path: Path) -> None:
    good = _png(tmp_path)
    with _client(tiny_run, max_upload_bytes=20_000, max_pixels=1_000_000) as client:
        for case, (content, status, message) in _bad_uploads(tmp_path).items():
            response = client.post("/v1/predict", files=[("files", (f"{case}.png", content, "image/png"))])
            assert response.status_code == status, case
            assert message in response.json()["detail"], (case, response.json())
        assert client.post("/v1/predict", files=[]).status_code == 422  # no files at all
        assert client.post("/v1/predict", files=[("files", ("ok.png", good, "image/png"))]).status_code == 200


def test_one_bad_file_does_not_stop_the_good_ones(client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/v1/predict", files=[("files", ("a.png", _png(tmp_path), "image/png")),
                                                 ("files", ("b.txt", b"not an image", "text/plain")),
                                                 ("files", ("c.png", _png(tmp_path, "c.png", 40), "image/png"))])
    assert response.status_code == 200
    a, b, c = response.json()["results"]
    assert "probability" in a and "probability" in c and a["probability"] != c["probability"]
    assert b["status"] == 415 and "not an image" in b["error"] and "probability" not in b


def test_a_full_queue_answers_503_with_retry_after(tiny_run: TinyRun, tmp_path: Path) -> None:
    with _client(tiny_run, max_queue=1) as client:
        files = [("files", (f"{i}.png", _png(tmp_path, f"{i}.png"), "image/png")) for i in range(2)]
        response = client.post("/v1/predict", files=files)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"


def test_uploads_stay_in_memory(client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    def no_disk(self: object) -> None:
        raise AssertionError("an upload spilled to a temporary file")

    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", no_disk)
    big = np.random.default_rng(0).integers(0, 255, (1200, 1200), dtype=np.uint8)  # ~1.4 MB PNG, over 1 MB
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="PNG")
    assert buffer.tell() > 1024 * 1024
    response = client.post("/v1/predict", files=[("files", ("big.png", buffer.getvalue(), "image/png"))])
    assert response.status_code == 200


def test_the_micro_batcher_merges_concurrent_requests_and_keeps_their_order() -> None:
    seen: list[int] = []

    def score(images: np.ndarray) -> list[Scored]:
        seen.append(len(images))
        return [Scored(float(v), None) for v in images.reshape(len(images), -1)[:, 0]]

    async def scenario() -> list[list[Scored]]:
        batcher = MicroBatcher(score, max_batch=32, max_wait_ms=50.0, max_queue=100)
        batcher.start()
        requests = [np.full((1 + i % 2, 1, 2, 2), float(i)) for i in range(8)]
        answers = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    assert [[s.probability for s in a] for a in answers] == [[float(i)] * (1 + i % 2) for i in range(8)]
    assert sum(seen) == 12 and len(seen) < 8  # fewer batches than requests: they were merged


def test_a_multiframe_dicom_is_scored_with_a_warning(client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dicom = write_dicom(tmp_path / "multi.dcm", _ramp(), frames=2).read_bytes()
    response = client.post("/v1/predict", files=[("files", ("multi.dcm", dicom, "application/dicom"))])
    (result,) = response.json()["results"]
    assert response.status_code == 200 and "probability" in result
    assert result["warnings"] == ["multi.dcm: multi-frame DICOM (2 frames): only the first frame is used"]
