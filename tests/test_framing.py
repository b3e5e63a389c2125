"""The framing-swap proxy: the swaps change only the framing, the numbers say what flipped, and a model that
reads the framing is caught while one that reads the content is not."""

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TinyRun
from pneumoscan.data.augment import augment_preset
from pneumoscan.data.framing_swaps import FRAMING_SWAPS, paste_markers, zoom_in, zoom_out
from pneumoscan.evaluation.framing import bundle_seen_families, score_framing, seen_families
from pneumoscan.metrics.framing import FramingRecord, SwappedScores, framing_record
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.inference import predict_with


def _films(count: int = 4, side: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(60, 200, (count, 1, side, side), generator=generator, dtype=torch.uint8)


def test_zoom_in_enlarges_the_centre() -> None:
    films = torch.zeros(1, 1, 64, 64, dtype=torch.uint8)
    films[..., 16:48, 16:48] = 200  # a square filling the centre half
    zoomed = zoom_in(films, 1.5)
    assert zoomed.shape == films.shape and zoomed.dtype == torch.uint8
    assert (zoomed > 100).float().mean() > (films > 100).float().mean() * 1.8  # 1.5^2 = 2.25 x the area


def test_zoom_out_shrinks_the_film_onto_black() -> None:
    films = torch.full((2, 1, 64, 64), 180, dtype=torch.uint8)
    shrunk = zoom_out(films, 0.75)
    assert shrunk.shape == films.shape
    assert (shrunk == 0).float().mean() == pytest.approx(1 - 0.75**2, abs=0.02)
    assert shrunk[..., 32, 32].tolist() == [[180], [180]]
    assert (zoom_out(films, 0.75, fill=255) == 255).float().mean() == pytest.approx(1 - 0.75**2, abs=0.02)


def test_markers_are_white_near_an_edge_and_repeatable() -> None:
    films = torch.full((3, 1, 96, 96), 100, dtype=torch.uint8)
    marked = paste_markers(films, seed=5)
    changed = marked != films
    assert changed.any(dim=(1, 2, 3)).all()  # every film got its marker
    assert marked[changed].min() > 100 and marked[changed].max() == 255  # white (antialiased) text
    assert changed[..., 30:66, :].sum() < changed.sum() * 0.2  # the middle of the film stays as it was
    assert torch.equal(marked, paste_markers(films, seed=5)) and not torch.equal(marked, paste_markers(films, 6))


def test_the_swaps_cover_each_family_and_direction() -> None:
    by_family = {swap.family: swap.target for swap in FRAMING_SWAPS}
    assert by_family == {"zoom_in": 0, "zoom_out": 1, "marker": 0}
    assert sorted(s.factor for s in FRAMING_SWAPS if s.family == "zoom_in") == [1.15, 1.33, 1.5]


def test_the_record_counts_flips_drops_and_the_worst_case() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    clean = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.9, 0.7, 0.2])  # specificity 3/4, sensitivity 3/4 at 0.5
    swapped = [SwappedScores("zoom_in_1.5", "zoom_in", 0, np.array([0.6, 0.7, 0.3, 0.9])),  # 2 normals flip
               SwappedScores("zoom_out_0.75", "zoom_out", 1, np.array([0.8, 0.4, 0.7, 0.2])),  # 1 pneumonia flips
               SwappedScores("marker", "marker", 0, np.array([0.1, 0.2, 0.3, 0.9]))]  # nothing moves
    record = framing_record(labels, clean, swapped, threshold=0.5, seen_families=["zoom_in", "zoom_out"],
                            resamples=500)
    zoom, out, marker = record.swaps
    assert (zoom.measured, zoom.clean, zoom.swapped, zoom.drop, zoom.flipped) == ("specificity", 0.75, 0.25, 0.5, 0.5)
    assert (out.measured, out.swapped, out.drop, out.flipped) == ("sensitivity", 0.5, 0.25, 0.25)
    assert marker.drop == 0.0 and marker.flipped == 0.0 and marker.drop_ci95 == (0.0, 0.0)
    assert record.framing_gap == 3 / 8  # three of eight films changed label under some swap
    assert record.worst_specificity_drop == 0.5 and record.worst_sensitivity_drop == 0.25
    assert record.clean_balanced_accuracy == 0.75
    assert record.robust_balanced_accuracy == 0.5  # (0.25 swapped specificity + 0.75 sensitivity) / 2
    assert zoom.drop_ci95[0] <= zoom.drop <= zoom.drop_ci95[1] and zoom.drop_ci95[1] > zoom.drop_ci95[0]
    assert record.framing_gap_ci95[0] <= record.framing_gap <= record.framing_gap_ci95[1]
    assert zoom.roc_auc == pytest.approx(0.5625)  # swapped normals against the pneumonias as they are
    # the marker family was not seen in training: its own gap and robust accuracy are reported apart
    assert record.unseen_framing_gap == 0.0 and record.unseen_robust_balanced_accuracy == 0.75
    assert FramingRecord.from_dict(record.to_dict()) == record


def test_every_family_seen_leaves_no_unseen_summary() -> None:
    labels, clean = np.array([0, 1]), np.array([0.2, 0.8])
    record = framing_record(labels, clean, [SwappedScores("zoom_in_1.5", "zoom_in", 0, np.array([0.2]))], 0.5,
                            seen_families=["zoom_in"], resamples=100)
    assert record.unseen_framing_gap is None and record.unseen_robust_balanced_accuracy is None


def test_the_framing_augmentation_is_what_counts_as_seen() -> None:
    assert seen_families(augment_preset("framing")) == ["zoom_in", "zoom_out"]
    assert seen_families(augment_preset("shift")) == [] and seen_families(augment_preset("none")) == []


class _BorderReader(nn.Module):
    """Reads the framing: pneumonia when the outer ring of the frame is bright (the lungs/body fill it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ring = torch.cat([x[..., :6, :].flatten(1), x[..., -6:, :].flatten(1)], 1)
        return (ring.mean(1, keepdim=True) - 0.0) * 8.0


class _CentreReader(nn.Module):
    """Reads the content: pneumonia when the centre of the film is bright, whatever its framing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = x.shape[-1]
        centre = x[..., side // 2 - 4: side // 2 + 4, side // 2 - 4: side // 2 + 4]
        return (centre.mean(dim=(1, 2, 3))[:, None] - 0.0) * 8.0


def _framing_data() -> tuple[torch.Tensor, np.ndarray]:
    """Normals: wide films (a bright body in the middle, dark around: the ring is dark) with a dark centre;
    pneumonias: tight films (bright to the edges) with a bright centre."""
    normal = torch.full((10, 1, 64, 64), 20, dtype=torch.uint8)
    normal[..., 12:52, 12:52] = 120
    normal[..., 26:38, 26:38] = 40
    pneumonia = torch.full((10, 1, 64, 64), 120, dtype=torch.uint8)
    pneumonia[..., 26:38, 26:38] = 220
    return torch.cat([normal, pneumonia]), np.array([0] * 10 + [1] * 10)


def _normalize(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float() / 255 - 0.3


@pytest.mark.parametrize(("model", "caught"), [(_BorderReader(), True), (_CentreReader(), False)])
def test_a_model_reading_the_framing_is_caught(model: nn.Module, caught: bool) -> None:
    images, labels = _framing_data()
    clean = predict_with(model, _normalize, images)
    assert ((clean >= 0.5) == labels).all()  # both models are right on the films as they are
    record = score_framing(model, _normalize, images, labels, clean, threshold=0.5, resamples=200)
    if caught:
        assert record.framing_gap > 0.4 and record.robust_balanced_accuracy <= 0.5
    else:
        assert record.framing_gap == 0.0 and record.robust_balanced_accuracy == 1.0


def test_no_proxy_without_both_classes() -> None:
    images, labels = _framing_data()
    normals = labels == 0
    clean = predict_with(_CentreReader(), _normalize, images[normals])
    assert score_framing(_CentreReader(), _normalize, images[normals], labels[normals], clean, 0.5) is None


def test_the_seen_families_of_a_run_and_of_an_ensemble(tiny_run: TinyRun) -> None:
    assert bundle_seen_families(load_bundle(tiny_run.out_dir).manifest) == []  # trained with augment none
    shipped = load_bundle("default").manifest  # an ensemble: the union over its members' recorded recipes
    assert shipped.training is None and bundle_seen_families(shipped) == ["zoom_in", "zoom_out"]
