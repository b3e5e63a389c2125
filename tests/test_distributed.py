"""Data-parallel training with torchrun: two CPU processes (gloo) train like one process with the same global batch,
only rank 0 speaks and writes, and the processes shut down cleanly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pneumoscan.models.bundle import load_bundle
from pneumoscan.training.distributed import Distributed, launched_rank, launched_world_size
from pneumoscan.training.loop import _epoch_positions

SETTINGS = ["--data", "synthetic:n_per_class=64,size=48,seed=2,difficulty=0", "--arch", "baseline",
            "--image-size", "48", "--batch-size", "16", "--epochs", "3", "--patience", "10", "--precision", "fp32",
            "--device", "cpu", "--augment", "none", "--seed", "1"]


@pytest.mark.parametrize("n, batch, world", [(37, 8, 2), (40, 8, 2), (41, 8, 2), (36, 16, 4), (35, 6, 3)])
def test_ranks_share_each_global_batch_exactly(n: int, batch: int, world: int) -> None:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    single, _ = _epoch_positions(order, batch, Distributed())
    shares = [_epoch_positions(order, batch, Distributed(rank=r, world_size=world)) for r in range(world)]
    local_batch = shares[0][1]
    assert local_batch * world == batch
    steps = [len(range(0, len(local), local_batch)) for local, _ in shares]
    assert len(set(steps)) == 1  # every rank takes the same number of optimizer steps (or DDP would hang)
    for step in range(steps[0]):
        together = torch.cat([local[step * local_batch : (step + 1) * local_batch] for local, _ in shares])
        assert sorted(together.tolist()) == sorted(single[step * batch : (step + 1) * batch].tolist())
        assert all(len(local[step * local_batch : (step + 1) * local_batch]) >= 2 for local, _ in shares)
    tail = n % batch  # one process drops a last batch of one image; N processes one too small to give each two
    assert len(single) == (n if tail >= 2 or tail == 0 else n - tail)
    assert sum(len(local) for local, _ in shares) == (n if tail >= 2 * world or tail == 0 else n - tail)


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(command: list[str], run_dir: Path, *, resume: bool = False) -> subprocess.CompletedProcess[str]:
    args = ["--resume", str(run_dir)] if resume else [*SETTINGS, "--out", str(run_dir)]
    return subprocess.run([*command, "train", *args], capture_output=True, text=True, env=_env(), timeout=600)


def _history(run_dir: Path) -> list[dict[str, float]]:
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    names = lines[0].split(",")
    return [{k: float(v) for k, v in zip(names, line.split(","), strict=True) if v} for line in lines[1:]]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pneumoscan"]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    tmp_path = tmp_path_factory.mktemp("torchrun")
    launched = _run(TORCHRUN, tmp_path / "ddp")
    assert launched.returncode == 0, launched.stderr[-3000:]
    return tmp_path, launched


def test_torchruns_variables_are_read_with_one_process_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (launched_rank(), launched_world_size()) == (0, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (launched_rank(), launched_world_size()) == (3, 4)


def test_two_cpu_processes_match_one_process_with_the_same_global_batch(
        two_process_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    tmp_path, launched = two_process_run
    single = _run([sys.executable, "-m", "pneumoscan"], tmp_path / "single")
    assert single.returncode == 0, single.stderr[-3000:]
    assert "Traceback" not in launched.stderr
    # rank 0 alone reports: each epoch's line once, one metrics table
    assert launched.stderr.count("epoch  1:") == 1 and launched.stderr.count("validation metrics") == 1
    ddp, one = _history(tmp_path / "ddp"), _history(tmp_path / "single")
    assert len(ddp) == len(one) == 3
    manifest = json.loads((tmp_path / "ddp" / "model.json").read_text())
    n_train = manifest["training"]["data"]["train"]["images"]
    # exact reductions: accuracy over all ranks' images is a whole number of images of the full training set, and
    # the validation loss gathered from the ranks' shares is the loss rank 0 gets scoring the whole split alone
    for epoch in ddp:
        assert abs(epoch["train_acc"] * n_train - round(epoch["train_acc"] * n_train)) < 1e-3
    best = manifest["training"]["best_epoch"]
    assert abs(ddp[best - 1]["val_loss"] - manifest["validation"]["loss"]) < 1e-5
    # the same images per optimizer step with gradients averaged over the shares: the runs differ only by BatchNorm
    # statistics (each process normalises its half of a batch, as plain DDP does) and dropout draws, so they agree
    # within the spread of a tiny model's training
    assert abs(ddp[0]["train_loss"] - one[0]["train_loss"]) < 0.3
    assert min(e["val_loss"] for e in ddp) < 0.69 and min(e["val_loss"] for e in one) < 0.69  # both learn
    assert abs(min(e["val_loss"] for e in ddp) - min(e["val_loss"] for e in one)) < 0.2
    assert load_bundle(tmp_path / "ddp").manifest.training.config.batch_size == 16  # rank 0's bundle loads
    # rank 0 alone wrote: the same files as a one-process run, no per-rank copies, no checkpoint left
    files = [sorted(p.name for p in (tmp_path / name).iterdir()) for name in ("ddp", "single")]
    assert files[0] == files[1]
    assert not (tmp_path / "ddp" / "checkpoint.pt").exists()


def test_sigterm_to_torchrun_saves_and_two_processes_resume_bit_identically(
        two_process_run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    """What a pre-empted cluster job sees: SIGTERM to the launcher, which passes it to every rank; the ranks agree to
    stop at the same batch, rank 0 saves, and a later torchrun --resume ends with the uninterrupted run's weights."""
    from safetensors.torch import load_file

    from pneumoscan.errors import PneumoscanError
    from pneumoscan.training.checkpoint import Checkpoint

    run_dir = tmp_path / "preempted"
    process = subprocess.Popen([*TORCHRUN, "train", *SETTINGS, "--out", str(run_dir)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if Checkpoint.load(run_dir).loop.epochs_done >= 1:
                break
        except PneumoscanError:
            pass
        time.sleep(0.05)
    assert process.poll() is None, "training ended before it could be interrupted"
    time.sleep(0.1)  # a few batches into epoch 2 of 3
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0
    saved = Checkpoint.load(run_dir)
    assert saved.world_size == 2 and len(saved.rng["ranks"]) == 2
    one = _run([sys.executable, "-m", "pneumoscan"], run_dir, resume=True)  # another number of processes: refused
    assert one.returncode == 2 and "written by 2 process(es)" in one.stderr
    resumed = _run(TORCHRUN, run_dir, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    first, second = (load_file(str(d / "model.safetensors")) for d in (two_process_run[0] / "ddp", run_dir))
    assert all(torch.equal(first[name], second[name]) for name in first)
    # and the same history: a resumed epoch's loss and accuracy count the part before the stop once, not per rank
    for a, b in zip(_history(two_process_run[0] / "ddp"), _history(run_dir), strict=True):
        assert a["train_acc"] == b["train_acc"] and a["val_loss"] == b["val_loss"]
        assert abs(a["train_loss"] - b["train_loss"]) < 2e-6  # sums added in another order


def _ddp_steps(rank: int, world: int, port: int, out: str) -> None:
    """Worker: the loop's sharding and step under DistributedDataParallel, on a model without BatchNorm or dropout,
    where N processes must reproduce one process exactly (up to float summation order)."""
    import torch.distributed as dist
    from torch.nn import functional as F
    from torch.nn.parallel import DistributedDataParallel

    from pneumoscan.training.loop import train_step

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    wrapped = DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(1)
    images, labels = torch.randn(40, 1, 8, 8, generator=generator), torch.randint(0, 2, (40,), generator=generator)
    sharing = Distributed(rank=rank, world_size=world)
    for epoch in range(3):
        order = torch.randperm(40, generator=torch.Generator().manual_seed(epoch))
        local, batch = _epoch_positions(order, 8, sharing)
        for start in range(0, len(local), batch):
            index = local[start : start + batch]
            train_step(wrapped, optimizer, F.binary_cross_entropy_with_logits, images[index],
                       labels[index].float(), None)
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def test_sharded_steps_on_two_processes_equal_one_process_without_batchnorm(tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # both arms in child processes: the workers set the thread count and the rendezvous variables for themselves
    mp.spawn(_ddp_steps, args=(1, port, str(tmp_path / "one.pt")), nprocs=1, join=True)
    mp.spawn(_ddp_steps, args=(2, port, str(tmp_path / "two.pt")), nprocs=2, join=True)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for name in one:  # 15 SGD steps with momentum: the gradient averaging and the shares are exact
        assert torch.allclose(one[name], two[name], atol=1e-6, rtol=0), name
    torch.manual_seed(0)
    initial = torch.nn.Linear(64, 16).weight  # the first layer as _ddp_steps initialises it
    assert (one["1.weight"] - initial).abs().max() > 1e-3  # it did train
