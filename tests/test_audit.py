"""The shortcut audit: a model whose training label sat in the framing fails it, one whose label sat in the
lungs passes; the CLI writes audit.json, report.html and the figures; evaluate carries the verdict."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import quiet
from pneumoscan.cli.main import main
from pneumoscan.config import AuditConfig, TrainConfig
from pneumoscan.data.field_of_view import lung_region
from pneumoscan.data.framing_swaps import paste_markers, zoom_in, zoom_out
from pneumoscan.data.synthetic import SyntheticSource, SyntheticSpec
from pneumoscan.evaluation.audit import AUDIT_RULES, AuditResult, framing_quartiles, lung_attention
from pneumoscan.models.bundle import load_bundle
from pneumoscan.pipeline.audit import run_audit

SIZE = 64
TRAIN = {"arch": "baseline", "image_size": SIZE, "batch_size": 16, "epochs": 6, "val_fraction": 0.2,
         "precision": "fp32", "device": "cpu", "threshold_policy": "balanced", "lr": 2e-3}


def _write(root: Path, split: str, label: str, films: torch.Tensor) -> None:
    folder = root / split / label
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "IM-" if label == "NORMAL" else "person"
    for index, film in enumerate(films):
        name = f"{prefix}{index:04d}-0001.png" if label == "NORMAL" else f"{prefix}{index}_bacteria_1.png"
        Image.fromarray(film[0].numpy()).save(folder / name)


def _films(seed: int, per_class: int, difficulty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(normal films, pneumonia films) of the synthetic generator at SIZE px."""
    source = SyntheticSource(SyntheticSpec(n_per_class=per_class, size=SIZE, seed=seed, difficulty=difficulty))
    records = source.splits["train"]
    films = torch.from_numpy(np.stack([source.read(r, SIZE) for r in records]))[:, None]
    labels = np.array([r.label for r in records])
    return films[labels == 0], films[labels == 1]


def _framing_carried(root: Path, seed: int, per_class: int, split: str) -> None:
    """Both classes rendered without any opacity: PNEUMONIA films are zoomed in with a large marker, NORMAL films
    zoomed out onto black. Only the framing carries the label."""
    normal, _ = _films(seed, per_class, 0.0)
    other_normals, _ = _films(seed + 100, per_class, 0.0)
    _write(root, split, "NORMAL", zoom_out(normal, 0.85))
    _write(root, split, "PNEUMONIA", paste_markers(zoom_in(other_normals, 1.4), seed))


def _lung_carried(root: Path, seed: int, per_class: int, split: str) -> None:
    """Opacities in the lungs carry the label; every film framed alike."""
    normal, pneumonia = _films(seed, per_class, 0.0)
    _write(root, split, "NORMAL", normal)
    _write(root, split, "PNEUMONIA", pneumonia)


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> dict[str, AuditResult]:
    from pneumoscan.pipeline.train import run_training
    from pneumoscan.training.prepare import prepare_data

    results = {}
    for name, make in (("framing", _framing_carried), ("lungs", _lung_carried)):
        root = tmp_path_factory.mktemp(f"{name}-carried")
        make(root, 11, 60, "train")
        make(root, 12, 30, "test")
        config = TrainConfig(data=str(root), augment="none", seed=0, **TRAIN)
        run = run_training(config, root / "run", quiet(), command="pytest", data=prepare_data(config, quiet()))
        results[name] = run_audit(load_bundle(run.out_dir), str(root), root / "audit",
                                  AuditConfig(bootstrap=200, attention_films=30), quiet())
        results[name].out_dir = root / "audit"  # type: ignore[attr-defined]
    return results


def test_a_model_that_reads_the_framing_fails_the_audit(audited: dict[str, AuditResult]) -> None:
    result = audited["framing"]
    checks = {check.name: check for check in result.checks}
    assert result.passed is False and result.verdict == "fail"
    assert checks["framing swaps"].passed is False
    assert checks["lung attention"].passed is False  # its explanation sits on the borders, not the lungs
    assert result.attention is not None and result.attention.lift < 0.8


def test_a_model_that_reads_the_lungs_passes_the_audit(audited: dict[str, AuditResult]) -> None:
    result = audited["lungs"]
    assert result.passed is True and result.verdict == "pass"
    assert all(check.passed is not False for check in result.checks)
    assert result.framing is not None and result.framing.framing_gap < 0.2
    assert result.attention is not None and result.attention.lift >= 1.0


def test_every_check_states_its_rule_and_finding(audited: dict[str, AuditResult]) -> None:
    for result in audited.values():
        assert [check.name for check in result.checks] == list(AUDIT_RULES)
        for check in result.checks:
            assert check.rule == AUDIT_RULES[check.name] and check.finding
        groupings = {s.grouping for s in result.subgroups}
        assert {"framing quartile", "subtype"} <= groupings  # series: IM and person here
        assert "series" in groupings


def test_the_audit_folder_holds_json_report_and_figures(audited: dict[str, AuditResult]) -> None:
    out = audited["framing"].out_dir  # type: ignore[attr-defined]
    payload = json.loads((out / "audit.json").read_text())
    assert payload["verdict"] == "fail" and payload["summary"].startswith("shortcut audit: FAIL")
    assert [c["name"] for c in payload["checks"]] == list(AUDIT_RULES) and payload["rules"] == AUDIT_RULES
    assert payload["framing"]["swaps"] and payload["attention"]["films"] > 0
    assert payload["figures"] == {"audit_swaps": "audit_swaps.png", "audit_attention": "audit_attention.png"}
    page = (out / "report.html").read_text()
    assert '<section id="audit">' in page and page.count("data:image/png;base64,") == 2 and "FAIL" in page


def test_framing_quartiles_order_films_by_how_much_the_lungs_fill_them() -> None:
    shares = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.6])
    quartiles = framing_quartiles(shares)
    assert [q.split()[0] for q in quartiles] == ["Q4", "Q1", "Q2", "Q2", "Q3", "Q1", "Q4", "Q3"]
    assert len(set(quartiles)) == 4


def test_lung_attention_compares_mass_with_area() -> None:
    regions = np.zeros((2, 10, 10), dtype=bool)
    regions[:, :, :4] = True  # the lungs cover 0.4 of each film
    inside = np.where(regions, 1.0, 0.0)
    uniform = np.ones((2, 10, 10))
    on_lungs = lung_attention(inside, regions, np.array([True, True]), "layer", 200, 0)
    spread = lung_attention(uniform, regions, np.array([True, False]), "layer", 200, 0)
    assert on_lungs is not None and on_lungs.mass_on_lungs == 1.0 and on_lungs.lift == pytest.approx(2.5)
    assert spread is not None and spread.lift == pytest.approx(1.0) and spread.lung_mask_films == 1
    assert spread.region == "lung fields"
    # a film whose lungs were not found (its region: the box) does not count while others were found
    mixed = lung_attention(np.stack([uniform[0], inside[0]]), regions, np.array([True, False]), "layer", 200, 0)
    assert mixed is not None and mixed.lift == pytest.approx(1.0)
    boxes = lung_attention(inside, regions, np.array([False, False]), "layer", 200, 0)
    assert boxes is not None and boxes.region == "lung box" and boxes.lift == pytest.approx(2.5)
    assert lung_attention(np.zeros((0, 10, 10)), regions[:0], np.zeros(0, bool), "layer", 200, 0) is None


def test_the_lung_region_holds_the_bright_opacities() -> None:
    """A mask of dark pixels leaves a consolidation out; the region (filled, mirrored) keeps it."""
    source = SyntheticSource(SyntheticSpec(n_per_class=12, size=128, seed=5, difficulty=0.0))
    pneumonia = [r for r in source.splits["train"] if r.label == 1]
    rendered = [source.render(r) for r in pneumonia]
    films = torch.from_numpy(np.stack([image for image, _ in rendered]))[:, None].float() / 255.0
    opacity = np.stack([mask for _, mask in rendered])
    region, found = lung_region(films)
    assert found.float().mean() >= 0.75
    covered = (region.numpy() & opacity).sum() / opacity.sum()
    assert covered >= 0.7
    assert region.float().mean() < 0.6  # a region, not the whole film


def test_cli_audit_exit_codes_and_table(audited: dict[str, AuditResult], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    model = audited["framing"].model
    data = str(Path(model).parent)
    assert main(["audit", "--model", model, "--data", data, "--out", str(tmp_path / "a"), "--bootstrap", "100",
                 "--attention-films", "4"]) == 0
    assert "FAIL" in capsys.readouterr().out
    assert main(["audit", "--model", model, "--data", data, "--out", str(tmp_path / "b"), "--bootstrap", "100",
                 "--attention-films", "4", "--fail-on-finding"]) == 1
    assert "audit failed" in capsys.readouterr().err
    assert (tmp_path / "b" / "audit.json").exists()  # a failed audit is still written in full


def test_evaluate_carries_the_audit_into_metrics_report_and_card(tiny_evaluation) -> None:  # type: ignore[no-untyped-def]
    result, out = tiny_evaluation
    assert result.audit is not None and result.audit.framing is result.framing  # scored once
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["audit"]["verdict"] == result.audit.verdict
    assert "Shortcut audit: " + result.audit.verdict.upper() in (out / "MODEL_CARD.md").read_text()
    assert '<section id="audit">' in (out / "report.html").read_text()


def test_films_of_one_class_give_no_verdict(audited: dict[str, AuditResult], tmp_path: Path) -> None:
    """Without both classes the swaps cannot be scored: the verdict is 'not measurable', never a pass."""
    root = tmp_path / "normals"
    normal, _ = _films(21, 12, 0.0)
    _write(root, "test", "NORMAL", normal)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{f},NORMAL\n" for f in sorted((root / "test").rglob("*.png"))))
    result = run_audit(load_bundle(audited["lungs"].model), str(labels), tmp_path / "out",
                       AuditConfig(bootstrap=100, attention_films=4), quiet())
    checks = {check.name: check for check in result.checks}
    assert checks["framing swaps"].passed is None and checks["lung attention"].passed is None
    assert result.verdict == "not measurable" and result.passed is None
    assert json.loads((tmp_path / "out" / "audit.json").read_text())["verdict"] == "not measurable"
