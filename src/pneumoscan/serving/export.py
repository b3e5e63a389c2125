"""Export a bundle for mobile and edge runtimes, and prove the export answers like the bundle.

Formats:
- `onnx`: torch.onnx (the dynamo exporter), one self-contained file with a dynamic batch axis.
  The graph holds the whole model *including the bundle's preprocessing* (field of view, border crop,
  intensity step, normalisation; every member of an ensemble): input `pixels`, float32 (N, 1, S, S) in [0, 1]
  (the decoded 8-bit film / 255 at the bundle's size S), output `probability`, float32 (N,).
  Where the bundle has an out-of-distribution guard, the fp32 graph also returns the guard's stage
  statistics (`guard_0`, `guard_1`, ...), so a server scores the guard from the same call (the
  bundle's guard turns them into a score; `serve --exported` does).
- `onnx-int8`: the same graph (without the guard outputs: int8 activations distort the statistics the
  guard was calibrated on) statically quantised by onnxruntime (QDQ, int8 weights per channel,
  activations calibrated on sample images; pre-processed with onnxruntime's shape inference).
- `tflite`: the same model through litert-torch (an optional extra, `pneumoscan[tflite]`, kept out of the
  base install), one image per call (input (1, 1, S, S)). Histogram equalisation is traced in its
  portable form (pneumoscan.data.preprocess.portable_ops: the same result without scatter), which
  LiteRT runs.

Every export scores sample images with PyTorch and with the exported file before it reports
success, and writes the comparison (largest |Δ probability|, label agreement at the bundle's
threshold) beside the file as `<file>.json`, with the input contract and the threshold, so an app
that loads the file knows how to feed it and where to cut.
"""

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumoscan.errors import PneumoscanError
from pneumoscan.models.bundle import EXPORTED_GRAPH_FILE, MANIFEST_FILE, Bundle, ExportRecord, load_bundle
from pneumoscan.models.inference import TTA_VIEWS, predict_probabilities, tta_view
from pneumoscan.models.manifest import sha256_file
from pneumoscan.serving.runtime import (  # noqa: F401  (OnnxBackend re-exported: it was defined here)
    GUARD_PREFIX,
    INPUT_NAME,
    OPSET,
    OUTPUT_NAME,
    OnnxBackend,
)

FORMATS = ("onnx", "onnx-int8", "tflite")


@dataclass(frozen=True)
class ParityReport:
    """How the exported file answers against PyTorch on the same images."""

    format: str
    file: str
    n_images: int
    max_abs_diff: float  # largest |P_export - P_torch|
    mean_abs_diff: float
    label_agreement: float  # share of images given the same label at the bundle's threshold
    threshold: float
    export_seconds: float
    guard_max_abs_diff: float | None = None  # largest |guard score from the file - PyTorch's|, if it carries them
    # films given another label although PyTorch's probability is farther than FP32_TOLERANCE from the threshold
    # (a film *at* the threshold, as a Youden threshold taken from validation scores always has, may flip by 1e-8)
    clear_label_differences: int = 0
    quantisation: "Int8Settings | None" = None  # the INT8 settings the file was written with (onnx-int8 only)


class _Probability(nn.Module):
    """[0, 1] pixels -> P(pneumonia): the bundle's preprocessing and model in one graph; with `guard_layers`,
    also each layer's per-channel mean and standard deviation (what the out-of-distribution guard scores)."""

    def __init__(self, bundle: Bundle, guard_layers: list[str] | None = None, tta: bool = False) -> None:
        super().__init__()
        self.model = bundle.model
        self.preprocess = bundle.preprocess
        self.tta = tta
        self.guard_layers = guard_layers or []
        self._captured: dict[str, torch.Tensor] = {}
        modules = dict(self.model.named_modules())
        self._handles = [modules[name].register_forward_hook(
            lambda module, args, output, name=name: self._captured.__setitem__(name, output))
            for name in self.guard_layers]

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        inputs = self.preprocess.normalize(pixels)
        views = [inputs, *(tta_view(inputs, scale, shift) for scale, shift in TTA_VIEWS)] if self.tta else [inputs]
        probabilities, statistics = [], []
        for index, view in enumerate(views):
            logits = self.model(view.contiguous(memory_format=torch.channels_last))
            probabilities.append(torch.sigmoid(logits.float()).squeeze(1))
            if index == 0:  # the guard judges the film as it is (as pneumoscan.models.ood computes its statistics)
                for name in self.guard_layers:
                    output = self._captured[name].float().flatten(2)
                    statistics.append(torch.cat([output.mean(2), output.std(2)], dim=1))
        probability = probabilities[0] if len(probabilities) == 1 else torch.stack(probabilities).mean(0)
        return (probability, *statistics) if self.guard_layers else probability


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's notes (torchvision not installed, hook attributes, deprecations) are not the user's concern:
    an export that fails raises, and the parity check judges one that succeeds."""
    import logging
    import warnings

    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(bundle: Bundle, path: Path, with_guard: bool = True, tta: bool = False) -> Path:
    """Write the bundle as one ONNX file (weights inside, dynamic batch), with the guard's outputs if it has one;
    `tta`: the probability averaged over the test-time views, as `--tta` computes it in PyTorch."""
    import onnx

    layers = list(bundle.ood.layers) if with_guard and bundle.ood is not None else []
    wrapper = _Probability(bundle, layers, tta=tta).eval()
    outputs = [OUTPUT_NAME, *(f"{GUARD_PREFIX}{i}" for i in range(len(layers)))]
    size = bundle.preprocess.image_size
    example = torch.rand(2, bundle.preprocess.channels, size, size)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(wrapper, (example,), dynamo=True, opset_version=OPSET,
                                        input_names=[INPUT_NAME], output_names=outputs,
                                        dynamic_shapes={"pixels": {0: torch.export.Dim("batch")}}, verbose=False)
    except Exception as error:  # the exporter raises many types; the user needs the reason, not a traceback
        raise PneumoscanError(f"{bundle.path}: torch.onnx could not export this model ({type(error).__name__}: "
                              f"{str(error).splitlines()[0][:200]})") from None
    finally:
        wrapper.remove_hooks()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    onnx.save_model(program.model_proto, partial, save_as_external_data=False)
    partial.replace(path)
    return path


def export_tflite(bundle: Bundle, path: Path) -> Path:
    """Write the bundle as one TFLite file (batch 1) with litert-torch."""
    try:
        import litert_torch
    except ImportError:
        raise PneumoscanError("tflite export needs the optional extra: pip install 'pneumoscan[tflite]' (about "
                              "1.2 GB; best in its own environment)") from None
    from pneumoscan.data.preprocess import portable_ops

    size = bundle.preprocess.image_size
    try:
        with portable_ops():
            converted = litert_torch.convert(_Probability(bundle).eval(),
                                             (torch.rand(1, bundle.preprocess.channels, size, size),))
    except Exception as error:
        raise PneumoscanError(f"{bundle.path}: litert-torch could not convert this model ({type(error).__name__}: "
                              f"{str(error).splitlines()[0][:200]})") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    converted.export(str(partial))
    partial.replace(path)
    return path


class TfliteBackend:
    """Probabilities from an exported .tflite file with the LiteRT interpreter, one image per call."""

    def __init__(self, path: Path) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise PneumoscanError("the tflite backend needs the optional extra: pip install 'pneumoscan[tflite]'") \
                from None
        if not path.is_file():
            raise PneumoscanError(f"{path}: no exported model here (run `pneumoscan export` first)")
        self.interpreter = Interpreter(model_path=str(path))
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.path = path

    def probabilities(self, images: torch.Tensor, batch_size: int = 1) -> np.ndarray:
        """uint8 images (N, 1, S, S) at the bundle's size -> P(pneumonia), shape (N,)."""
        values = []
        for image in images.split(1):
            self.interpreter.set_tensor(self.input, image.float().div(255.0).numpy())
            self.interpreter.invoke()
            values.append(float(np.asarray(self.interpreter.get_tensor(self.output)).reshape(-1)[0]))
        return np.asarray(values, dtype=np.float32)


def backend_for(path: Path) -> "OnnxBackend | TfliteBackend":
    """The runtime that reads an exported file, by its suffix."""
    return TfliteBackend(path) if path.suffix.lower() == ".tflite" else OnnxBackend(path)


class _Calibration:
    """onnxruntime's CalibrationDataReader over sample images, a few at a time."""

    def __init__(self, pixels: np.ndarray, batch: int = 16) -> None:
        self.batches = iter([pixels[i : i + batch] for i in range(0, len(pixels), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


@dataclass(frozen=True)
class Int8Settings:
    """How `quantize_int8` quantises: onnxruntime's `quantize_static` arguments, recorded in the sidecar.

    uint8 activations (asymmetric, calibrated MinMax) times int8 weights (symmetric, per output channel), QDQ.
    `reduce_range=True` quantises the weights to 7 bits ([-64, 64]) so that the file is right on every x86 CPU:
    without VNNI, ONNX Runtime's AVX2 (and AVX-512BW) u8s8 kernels multiply with vpmaddubsw, which adds each
    pair of u8 x s8 products into a *saturating int16*; with full-range weights a pair reaches 2 x 255 x 128 =
    65,280 and is clipped to 32,767, so the same file gave other probabilities there (labels agreed with
    PyTorch on 84.5 % of 200 films on an AVX2-only CPU, against 99.9 % on a VNNI CPU, whose vpdpbusd sums in
    int32). With 7-bit weights a pair is at most 2 x 255 x 64 = 32,640 < 32,767: no saturation on any kernel.
    The alternative, uint8 weights (U8U8), also never saturates (those kernels widen to int16 before
    multiplying), but loses the fast u8s8 path (VNNI, and the symmetric-weight convolution kernels) on every
    CPU; one bit of weight precision costs less (measured in docs/serving.md: same labels, no slower)."""

    weight_type: str = "QInt8"  # onnxruntime.quantization.QuantType member names
    activation_type: str = "QUInt8"
    reduce_range: bool = True
    per_channel: bool = True

    def largest_weight(self) -> int:
        """The largest |quantised weight| these settings can write (what bounds an int16 pair sum)."""
        if self.weight_type == "QUInt8":
            return 127 if self.reduce_range else 255
        return 64 if self.reduce_range else 128


INT8_SETTINGS = Int8Settings()
# what pneumoscan used before issue 22: full-range int8 weights, whose pair sums saturate int16 on AVX2-only CPUs;
# kept to measure against (benchmarks/export_latency.py) and to test that it really could saturate
INT8_FULL_RANGE = Int8Settings(reduce_range=False)


def quantize_int8(onnx_path: Path, out_path: Path, calibration_pixels: np.ndarray,
                  settings: Int8Settings = INT8_SETTINGS) -> Path:
    """Static INT8 quantisation (QDQ) of an exported file, calibrated on [0, 1] pixels (N, 1, S, S), with
    `settings` (the default is the one right on every x86 CPU; see Int8Settings)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out_path.with_name(out_path.name + ".prepared.onnx")
    partial = out_path.with_name(out_path.name + ".partial")
    try:
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(partial), _Calibration(calibration_pixels.astype(np.float32)),
                        quant_format=QuantFormat.QDQ, per_channel=settings.per_channel,
                        reduce_range=settings.reduce_range, weight_type=QuantType[settings.weight_type],
                        activation_type=QuantType[settings.activation_type],
                        calibrate_method=CalibrationMethod.MinMax)
        partial.replace(out_path)
    finally:
        prepared.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    return out_path


FP32_TOLERANCE = 1e-4  # largest |Δp| an fp32 file (onnx, tflite) may differ from PyTorch by
INT8_MIN_AGREEMENT = 0.99  # an INT8 file giving another label than PyTorch on more than 1 % of the sample is refused


def parity(bundle: Bundle, exported: Path, fmt: str, images: torch.Tensor, seconds: float,
           tta: bool = False) -> ParityReport:
    """Score `images` with PyTorch and with the exported file; compare probabilities and labels."""
    reference = predict_probabilities(bundle, images, tta=tta)
    backend = TfliteBackend(exported) if fmt == "tflite" else OnnxBackend(exported)
    exported_p = backend.probabilities(images)
    guard_difference = None
    if isinstance(backend, OnnxBackend) and backend.guard_outputs and bundle.ood is not None:
        _, statistics = backend.probabilities_and_guard(images)
        guard_difference = float(np.abs(bundle.ood.score_features(statistics)
                                        - bundle.ood.score(bundle.model, images, bundle.preprocess.normalize)).max())
    difference = np.abs(exported_p - reference)
    threshold = bundle.manifest.threshold
    differs = (exported_p >= threshold) != (reference >= threshold)
    return ParityReport(format=fmt, file=str(exported), n_images=len(images),
                        max_abs_diff=float(difference.max()), mean_abs_diff=float(difference.mean()),
                        label_agreement=float(np.mean(~differs)), threshold=threshold,
                        export_seconds=round(seconds, 1), guard_max_abs_diff=guard_difference,
                        clear_label_differences=int(np.sum(differs & (np.abs(reference - threshold)
                                                                      > FP32_TOLERANCE))))


def parity_failure(report: ParityReport) -> str | None:
    """Why an exported file must not be shipped (one line), or None when it answers like PyTorch.

    fp32 files (onnx, tflite) compute what PyTorch computes: |Δp| at most FP32_TOLERANCE and the same label on
    every film (a film within that tolerance of the threshold may take either label: the tolerance allows it).
    INT8 files round by design, so a few films near the threshold may flip; more than 1 % flipping is a broken
    file (the AVX2 saturation this module's Int8Settings avoids gave 84.5 %), not rounding."""
    films = f"{report.n_images} sample films"
    if report.format == "onnx-int8":
        if report.label_agreement >= INT8_MIN_AGREEMENT:
            return None
        return (f"the INT8 file gives PyTorch's label on only {report.label_agreement:.1%} of the {films} (max |Δp| "
                f"{report.max_abs_diff:.2f}); more than {1 - INT8_MIN_AGREEMENT:.0%} disagreeing is refused: export "
                f"the fp32 file instead (--to onnx)")
    if report.max_abs_diff <= FP32_TOLERANCE and report.clear_label_differences == 0:
        return None
    return (f"the {report.format} file differs from PyTorch by up to {report.max_abs_diff:.1e} in probability "
            f"(limit {FP32_TOLERANCE:.0e}) and gives another label on {report.clear_label_differences} of the "
            f"{films}; an fp32 export must answer like PyTorch")


BUILT_IN_SAMPLE = ("built-in synthetic films (pneumoscan.data.synthetic, seed 0): the parity check compares the "
                   "numbers of the two engines, not the model's accuracy")


def built_in_sample(size: int, count: int) -> torch.Tensor:
    """uint8 films (count, 1, size, size) from the synthetic generator, half of each class: a parity sample that
    needs no data (export without --data)."""
    from pneumoscan.data.synthetic import SyntheticSource, SyntheticSpec

    source = SyntheticSource(SyntheticSpec(n_per_class=max(4, -(-count // 2)), size=size, seed=0))
    records = source.splits["train"][:count]
    return torch.from_numpy(np.stack([source.read(record, size) for record in records]))[:, None]


def _write(bundle: Bundle, fmt: str, path: Path, images: torch.Tensor, tta: bool = False) -> None:
    """The exported file of `fmt` at `path` (INT8: calibrated on `images`), not yet checked."""
    if fmt == "onnx":
        export_onnx(bundle, path, tta=tta)
    elif fmt == "tflite":
        export_tflite(bundle, path)
    else:
        fp32 = path.with_name(path.name + ".fp32.onnx")
        try:
            export_onnx(bundle, fp32, with_guard=False)
            quantize_int8(fp32, path, images.float().div(255.0).numpy())
        finally:
            fp32.unlink(missing_ok=True)


def export_bundle(bundle: Bundle, fmt: str, out: Path, images: torch.Tensor, sample: str = "",
                  tta: bool = False) -> ParityReport:
    """Export `bundle` as `fmt` to `out`, check it on `images` (uint8, the bundle's size), write `<out>.json`;
    `sample` says what the images are (the sidecar records it); `tta` (ONNX only): the graph averages the
    test-time views."""
    if fmt not in FORMATS:
        raise PneumoscanError(f"export format '{fmt}': choose from {', '.join(FORMATS)}")
    if len(images) == 0:
        raise PneumoscanError("export needs sample images for its parity check (and INT8 calibration)")
    started = time.perf_counter()
    if tta and fmt != "onnx":
        raise PneumoscanError("test-time views are exported to fp32 ONNX only")
    # written beside `out` under another name until it passes its check: a refused file never stands at `out`
    unchecked = out.with_name(f"{out.stem}.unchecked{out.suffix}")
    try:
        _write(bundle, fmt, unchecked, images, tta=tta)
        report = parity(bundle, unchecked, fmt, images, time.perf_counter() - started, tta=tta)
        failure = parity_failure(report)
        if failure is not None:
            raise PneumoscanError(f"{out}: not written: {failure}")
        unchecked.replace(out)
    finally:
        unchecked.unlink(missing_ok=True)
    report = replace(report, file=str(out), quantisation=INT8_SETTINGS if fmt == "onnx-int8" else None)
    size = bundle.preprocess.image_size
    sidecar = {"parity": asdict(report), "sample": sample or f"{len(images)} images given by the caller",
               "input": {"name": INPUT_NAME, "dtype": "float32",
                                                   "shape": [1 if fmt == "tflite" else "batch",
                                                             bundle.preprocess.channels, size, size],
                                                   "meaning": "decoded 8-bit grayscale film resized to the square "
                                                              "size (bilinear), divided by 255; preprocessing is in "
                                                              "the graph"},
               "preprocessing": {"in_graph": True, "fov": bundle.preprocess.fov,
                                 "border_crop": bundle.preprocess.border_crop,
                                 "intensity": bundle.preprocess.intensity,
                                 "members": [member["preprocess"] for member in
                                             bundle.manifest.arch_kwargs.get("members") or []] or None},
               "output": {"name": OUTPUT_NAME, "meaning": "P(pneumonia) per image"},
               "guard_outputs": {"names": [f"{GUARD_PREFIX}{i}" for i in range(len(bundle.ood.layers))],
                                 "layers": list(bundle.ood.layers),
                                 "meaning": "per-channel spatial mean and standard deviation of these layers, "
                                            "which the bundle's out-of-distribution guard scores"}
               if fmt == "onnx" and bundle.ood is not None else None,
               "threshold": bundle.manifest.threshold, "class_names": bundle.manifest.class_names,
               "bundle": str(bundle.path), "bundle_weights_sha256": bundle.manifest.weights_sha256,
               "opset": None if fmt == "tflite" else OPSET, "torch": torch.__version__, "tta": tta,
               "sha256": sha256_file(out)}
    partial = out.with_name(out.name + ".json.partial")
    partial.write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    partial.replace(out.with_name(out.name + ".json"))
    return report


PARITY_SAMPLE_FILMS = 32  # built-in films the graph is checked on when it is made for the engine


def _checked_graph(bundle: Bundle, out: Path, tta: bool) -> ParityReport:
    """Export the fp32 graph to `out`, checked on the built-in sample (export_bundle refuses, and writes nothing,
    where it does not answer like PyTorch)."""
    images = built_in_sample(bundle.preprocess.image_size, PARITY_SAMPLE_FILMS)
    return export_bundle(bundle, "onnx", out, images, sample=BUILT_IN_SAMPLE, tta=tta)


def export_to_cache(folder: Path, out: Path, tta: bool = False) -> Path:
    """Export a bundle's graph into the engine's cache on first use (pneumoscan.serving.engine), parity checked."""
    _checked_graph(load_bundle(folder), out, tta)
    return out


def attach_exported_graph(folder: Path) -> ExportRecord | None:
    """Write the bundle's own `model.onnx` (what `make model`, `ensemble` and `adapt` ship) and record it in the
    manifest; None, with the manifest unchanged, where the model cannot be exported (the engine then falls back
    to PyTorch)."""
    from pneumoscan.atomic import write_json

    bundle = load_bundle(folder)
    out = Path(folder) / EXPORTED_GRAPH_FILE
    try:
        report = _checked_graph(bundle, out, tta=False)
    except PneumoscanError:
        return None
    out.with_name(out.name + ".json").unlink(missing_ok=True)  # the manifest holds the record
    record = ExportRecord(file=EXPORTED_GRAPH_FILE, sha256=sha256_file(out),
                          weights_sha256=bundle.manifest.weights_sha256, opset=OPSET,
                          max_abs_diff=report.max_abs_diff, label_agreement=report.label_agreement,
                          guard_max_abs_diff=report.guard_max_abs_diff, n_images=report.n_images,
                          sample=BUILT_IN_SAMPLE)
    bundle.manifest.exported = record
    write_json(Path(folder) / MANIFEST_FILE, bundle.manifest.to_dict())
    return record


def report_exported_graph(folder: Path, console: Any) -> ExportRecord | None:
    """attach_exported_graph, saying in one line what the bundle now holds (or that PyTorch will answer for it)."""
    record = attach_exported_graph(folder)
    if record is None:
        console.print(f"[yellow]warning:[/] {folder}: this model cannot be exported to ONNX; it will be scored with "
                      "PyTorch", highlight=False, soft_wrap=True)
    else:
        console.print(f"exported graph {folder / record.file} (ONNX Runtime answers for it; max |Δp| against PyTorch "
                      f"{record.max_abs_diff:.1g} on {record.n_images} built-in films)",
                      highlight=False, soft_wrap=True)
    return record
