"""Ensemble bundles: built from trained runs, validated like a run, read by every tool as an ordinary bundle."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, quiet
from pneumoscan.cli.main import main
from pneumoscan.config import AdaptConfig, TrainConfig
from pneumoscan.data.framing_swaps import FRAMING_SWAPS
from pneumoscan.errors import PneumoscanError
from pneumoscan.models import list_models
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.ensemble import ENSEMBLE_ARCH, MemberSpec
from pneumoscan.models.inference import predict_probabilities
from pneumoscan.models.registry import bundle_spec
from pneumoscan.pipeline.adapt import adapt_bundle
from pneumoscan.pipeline.ensemble import EnsembleResult, build_ensemble
from pneumoscan.pipeline.train import run_training
from pneumoscan.training.prepare import prepare_data


@pytest.fixture(scope="module")
def members(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two diverse members on one split: the reference CNN, and `compact` with histogram equalisation."""
    root = tmp_path_factory.mktemp("members")
    base = TrainConfig(data=str(tiny_synthetic), **{**TINY, "epochs": 3})
    run_training(base, root / "baseline", quiet())
    run_training(replace(base, arch="compact", intensity="equalize", border_crop=0.05), root / "compact", quiet())
    return [root / "baseline", root / "compact"]


@pytest.fixture(scope="module")
def ensemble(members: list[Path], tmp_path_factory: pytest.TempPathFactory) -> EnsembleResult:
    return build_ensemble(members, tmp_path_factory.mktemp("ensemble") / "bundle", quiet(), command="pytest")


def test_the_ensemble_is_the_mean_of_its_members_probabilities(members: list[Path], ensemble: EnsembleResult,
                                                                tiny_synthetic: Path) -> None:
    data = prepare_data(TrainConfig(data=str(tiny_synthetic), **TINY), quiet())
    images = data.val.images
    each = [predict_probabilities(load_bundle(path), images) for path in members]
    combined = predict_probabilities(ensemble.bundle, images)
    assert np.allclose(combined, np.mean(each, axis=0), atol=1e-5)
    assert not np.allclose(each[0], each[1], atol=1e-3)  # the members differ, so the mean is a real combination


def test_the_bundle_lists_its_members_and_holds_their_weights(members: list[Path], ensemble: EnsembleResult) -> None:
    bundle = load_bundle(ensemble.out_dir)
    assert bundle.manifest.arch == ENSEMBLE_ARCH and ENSEMBLE_ARCH not in list_models()
    listed = [MemberSpec.from_dict(m) for m in bundle.manifest.arch_kwargs["members"]]
    assert listed == ensemble.members
    assert [m.arch for m in listed] == ["baseline", "compact"]
    assert [m.source for m in listed] == [str(p) for p in members]
    assert listed[1].preprocess.intensity == "equalize" and listed[1].preprocess.border_crop == 0.05
    assert [m.weights_sha256 for m in listed] == [load_bundle(p).manifest.weights_sha256 for p in members]
    records = [load_bundle(p).manifest.training for p in members]  # each member's recipe travels with the ensemble
    assert [TrainConfig.from_dict(m.config or {}) for m in listed] == [r.config for r in records]  # type: ignore[union-attr]
    assert [(m.command, m.best_epoch, m.seconds) for m in listed] == [
        (r.command, r.best_epoch, r.seconds) for r in records]  # type: ignore[union-attr]
    assert listed[0].calibrated_prior == pytest.approx(0.5, abs=0.05)
    tensors = load_file(str(ensemble.out_dir / "model.safetensors"))
    member_keys = {key.split(".")[1] for key in tensors if key.startswith("members.")}
    assert member_keys == {"0", "1"}
    for index, path in enumerate(members):
        for key, value in load_bundle(path).model.state_dict().items():
            assert torch.equal(tensors[f"members.{index}.{key}"], value), key
    assert (bundle.preprocess.mean, bundle.preprocess.std, bundle.preprocess.image_size) == (0.0, 1.0, 32)


def test_the_ensemble_is_validated_like_a_run(ensemble: EnsembleResult, members: list[Path]) -> None:
    validation = ensemble.bundle.manifest.validation
    assert validation == ensemble.validation and validation.threshold_policy == "fixed:0.5"
    assert ensemble.bundle.manifest.threshold == 0.5
    assert validation.metrics.n_images == load_bundle(members[0]).manifest.validation.metrics.n_images
    spec = bundle_spec(ENSEMBLE_ARCH, ensemble.bundle.manifest.arch_kwargs)
    assert spec.feature_stages == ("members.0.features.0", "members.0.features.1", "members.0.features.2")
    assert spec.explained_layer == "members.0.features.2"
    assert ensemble.bundle.ood is not None and ensemble.bundle.ood.layers[0].startswith("members.0.")
    assert ensemble.bundle.reference is not None and len(ensemble.bundle.reference["scores"]) == \
        validation.metrics.n_images
    assert (ensemble.out_dir / "split.csv").is_file()
    assert json.loads((ensemble.out_dir / "ensemble.json").read_text())["command"] == "pytest"
    # the framing-swap proxy of the ensemble itself, on the same validation films
    assert validation.framing is not None and validation.framing.images == validation.metrics.n_images
    assert [swap.name for swap in validation.framing.swaps] == [swap.name for swap in FRAMING_SWAPS]


def test_every_tool_reads_an_ensemble(ensemble: EnsembleResult, tiny_synthetic: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = str(ensemble.out_dir)
    image = sorted((tiny_synthetic / "test" / "PNEUMONIA").iterdir())[0]
    assert main(["predict", "--model", out, str(image), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["in_distribution"] in (True, False)
    assert main(["explain", "--model", out, str(image), "--out", str(tmp_path / "cam")]) == 0
    assert (tmp_path / "cam" / f"{image.stem}.gradcam.png").is_file()
    assert main(["evaluate", "--model", out, "--data", str(tiny_synthetic), "--bootstrap", "200", "--weeks", "2",
                 "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["arch"] == ENSEMBLE_ARCH
    card = (tmp_path / "eval" / "MODEL_CARD.md").read_text()
    assert "- Member 0: `baseline` at 32 px" in card and "- Member 1: `compact` at 32 px, intensity `equalize`" in card
    adapted = adapt_bundle(ensemble.out_dir, tiny_synthetic / "test", tmp_path / "adapted",
                           AdaptConfig(min_images=16, max_ood_share=1.0, prior=True), quiet())
    assert adapted.record.training_prevalence == pytest.approx(np.mean([m.calibrated_prior
                                                                        for m in ensemble.members]), abs=1e-6)


def test_members_must_share_a_split_and_be_trained_models(members: list[Path], ensemble: EnsembleResult,
                                                          tiny_synthetic: Path, tmp_path: Path) -> None:
    with pytest.raises(PneumoscanError, match="at least two member bundles"):
        build_ensemble(members[:1], tmp_path / "one", quiet())
    other = run_training(TrainConfig(data=str(tiny_synthetic), **{**TINY, "epochs": 1, "split_seed": 1}),
                         tmp_path / "other", quiet())
    with pytest.raises(PneumoscanError, match="validated on another split .* split_seed"):
        build_ensemble([members[0], other.out_dir], tmp_path / "mixed", quiet())
    with pytest.raises(PneumoscanError, match="members must be trained models"):
        build_ensemble([members[0], ensemble.out_dir], tmp_path / "nested", quiet())
    with pytest.raises(PneumoscanError, match="not over one of its members"):
        build_ensemble(members, members[1], quiet())
    assert not any((tmp_path / name).exists() for name in ("one", "mixed", "nested"))


def test_cli_builds_an_ensemble(members: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli-ensemble"
    assert main(["ensemble", *map(str, members), "--out", str(out)]) == 0
    assert "ensemble of 2: validation" in capsys.readouterr().err
    assert load_bundle(out).manifest.arch == ENSEMBLE_ARCH
    assert main(["ensemble", str(members[0]), "--out", str(tmp_path / "x")]) == 2


def test_the_guard_runs_only_the_member_it_watches(ensemble: EnsembleResult, tiny_synthetic: Path) -> None:
    from pneumoscan.models.ood import stage_features

    bundle = load_bundle(ensemble.out_dir)
    guard = bundle.ood
    assert guard is not None and all(layer.startswith("members.0.") for layer in guard.layers)
    images = prepare_data(TrainConfig(data=str(tiny_synthetic), **TINY), quiet()).val.images
    through_all = guard.score_features(stage_features(bundle.model, guard.layers, images, bundle.preprocess.normalize))
    np.testing.assert_allclose(guard.score(bundle.model, images, bundle.preprocess.normalize), through_all, atol=1e-5)


def test_an_ensemble_exports_and_is_served(ensemble: EnsembleResult, tiny_synthetic: Path, tmp_path: Path) -> None:
    """Every bundle kind works everywhere: the ensemble (members of two architectures, one equalising) as ONNX and
    behind the web service."""
    from fastapi.testclient import TestClient

    from pneumoscan.serving.export import export_bundle
    from pneumoscan.serving.service import create_app

    bundle = load_bundle(ensemble.out_dir)
    images = prepare_data(TrainConfig(data=str(tiny_synthetic), **TINY), quiet()).train.images
    report = export_bundle(bundle, "onnx", tmp_path / "ensemble.onnx", images)
    assert report.max_abs_diff <= 1e-4
    film = sorted((tiny_synthetic / "test" / "NORMAL").glob("*.png"))[0]
    with TestClient(create_app(bundle, name="ensemble")) as client:
        upload = [("files", (film.name, film.read_bytes(), "image/png"))]
        response = client.post("/v1/predict?explain=true", files=upload)
        assert client.get("/v1/model").json()["members"][1]["intensity"] == "equalize"
    (result,) = response.json()["results"]
    assert result["label"] in ("NORMAL", "PNEUMONIA") and result["gradcam_png_base64"]
