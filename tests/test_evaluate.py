"""`evaluate` through the Python API: one typed result, and metrics.json, predictions and figures written from it."""

import csv
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TinyRun, assert_close, quiet
from pneumoscan.config import EvalConfig
from pneumoscan.data.framing_swaps import FRAMING_SWAPS
from pneumoscan.data.loading import load_split
from pneumoscan.data.records import Record
from pneumoscan.errors import PneumoscanError
from pneumoscan.evaluation.evaluate import EvaluationResult, evaluate, prior_adapted
from pneumoscan.evaluation.framing import score_framing
from pneumoscan.evaluation.monitoring import simulate
from pneumoscan.evaluation.prior_shift import adapt_to_prior
from pneumoscan.evaluation.subgroups import read_groups, record_groups, subgroup_metrics
from pneumoscan.metrics import (
    METRIC_NAMES,
    BootstrapSettings,
    classification_report_text,
    metrics_with_ci,
    screening_metrics,
)
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.inference import predict_probabilities

FIGURES = {"confusion_matrix", "sample_predictions", "temporal_performance", "architecture", "reliability",
           "threshold_curve", "gradcam_grid", "monitoring", "roc_curve", "pr_curve", "audit_swaps", "audit_attention"}


Scored = tuple[np.ndarray, np.ndarray, list[Record]]


@pytest.fixture(scope="module")
def scored(tiny_run: TinyRun, tiny_synthetic: Path) -> Scored:
    """The test split scored by the tiny run's bundle, independently of evaluate."""
    bundle = load_bundle(tiny_run.out_dir)
    image_set, _ = load_split(str(tiny_synthetic), "test", 32, console=quiet())
    return image_set.labels.numpy().astype(int), predict_probabilities(bundle, image_set.images), image_set.records


@pytest.fixture(scope="module")
def threshold(tiny_run: TinyRun) -> float:
    """The stored (Youden, chosen on validation) threshold: evaluation never chooses its own."""
    return load_bundle(tiny_run.out_dir).manifest.threshold


def test_metrics_json_is_the_result_with_one_name_per_metric(tiny_evaluation: tuple[EvaluationResult, Path]) -> None:
    result, out = tiny_evaluation
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result.to_dict()))
    assert set(metrics) == set(METRIC_NAMES) | {"threshold", "n_images", "confusion", "ci95", "bootstrap", "model",
                                                 "arch", "data", "evaluation", "temporal", "subgroups",
                                                 "prior_adapted", "ood", "framing", "audit", "engine"}
    assert "precision" not in metrics and "precision" not in metrics["ci95"]
    assert metrics["evaluation"] == asdict(EvalConfig(bootstrap=200, adapt_prior=True))
    assert metrics["bootstrap"] == {"resamples": 200, "seed": 0, "level": 0.95,
                                    "method": "stratified percentile bootstrap"}
    assert metrics["data"] == {"source": result.data.source, "split": "test",
                               "counts": {"images": 16, "normal": 8, "pneumonia": 8,
                                          "patients": result.data.counts.patients},
                               "skipped": {"count": 0, "by_kind": {}, "listed": 0, "files": []}}
    assert metrics["arch"] == "baseline" and metrics["model"] == str(result.model)


def test_the_framing_proxy_is_scored_on_the_evaluated_films(tiny_evaluation: tuple[EvaluationResult, Path],
                                                            tiny_run: TinyRun) -> None:
    result, out = tiny_evaluation
    bundle = load_bundle(tiny_run.out_dir)
    images, _ = load_split(tiny_run.config.data, "test", bundle.preprocess.image_size)
    labels = images.labels.numpy().astype(int)
    probabilities = predict_probabilities(bundle, images.images)
    expected = score_framing(bundle.model, bundle.preprocess.normalize, images.images, labels, probabilities,
                             bundle.manifest.threshold, resamples=200)
    assert result.framing == expected
    assert json.loads((out / "metrics.json").read_text())["framing"]["framing_gap"] == expected.framing_gap
    assert [swap.name for swap in expected.swaps] == [swap.name for swap in FRAMING_SWAPS]


def test_point_metrics_and_intervals_are_the_librarys(tiny_evaluation: tuple[EvaluationResult, Path],
                                                      scored: Scored, threshold: float) -> None:
    result, out = tiny_evaluation
    labels, probabilities, _ = scored
    expected = metrics_with_ci(labels, probabilities, threshold, BootstrapSettings(200, 0))
    assert result.threshold == threshold != 0.5
    assert result.metrics.point == expected.point
    assert result.metrics.ci95.keys() == expected.ci95.keys()
    for name in METRIC_NAMES:
        assert result.metrics.ci95[name] == pytest.approx(expected.ci95[name], abs=1e-12), name
        low, high = result.metrics.ci95[name]  # type: ignore[misc]
        assert low <= result.metrics.point.value(name) <= high, name
    text, report = classification_report_text(labels, probabilities, threshold)
    assert (out / "classification_report.txt").read_text() == text
    assert json.loads((out / "classification_report.json").read_text()) == json.loads(json.dumps(report))


def test_predictions_csv_lists_every_image_with_its_score_and_decision(
        tiny_evaluation: tuple[EvaluationResult, Path], scored: Scored, threshold: float) -> None:
    _, out = tiny_evaluation
    labels, probabilities, records = scored
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [r["file"] for r in rows] == [r.source for r in records]
    assert [r["patient"] for r in rows] == [r.patient for r in records]
    assert [r["label"] for r in rows] == [("NORMAL", "PNEUMONIA")[y] for y in labels]
    assert [float(r["probability"]) for r in rows] == pytest.approx(probabilities.tolist(), abs=1e-6)
    assert [r["prediction"] for r in rows] == ["PNEUMONIA" if p >= threshold else "NORMAL" for p in probabilities]


def test_weeks_are_the_monitoring_simulation(tiny_evaluation: tuple[EvaluationResult, Path], tiny_run: TinyRun,
                                             tiny_synthetic: Path, threshold: float) -> None:
    result, out = tiny_evaluation
    weeks = result.temporal.weeks
    assert [w.week for w in weeks] == [1, 2, 3, 4] and [w.n_images for w in weeks] == [4, 4, 4, 4]
    assert result.temporal.test is not None and all(w.drift_p_value is not None for w in weeks)
    assert not any(w.drift_injected for w in weeks) and result.temporal.drifts == []
    bundle = load_bundle(tiny_run.out_dir)
    image_set, _ = load_split(str(tiny_synthetic), "test", 32, console=quiet())
    again = simulate(image_set.images, image_set.labels.numpy().astype(int),
                     lambda pixels: predict_probabilities(bundle, pixels), threshold, bundle.reference, weeks=4, seed=0,
                     resamples=200)
    # evaluate scores the whole split at once, this path a week at a time: batched differently, the scores
    # may differ in their last bits from one CPU to another (an AMD EPYC does), so floats need only be close
    assert_close(again, result.temporal)
    assert json.loads((out / "metrics.json").read_text())["temporal"]["clean_weeks_flagged"] == \
        result.temporal.clean_weeks_flagged


def test_subgroups_come_from_the_records(tiny_evaluation: tuple[EvaluationResult, Path], scored: Scored,
                                         threshold: float) -> None:
    result, _ = tiny_evaluation
    labels, probabilities, records = scored
    assert result.subgroups is not None
    groups = {row.group: row for row in result.subgroups}
    assert set(groups) == {r.subgroup for r in records} and "normal" in groups
    assert groups["normal"].pneumonia == 0 and groups["normal"].metrics.sensitivity is None
    assert sum(row.n_images for row in result.subgroups) == 16
    for name, row in groups.items():
        chosen = np.array([r.subgroup == name for r in records])
        assert row.metrics == screening_metrics(labels[chosen], probabilities[chosen], threshold), name
        assert set(row.ci95) == {"sensitivity", "specificity", "accuracy"}
        if name != "normal":
            assert row.metrics.specificity is None and row.ci95["specificity"] is None


def test_the_out_of_distribution_summary(tiny_evaluation: tuple[EvaluationResult, Path], tiny_run: TinyRun,
                                         tiny_synthetic: Path) -> None:
    result, _ = tiny_evaluation
    bundle = load_bundle(tiny_run.out_dir)
    assert result.ood is not None and result.ood.settings == bundle.ood.settings()  # type: ignore[union-attr]
    image_set, _ = load_split(str(tiny_synthetic), "test", 32, console=quiet())
    scores = bundle.ood.score(bundle.model, image_set.images, bundle.preprocess.normalize)  # type: ignore[union-attr]
    assert result.ood.n_images == 16 and result.ood.flagged == int((scores > bundle.ood.threshold).sum())  # type: ignore[union-attr]
    assert result.ood.probes_per_kind == 40 and len(result.ood.probe_detection) == 9
    assert result.ood.probe_detection_overall == pytest.approx(np.mean(list(result.ood.probe_detection.values())))


def test_every_figure_is_drawn(tiny_evaluation: tuple[EvaluationResult, Path]) -> None:
    result, out = tiny_evaluation
    assert set(result.figures) == FIGURES
    for name, path in result.figures.items():
        assert path.parent == out and path.suffix == ".png", name
        with Image.open(path) as image:
            image.verify()


def test_prior_adaptation_is_reported_apart(tiny_evaluation: tuple[EvaluationResult, Path], tiny_run: TinyRun,
                                            scored: Scored, threshold: float) -> None:
    result, _ = tiny_evaluation
    labels, probabilities, _ = scored
    adapted = result.prior_adapted
    prior = tiny_run.data.summary.train.prevalence
    assert adapted is not None and adapted.training_prior == pytest.approx(prior) and "no labels" in adapted.note
    estimate, rescaled = adapt_to_prior(probabilities, prior)
    assert adapted.estimated_prevalence == pytest.approx(estimate)
    assert adapted.metrics == screening_metrics(labels, rescaled, threshold)  # the stored (youden) threshold
    assert result.metrics.point == screening_metrics(labels, probabilities, threshold)  # the plain one, untouched


def test_a_balanced_threshold_becomes_one_half_after_adaptation(tiny_run: TinyRun,
                                                                scored: Scored) -> None:
    labels, probabilities, _ = scored
    bundle = load_bundle(tiny_run.out_dir)
    training = bundle.manifest.training
    assert training is not None
    bundle.manifest.threshold = 0.37
    assert prior_adapted(bundle, labels, probabilities).metrics.threshold == 0.37  # type: ignore[union-attr]
    bundle.manifest.training = replace(training, config=replace(training.config, threshold_policy="balanced"))
    assert prior_adapted(bundle, labels, probabilities).metrics.threshold == 0.5  # type: ignore[union-attr]
    bundle.manifest.training = None
    assert prior_adapted(bundle, labels, probabilities) is None


def test_a_runs_validation_split_can_be_rescored_from_its_csv(tiny_run: TinyRun, tmp_path: Path) -> None:
    bundle = load_bundle(tiny_run.out_dir)
    result = evaluate(bundle, str(tiny_run.out_dir / "split.csv"), tmp_path,
                      EvalConfig(split="val", bootstrap=100, weeks=1), quiet())
    assert result.data.split == "val" and result.data.counts.images == 12
    assert result.metrics.point == bundle.manifest.validation.metrics  # type: ignore[union-attr]


def test_a_bad_groups_file_is_refused_before_anything_is_written(tiny_run: TinyRun, tiny_synthetic: Path,
                                                                 tmp_path: Path) -> None:
    groups = tmp_path / "groups.csv"
    groups.write_text("name,site\na.png,x\n")
    with pytest.raises(PneumoscanError, match="expected a CSV with a header 'file,group'"):
        evaluate(load_bundle(tiny_run.out_dir), str(tiny_synthetic), tmp_path / "out",
                 EvalConfig(groups=str(groups), bootstrap=100), quiet())
    assert not (tmp_path / "out").exists()
    with pytest.raises(PneumoscanError, match="cannot read the groups file"):
        read_groups(tmp_path / "missing.csv", [])


def test_groups_from_a_csv_are_matched_by_path_or_name(tmp_path: Path) -> None:
    records = [Record("/data/a/x1.png", 1, "p1"), Record("/data/b/x2.png", 0, "p2"), Record("/data/x3.png", 1, "p3")]
    groups_csv = tmp_path / "groups.csv"
    groups_csv.write_text("file,group\n/data/a/x1.png,site A\nx2.png,site B\n/other/x1.png,site C\n")
    groups = read_groups(groups_csv, records)
    assert groups == ["site A", "site B", "unlisted"]
    rows = subgroup_metrics(groups, np.array([1, 0, 1]), np.array([0.9, 0.8, 0.1]), 0.5, resamples=50)
    by_group = {row.group: row for row in rows}
    assert [row.group for row in rows] == ["site A", "site B", "unlisted"]
    assert by_group["site A"].metrics.sensitivity == 1.0 and by_group["site A"].metrics.specificity is None
    assert by_group["site B"].metrics.specificity == 0.0 and by_group["unlisted"].metrics.sensitivity == 0.0
    assert (by_group["site A"].n_images, by_group["site A"].pneumonia) == (1, 1)


def test_record_groups_need_a_pneumonia_subtype() -> None:
    with_subtypes = [Record("a", 0, "p", "normal"), Record("b", 1, "q", "virus"), Record("c", 1, "r")]
    assert record_groups(with_subtypes) == ["normal", "virus", "pneumonia, subtype unknown"]
    assert record_groups([Record("a", 0, "p"), Record("c", 1, "r")]) is None  # nothing to compare
