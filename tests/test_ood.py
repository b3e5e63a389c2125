"""The out-of-distribution guard: fitted at training time, carried in the bundle, used by predict."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pneumoscan.cli.main import main
from pneumoscan.evaluation.ood_probes import GENERATED, probe_images
from pneumoscan.models.bundle import load_bundle


@pytest.fixture(scope="module")
def trained(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ood") / "run"
    assert main(["train", "--data", str(tiny_synthetic), "--arch", "compact", "--image-size", "64", "--epochs", "3",
                 "--val-fraction", "0.25", "--out", str(run)]) == 0
    return run


def test_the_bundle_carries_the_guard_and_it_scores_the_same_after_loading(trained: Path) -> None:
    manifest = json.loads((trained / "model.json").read_text())
    assert manifest["ood"]["false_alarm_rate"] == 0.05 and manifest["ood"]["layers"][-1] == "stages"
    bundle = load_bundle(trained)
    assert bundle.ood is not None
    images = torch.randint(0, 256, (3, 1, 64, 64), dtype=torch.uint8)
    again = load_bundle(trained)
    assert np.allclose(bundle.ood.score(bundle.model, images, bundle.preprocess.normalize),
                       again.ood.score(again.model, images, again.preprocess.normalize))


def test_predict_flags_noise_and_text_but_not_xrays(trained: Path, tiny_synthetic: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    xrays = sorted((tiny_synthetic / "test").rglob("*.png"))
    stacked = np.stack([np.asarray(Image.open(p).convert("L").resize((64, 64))) for p in xrays])
    probes = probe_images(stacked, per_kind=3, seed=1)
    for kind in ("uniform noise", "text", "flat"):
        for index, image in enumerate(probes[kind]):
            Image.fromarray(image).save(tmp_path / f"{kind.replace(' ', '_')}{index}.png")
    assert main(["predict", "--model", str(trained), "--format", "json", str(tmp_path), *map(str, xrays)]) == 0
    rows = json.loads(capsys.readouterr().out)
    flagged = {Path(r["file"]).parent == tmp_path: [] for r in rows}
    for row in rows:
        flagged[Path(row["file"]).parent == tmp_path].append(not row["in_distribution"])
    assert all(flagged[True])  # every generated non-X-ray is flagged
    assert np.mean(flagged[False]) <= 0.25  # few real (synthetic) X-rays are


def test_probes_are_seeded_and_cover_every_kind() -> None:
    xrays = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    first, second = probe_images(xrays, per_kind=2, seed=4), probe_images(xrays, per_kind=2, seed=4)
    assert set(first) == set(GENERATED) | {"inverted X-ray", "rotated X-ray (90/180/270)"}
    for kind, images in first.items():
        assert images.dtype == np.uint8 and images.shape == (2, 48, 48), kind
        assert np.array_equal(images, second[kind])
    assert all(any(np.array_equal(255 - inverted, x) for x in xrays) for inverted in first["inverted X-ray"])


def test_validation_false_alarms_stay_within_the_stated_rate(trained: Path) -> None:
    from rich.console import Console

    from pneumoscan.data.loading import load_images
    from pneumoscan.data.registry import open_source

    bundle = load_bundle(trained)
    source = open_source(str(trained / "split.csv"))
    val = load_images(source, source.split("val")[1], 64, console=Console(quiet=True))
    scores = bundle.ood.score(bundle.model, val.images, bundle.preprocess.normalize)
    assert np.mean(scores > bundle.ood.threshold) <= bundle.ood.false_alarm_rate
