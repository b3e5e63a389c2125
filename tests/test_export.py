"""`pneumoscan export`: ONNX and INT8 ONNX files that answer like the bundle, and `predict --backend onnx`."""

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from conftest import TinyRun
from pneumoscan.cli.main import main
from pneumoscan.data.loading import load_split
from pneumoscan.errors import PneumoscanError
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.inference import predict_probabilities
from pneumoscan.serving.export import (
    INT8_FULL_RANGE,
    INT8_SETTINGS,
    OnnxBackend,
    ParityReport,
    export_bundle,
    export_onnx,
    parity_failure,
    quantize_int8,
)

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402


@pytest.fixture(scope="module")
def samples(tiny_run: TinyRun):  # type: ignore[no-untyped-def]
    """The synthetic test films: the tiny run's Youden threshold equals one of its validation scores, where a
    difference of 1e-8 may flip a label; on other films agreement is what it measures."""
    images, _ = load_split(tiny_run.config.data, "test", 32)
    return images.images


def test_onnx_export_matches_pytorch_and_documents_its_input(tiny_run: TinyRun, samples, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle = load_bundle(tiny_run.out_dir)
    report = export_bundle(bundle, "onnx", tmp_path / "model.onnx", samples)
    assert report.max_abs_diff <= 1e-4 and report.label_agreement == 1.0 and report.n_images == len(samples)
    exported = OnnxBackend(tmp_path / "model.onnx").probabilities(samples)
    np.testing.assert_allclose(exported, predict_probabilities(bundle, samples), atol=1e-4)
    assert len(OnnxBackend(tmp_path / "model.onnx").probabilities(samples[:3])) == 3  # any batch size
    sidecar = json.loads((tmp_path / "model.onnx.json").read_text())
    assert sidecar["input"]["shape"] == ["batch", 1, 32, 32] and sidecar["threshold"] == bundle.manifest.threshold
    assert sidecar["parity"]["max_abs_diff"] == report.max_abs_diff
    assert not list(tmp_path.glob("*.partial")) and not (tmp_path / "model.onnx.data").exists()  # one file
    # the guard's statistics come from the same call, and score as the bundle's guard scores them
    backend = OnnxBackend(tmp_path / "model.onnx")
    assert bundle.ood is not None and len(backend.guard_outputs) == len(bundle.ood.layers)
    assert report.guard_max_abs_diff is not None and report.guard_max_abs_diff <= 1e-3
    assert sidecar["guard_outputs"]["layers"] == bundle.ood.layers
    assert not bundle.model._forward_hooks  # the export's hooks are gone  # noqa: SLF001


def test_int8_export_keeps_the_labels(tiny_run: TinyRun, samples, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle = load_bundle(tiny_run.out_dir)
    report = export_bundle(bundle, "onnx-int8", tmp_path / "model-int8.onnx", samples)
    assert report.format == "onnx-int8" and report.label_agreement >= 0.99 and report.max_abs_diff < 0.2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-int8.onnx", "model-int8.onnx.json"]
    assert OnnxBackend(tmp_path / "model-int8.onnx").guard_outputs == []  # int8 would distort the guard's input
    graph = onnx.load(str(tmp_path / "model-int8.onnx")).graph
    assert any(node.op_type == "QuantizeLinear" for node in graph.node)  # really quantised
    sidecar = json.loads((tmp_path / "model-int8.onnx.json").read_text())
    assert sidecar["parity"]["quantisation"] == asdict(INT8_SETTINGS) and INT8_SETTINGS.reduce_range
    assert sidecar["parity"]["file"] == str(tmp_path / "model-int8.onnx")


def _int8_weights(path: Path) -> list[np.ndarray]:
    """The quantised weight initialisers of a QDQ file: int8/uint8 constants that a DequantizeLinear reads."""
    model = onnx.load(str(path))
    constants = {tensor.name: tensor for tensor in model.graph.initializer}
    return [numpy_helper.to_array(constants[node.input[0]]) for node in model.graph.node
            if node.op_type == "DequantizeLinear" and node.input[0] in constants
            and constants[node.input[0]].data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)]


@pytest.fixture(scope="module")
def quantised(tiny_run: TinyRun, samples, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """The tiny model quantised with the settings before issue 22 (full-range int8 weights) and with today's."""
    folder = tmp_path_factory.mktemp("int8")
    export_onnx(load_bundle(tiny_run.out_dir), folder / "fp32.onnx", with_guard=False)
    pixels = samples.float().div(255.0).numpy()
    return {name: quantize_int8(folder / "fp32.onnx", folder / f"{name}.onnx", pixels, settings)
            for name, settings in (("full-range", INT8_FULL_RANGE), ("shipped", INT8_SETTINGS))}


def test_int8_weights_cannot_saturate_the_avx2_kernel(quantised: dict[str, Path]) -> None:
    """Every quantised weight fits 7 bits, so the largest pair the AVX2 u8s8 kernel (vpmaddubsw) adds into int16,
    255 x |w1| + 255 x |w2|, stays below 32,767 on every x86 CPU, whatever the activations."""
    weights = _int8_weights(quantised["shipped"])
    assert weights and all(w.dtype == np.int8 for w in weights)
    largest = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert largest <= INT8_SETTINGS.largest_weight() == 64 and 2 * 255 * largest <= np.iinfo(np.int16).max


def _avx2_u8s8_dot(activations: np.ndarray, weights: np.ndarray) -> int:
    """One output of ONNX Runtime's AVX2 u8s8 kernel without VNNI: vpmaddubsw adds each pair of u8 x s8 products
    into a saturating int16, then vpmaddwd sums the pairs in int32."""
    products = activations.astype(np.int32) * weights.astype(np.int32)
    pairs = np.clip(products[0::2] + products[1::2], np.iinfo(np.int16).min, np.iinfo(np.int16).max)
    return int(pairs.sum())


def _worst_activations(weights: np.ndarray) -> list[np.ndarray]:
    """The uint8 activations that push the pairs of products furthest up (255 where the weight is positive) and
    furthest down (255 where it is negative)."""
    return [np.where(weights > 0, 255, 0).astype(np.uint8), np.where(weights < 0, 255, 0).astype(np.uint8)]


def test_the_old_int8_settings_saturated_the_avx2_kernel_and_the_new_cannot(quantised: dict[str, Path]) -> None:
    """An emulation of the AVX2 kernel's arithmetic on the tiny model's quantised convolutions: with full-range
    weights some output channel is computed wrong for some input (why the file disagreed on AVX2-only CPUs);
    with 7-bit weights every channel equals the exact int32 dot product, for the worst input too."""
    def wrong_channels(path: Path) -> int:
        rows = [row for w in _int8_weights(path) if w.ndim > 1 for row in w.reshape(len(w), -1)]
        rows = [np.pad(row, (0, len(row) % 2)) for row in rows]  # the kernel pads K to pairs with zeros
        return sum(any(_avx2_u8s8_dot(a, row) != int(a.astype(np.int32) @ row.astype(np.int32))
                       for a in _worst_activations(row)) for row in rows)
    assert wrong_channels(quantised["full-range"]) > 0
    assert wrong_channels(quantised["shipped"]) == 0


def test_an_int8_file_that_disagrees_with_pytorch_is_refused(tiny_run: TinyRun, samples, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the file ran where it saturates: half the films change sides. The export says why in one line and
    leaves nothing behind."""
    bundle = load_bundle(tiny_run.out_dir)
    honest = OnnxBackend.probabilities

    def saturated(self: OnnxBackend, images, batch_size: int = 64) -> np.ndarray:  # type: ignore[no-untyped-def]
        p = honest(self, images, batch_size)
        return np.where(np.arange(len(p)) % 2 == 0, 1.0 - p, p).astype(np.float32)

    monkeypatch.setattr(OnnxBackend, "probabilities", saturated)
    with pytest.raises(PneumoscanError) as refused:
        export_bundle(bundle, "onnx-int8", tmp_path / "model-int8.onnx", samples)
    message = str(refused.value)
    assert "\n" not in message and "not written" in message and "more than 1% disagreeing is refused" in message
    assert "of the 16 sample films" in message and "export the fp32 file instead (--to onnx)" in message
    assert list(tmp_path.iterdir()) == []


def test_an_fp32_file_that_differs_from_pytorch_is_refused(tiny_run: TinyRun, samples, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = load_bundle(tiny_run.out_dir)
    honest = OnnxBackend.probabilities
    monkeypatch.setattr(OnnxBackend, "probabilities", lambda self, images, batch_size=64:
                        honest(self, images, batch_size) + np.float32(5e-4))
    with pytest.raises(PneumoscanError, match=r"differs from PyTorch by up to 5\.0e-04 in probability \(limit "
                                              r"1e-04\)") as refused:
        export_bundle(bundle, "onnx", tmp_path / "model.onnx", samples)
    assert "\n" not in str(refused.value) and list(tmp_path.iterdir()) == []


def test_parity_allows_a_film_at_the_threshold_either_label() -> None:
    """A Youden threshold is one of the validation scores: that film may flip by 1e-8 in an fp32 file, which is
    no difference; a film clearly off the threshold that changes label is."""
    at_threshold = ParityReport(format="onnx", file="m.onnx", n_images=10, max_abs_diff=1e-8, mean_abs_diff=1e-9,
                                label_agreement=0.9, threshold=0.5, export_seconds=1.0, clear_label_differences=0)
    assert parity_failure(at_threshold) is None
    assert "another label on 1 of the 10" in str(parity_failure(replace(at_threshold, clear_label_differences=1)))
    int8 = replace(at_threshold, format="onnx-int8", max_abs_diff=0.05)
    assert parity_failure(replace(int8, label_agreement=0.99)) is None
    assert "on only 98.5% of the 10 sample films" in str(parity_failure(replace(int8, label_agreement=0.985)))


def test_cli_export_and_predict_with_the_onnx_backend(tiny_run: TinyRun, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model.onnx"
    data = tiny_run.config.data
    assert main(["export", "--model", str(tiny_run.out_dir), "--to", "onnx", "--data", data, "--split", "test",
                 "--n-images", "16", "--out", str(out)]) == 0
    assert "labels agree 100.0%" in capsys.readouterr().err
    folder = Path(tiny_run.config.data) / "test"
    outputs = {}
    for backend in (["--backend", "onnx", "--exported", str(out)], []):
        assert main(["predict", "--model", str(tiny_run.out_dir), str(folder), "--format", "json", *backend]) == 0
        outputs[bool(backend)] = json.loads(capsys.readouterr().out)
    assert [p["label"] for p in outputs[True]] == [p["label"] for p in outputs[False]]
    assert max(abs(a["probability"] - b["probability"]) for a, b in zip(outputs[True], outputs[False],
                                                                          strict=True)) <= 1e-4


def test_export_mistakes_are_clear(tiny_run: TinyRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tiny_run.out_dir / "split.csv")
    assert main(["predict", "--model", str(tiny_run.out_dir), "--backend", "tflite", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "--backend is deprecated and will be removed; use --engine" in error  # the old spelling still works
    assert "--engine tflite needs --exported FILE" in error
    assert main(["export", "--model", str(tiny_run.out_dir), "--to", "onnx", "--data", data, "--out",
                 str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    with pytest.raises(PneumoscanError, match="no exported model here"):
        OnnxBackend(tmp_path / "missing.onnx")


def test_equalisation_does_not_move_with_the_last_bit_of_arithmetic() -> None:
    """A flat region at 8-bit level k sits at 255 x = k up to rounding; another runtime's rounding must not move
    it one histogram bin (that made an exported equalising model differ by 0.01 in probability)."""
    import torch

    from pneumoscan.data.preprocess import Preprocess

    levels = torch.arange(256, dtype=torch.float32).repeat(64, 1)[None, None] / 255.0  # every level, flat columns
    below = torch.nextafter(levels, torch.zeros_like(levels))  # one float32 step down
    above = torch.nextafter(levels, torch.ones_like(levels))
    equalize = Preprocess(image_size=64, intensity="equalize").standardize
    assert torch.equal(equalize(below), equalize(levels)) and torch.equal(equalize(above), equalize(levels))


def test_tflite_export_matches_pytorch_where_the_extra_is_installed(tiny_run: TinyRun, samples,  # type: ignore[no-untyped-def]
                                                                    tmp_path: Path) -> None:
    """Runs in CI's own environment with `pneumoscan[tflite]`; skipped in the base install."""
    pytest.importorskip("litert_torch", reason="needs the optional extra pneumoscan[tflite] (litert-torch)")
    from pneumoscan.serving.export import TfliteBackend

    bundle = load_bundle(tiny_run.out_dir)
    report = export_bundle(bundle, "tflite", tmp_path / "model.tflite", samples)
    assert report.max_abs_diff <= 1e-4 and report.label_agreement == 1.0
    np.testing.assert_allclose(TfliteBackend(tmp_path / "model.tflite").probabilities(samples[:4]),
                               predict_probabilities(bundle, samples[:4]), atol=1e-4)
    assert json.loads((tmp_path / "model.tflite.json").read_text())["input"]["shape"][0] == 1


def test_equalisation_has_a_portable_form_with_the_same_result() -> None:
    """The form TFLite export traces (no scatter, no asserts) equals kornia's, flat images included."""
    import torch

    from pneumoscan.data.preprocess import Preprocess, portable_ops

    generator = torch.Generator().manual_seed(0)
    images = torch.cat([torch.randint(0, 256, (3, 1, 40, 40), generator=generator, dtype=torch.uint8),
                        torch.full((1, 1, 40, 40), 77, dtype=torch.uint8)])
    preprocess = Preprocess(image_size=40, intensity="equalize", border_crop=0.1)
    with portable_ops():
        portable = preprocess.normalize(images)
    assert torch.equal(portable, preprocess.normalize(images))


def test_tflite_without_the_extra_is_a_clear_error(tiny_run: TinyRun, samples, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "litert_torch", None)  # as if not installed
    with pytest.raises(PneumoscanError, match=r"pip install 'pneumoscan\[tflite\]'"):
        export_bundle(load_bundle(tiny_run.out_dir), "tflite", tmp_path / "model.tflite", samples)


def test_the_service_scores_the_guard_from_the_exported_file(tiny_run: TinyRun, samples, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from pneumoscan.serving.service import create_app

    bundle = load_bundle(tiny_run.out_dir)
    export_bundle(bundle, "onnx", tmp_path / "model.onnx", samples)
    film = sorted((Path(tiny_run.config.data) / "test" / "NORMAL").glob("*.png"))[0]
    answers = []
    for backend in (None, OnnxBackend(tmp_path / "model.onnx")):
        with TestClient(create_app(bundle, backend=backend)) as client:
            response = client.post("/v1/predict", files=[("files", (film.name, film.read_bytes(), "image/png"))])
            answers.append(response.json()["results"][0])
    torch_answer, onnx_answer = answers
    assert onnx_answer["ood_score"] == pytest.approx(torch_answer["ood_score"], abs=1e-3)
    assert onnx_answer["probability"] == pytest.approx(torch_answer["probability"], abs=1e-4)
    assert onnx_answer["in_distribution"] == torch_answer["in_distribution"]


@pytest.fixture(scope="module")
def field_of_view_bundle(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """An untrained compact model whose bundle crops every film to its lung fields (Preprocess.fov)."""
    import torch

    from pneumoscan.data.preprocess import Preprocess
    from pneumoscan.models.bundle import Manifest, save_bundle
    from pneumoscan.models.registry import create_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("fov-bundle")
    save_bundle(folder, create_model("compact", image_size=64).eval(),
                Manifest(arch="compact", preprocess=Preprocess(image_size=64, fov="lungs")))
    return load_bundle(folder)


def _framed_films():  # type: ignore[no-untyped-def]
    """Drawn chest films as they are, zoomed in and zoomed out onto black: boxes of every kind."""
    import torch

    from pneumoscan.data.framing_swaps import zoom_in, zoom_out
    from test_field_of_view import chest_film

    films = torch.cat([chest_film(64, seed) for seed in range(3)])
    return torch.cat([films, zoom_in(films, 1.33), zoom_out(films, 0.75)])


def test_the_field_of_view_is_inside_the_exported_graph(field_of_view_bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    films = _framed_films()
    report = export_bundle(field_of_view_bundle, "onnx", tmp_path / "model.onnx", films)
    assert report.max_abs_diff <= 1e-5 and report.label_agreement == 1.0
    sidecar = json.loads((tmp_path / "model.onnx.json").read_text())
    assert sidecar["preprocessing"]["fov"] == "lungs"


def test_the_field_of_view_exports_to_tflite(field_of_view_bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("litert_torch", reason="needs the optional extra pneumoscan[tflite] (litert-torch)")
    films = _framed_films()
    report = export_bundle(field_of_view_bundle, "tflite", tmp_path / "model.tflite", films)
    assert report.max_abs_diff <= 1e-4 and report.label_agreement == 1.0


def test_export_format_is_a_deprecated_spelling_of_to() -> None:
    from pneumoscan.cli.main import build_parser

    args = build_parser().parse_args(["export", "--format", "onnx-int8", "--data", "d", "--out", "m.onnx"])
    assert args.to == "onnx-int8"


def test_export_needs_no_data_for_onnx_and_says_which_sample_it_checked(tiny_run: TinyRun, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Without --data the parity check runs on built-in synthetic films, and the sidecar says so; INT8, which
    calibrates on real films, is refused with one line."""
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(tiny_run.out_dir), "--to", "onnx", "--n-images", "16", "--out",
                 str(out)]) == 0
    sidecar = json.loads((tmp_path / "m.onnx.json").read_text())
    assert sidecar["sample"].startswith("built-in synthetic films") and "not the model's accuracy" in sidecar["sample"]
    assert sidecar["parity"]["n_images"] == 16 and sidecar["parity"]["label_agreement"] == 1.0
    assert sidecar["parity"]["max_abs_diff"] <= 1e-4
    assert main(["export", "--model", str(tiny_run.out_dir), "--to", "onnx-int8", "--out",
                 str(tmp_path / "q.onnx")]) == 2
    error = capsys.readouterr().err
    assert "calibrates on real films: give --data" in error and not (tmp_path / "q.onnx").exists()
