"""The architecture diagram of every registered model lays out without overprinting."""

from collections.abc import Sequence
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from pneumoscan.evaluation import figures
from pneumoscan.evaluation.architecture import BlockInfo, summarize
from pneumoscan.models import create_model, list_models

SIZE = 32
SLACK = 0.5  # pixels: rounding of the renderer's extents


def _drawn(monkeypatch: pytest.MonkeyPatch, blocks: Sequence[BlockInfo], tmp_path: Path) -> Figure:
    """The figure `architecture_diagram` draws, kept open instead of saved."""
    kept: list[Figure] = []

    def keep(figure: Figure, path: Path) -> Path:
        kept.append(figure)
        return Path(path)

    monkeypatch.setattr(figures, "save_figure", keep)
    figures.architecture_diagram(blocks, (1, SIZE, SIZE), "model", tmp_path / "architecture.png")
    return kept[0]


def _assert_no_text_leaves_its_column(figure: Figure, rows: int) -> None:
    """Texts drawn at the same height form a row of columns: a text's column runs from where the text
    before it ends to where the text after it starts, inside the row's box. Every text's rendered
    bounding box must stay in its column (no overprinting) and inside its box (rows sized to text)."""
    renderer = figure.canvas.get_renderer()
    axis = figure.axes[0]
    boxes = [p.get_window_extent(renderer) for p in axis.patches if isinstance(p, FancyBboxPatch)]
    assert len(boxes) == rows
    by_height: dict[float, list] = {}
    for text in axis.texts:
        if text.get_text():
            anchor_y = round(float(axis.transData.transform(text.get_position())[1]), 1)
            by_height.setdefault(anchor_y, []).append((text.get_window_extent(renderer), text.get_text()))
    assert len(by_height) >= rows
    for anchor_y, row in by_height.items():
        row.sort(key=lambda extent_text: extent_text[0].x0)
        for (left, left_text), (right, right_text) in zip(row, row[1:], strict=False):
            assert left.x1 <= right.x0 + SLACK, f"{left_text!r} runs into the column of {right_text!r}"
        box = next((b for b in boxes if b.y0 <= anchor_y <= b.y1), None)
        for extent, content in row if box is not None else ():
            assert box.x0 - SLACK <= extent.x0 and extent.x1 <= box.x1 + SLACK, f"{content!r} leaves its box"
            assert box.y0 - SLACK <= extent.y0 and extent.y1 <= box.y1 + SLACK, f"{content!r} overflows its row"


@pytest.mark.parametrize("name", list_models())
def test_no_text_leaves_its_column(monkeypatch: pytest.MonkeyPatch, name: str, tmp_path: Path) -> None:
    blocks = summarize(create_model(name, image_size=SIZE), (1, SIZE, SIZE))
    figure = _drawn(monkeypatch, blocks, tmp_path)
    _assert_no_text_leaves_its_column(figure, len(blocks) + 1)  # + the input row
    figure.clf()


def test_an_unrepetitive_block_of_many_layers_fits(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No repeats to collapse: the layer list is summarised by counts, and a very long name still fits."""
    kind = " > ".join(f"Layer{i % 7}x{i % 5}" for i in range(200))
    blocks = [BlockInfo("a.very.long.block.name.indeed", kind, (1024, 512, 512), 123_456_789)]
    figure = _drawn(monkeypatch, blocks, tmp_path)
    _assert_no_text_leaves_its_column(figure, 2)
    assert any(text.get_text().startswith("200 layers: ") for text in figure.axes[0].texts)
    figure.clf()


def test_long_layer_lists_are_abbreviated() -> None:
    """A dense block's hundreds of layers read as repeats, not as one line a metre long."""
    assert figures.abbreviate_layers("Conv2d > BatchNorm2d > ReLU > Conv2d > BatchNorm2d > ReLU") == \
        "2 × (Conv2d > BatchNorm2d > ReLU)"
    assert figures.abbreviate_layers("Identity > Conv2d > Conv2d > Identity") == "2 × Conv2d"
    assert figures.abbreviate_layers("Linear > ReLU") == "Linear > ReLU"
