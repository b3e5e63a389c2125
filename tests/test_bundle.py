"""pneumoscan.models.bundle: the manifest (format 2, format-1 migration) and the bundle folder (fast, no training)."""

import hashlib
import json
import os
import platform
import shutil
from dataclasses import asdict, replace
from datetime import datetime, timedelta
from importlib import metadata, resources
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pneumoscan import __version__
from pneumoscan.config import TrainConfig
from pneumoscan.data.augment import AUGMENT_PRESETS
from pneumoscan.data.preprocess import Preprocess
from pneumoscan.data.records import DataSummary, SplitCounts
from pneumoscan.errors import BundleError, PneumoscanError
from pneumoscan.metrics import Confusion, screening_metrics
from pneumoscan.models import create_model
from pneumoscan.models.bundle import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    Manifest,
    TrainingRecord,
    ValidationRecord,
    load_bundle,
    read_manifest,
    resolve_bundle,
    runtime_versions,
    save_bundle,
)
from pneumoscan.models.ood import METHOD, OodGuard, OodSettings

SHIPPED = Path(str(resources.files("pneumoscan") / "weights" / "default"))  # the package's own copy
# the manifest of the first shipped model (format 1, compact 224 px), kept to pin the migration of old bundles
FORMAT_1 = Path(__file__).parent / "data" / "format-1-bundle"
MANIFEST_KEYS = {"format_version", "arch", "arch_kwargs", "input_size", "channels", "normalization", "preprocessing",
                 "threshold",
                 "class_names", "training", "validation", "versions", "created", "weights_sha256", "ood", "adaptation",
                 "exported"}


def _model(seed: int = 0, **kwargs: float) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("baseline", image_size=32, **kwargs).eval()


def _training(config: TrainConfig | None = None) -> TrainingRecord:
    config = config or TrainConfig(data="synthetic:n_per_class=8", image_size=32, augment="shift", hflip=True,
                                   optimizer="sgd", threshold_policy="youden", epochs=5)
    return TrainingRecord(
        command="pneumoscan train --augment shift --hflip", code_version="0.1.0+abc1234", config=config,
        data=DataSummary(source="somewhere", split="train", validation="15% carved from train by patient (seed 0)",
                         train=SplitCounts(images=100, normal=26, pneumonia=74, patients=61),
                         val=SplitCounts(images=20, normal=5, pneumonia=15, patients=12)),
        best_epoch=3, epochs_run=5, seconds=12.5, seconds_to_best=7.25, train_images_per_second=99.5)


def _validation() -> ValidationRecord:
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    probabilities = np.array([0.1, 0.6, 0.2, 0.9, 0.8, 0.3, 0.7, 0.65])
    return ValidationRecord(metrics=screening_metrics(labels, probabilities, 0.55), loss=0.41,
                            threshold_policy="youden")


def _manifest(**changes: object) -> Manifest:
    manifest = Manifest(arch="baseline", preprocess=Preprocess(image_size=32, mean=0.45, std=0.2), threshold=0.55,
                        training=_training(), validation=_validation())
    return replace(manifest, **changes)


def _guard(model: torch.nn.Module) -> OodGuard:
    rng = np.random.default_rng(0)
    dims = (64, 256)  # features.0 (32 channels) and features.2 (128): mean and std per channel
    return OodGuard(layers=["features.0", "features.2"],
                    means=[rng.normal(size=(2, d)).astype(np.float32) for d in dims],
                    precisions=[np.eye(d, dtype=np.float32) * (i + 1) for i, d in enumerate(dims)],
                    centers=np.array([1.5, 2.5]), scales=np.array([0.5, 0.75]), threshold=3.25, false_alarm_rate=0.05)


def _saved(tmp_path: Path, **kwargs: object) -> tuple[torch.nn.Module, Manifest, Path]:
    model = _model()
    manifest = _manifest()
    return model, manifest, save_bundle(tmp_path / "bundle", model, manifest, **kwargs)  # type: ignore[arg-type]

def _edit_manifest(folder: Path, **changes: object) -> None:
    """Rewrite top-level manifest keys by hand, as a user editing model.json would."""
    payload = json.loads((folder / MANIFEST_FILE).read_text())
    payload.update(changes)
    (folder / MANIFEST_FILE).write_text(json.dumps(payload))



# --- round trip -------------------------------------------------------------------------------------------------


def test_round_trip_gives_the_same_predictions_and_manifest(tmp_path: Path) -> None:
    model, manifest, folder = _saved(tmp_path)
    bundle = load_bundle(folder)
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(model(x), bundle.model(x))
    assert not bundle.model.training  # ready for inference
    assert bundle.manifest == manifest  # training record, validation record, versions, hash: all of it
    assert bundle.path == folder and bundle.ood is None and bundle.reference is None
    assert bundle.preprocess == Preprocess(image_size=32, mean=0.45, std=0.2) and bundle.input_shape == (1, 32, 32)
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST_FILE, WEIGHTS_FILE]  # no temp files left
    assert load_bundle(folder / MANIFEST_FILE).manifest == manifest


def test_a_bare_manifest_round_trips(tmp_path: Path) -> None:
    manifest = Manifest(arch="baseline", preprocess=Preprocess(image_size=32))
    save_bundle(tmp_path, _model(), manifest)
    payload = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert payload["training"] is None and payload["validation"] is None and payload["ood"] is None
    loaded = read_manifest(tmp_path)
    assert loaded == manifest
    assert loaded.training is None and loaded.validation is None and loaded.ood is None
    assert loaded.threshold == 0.5 and loaded.class_names == ["NORMAL", "PNEUMONIA"] and loaded.arch_kwargs == {}


def test_other_class_names_round_trip(tmp_path: Path) -> None:
    manifest = Manifest(arch="baseline", preprocess=Preprocess(image_size=32), class_names=["healthy", "sick"])
    save_bundle(tmp_path, _model(), manifest)
    assert read_manifest(tmp_path).class_names == ["healthy", "sick"]


def test_a_minimal_manifest_gets_defaults(tmp_path: Path) -> None:
    save_bundle(tmp_path, _model(), _manifest())
    payload = json.loads((tmp_path / MANIFEST_FILE).read_text())
    minimal = {key: payload[key] for key in ("format_version", "arch", "input_size", "channels", "normalization",
                                             "threshold")}
    manifest = Manifest.from_dict(minimal)
    assert (manifest.arch_kwargs, manifest.class_names, manifest.versions) == ({}, ["NORMAL", "PNEUMONIA"], {})
    assert (manifest.created, manifest.weights_sha256, manifest.format_version) == ("", "", 4)
    assert manifest.training is None and manifest.validation is None and manifest.ood is None
    assert (manifest.preprocess.intensity, manifest.preprocess.border_crop) == ("none", 0.0)  # format 2 had neither


def test_manifest_is_plain_json_with_the_documented_keys(tmp_path: Path) -> None:
    _, manifest, folder = _saved(tmp_path)
    payload = json.loads((folder / MANIFEST_FILE).read_text())
    assert set(payload) == MANIFEST_KEYS
    assert payload["format_version"] == FORMAT_VERSION == 4
    assert payload["preprocessing"] == {"intensity": "none", "border_crop": 0.0, "fov": "none"}
    assert payload["arch"] == "baseline" and payload["arch_kwargs"] == {} and payload["threshold"] == 0.55
    assert payload["input_size"] == 32 and payload["channels"] == 1
    assert payload["normalization"] == {"mean": 0.45, "std": 0.2}
    assert payload["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert payload["weights_sha256"] == hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert payload["weights_sha256"] == manifest.weights_sha256
    validation = payload["validation"]
    assert validation["loss"] == 0.41 and validation["threshold_policy"] == "youden"
    assert validation["metrics"] == _validation().metrics.to_dict()
    assert "ppv" in validation["metrics"] and "precision" not in validation["metrics"]
    assert payload["ood"] is None


def test_the_training_record_stores_the_resolved_config_with_the_preset_name(tmp_path: Path) -> None:
    _, _, folder = _saved(tmp_path)
    training = json.loads((folder / MANIFEST_FILE).read_text())["training"]
    assert training["command"] == "pneumoscan train --augment shift --hflip"
    assert training["code_version"] == "0.1.0+abc1234"
    assert (training["best_epoch"], training["epochs_run"], training["seconds"], training["seconds_to_best"],
            training["train_images_per_second"]) == (3, 5, 12.5, 7.25, 99.5)
    assert training["data"] == asdict(_training().data)
    config = training["config"]
    assert config["augment"] == "shift" and config["hflip"] is True  # the preset's name, not its values
    assert config["optimizer"] == "sgd" and config["lr"] is None and config["threshold_policy"] == "youden"
    assert config["resolved"]["learning_rate"] == 1e-2  # what the default learning rate resolved to
    assert config["resolved"]["augmentation"] == {**asdict(AUGMENT_PRESETS["shift"]), "hflip": True}
    assert isinstance(config["resolved"]["bf16"], bool)
    assert TrainConfig.from_dict(config) == _training().config


def test_a_stored_config_under_the_old_threshold_name_loads_silently(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Bundles and checkpoints written before issue 21 store the policy as `threshold`: read it as
    `threshold_policy` without a warning, since the user cannot (and need not) edit a bundle."""
    _, _, folder = _saved(tmp_path)
    payload = json.loads((folder / MANIFEST_FILE).read_text())
    payload["training"]["config"]["threshold"] = payload["training"]["config"].pop("threshold_policy")
    (folder / MANIFEST_FILE).write_text(json.dumps(payload))
    manifest = read_manifest(folder)
    assert manifest.training is not None and manifest.training.config == _training().config
    assert manifest.threshold_policy == "youden"
    assert capsys.readouterr().err == ""


def test_versions_are_recorded(tmp_path: Path) -> None:
    versions = runtime_versions()
    assert versions == {"pneumoscan": __version__, "torch": torch.__version__,
                        "python": platform.python_version(), "monai": metadata.version("monai")}
    _, _, folder = _saved(tmp_path)
    assert json.loads((folder / MANIFEST_FILE).read_text())["versions"] == versions
    assert Manifest(arch="baseline", preprocess=Preprocess()).versions == versions


def test_created_is_a_utc_timestamp_to_the_second(tmp_path: Path) -> None:
    _, _, folder = _saved(tmp_path)
    created = datetime.fromisoformat(json.loads((folder / MANIFEST_FILE).read_text())["created"])
    assert created.utcoffset() == timedelta(0) and created.microsecond == 0
    assert abs((datetime.now(created.tzinfo) - created).total_seconds()) < 600


def test_the_channel_count_rebuilds_the_same_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("baseline", in_channels=3, image_size=32).eval()
    save_bundle(tmp_path, model, _manifest(preprocess=Preprocess(image_size=32, channels=3)))
    loaded = load_bundle(tmp_path)
    assert loaded.input_shape == (3, 32, 32) and loaded.model.features[0][0].in_channels == 3
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded.model(x), model(x))


def test_arch_kwargs_rebuild_the_same_model(tmp_path: Path) -> None:
    model = _model(dropout=0.3)
    save_bundle(tmp_path, model, _manifest(arch_kwargs={"dropout": 0.3}))
    loaded = load_bundle(tmp_path)
    assert loaded.manifest.arch_kwargs == {"dropout": 0.3}
    assert [m.p for m in loaded.model.modules() if isinstance(m, torch.nn.Dropout)] == [0.3]


def test_the_calibrated_prior_follows_the_training_record() -> None:
    assert _training().calibrated_prior == pytest.approx(0.74)
    for mode in ("weighted", "sampler"):
        assert _training(TrainConfig(imbalance=mode)).calibrated_prior == 0.5
    assert _training(TrainConfig(imbalance="focal")).calibrated_prior == pytest.approx(0.74)


# --- guard and drift reference ----------------------------------------------------------------------------------


def test_guard_and_reference_travel_in_the_weights_file(tmp_path: Path) -> None:
    model = _model()
    guard = _guard(model)
    reference = {"intensity_mean": np.array([0.1, 0.2, 0.3]), "scores": np.array([0.9, 0.8])}
    manifest = _manifest()
    folder = save_bundle(tmp_path, model, manifest, ood=guard, reference=reference)
    assert manifest.ood == guard.settings() == OodSettings(["features.0", "features.2"], 3.25, 0.05, METHOD)
    payload = json.loads((folder / MANIFEST_FILE).read_text())
    assert payload["ood"] == {"layers": ["features.0", "features.2"], "threshold": 3.25, "false_alarm_rate": 0.05,
                              "method": METHOD, "views": []}
    tensors = load_file(str(folder / WEIGHTS_FILE))
    assert {"ood.centers", "ood.scales", "ood.0.means", "ood.1.precision", "reference.scores"} <= set(tensors)
    with safe_open(str(folder / WEIGHTS_FILE), "pt") as handle:
        assert handle.metadata() == {"format": "pt"}  # one key: a map of two is written in a random order
    assert tensors["reference.scores"].dtype == torch.float32

    bundle = load_bundle(folder)
    assert bundle.manifest == manifest
    assert bundle.ood is not None and bundle.ood.layers == guard.layers
    for loaded, original in zip(bundle.ood.means + bundle.ood.precisions, guard.means + guard.precisions,
                                strict=True):
        assert np.array_equal(loaded, original)
    assert np.array_equal(bundle.ood.centers, guard.centers) and np.array_equal(bundle.ood.scales, guard.scales)
    assert (bundle.ood.threshold, bundle.ood.false_alarm_rate) == (3.25, 0.05)
    assert set(bundle.reference) == {"intensity_mean", "scores"}
    assert np.allclose(bundle.reference["scores"], [0.9, 0.8]) and bundle.reference["scores"].dtype == np.float32
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(bundle.model(x), model(x))  # guard tensors did not leak into the model


def test_a_manifest_never_claims_a_guard_the_file_lacks(tmp_path: Path) -> None:
    model = _model()
    manifest = _manifest(ood=_guard(model).settings())  # e.g. the manifest of a loaded bundle, saved again
    save_bundle(tmp_path, model, manifest)
    assert manifest.ood is None and load_bundle(tmp_path).ood is None


def test_a_guard_without_its_tensors_is_refused(tmp_path: Path) -> None:
    _, _, folder = _saved(tmp_path)
    _edit_manifest(folder, ood={"layers": ["features.0"], "threshold": 1.0, "false_alarm_rate": 0.05})
    assert read_manifest(folder).ood == OodSettings(["features.0"], 1.0, 0.05, METHOD)  # method has a default
    with pytest.raises(PneumoscanError, match="lacks tensor 'ood.0.means'"):
        load_bundle(folder)


# --- refusals ------------------------------------------------------------------------------------------------------


def test_mismatched_weights_are_refused(tmp_path: Path) -> None:
    _, _, folder = _saved(tmp_path)
    data = bytearray((folder / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (folder / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError) as info:
        load_bundle(folder)
    assert str(info.value) == f"{folder / WEIGHTS_FILE}: weights do not match the manifest's checksum"


def test_weights_of_another_model_are_refused_by_hash_and_loaded_without_one(tmp_path: Path) -> None:
    _, _, folder = _saved(tmp_path)
    other = save_bundle(tmp_path / "other", _model(seed=1), _manifest())
    shutil.copy(other / WEIGHTS_FILE, folder / WEIGHTS_FILE)
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(folder)
    _edit_manifest(folder, weights_sha256="")  # no hash: unverifiable weights are refused too (issue 11)
    with pytest.raises(BundleError, match="no valid weights_sha256, so the weights cannot be verified"):
        load_bundle(folder)
    _edit_manifest(folder, weights_sha256=hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest())
    x = torch.randn(1, 1, 32, 32)
    assert torch.equal(load_bundle(folder).model(x), _model(seed=1)(x))


@pytest.mark.parametrize(("damage", "arch"), [("unreadable weights", "baseline"), ("another architecture", "compact")])
def test_weights_that_cannot_be_loaded_are_refused_naming_the_file(tmp_path: Path, damage: str, arch: str) -> None:
    _, _, folder = _saved(tmp_path)
    if damage == "unreadable weights":
        (folder / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    _edit_manifest(folder, weights_sha256=hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest(), arch=arch)
    with pytest.raises(BundleError) as info:
        load_bundle(folder)
    assert str(info.value).startswith(f"{folder / WEIGHTS_FILE}: weights do not fit architecture '{arch}' (")


def test_incomplete_bundles_name_the_missing_file(tmp_path: Path) -> None:
    _, _, folder = _saved(tmp_path)
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(BundleError) as info:
        load_bundle(folder)
    assert str(info.value) == f"{folder}: not a model bundle, model.safetensors is missing"
    _, _, second = _saved(tmp_path / "second")
    (second / MANIFEST_FILE).unlink()
    with pytest.raises(BundleError) as info:
        load_bundle(second)
    assert str(info.value) == f"{second}: not a model bundle, model.json is missing"
    with pytest.raises(BundleError) as info:
        load_bundle(tmp_path / "nowhere")
    assert str(info.value) == (f"{tmp_path / 'nowhere'}: no such model folder (a bundle holds model.json and "
                               "model.safetensors)")


UNREADABLE = "{path}: unreadable manifest ("


@pytest.mark.parametrize(("edit", "message"), [
    (lambda text: text[:-20], UNREADABLE),
    (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "arch"}), UNREADABLE),
    (lambda text: json.dumps({**json.loads(text), "threshold": "high"}), UNREADABLE),
    (lambda text: json.dumps({**json.loads(text), "threshold": None}), UNREADABLE),
    (lambda text: json.dumps({**json.loads(text), "format_version": 5}),
     f"{{path}}: bundle format 5 is newer than this pneumoscan ({__version__}) reads"),
])
def test_bad_manifests_are_refused_naming_the_file(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    _, _, folder = _saved(tmp_path)
    (folder / MANIFEST_FILE).write_text(edit((folder / MANIFEST_FILE).read_text()))
    with pytest.raises(BundleError) as info:
        read_manifest(folder)
    expected = message.format(path=folder / MANIFEST_FILE)
    assert str(info.value) == expected if message != UNREADABLE else str(info.value).startswith(expected)


def test_a_config_with_an_unknown_preset_is_an_unreadable_manifest(tmp_path: Path) -> None:
    _, _, folder = _saved(tmp_path)
    payload = json.loads((folder / MANIFEST_FILE).read_text())
    payload["training"]["config"]["augment"] = "sideways"
    (folder / MANIFEST_FILE).write_text(json.dumps(payload))
    with pytest.raises(BundleError) as info:
        load_bundle(folder)
    assert str(info.value).startswith(f"{folder / MANIFEST_FILE}: unreadable manifest (augment 'sideways'")


def test_bundle_files_get_ordinary_permissions(tmp_path: Path) -> None:
    _, _, folder = _saved(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    for name in (MANIFEST_FILE, WEIGHTS_FILE):
        assert (folder / name).stat().st_mode & 0o777 == 0o666 & ~umask


# --- the shipped model and format 1 -------------------------------------------------------------------------------


def test_default_resolves_to_the_shipped_bundle_unless_a_folder_has_that_name(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_bundle("default").resolve() == SHIPPED.resolve()
    assert resolve_bundle("elsewhere") == Path("elsewhere")
    (tmp_path / "default").mkdir()
    assert resolve_bundle("default") == Path("default")  # a local folder wins over the shipped name


def test_format_1_manifest_is_migrated_on_read() -> None:
    stored = json.loads((FORMAT_1 / MANIFEST_FILE).read_text())
    assert stored["format_version"] == 1 and stored["validation_metrics"]["precision"] == pytest.approx(0.99444444)
    manifest = read_manifest(FORMAT_1)
    assert manifest.format_version == 1
    assert manifest.versions == {"pneumoscan": "0.1.0",
                                 "note": "format 1 bundle: torch and MONAI versions were not recorded"}
    validation = manifest.validation
    assert validation is not None and validation.threshold_policy == "balanced"
    assert validation.loss == pytest.approx(0.047938380390405655)
    metrics = validation.metrics
    assert metrics.ppv == stored["validation_metrics"]["precision"]  # `precision` is now `ppv`
    assert metrics.confusion == Confusion(tn=188, fp=3, fn=17, tp=537)
    assert metrics.npv == pytest.approx(188 / 205)  # derived from the stored confusion
    assert metrics.balanced_accuracy == pytest.approx((metrics.sensitivity + metrics.specificity) / 2)
    assert (metrics.accuracy, metrics.sensitivity, metrics.specificity, metrics.f1, metrics.roc_auc) == tuple(
        stored["validation_metrics"][k] for k in ("accuracy", "sensitivity", "specificity", "f1", "roc_auc"))
    assert metrics.pr_auc is None and metrics.brier is None and metrics.ece is None  # not recorded then
    assert metrics.threshold == manifest.threshold and metrics.n_images == 745


def test_format_1_training_config_gets_its_preset_name() -> None:
    manifest = read_manifest(FORMAT_1)
    training = manifest.training
    assert training is not None
    assert training.config.augment == "shift" and training.config.hflip is False
    assert training.config.augmentation == AUGMENT_PRESETS["shift"]
    assert training.config.image_size == 224 and training.config.threshold_policy == "balanced"
    assert training.data.train == SplitCounts(images=4471, normal=1150, pneumonia=3321, patients=2440)
    assert training.data.val.patients == 406 and (training.best_epoch, training.epochs_run) == (14, 19)
    # the `balanced` threshold is the prevalence the model is calibrated to
    assert training.calibrated_prior == pytest.approx(3321 / 4471) == manifest.threshold
    assert manifest.ood is not None and manifest.ood.layers[-1] == "stages"


def _format_1(**changes: object) -> dict:
    payload = json.loads((FORMAT_1 / MANIFEST_FILE).read_text())
    payload.update(changes)
    return payload


def test_format_1_edge_cases() -> None:
    bare = Manifest.from_dict({k: v for k, v in _format_1().items()
                               if k not in ("validation_metrics", "pneumoscan_version", "format_version")})
    assert bare.format_version == 1 and bare.validation is None  # no format_version means format 1
    assert bare.versions["pneumoscan"] == "unknown"

    old = _format_1()["validation_metrics"]
    no_rates = {**old, "sensitivity": None, "confusion_matrix": {"tn": 0, "fp": 3, "fn": 0, "tp": 5}}
    for key in ("loss", "threshold_policy"):
        no_rates.pop(key)
    metrics_record = Manifest.from_dict(_format_1(validation_metrics=no_rates)).validation
    assert metrics_record is not None
    assert metrics_record.metrics.balanced_accuracy is None and metrics_record.metrics.npv is None
    assert np.isnan(metrics_record.loss) and metrics_record.threshold_policy == "fixed:0.5"
    balanced = {**old, "confusion_matrix": {"tn": 2, "fp": 1, "fn": 2, "tp": 5}}
    assert Manifest.from_dict(_format_1(validation_metrics=balanced)).validation.metrics.npv == 0.5  # type: ignore[union-attr]

    flipped = _format_1()
    flipped["training"]["config"]["augment"] = {**asdict(AUGMENT_PRESETS["standard"]), "hflip": True}
    config = Manifest.from_dict(flipped).training.config  # type: ignore[union-attr]
    assert config.augment == "standard" and config.hflip is True

    custom = _format_1()
    custom["training"]["config"]["augment"] = {**asdict(AUGMENT_PRESETS["standard"]), "zoom": 0.5}
    with pytest.raises(PneumoscanError, match="matches no named preset"):
        Manifest.from_dict(custom)


def test_a_migrated_bundle_saved_again_is_the_current_format(tmp_path: Path) -> None:
    shipped = load_bundle("default")
    save_bundle(tmp_path, shipped.model, shipped.manifest, ood=shipped.ood, reference=shipped.reference)
    payload = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert payload["format_version"] == 4 and "validation_metrics" not in payload
    again = load_bundle(tmp_path)
    assert again.manifest.versions["pneumoscan"] == "0.1.0"  # nothing lost by migrating twice
    assert again.manifest.validation == shipped.manifest.validation
    assert again.manifest.training == shipped.manifest.training
    images = torch.randint(0, 256, (2, 1, 224, 224), dtype=torch.uint8)
    normalize = shipped.preprocess.normalize
    assert np.allclose(again.ood.score(again.model, images, normalize),  # type: ignore[union-attr]
                       shipped.ood.score(shipped.model, images, normalize))  # type: ignore[union-attr]



@pytest.mark.parametrize(("edit", "message"), [
    ({"threshold": float("nan")}, "threshold nan is not a probability"),
    ({"threshold": 1.5}, "threshold 1.5 is not a probability"),
    ({"normalization": {"mean": 0.5, "std": 0.0}}, "std must be > 0"),
    ({"format_version": 0}, "format_version 0 does not exist"),
    ({"format_version": 99}, "bundle format 99 is newer"),
    ({"arch_kwargs": 5}, "unreadable manifest"),
    ({"normalization": "tiny"}, "unreadable manifest"),
])
def test_manifests_that_would_give_quietly_wrong_answers_are_refused(tmp_path: Path, edit: dict,
                                                                     message: str) -> None:
    _, _, folder = _saved(tmp_path)
    _edit_manifest(folder, **edit)
    with pytest.raises(BundleError, match=message) as info:
        load_bundle(folder)
    assert str(info.value).startswith(str(folder / MANIFEST_FILE))


def test_weights_holding_nan_are_refused(tmp_path: Path) -> None:
    model, _, folder = _saved(tmp_path)
    broken = {k: v.clone() for k, v in model.state_dict().items()}
    name = next(k for k, v in broken.items() if v.is_floating_point())
    broken[name].view(-1)[0] = float("nan")
    from safetensors.torch import save_file

    save_file(broken, str(folder / WEIGHTS_FILE))
    _edit_manifest(folder, weights_sha256=hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest())
    with pytest.raises(BundleError, match="weights hold NaN or infinite values"):
        load_bundle(folder)
