"""report.html and MODEL_CARD.md: written from the evaluation result, so their numbers are metrics.json's."""

import base64
import html
import io
import json
import re
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import torch
from PIL import Image

from conftest import TinyRun
from pneumoscan.evaluation.evaluate import EvaluationResult
from pneumoscan.evaluation.model_card import render_model_card
from pneumoscan.evaluation.report_html import METRIC_LABELS, SECTIONS, render_report
from pneumoscan.metrics import METRIC_NAMES
from pneumoscan.models.bundle import load_bundle


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "section":
            self.sections.append(str(attributes.get("id")))
        if tag == "img":
            self.images.append(str(attributes.get("src")))
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self._cell = []
        for key in ("src", "href"):
            if attributes.get(key) and not str(attributes[key]).startswith(("data:", "#")):
                self.external.append(str(attributes[key]))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _page(out: Path) -> _Page:
    page = _Page()
    page.feed((out / "report.html").read_text())
    return page


def _interval(ci: list[float] | None) -> str:
    return "n/a" if ci is None else f"{ci[0]:.4f} – {ci[1]:.4f}"


def test_report_is_self_contained_with_every_section_and_image(tiny_evaluation: tuple[EvaluationResult, Path]) -> None:
    result, out = tiny_evaluation
    page = _page(out)
    assert page.sections == list(SECTIONS)
    assert page.external == []  # opens offline: nothing to fetch
    assert len(page.images) == len(result.figures) == 12  # every drawn figure, embedded (two in the audit section)
    for source in page.images:
        header, payload = source.split(",", 1)
        assert header == "data:image/png;base64"
        with Image.open(io.BytesIO(base64.b64decode(payload))) as image:
            image.verify()
            assert min(image.size) > 100


def test_report_metric_values_are_those_of_metrics_json(tiny_evaluation: tuple[EvaluationResult, Path]) -> None:
    _, out = tiny_evaluation
    metrics = json.loads((out / "metrics.json").read_text())
    rows = {row[0]: row[1:] for row in _page(out).rows if row and row[0] in METRIC_LABELS.values()}
    assert len(rows) == len(METRIC_NAMES)
    for name in METRIC_NAMES:
        value = "n/a" if metrics[name] is None else f"{metrics[name]:.4f}"
        assert rows[METRIC_LABELS[name]] == [value, _interval(metrics["ci95"][name])], name
    text = html.unescape((out / "report.html").read_text())
    assert f"Threshold {metrics['threshold']:.4f}" in text
    assert f"{metrics['bootstrap']['resamples']} resamples, seed {metrics['bootstrap']['seed']}" in text
    counts = metrics["data"]["counts"]
    assert [metrics["data"]["split"], str(counts["images"]), str(counts["normal"]), str(counts["pneumonia"])] in [
        row[1:5] for row in _page(out).rows]
    for group in metrics["subgroups"]:
        assert any(row[:3] == [group["group"], str(group["n_images"]), str(group["pneumonia"])]
                   for row in _page(out).rows), group["group"]
    assert f"{metrics['ood']['flagged']} of {metrics['ood']['n_images']} evaluated images were flagged" in text


def test_model_card_states_the_augmentation_preset_actually_used(tiny_evaluation: tuple[EvaluationResult, Path],
                                                                  tiny_run: TinyRun) -> None:
    _, out = tiny_evaluation
    card = (out / "MODEL_CARD.md").read_text()
    assert tiny_run.config.augment == "none"
    assert "augmentation preset `none`" in card and "`standard`" not in card
    manifest = load_bundle(tiny_run.out_dir).manifest
    training = manifest.training
    assert training is not None
    assert (f"optimizer adam, learning rate 0.001, augmentation preset `none`, imbalance handling `none`, 32 px, "
            f"best epoch {training.best_epoch} of 2)") in card
    assert f"torch {torch.__version__}" in card and "monai " in card
    result, _ = tiny_evaluation
    for changes, phrase in (({"augment": "shift", "hflip": True}, "augmentation preset `shift with horizontal flips`"),
                            ({"augment": "standard"}, "augmentation preset `standard`")):
        other = replace(manifest, training=replace(training, config=replace(training.config, **changes)))
        assert phrase in render_model_card(other, result)


def test_model_card_numbers_are_those_of_metrics_json(tiny_evaluation: tuple[EvaluationResult, Path],
                                                      tiny_run: TinyRun) -> None:
    _, out = tiny_evaluation
    card = (out / "MODEL_CARD.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    for name in METRIC_NAMES:
        value = "n/a" if metrics[name] is None else f"{metrics[name]:.3f}"
        ci = metrics["ci95"][name]
        interval = "n/a" if ci is None else f"{ci[0]:.3f}–{ci[1]:.3f}"
        assert f"| {METRIC_LABELS[name]} | {value} | {interval} |" in card, name
    manifest = load_bundle(tiny_run.out_dir).manifest
    assert f"Decision threshold **{manifest.threshold:.4f}**, policy `youden`" in card
    counts = metrics["data"]["counts"]
    assert (f"{counts['images']} images ({counts['normal']} normal, {counts['pneumonia']} pneumonia, "
            f"{counts['patients']} patients), at threshold {metrics['threshold']:.4f}") in card
    training = manifest.training.data  # type: ignore[union-attr]
    assert (f"{training.train.images} images ({training.train.normal} normal, {training.train.pneumonia} pneumonia) "
            f"from {training.train.patients} patients") in card
    for group in metrics["subgroups"]:
        assert re.search(rf"^\| {re.escape(group['group'])} \| {group['n_images']} \|", card, re.MULTILINE)
    for phrase in ("Not a medical device", "doi:10.17632/rscbjbr9sj.2", "CC BY 4.0", "### Subgroups", "Known limits"):
        assert phrase in card, phrase


def test_a_bundle_without_a_training_record_says_so(tiny_evaluation: tuple[EvaluationResult, Path],
                                                    tiny_run: TinyRun) -> None:
    result, _ = tiny_evaluation
    bare = replace(load_bundle(tiny_run.out_dir).manifest, training=None, validation=None)
    card = render_model_card(bare, result)
    assert "No training record in this bundle." in card and "policy `not recorded`" in card
    page = render_report(replace(result, figures={}, subgroups=None, ood=None, audit=None), bare)
    assert "<img" not in page and "No Grad-CAM grid" in page
    assert "carries no out-of-distribution guard" in page and "No subgroups" in page
    assert "No shortcut audit" in page
