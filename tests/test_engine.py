"""The engines (issue 22): ONNX Runtime by default, answering like PyTorch with the same preprocessing, guard and
test-time views; where its graph comes from (bundle, cache, --exported); the fallback; and a torch-free predict."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, TinyRun, quiet
from pneumoscan.cli.main import main
from pneumoscan.errors import PneumoscanError
from pneumoscan.models.bundle import MANIFEST_FILE, load_bundle
from pneumoscan.serving.engine import (
    CACHE_VARIABLE,
    THREADS_VARIABLE,
    OnnxEngine,
    cached_graph_path,
    onnx_threads,
    open_engine,
)
from pneumoscan.serving.export import attach_exported_graph, built_in_sample
from pneumoscan.serving.predict import load_inputs, predict_images
from pneumoscan.serving.torch_engine import TorchEngine

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def films(tiny_run: TinyRun) -> np.ndarray:
    return built_in_sample(32, 16).numpy()


@pytest.fixture()
def bundle_copy(tiny_run: TinyRun, tmp_path: Path) -> Path:
    """A copy of the tiny run's bundle (the folder may be written: a graph attached or tampered with)."""
    folder = tmp_path / "bundle"
    folder.mkdir()
    for name in ("model.json", "model.safetensors"):
        shutil.copy(tiny_run.out_dir / name, folder / name)
    return folder


def test_onnx_runtime_answers_like_pytorch_with_the_guard(tiny_run: TinyRun, films: np.ndarray) -> None:
    onnx, torch_ = open_engine(tiny_run.out_dir), open_engine(tiny_run.out_dir, "torch")
    assert isinstance(onnx, OnnxEngine) and onnx.info.name == "onnxruntime" and torch_.info.name == "torch"
    ours, theirs = onnx.score(films), torch_.score(films)
    np.testing.assert_allclose(ours.probabilities, theirs.probabilities, atol=1e-5)
    assert ours.ood_scores is not None and theirs.ood_scores is not None
    np.testing.assert_allclose(ours.ood_scores, theirs.ood_scores, atol=1e-3)
    threshold = onnx.manifest.threshold
    assert np.array_equal(ours.probabilities >= threshold, theirs.probabilities >= threshold)


def test_test_time_views_are_the_same_in_both_engines(tiny_run: TinyRun, films: np.ndarray) -> None:
    onnx = open_engine(tiny_run.out_dir, tta=True)
    assert onnx.info.name == "onnxruntime" and onnx.info.file.endswith("-tta.onnx")
    np.testing.assert_allclose(onnx.score(films).probabilities,
                               open_engine(tiny_run.out_dir, "torch", tta=True).score(films).probabilities, atol=1e-5)


def test_a_graph_is_exported_once_into_the_cache_with_its_parity(bundle_copy: Path, onnx_cache: Path) -> None:
    first = open_engine(bundle_copy)
    path = cached_graph_path(first.manifest)
    assert first.info.source == "cache" and Path(first.info.file) == path and path.parent.parent == onnx_cache
    assert path.name.startswith(first.manifest.weights_sha256)  # keyed by the weights' SHA-256
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert sidecar["parity"]["max_abs_diff"] <= 1e-4 and "not the model's accuracy" in sidecar["sample"]
    stamp = path.stat().st_mtime_ns
    again = open_engine(bundle_copy)
    assert again.info.source == "cache" and path.stat().st_mtime_ns == stamp  # read, not exported again


def test_the_bundles_own_graph_is_used_only_while_it_matches(bundle_copy: Path) -> None:
    record = attach_exported_graph(bundle_copy)
    assert record is not None and record.max_abs_diff <= 1e-4
    manifest = json.loads((bundle_copy / MANIFEST_FILE).read_text())
    assert manifest["exported"]["file"] == "model.onnx" and manifest["exported"]["sha256"] == record.sha256
    load_bundle(bundle_copy)  # still a valid bundle
    assert open_engine(bundle_copy).info.source == "bundle"
    with (bundle_copy / "model.onnx").open("ab") as graph:  # another graph than the manifest vouches for
        graph.write(b"\0")
    assert open_engine(bundle_copy).info.source == "cache"


def test_new_weights_drop_the_old_graph(bundle_copy: Path) -> None:
    from pneumoscan.models.bundle import save_bundle

    attach_exported_graph(bundle_copy)
    bundle = load_bundle(bundle_copy)
    save_bundle(bundle_copy, bundle.model, bundle.manifest, ood=bundle.ood, reference=bundle.reference)
    assert not (bundle_copy / "model.onnx").exists() and load_bundle(bundle_copy).manifest.exported is None


def test_a_model_that_cannot_be_exported_falls_back_to_pytorch_with_one_warning(
        bundle_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import pneumoscan.serving.export as export

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise PneumoscanError("torch.onnx could not export this model (UnsupportedOp: nope)")

    monkeypatch.setattr(export, "export_onnx", refuse)
    monkeypatch.setenv(CACHE_VARIABLE, str(bundle_copy.parent / "empty-cache"))  # not exported by another test
    film = bundle_copy.parent / "film.png"
    from PIL import Image

    Image.fromarray(built_in_sample(32, 1).numpy()[0, 0]).save(film)
    assert main(["predict", "--model", str(bundle_copy), str(film), "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["engine"] == "torch"
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "scoring with PyTorch instead" in warnings[0]
    assert main(["predict", "--model", str(bundle_copy), str(film), "--engine", "onnx"]) == 2  # asked: an error


def test_every_json_row_says_which_engine_answered(tiny_run: TinyRun, tiny_synthetic: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = tiny_synthetic / "test" / "NORMAL"
    rows = {}
    for engine in ("auto", "torch"):
        assert main(["predict", "--model", str(tiny_run.out_dir), str(folder), "--format", "json",
                     "--engine", engine]) == 0
        rows[engine] = json.loads(capsys.readouterr().out)
    assert isinstance(rows["auto"], list) and {r["engine"] for r in rows["auto"]} == {"onnxruntime"}
    assert {r["engine"] for r in rows["torch"]} == {"torch"}
    for ours, theirs in zip(rows["auto"], rows["torch"], strict=True):
        assert ours["label"] == theirs["label"] and ours["in_distribution"] == theirs["in_distribution"]
        assert ours["probability"] == pytest.approx(theirs["probability"], abs=1e-5)


def test_predict_images_through_either_engine(tiny_run: TinyRun, tiny_synthetic: Path) -> None:
    files, images = load_inputs(32, [tiny_synthetic / "test"], strict=False, console=quiet())
    onnx = predict_images(open_engine(tiny_run.out_dir), files, images)
    torch_ = predict_images(TorchEngine(load_bundle(tiny_run.out_dir)), files, images)
    assert [p.label for p in onnx] == [p.label for p in torch_] and {p.engine for p in onnx} == {"onnxruntime"}


def test_thread_count_is_the_cpus_this_process_may_use_or_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(THREADS_VARIABLE, raising=False)
    assert onnx_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv(THREADS_VARIABLE, "1")
    assert onnx_threads() == 1
    monkeypatch.setenv(THREADS_VARIABLE, "many")
    with pytest.raises(PneumoscanError, match=THREADS_VARIABLE):
        onnx_threads()


def test_evaluate_scores_with_onnx_runtime_by_default(tiny_run: TinyRun, tmp_path: Path) -> None:
    args = ["evaluate", "--model", str(tiny_run.out_dir), "--data", tiny_run.config.data, "--split", "test",
            "--no-audit", "--no-framing", "--bootstrap", "100"]
    assert main([*args, "--out", str(tmp_path / "onnx")]) == 0
    assert main([*args, "--out", str(tmp_path / "torch"), "--engine", "torch"]) == 0
    ours, theirs = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("onnx", "torch"))
    assert (ours["engine"], theirs["engine"]) == ("onnxruntime", "torch")
    for metric in ("accuracy", "sensitivity", "specificity"):
        assert ours[metric] == theirs[metric]
    assert ours["roc_auc"] == pytest.approx(theirs["roc_auc"], abs=1e-6)


def test_a_cold_predict_of_the_shipped_model_never_imports_torch(tiny_synthetic: Path) -> None:
    film = next((tiny_synthetic / "test" / "PNEUMONIA").glob("*.png"))
    code = ("import sys; from pneumoscan.cli.main import main; code = main(['predict', sys.argv[1], '--format', "
            "'json']); assert code == 0, code; assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code, str(film)], capture_output=True, text=True, timeout=120,
                          cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)[0]["engine"] == "onnxruntime"


def test_the_service_says_which_engine_answers(tiny_run: TinyRun, films: np.ndarray) -> None:
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from pneumoscan.serving.service import create_app

    buffer = io.BytesIO()
    Image.fromarray(films[0, 0]).save(buffer, format="PNG")
    answers = {}
    for engine in ("auto", "torch"):
        with TestClient(create_app(open_engine(tiny_run.out_dir, engine), name="tiny")) as client:
            health, model = client.get("/health").json(), client.get("/v1/model").json()
            answer = client.post("/v1/predict", files=[("files", ("f.png", buffer.getvalue(), "image/png"))]).json()
        assert health["engine"] == model["engine"]["name"] == answer["engine"]
        answers[health["engine"]] = answer["results"][0]
    assert set(answers) == {"onnxruntime", "torch"}
    assert answers["onnxruntime"]["probability"] == pytest.approx(answers["torch"]["probability"], abs=1e-5)
    assert answers["onnxruntime"]["in_distribution"] == answers["torch"]["in_distribution"]
