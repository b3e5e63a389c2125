"""`evaluate` writes a self-contained report.html, metrics with CIs and a model card."""

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from pneumoscan.cli.main import main
from pneumoscan.evaluation.report_html import SECTIONS
from pneumoscan.evaluation.uncertainty import METRIC_NAMES


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "section":
            self.sections.append(str(attributes.get("id")))
        if tag == "img":
            self.images.append(str(attributes.get("src")))
        for key in ("src", "href"):
            if attributes.get(key) and not str(attributes[key]).startswith(("data:", "#")):
                self.external.append(str(attributes[key]))


@pytest.fixture(scope="module")
def evaluation(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("evaluation")
    assert main(["evaluate", "--model", "default", "--data", str(tiny_synthetic), "--bootstrap", "200",
                 "--out", str(out)]) == 0
    return out


def test_metrics_json_gives_every_metric_with_its_interval(evaluation: Path) -> None:
    metrics = json.loads((evaluation / "metrics.json").read_text())
    for name in METRIC_NAMES:
        low, high = metrics["ci95"][name]
        assert low <= metrics[name] <= high, name
    assert metrics["bootstrap"] == {"resamples": 200, "seed": 0, "method": "stratified percentile bootstrap"}
    subtypes = {row["group"] for row in metrics["subgroups"]}
    assert {"bacteria", "virus", "normal"} <= subtypes  # from the Kermany-style file names


def test_report_is_self_contained_with_every_section_and_image(evaluation: Path) -> None:
    page = _Page()
    page.feed((evaluation / "report.html").read_text())
    assert page.sections == list(SECTIONS)
    assert page.external == []  # opens offline: nothing to fetch
    assert len(page.images) >= 9
    for source in page.images:
        header, payload = source.split(",", 1)
        assert header == "data:image/png;base64"
        with Image.open(io.BytesIO(base64.b64decode(payload))) as image:
            image.verify()
            assert min(image.size) > 100
    for figure in ("reliability.png", "pr_curve.png", "threshold_curve.png", "gradcam_cases.png", "roc_curve.png"):
        assert (evaluation / figure).stat().st_size > 5_000


def test_model_card_states_use_data_metrics_and_threshold(evaluation: Path) -> None:
    card = (evaluation / "MODEL_CARD.md").read_text()
    for phrase in ("Not a medical device", "doi:10.17632/rscbjbr9sj.2", "CC BY 4.0", "Decision threshold",
                   "| Sensitivity |", "### Subgroups", "Known limits"):
        assert phrase in card, phrase


def test_a_bad_groups_file_is_a_clear_error(tiny_synthetic: Path, tmp_path: Path) -> None:
    groups = tmp_path / "groups.csv"
    groups.write_text("name,site\na.png,x\n")
    assert main(["evaluate", "--model", "default", "--data", str(tiny_synthetic), "--groups", str(groups),
                 "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_groups_from_a_csv_are_matched_by_path_or_name(tmp_path: Path) -> None:
    import numpy as np

    from pneumoscan.data.records import Record
    from pneumoscan.evaluation.subgroups import read_groups, subgroup_metrics

    records = [Record("/data/a/x1.png", 1, "p1"), Record("/data/b/x2.png", 0, "p2"), Record("/data/x3.png", 1, "p3")]
    groups_csv = tmp_path / "groups.csv"
    groups_csv.write_text("file,group\n/data/a/x1.png,site A\nx2.png,site B\n")
    groups = read_groups(groups_csv, records)
    assert groups == ["site A", "site B", "unlisted"]
    rows = subgroup_metrics(groups, np.array([1, 0, 1]), np.array([0.9, 0.8, 0.1]), 0.5, resamples=50)
    by_group = {row["group"]: row for row in rows}
    assert by_group["site A"]["sensitivity"] == 1.0 and by_group["site A"]["specificity"] is None
    assert by_group["site B"]["specificity"] == 0.0 and by_group["unlisted"]["sensitivity"] == 0.0
