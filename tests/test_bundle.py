from pathlib import Path

import pytest
import torch

from pneumoscan.data.preprocess import Preprocess
from pneumoscan.errors import BundleError
from pneumoscan.models import create_model
from pneumoscan.models.bundle import Manifest, load_bundle, save_bundle


def _saved(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = create_model("baseline", image_size=32).eval()
    manifest = Manifest(arch="baseline", arch_kwargs={}, preprocess=Preprocess(image_size=32), threshold=0.42,
                        validation_metrics={"accuracy": 0.9})
    return model, save_bundle(tmp_path / "bundle", model, manifest)


def test_round_trip_gives_the_same_predictions_and_manifest(tmp_path: Path) -> None:
    model, folder = _saved(tmp_path)
    bundle = load_bundle(folder)
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(model(x), bundle.model(x))
    assert bundle.manifest.threshold == 0.42
    assert bundle.preprocess == Preprocess(image_size=32)
    assert bundle.manifest.class_names == ["NORMAL", "PNEUMONIA"]
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors"]  # no temp files left
    assert load_bundle(folder / "model.json").manifest.arch == "baseline"


def test_manifest_is_plain_json_with_the_documented_keys(tmp_path: Path) -> None:
    import json

    _, folder = _saved(tmp_path)
    manifest = json.loads((folder / "model.json").read_text())
    for key in ("arch", "arch_kwargs", "input_size", "channels", "normalization", "class_names", "threshold",
                "training", "validation_metrics", "pneumoscan_version", "weights_sha256"):
        assert key in manifest


def test_mismatched_weights_are_refused(tmp_path: Path) -> None:
    _, folder = _saved(tmp_path)
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(folder)


def test_incomplete_bundle_names_the_missing_file(tmp_path: Path) -> None:
    _, folder = _saved(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(BundleError, match="model.safetensors is missing"):
        load_bundle(folder)


def test_bundle_files_get_ordinary_permissions(tmp_path: Path) -> None:
    import os

    _, folder = _saved(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.json", "model.safetensors"):
        assert (folder / name).stat().st_mode & 0o777 == 0o666 & ~umask
