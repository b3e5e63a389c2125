"""Loading weights never runs code: a pickle whose unpickling would create a file (or call os.system) is given to
every place that reads weights, and the file never appears; each refusal is one line, exit 2.

The payloads are checked to work (unpickled on purpose, they do create the marker), so a pass is not vacuous.
Bundle tampering (links out of the folder, a manifest naming other files) is in test_hostile_inputs.py.
"""

import io
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY, TinyRun, write_image
from pneumoscan.cli.main import main
from pneumoscan.errors import BundleError, PneumoscanError
from pneumoscan.models import create_model
from pneumoscan.models.bundle import WEIGHTS_FILE, load_bundle
from pneumoscan.models.pretrained import load_pretrained, read_state_dict
from test_hostile_inputs import _one_line_error, _rehash


class _Open:
    """Unpickling calls open(marker, 'w'), which creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


class _System(_Open):
    """Unpickling calls os.system('touch marker')."""

    def __reduce__(self) -> tuple[object, tuple[str]]:  # type: ignore[override]
        return os.system, (f"touch '{self.marker}'",)


PAYLOADS = [pytest.param(_Open, id="open"), pytest.param(_System, id="os.system")]


def _evil(payload: type[_Open], marker: Path, wrapped: bool = False) -> bytes:
    """A torch.save file whose state dict holds the payload where a tensor should be."""
    state = {"features.0.0.weight": payload(marker), "features.0.0.bias": torch.zeros(32)}
    buffer = io.BytesIO()
    torch.save({"state_dict": state} if wrapped else state, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_payloads_do_run_when_unpickled_on_purpose(payload: type[_Open], tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    torch.load(io.BytesIO(_evil(payload, marker)), weights_only=False)  # noqa: S614 - the control experiment
    assert marker.exists()


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("name", ["evil.pt", "evil.pth", "evil.bin", "evil.safetensors"])
def test_a_pickle_given_as_pretrained_weights_runs_nothing(payload: type[_Open], name: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    weights = tmp_path / name
    weights.write_bytes(_evil(payload, marker, wrapped=name == "evil.pth"))
    with pytest.raises(PneumoscanError, match=f"{weights}: not a readable weights file") as info:
        load_pretrained(create_model("baseline", image_size=32), "baseline", weights)
    assert "\n" not in str(info.value) and not marker.exists()
    with pytest.raises(PneumoscanError):
        read_state_dict(weights)
    assert not marker.exists()


def test_train_weights_with_a_pickle_is_one_line_and_nothing_runs(tiny_synthetic: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "marker"
    weights = tmp_path / "backbone.pt"
    weights.write_bytes(_evil(_System, marker))
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in TINY.items() if key != "epochs"]
    code = main(["train", "--data", str(tiny_synthetic), *flags, "--epochs", "1", "--weights", str(weights),
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err  # (after the data summary train prints before it builds the model)
    assert code == 2 and "Traceback" not in err and not marker.exists()
    line = err.splitlines()[-1]
    assert line.startswith(f"error: {weights}: not a readable weights file (it holds Python objects, not only tensors, "
                           "and pneumoscan never runs code from a weights file: ") and "GLOBAL" in line
    assert line.endswith("; save a plain state dict or a safetensors file)")


def test_a_plain_state_dict_still_loads(tmp_path: Path) -> None:
    """The positive control: weights_only refuses code, not ordinary checkpoints."""
    source = create_model("baseline", image_size=32)
    torch.save({"model": source.state_dict()}, tmp_path / "plain.pt")
    target = create_model("baseline", image_size=32)
    assert load_pretrained(target, "baseline", tmp_path / "plain.pt").loaded > 0
    assert torch.equal(target.state_dict()["features.0.0.weight"], source.state_dict()["features.0.0.weight"])


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_pickle_as_a_bundles_weights_runs_nothing(payload: type[_Open], tiny_run: TinyRun, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Renamed model.safetensors, with the manifest's checksum made to match so the loader itself decides:
    safetensors holds tensors only, so the file is refused and never unpickled, by every command."""
    marker = tmp_path / "marker"
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_run.out_dir, bundle)
    (bundle / WEIGHTS_FILE).write_bytes(_evil(payload, marker))
    _rehash(bundle)
    with pytest.raises(BundleError, match="weights do not fit architecture"):
        load_bundle(bundle)
    image = write_image(tmp_path / "x.png")
    for argv in (["predict", "--model", str(bundle), str(image)],
                 ["explain", "--model", str(bundle), str(image), "--out", str(tmp_path / "explained")],
                 ["adapt", "--model", str(bundle), "--data", str(tmp_path), "--out", str(tmp_path / "adapted")]):
        assert main(argv) == 2
        assert "weights do not fit architecture" in _one_line_error(capsys.readouterr().err)
    assert not marker.exists()
