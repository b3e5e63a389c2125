"""Crash-safe training: a run killed with SIGKILL (or stopped with Ctrl-C) and resumed ends with the same weights,
bit for bit, as one that was never interrupted; fresh runs never leave a folder mixing two runs."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import quiet
from pneumoscan.cli.main import main
from pneumoscan.config import TrainConfig
from pneumoscan.errors import BundleError, PneumoscanError
from pneumoscan.models.bundle import MANIFEST_FILE, WEIGHTS_FILE, load_bundle
from pneumoscan.training.checkpoint import CHECKPOINT_FILE, Checkpoint

# long enough (about a second an epoch) that a signal lands inside a run, small enough for CI; float32 on the CPU,
# where a resumed run must repeat an uninterrupted one exactly
SETTINGS = ["--data", "synthetic:n_per_class=120,size=64,seed=5", "--arch", "baseline", "--image-size", "64",
            "--batch-size", "16", "--epochs", "3", "--patience", "10", "--precision", "fp32", "--device", "cpu",
            "--augment", "standard", "--mixup", "0.2"]


def _train(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.Popen([sys.executable, "-m", "pneumoscan", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_checkpoint(run_dir: Path, process: subprocess.Popen[str], epochs_done: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"training ended before it could be interrupted: {process.communicate()[1][-2000:]}")
        try:
            if Checkpoint.load(run_dir).loop.epochs_done >= epochs_done:
                return
        except PneumoscanError:
            pass
        time.sleep(0.05)
    pytest.fail("no checkpoint appeared")


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / WEIGHTS_FILE))


def _assert_identical(first: Path, second: Path) -> None:
    a, b = _weights(first), _weights(second)
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"tensors differ after resuming: {different[:5]}"
    history = [[row.rsplit(",", 1)[0] for row in (d / "metrics.csv").read_text().splitlines()] for d in (first, second)]
    assert [row.split(",")[:6] for row in history[0]] == [row.split(",")[:6] for row in history[1]]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    process = _train([*SETTINGS, "--out", str(run_dir)])
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    assert not (run_dir / CHECKPOINT_FILE).exists()  # a finished run keeps no checkpoint
    return run_dir


def test_sigkill_mid_epoch_then_resume_is_bit_identical(uninterrupted: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "killed"
    process = _train([*SETTINGS, "--out", str(run_dir)])
    _wait_for_checkpoint(run_dir, process, epochs_done=1)
    time.sleep(0.1)  # a few batches into epoch 2 of 3: far from the end on any machine
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert not Checkpoint.load(run_dir).loop.finished  # killed with training left to do
    assert not (run_dir / MANIFEST_FILE).exists()  # no bundle from a killed run
    with pytest.raises(BundleError):
        load_bundle(run_dir)
    resumed = _train(["--resume", str(run_dir)])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    _assert_identical(uninterrupted, run_dir)
    assert not (run_dir / CHECKPOINT_FILE).exists()
    # the bundle records the command that started the run (the one that repeats it), not `train --resume`
    command = json.loads((run_dir / MANIFEST_FILE).read_text())["training"]["command"]
    assert "--resume" not in command and f"--out {run_dir}" in command


def test_ctrl_c_saves_between_batches_and_resume_is_bit_identical(uninterrupted: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "stopped"
    process = _train([*SETTINGS, "--out", str(run_dir)])
    _wait_for_checkpoint(run_dir, process, epochs_done=1)
    time.sleep(0.1)  # a few batches into epoch 2 of 3
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert f"--resume {run_dir}" in " ".join(err.split())
    saved = Checkpoint.load(run_dir)
    assert saved.loop.order is not None and not saved.loop.finished  # stopped inside an epoch
    resumed = _train(["--resume", str(run_dir)])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    _assert_identical(uninterrupted, run_dir)


def test_resume_refusals(uninterrupted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a finished run has nothing to resume
    assert main(["train", "--resume", str(uninterrupted)]) == 2
    assert "no checkpoint.pt to resume from" in capsys.readouterr().err
    # neither or both of --out / --resume
    assert main(["train", *SETTINGS]) == 2
    assert "give --out RUN_DIR for a new run, or --resume RUN_DIR" in capsys.readouterr().err
    # a damaged checkpoint is one clear line, not a traceback
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    assert main(["train", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a readable pneumoscan checkpoint" in err and "Traceback" not in err


def test_settings_with_resume_and_fresh_run_over_a_checkpoint_are_refused(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from pneumoscan.pipeline.train import run_training

    config = TrainConfig(data="synthetic:n_per_class=12,size=32", arch="baseline", image_size=32, batch_size=8,
                         epochs=3, precision="fp32", device="cpu", val_fraction=0.25)
    run_dir = tmp_path / "run"
    calls = 0

    def interrupt_after_first_epoch(history: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt

    import pneumoscan.pipeline.train as train_module

    original = train_module.write_history
    train_module.write_history = lambda path, history: (original(path, history), interrupt_after_first_epoch(history))
    try:
        with pytest.raises(KeyboardInterrupt):
            run_training(config, run_dir, quiet())
    finally:
        train_module.write_history = original
    assert (run_dir / CHECKPOINT_FILE).is_file()
    assert main(["train", "--resume", str(run_dir), "--epochs", "5"]) == 2
    assert "give no other settings" in capsys.readouterr().err
    with pytest.raises(PneumoscanError, match="unfinished run"):
        run_training(config, run_dir, quiet())
    with pytest.raises(PneumoscanError, match="settings differ"):
        run_training(TrainConfig(**{**config.__dict__, "epochs": 4}), run_dir, quiet(), resume=True)
    result = run_training(config, run_dir, quiet(), resume=True)
    assert result is not None and len(result.history) == 3


def test_resume_on_other_images_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pneumoscan.pipeline import train as train_module
    from pneumoscan.training.prepare import prepare_data

    config = TrainConfig(data="synthetic:n_per_class=12,size=32", arch="baseline", image_size=32, batch_size=8,
                         epochs=3, precision="fp32", device="cpu", val_fraction=0.25)
    original = train_module.write_history
    monkeypatch.setattr(train_module, "write_history", lambda path, history: (original(path, history),
                                                                             _raise_at(history, 2)))
    with pytest.raises(KeyboardInterrupt):
        train_module.run_training(config, tmp_path, quiet())
    monkeypatch.setattr(train_module, "write_history", original)
    other = prepare_data(TrainConfig(**{**config.__dict__, "data": "synthetic:n_per_class=13,size=32"}), quiet())
    with pytest.raises(PneumoscanError, match="images differ"):
        train_module.run_training(config, tmp_path, quiet(), data=other, resume=True)


def _raise_at(history: list[object], epochs: int) -> None:
    if len(history) == epochs:
        raise KeyboardInterrupt


def test_fresh_run_over_a_finished_one_removes_the_old_bundle_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                    ) -> None:
    from pneumoscan.pipeline import train as train_module

    config = TrainConfig(data="synthetic:n_per_class=12,size=32", arch="baseline", image_size=32, batch_size=8,
                         epochs=1, precision="fp32", device="cpu", val_fraction=0.25)
    run_dir = tmp_path / "run"
    train_module.run_training(config, run_dir, quiet())
    load_bundle(run_dir)  # a finished bundle

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_module.run_training(config, run_dir, quiet())
    with pytest.raises(BundleError):  # the old bundle is gone, not mixed with the new run's files
        load_bundle(run_dir)
    assert not (run_dir / WEIGHTS_FILE).exists() and not (run_dir / "metrics.csv").exists()


def test_a_full_disk_is_one_clear_line_and_keeps_the_last_checkpoint(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from pneumoscan.pipeline import train as train_module

    config = TrainConfig(data="synthetic:n_per_class=12,size=32", arch="baseline", image_size=32, batch_size=8,
                         epochs=3, precision="fp32", device="cpu", val_fraction=0.25)

    def full(path: Path, history: list[object]) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(train_module, "write_history", full)
    with pytest.raises(PneumoscanError, match="No space left on device.*checkpoint is saved"):
        train_module.run_training(config, tmp_path / "a", quiet())
    assert Checkpoint.load(tmp_path / "a").loop.epochs_done == 1  # the epoch that could not log is resumable
    monkeypatch.undo()

    def no_space(*args: object, **kwargs: object) -> None:
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(PneumoscanError, match="cannot write the checkpoint"):
        train_module.run_training(config, tmp_path / "b", quiet())


def test_a_global_batch_too_small_for_the_processes_is_refused_before_training(tiny_synthetic: Path) -> None:
    from pneumoscan.training.distributed import Distributed
    from pneumoscan.training.loop import train
    from pneumoscan.training.prepare import prepare_data

    config = TrainConfig(data=str(tiny_synthetic), arch="baseline", image_size=32, batch_size=2, epochs=1,
                         precision="fp32", device="cpu")
    data = prepare_data(config, quiet())
    for batch_size in (2, 3):  # one image per process per step (BatchNorm cannot train), or not divisible
        with pytest.raises(PneumoscanError, match="global batch"):
            train(data, TrainConfig(**{**config.__dict__, "batch_size": batch_size}), quiet(),
                  dist=Distributed(rank=0, world_size=2))
