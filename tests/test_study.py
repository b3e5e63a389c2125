"""Studies: cells on equal terms (same split, same initial weights per seed), reuse of finished runs, and the
paired comparison of cells over seeds."""

import csv
import io
import json
import math
import statistics
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rich.console import Console
from scipy import stats

from conftest import TINY
from pneumoscan.config import TrainConfig
from pneumoscan.errors import PneumoscanError
from pneumoscan.metrics.comparison import MeanSd, PairedComparison, paired_comparison
from pneumoscan.pipeline import study as study_module
from pneumoscan.pipeline.study import (
    STUDY_METRICS,
    CellResult,
    NamedCell,
    StudyResult,
    Variation,
    _finished_run,
    comparable_pairs,
    run_study,
    run_values,
)
from pneumoscan.training import loop

# --- the arithmetic -------------------------------------------------------------------------------------------------


def test_mean_and_sample_sd() -> None:
    summary = MeanSd.of([0.5, 0.7, 0.9])
    assert summary == MeanSd(mean=pytest.approx(0.7), sd=pytest.approx(0.2), n=3)  # type: ignore[arg-type]
    assert summary.sd == pytest.approx(statistics.stdev([0.5, 0.7, 0.9]))  # n - 1 in the denominator
    assert str(MeanSd(0.7, 0.2, 3)) == "0.700 ± 0.200"
    assert str(MeanSd.of([float("nan")])) == "n/a"
    assert MeanSd.of([0.4]) == MeanSd(0.4, 0.0, 1)
    assert MeanSd.of([1.0, float("nan"), 3.0]) == MeanSd(2.0, pytest.approx(math.sqrt(2)), 2)  # type: ignore[arg-type]
    empty = MeanSd.of([float("nan")])
    assert empty.n == 0 and math.isnan(empty.mean) and math.isnan(empty.sd)


def test_paired_comparison_is_scipys_paired_t_test() -> None:
    reference = [0.80, 0.82, 0.79, 0.85, 0.81]
    cell = [0.84, 0.83, 0.83, 0.88, 0.86]
    result = paired_comparison("accuracy", "adam", "sgd", reference, cell)
    differences = np.subtract(cell, reference)
    assert (result.metric, result.reference, result.cell, result.n_pairs) == ("accuracy", "adam", "sgd", 5)
    assert result.mean_difference == pytest.approx(differences.mean())
    assert result.p_value == pytest.approx(stats.ttest_rel(cell, reference).pvalue)
    half = stats.t.ppf(0.975, 4) * differences.std(ddof=1) / math.sqrt(5)
    assert result.ci95 == pytest.approx((differences.mean() - half, differences.mean() + half))
    interval = stats.ttest_rel(cell, reference).confidence_interval(0.95)
    assert result.ci95 == pytest.approx((interval.low, interval.high))
    assert result.significant and result.p_value < 0.05  # type: ignore[operator]
    # the pairing matters: the same values unpaired would not be significant
    assert stats.ttest_ind(cell, reference).pvalue > result.p_value  # type: ignore[operator]


def test_a_negative_difference_and_an_insignificant_one() -> None:
    result = paired_comparison("val_loss", "a", "b", [0.5, 0.4, 0.6], [0.45, 0.41, 0.52])
    assert result.mean_difference == pytest.approx(-0.04)
    assert result.p_value == pytest.approx(stats.ttest_rel([0.45, 0.41, 0.52], [0.5, 0.4, 0.6]).pvalue)
    assert not result.significant and result.p_value > 0.05  # type: ignore[operator]


def test_paired_comparison_edge_cases() -> None:
    one = paired_comparison("m", "a", "b", [0.5], [0.7])
    assert one.n_pairs == 1 and one.mean_difference == pytest.approx(0.2) and one.ci95 is None and one.p_value is None
    constant = paired_comparison("m", "a", "b", [0.5, 0.25, 0.75], [0.75, 0.5, 1.0])  # exactly 0.25 better each time
    assert constant.p_value is None and constant.ci95 == (0.25, 0.25) and not constant.significant
    with_gaps = paired_comparison("m", "a", "b", [0.5, float("nan"), 0.7, 0.6], [0.6, 0.9, float("nan"), 0.8])
    assert with_gaps.n_pairs == 2 and with_gaps.mean_difference == pytest.approx(0.15)  # unmatched seeds dropped
    nothing = paired_comparison("m", "a", "b", [float("nan")], [0.1])
    assert nothing.n_pairs == 0 and math.isnan(nothing.mean_difference) and nothing.p_value is None
    with pytest.raises(ValueError):
        paired_comparison("m", "a", "b", [0.1, 0.2], [0.1])


# --- variations -------------------------------------------------------------------------------------------------------


def test_variations_are_parsed_and_converted_like_settings() -> None:
    assert Variation.parse("optimizer=adam,sgd") == Variation("optimizer", ("adam", "sgd"))
    assert Variation.parse("image-size = 32, 64") == Variation("image_size", (32, 64))
    assert Variation.parse("lr=none,0.01") == Variation("lr", (None, 0.01))
    assert Variation.parse("hflip=false,true") == Variation("hflip", (False, True))


@pytest.mark.parametrize(("text", "message"), [
    ("optimizer=adam", "at least two values"), ("optimizer", "key=value1,value2"),
    ("seed=0,1", "seeds are set by --seeds"), ("optimizer=adam,adam", "a value is repeated"),
    ("colour=red,blue", "unknown setting(s) colour"), ("optimizer=adam,rmsprop", "choose from adam, sgd"),
    ("epochs=1,x", "--vary epochs: epochs = 'x'"),
])
def test_bad_variations_are_refused(text: str, message: str) -> None:
    with pytest.raises(PneumoscanError) as info:
        Variation.parse(text)
    assert message in str(info.value)


def test_cells_are_compared_when_they_differ_in_one_setting() -> None:
    cells = [CellResult(f"{o}/{a}", {"optimizer": o, "augment": a}, []) for o in ("adam", "sgd")
             for a in ("standard", "none")]
    pairs = [(first.name, second.name) for first, second in comparable_pairs(cells)]
    assert pairs == [("adam/standard", "adam/none"), ("adam/standard", "sgd/standard"), ("adam/none", "sgd/none"),
                     ("sgd/standard", "sgd/none")]  # each factor at each level of the other; no diagonals
    three = [CellResult(o, {"optimizer": o}, []) for o in ("a", "b", "c")]
    assert [(x.name, y.name) for x, y in comparable_pairs(three)] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert comparable_pairs([CellResult("", {}, [])]) == []


def test_a_study_needs_seeds_and_distinct_keys(tmp_path: Path) -> None:
    with pytest.raises(PneumoscanError, match="--seeds must be at least 1"):
        run_study(TrainConfig(), [], 0, tmp_path)
    twice = [Variation.parse("optimizer=adam,sgd"), Variation.parse("optimizer=sgd,adam")]
    with pytest.raises(PneumoscanError, match="names a key twice"):
        run_study(TrainConfig(), twice, 1, tmp_path)


def test_every_cell_is_checked_before_any_training(tmp_path: Path) -> None:
    with pytest.raises(PneumoscanError, match="cell arch=nonet: unknown architecture 'nonet'"):
        run_study(TrainConfig(data=str(tmp_path)), [Variation.parse("arch=baseline,nonet")], 1, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cell_names_stay_distinct_when_paths_share_a_folder_name() -> None:
    short = study_module._cell_names([{"weights": "a/w.safetensors"}, {"weights": "b/w.safetensors"}])
    assert short == ["weights=a", "weights=b"]
    same_folder = [{"weights": "runs/x/model.safetensors"}, {"weights": "other/x/model.safetensors"}]
    assert study_module._cell_names(same_folder) == ["weights=runs/x/model.safetensors",
                                                     "weights=other/x/model.safetensors"]


def test_named_cells_parse_into_settings() -> None:
    cell = NamedCell.parse("reg: mixup=0.2; label_smoothing=0.1 ;erasing=0.25")
    assert cell == NamedCell("reg", {"mixup": 0.2, "label_smoothing": 0.1, "erasing": 0.25})
    assert NamedCell.parse("base:") == NamedCell("base", {})
    for text, message in [("reg mixup=0.2", "write it as"), ("a b: mixup=1", "write it as"),
                          ("x: seed=3", "seeds are set by --seeds"), ("x: colour=red", "unknown setting"),
                          ("x: mixup=lots", "--cell x: mixup")]:
        with pytest.raises(PneumoscanError, match=message):
            NamedCell.parse(text)


def test_named_cells_combine_with_vary_and_are_refused_when_they_clash(tmp_path: Path) -> None:
    cells = [NamedCell("a", {"mixup": 0.2}), NamedCell("a", {})]
    with pytest.raises(PneumoscanError, match="names a recipe twice"):
        run_study(TrainConfig(), [], 1, tmp_path, cells=cells)
    with pytest.raises(PneumoscanError, match="--vary mixup and --cell reg both set mixup"):
        run_study(TrainConfig(), [Variation.parse("mixup=0,0.5")], 1, tmp_path,
                  cells=[NamedCell("base", {}), NamedCell("reg", {"mixup": 0.2})])


def test_a_study_of_named_recipes(base: TrainConfig, tmp_path: Path) -> None:
    cells = [NamedCell("base", {}), NamedCell("reg", {"mixup": 0.4, "label_smoothing": 0.1, "augment": "none"})]
    result = run_study(base, [Variation.parse("optimizer=adam,sgd")], 1, tmp_path, Console(quiet=True), cells=cells)
    assert [c.name for c in result.cells] == ["cell=base, optimizer=adam", "cell=base, optimizer=sgd",
                                              "cell=reg, optimizer=adam", "cell=reg, optimizer=sgd"]
    configs = [c.runs[0].config for c in result.cells]
    assert [(c.mixup, c.label_smoothing, c.augment, c.optimizer) for c in configs] == [
        (0.0, 0.0, base.augment, "adam"), (0.0, 0.0, base.augment, "sgd"), (0.4, 0.1, "none", "adam"),
        (0.4, 0.1, "none", "sgd")]
    written = json.loads((tmp_path / "study.json").read_text())
    assert written["named_cells"] == {"base": {}, "reg": {"mixup": 0.4, "label_smoothing": 0.1, "augment": "none"}}
    assert written["vary"] == {"optimizer": ["adam", "sgd"]}
    pairs = {(c.reference, c.cell) for c in result.comparisons}
    assert ("cell=base, optimizer=adam", "cell=reg, optimizer=adam") in pairs
    assert ("cell=base, optimizer=adam", "cell=reg, optimizer=sgd") not in pairs
    assert "`reg` = mixup=0.4, label_smoothing=0.1, augment=none" in (tmp_path / "study.md").read_text()


# --- a real study -------------------------------------------------------------------------------------------------


class _Spy:
    """Records the initial weights of every model the training loop builds, and how many runs train."""

    def __init__(self) -> None:
        self.initial: list[tuple[str, int, dict[str, torch.Tensor]]] = []
        self.trained = 0

    def install(self, patch: pytest.MonkeyPatch) -> None:
        build, run = loop._build_model, study_module.run_training

        def spy_build(config, preprocess, console, **kwargs):  # type: ignore[no-untyped-def]
            model = build(config, preprocess, console, **kwargs)
            self.initial.append((config.optimizer, config.seed,
                                 {k: v.clone() for k, v in model.state_dict().items()}))
            return model

        def spy_run(*args, **kwargs):  # type: ignore[no-untyped-def]
            self.trained += 1
            return run(*args, **kwargs)

        patch.setattr(loop, "_build_model", spy_build)
        patch.setattr(study_module, "run_training", spy_run)


@pytest.fixture(scope="module")
def base(tiny_synthetic: Path) -> TrainConfig:
    return TrainConfig(data=str(tiny_synthetic), **{**TINY, "epochs": 1})


@pytest.fixture(scope="module")
def study(base: TrainConfig, tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyResult, _Spy]:
    spy = _Spy()
    with pytest.MonkeyPatch.context() as patch:
        spy.install(patch)
        result = run_study(base, [Variation.parse("optimizer=adam,sgd")], 2, tmp_path_factory.mktemp("study"),
                           Console(quiet=True), command="pneumoscan study --vary optimizer=adam,sgd --seeds 2")
    return result, spy


def test_seed_k_starts_from_the_same_weights_in_every_cell(study: tuple[StudyResult, _Spy]) -> None:
    _, spy = study
    assert [(optimizer, seed) for optimizer, seed, _ in spy.initial] == [("adam", 0), ("sgd", 0), ("adam", 1),
                                                                         ("sgd", 1)]  # seed-major order
    weights = {(optimizer, seed): state for optimizer, seed, state in spy.initial}
    for seed in (0, 1):
        adam, sgd = weights[("adam", seed)], weights[("sgd", seed)]
        assert all(torch.equal(adam[k], sgd[k]) for k in adam)
    assert not torch.equal(weights[("adam", 0)]["features.0.0.weight"], weights[("adam", 1)]["features.0.0.weight"])


def test_every_run_sees_the_same_split_and_budget(study: tuple[StudyResult, _Spy]) -> None:
    result, _ = study
    runs = [run for cell in result.cells for run in cell.runs]
    assert [str(run.out_dir.relative_to(result.out_dir)) for run in runs] == [
        "c0_optimizer=adam/seed0", "c0_optimizer=adam/seed1", "c1_optimizer=sgd/seed0", "c1_optimizer=sgd/seed1"]
    assert len({(run.out_dir / "split.csv").read_text() for run in runs}) == 1
    assert {(run.config.epochs, run.config.batch_size, len(run.history)) for run in runs} == {(1, 8, 1)}
    assert [run.config.seed for run in runs] == [0, 1, 0, 1]
    adam0, sgd0 = result.cells[0].runs[0], result.cells[1].runs[0]
    assert adam0.history[0].train_loss != sgd0.history[0].train_loss  # the varied setting did change the training


def _same(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to NaN (unmeasured gap metrics are NaN)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_study_json_holds_the_cells_runs_summaries_and_tests(study: tuple[StudyResult, _Spy],
                                                             base: TrainConfig) -> None:
    result, _ = study
    written = json.loads((result.out_dir / "study.json").read_text())
    assert written["command"] == "pneumoscan study --vary optimizer=adam,sgd --seeds 2"
    assert written["seeds"] == 2 and written["vary"] == {"optimizer": ["adam", "sgd"]}
    assert written["base_config"] == json.loads(json.dumps(base.to_dict()))
    assert written["metrics"] == list(STUDY_METRICS)
    assert [c["name"] for c in written["cells"]] == ["optimizer=adam", "optimizer=sgd"]
    assert [c["overrides"] for c in written["cells"]] == [{"optimizer": "adam"}, {"optimizer": "sgd"}]
    for stored, cell in zip(written["cells"], result.cells, strict=True):
        assert [r["seed"] for r in stored["runs"]] == [0, 1]
        assert [r["run"] for r in stored["runs"]] == [str(run.out_dir.relative_to(result.out_dir))
                                                      for run in cell.runs]
        for stored_run, run in zip(stored["runs"], cell.runs, strict=True):
            values = run_values(run)
            assert _same(stored_run["values"], values)
            assert values["accuracy"] == run.validation.metrics.accuracy
            assert values["val_loss"] == run.validation.loss and values["best_epoch"] == run.best_epoch
        for metric in STUDY_METRICS:
            assert _same(stored["summary"][metric], asdict(MeanSd.of(cell.values(metric))))
    expected = [asdict(paired_comparison(metric, "optimizer=adam", "optimizer=sgd", result.cells[0].values(metric),
                                         result.cells[1].values(metric)))
                for metric in STUDY_METRICS if metric not in ("best_epoch", "seconds_to_best", "minutes")]
    expected = [c for c in expected if c["n_pairs"] > 0]  # the proxy metrics are not measured without a held-out series
    assert {c["metric"] for c in expected} >= {"accuracy", "roc_auc", "val_loss"}
    assert "shift_auc" not in {c["metric"] for c in expected}
    assert _same(written["comparisons"], json.loads(json.dumps(expected)))
    assert all(isinstance(c, PairedComparison) for c in result.comparisons)
    assert written["test"].startswith("paired t-test over seeds")
    best = min((run for cell in result.cells for run in cell.runs), key=lambda run: run.validation.loss)
    assert written["best_run"] == str(best.out_dir.relative_to(result.out_dir)) and result.best_run == best.out_dir


def test_study_csv_md_and_curves(study: tuple[StudyResult, _Spy]) -> None:
    result, _ = study
    rows = list(csv.DictReader((result.out_dir / "study.csv").open()))
    assert [(r["cell"], r["seed"]) for r in rows] == [("optimizer=adam", "0"), ("optimizer=adam", "1"),
                                                      ("optimizer=sgd", "0"), ("optimizer=sgd", "1")]
    assert list(rows[0]) == ["cell", "seed", "run", *STUDY_METRICS]
    first = run_values(result.cells[0].runs[0])
    assert float(rows[0]["accuracy"]) == pytest.approx(first["accuracy"], rel=1e-5)
    assert float(rows[0]["val_loss"]) == pytest.approx(first["val_loss"], rel=1e-5)
    markdown = (result.out_dir / "study.md").read_text()
    for cell in result.cells:
        assert f"| {cell.name} | {result.summary[cell.name]['accuracy']} |" in markdown
    accuracy = next(c for c in result.comparisons if c.metric == "accuracy")
    assert f"| optimizer=adam | optimizer=sgd | accuracy | {accuracy.mean_difference:+.4f} |" in markdown
    assert "gap_loss_last" not in markdown  # not measured in this study, so not shown
    assert (result.out_dir / "study_curves.png").stat().st_size > 10_000


def test_rerunning_a_study_reuses_its_finished_runs(study: tuple[StudyResult, _Spy], base: TrainConfig) -> None:
    result, _ = study
    before = (result.out_dir / "study.json").read_text()
    spy = _Spy()
    output = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        spy.install(patch)
        again = run_study(base, [Variation.parse("optimizer=adam,sgd")], 2, result.out_dir,
                          Console(file=output, width=200),
                          command="pneumoscan study --vary optimizer=adam,sgd --seeds 2")
    assert spy.trained == 0 and spy.initial == []
    assert output.getvalue().count("reusing the finished run") == 4
    for old, new in zip(result.cells, again.cells, strict=True):
        assert all(_same(run_values(r), run_values(s)) for r, s in zip(old.runs, new.runs, strict=True))
        assert [r.history for r in old.runs] == [r.history for r in new.runs]
    assert _same(json.loads((result.out_dir / "study.json").read_text()), json.loads(before))


def test_a_run_is_reused_only_for_the_same_config(study: tuple[StudyResult, _Spy], tmp_path: Path) -> None:
    result, _ = study
    run = result.cells[0].runs[0]
    assert _finished_run(run.out_dir, run.config) is not None
    assert _finished_run(run.out_dir, replace(run.config, epochs=2)) is None
    assert _finished_run(run.out_dir, replace(run.config, augment="none")) is None
    assert _finished_run(tmp_path, run.config) is None  # nothing there
    (tmp_path / "model.json").write_text((run.out_dir / "model.json").read_text())
    assert _finished_run(tmp_path, run.config) is None  # interrupted before its history was written
    (tmp_path / "metrics.csv").write_text((run.out_dir / "metrics.csv").read_text())
    assert _finished_run(tmp_path, run.config) is not None
    (tmp_path / "model.json").write_text("{not json")
    assert _finished_run(tmp_path, run.config) is None


def test_one_named_cell_measures_its_spread_over_seeds(base: TrainConfig, tmp_path: Path) -> None:
    result = run_study(replace(base, epochs=1), [], 2, tmp_path, Console(quiet=True),
                       cells=[NamedCell("crop", {"border_crop": 0.1})])
    assert [c.name for c in result.cells] == ["cell=crop"] and result.comparisons == []
    assert [r.config.seed for r in result.cells[0].runs] == [base.seed, base.seed + 1]
    assert all(r.config.border_crop == 0.1 for r in result.cells[0].runs)
