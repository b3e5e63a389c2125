"""Streamed (larger-than-memory) image sets: the same batches, scores and run as the in-memory path, and unreadable
files skipped and recorded before training exactly as the in-memory path skips them."""

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, TinyRun, quiet
from pneumoscan.config import TrainConfig
from pneumoscan.data.batching import iter_batches
from pneumoscan.data.cache import ImageCache
from pneumoscan.data.loading import load_images, load_streamed
from pneumoscan.data.preprocess import Preprocess
from pneumoscan.data.registry import open_source
from pneumoscan.data.sources import DataSource
from pneumoscan.data.statistics import image_statistics
from pneumoscan.data.streaming import WORKERS_VARIABLE, StreamedImages, default_workers, take
from pneumoscan.errors import ImageDecodeError, PneumoscanError
from pneumoscan.models import create_model
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.inference import predict_with
from pneumoscan.models.ood import fit_guard
from pneumoscan.models.registry import model_spec
from pneumoscan.pipeline.train import run_training
from pneumoscan.training import prepare
from pneumoscan.training.prepare import decide_streaming, prepare_data
from test_cache import deny_reading

SIZE = 24


@pytest.fixture()
def source(tiny_synthetic: Path, tmp_path: Path) -> DataSource:
    return open_source(str(tiny_synthetic), cache=ImageCache(tmp_path / "cache"))


def _all_records(source: DataSource) -> list:
    """Every split's records: 80 images, enough for the worker processes to start (PARALLEL_MIN)."""
    return [r for split in ("train", "val", "test") for r in source.splits[split]]


def test_streamed_images_index_like_the_tensor(source: DataSource) -> None:
    records = source.splits["val"]
    tensor = load_images(source, records, SIZE, console=quiet()).images
    streamed = StreamedImages(source, records, SIZE, workers=0)
    assert len(streamed) == len(tensor) and streamed.shape == tensor.shape == streamed.size()
    assert streamed.size(0) == 16 and streamed.dtype == torch.uint8 and streamed.nbytes == tensor.numel()
    for index in (3, -1, slice(2, 9, 3), slice(None), torch.tensor([5, 0, 5]), np.array([7, 1]), [2, 4],
                  torch.arange(16) % 3 == 0, (slice(None), 0), (4, 0), np.int64(6), torch.tensor(2)):
        assert torch.equal(streamed[index], tensor[index]), index
    assert torch.equal(streamed.subset(torch.tensor([4, 2]))[:], tensor[[4, 2]])
    shard = take(streamed, torch.arange(1, 16, 2))
    assert isinstance(shard, StreamedImages) and torch.equal(shard[:], take(tensor, torch.arange(1, 16, 2)))
    with pytest.raises(IndexError):
        streamed[16]


@pytest.mark.parametrize("workers", [0, 2])
def test_the_same_order_gives_bit_identical_batches_in_memory_and_streamed(source: DataSource, workers: int) -> None:
    records = _all_records(source)
    tensor = load_images(source, records, SIZE, console=quiet()).images
    streamed = StreamedImages(source, records, SIZE, workers=workers)
    generator = torch.Generator().manual_seed(5)
    order = torch.cat([torch.randperm(len(records), generator=generator), torch.tensor([3, 3, 7])])  # repeats too
    in_memory = list(iter_batches(tensor, order, 16))
    from_stream = list(iter_batches(streamed, order, 16))
    assert len(in_memory) == len(from_stream) == 6  # 83 = 5 x 16 + 3: the last, short batch kept (>= 2)
    for (index_a, batch_a), (index_b, batch_b) in zip(in_memory, from_stream, strict=True):
        assert torch.equal(index_a, index_b) and torch.equal(batch_a, batch_b)
    assert len(list(iter_batches(streamed, order[:17], 16))) == 1  # a final batch of one is dropped


def test_scores_statistics_and_guard_are_the_same_on_a_streamed_set(source: DataSource) -> None:
    records = _all_records(source)
    tensor_set = load_images(source, records, SIZE, console=quiet())
    streamed = StreamedImages(source, records, SIZE, workers=0)  # the worker path is the batches test's
    torch.manual_seed(0)
    model = create_model("baseline", in_channels=1, image_size=SIZE).eval()
    normalize = Preprocess(image_size=SIZE).normalize
    assert np.array_equal(predict_with(model, normalize, streamed, batch_size=16),
                          predict_with(model, normalize, tensor_set.images, batch_size=16))
    expected = image_statistics(tensor_set.images)  # 64 images a batch; the streamed set 16 at a time:
    for name, values in image_statistics(streamed, batch_size=16).items():  # per-image figures, close per CPU
        np.testing.assert_allclose(values, expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
    layers = model_spec("baseline").feature_stages
    labels = tensor_set.labels.numpy()
    guard_a = fit_guard(model, layers, normalize, tensor_set.images, labels, tensor_set.images)
    guard_b = fit_guard(model, layers, normalize, streamed, labels, streamed)
    assert guard_a.threshold == guard_b.threshold
    assert all(np.array_equal(a, b) for a, b in zip(guard_a.precisions, guard_b.precisions, strict=True))


@dataclass
class Hostile:
    source: DataSource
    locked: Path
    gone: Path


@pytest.fixture()
def hostile(tiny_synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Hostile:
    """tiny_synthetic's 80 images plus a corrupt one, one that cannot be read (permission denied, simulated so
    the test also runs as root) and one that is gone."""
    folder = tmp_path / "data"
    shutil.copytree(tiny_synthetic, folder)
    (folder / "train" / "NORMAL" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    locked = sorted((folder / "val" / "PNEUMONIA").iterdir())[2]
    deny_reading(monkeypatch, locked)
    source = open_source(str(folder), cache=ImageCache(tmp_path / "cache"))
    gone = Path(source.splits["test"][0].source)
    gone.unlink()
    return Hostile(source, locked, gone)


def test_unreadable_files_are_skipped_and_recorded_before_training_as_in_memory(hostile: Hostile) -> None:
    records = _all_records(hostile.source)
    in_memory = load_images(hostile.source, records, SIZE, console=quiet())
    streamed = load_streamed(hostile.source, records, SIZE, console=quiet(), workers=2)
    assert isinstance(streamed.images, StreamedImages)
    assert streamed.records == in_memory.records and len(streamed) == len(records) - 3
    assert torch.equal(streamed.labels, in_memory.labels)
    assert streamed.skipped == in_memory.skipped
    assert {Path(s.source).name for s in streamed.skipped} == {"broken.png", hostile.locked.name, hostile.gone.name}
    assert [s.reason for s in streamed.skipped if "permission" in s.reason] == ["permission denied"]
    with pytest.raises(ImageDecodeError, match="broken.png"):
        load_streamed(hostile.source, records, SIZE, strict=True, console=quiet(), workers=2)


def test_a_streamed_run_is_the_same_run(tiny_run: TinyRun, tmp_path: Path) -> None:
    """The session's tiny run again with streaming on: the same history, threshold, guard and drift reference."""
    config = replace(tiny_run.config, stream="on")
    data = prepare_data(config, quiet())
    assert isinstance(data.train.images, StreamedImages) and isinstance(data.val.images, StreamedImages)
    assert data.summary == tiny_run.data.summary
    result = run_training(config, tmp_path / "run", quiet(), data=data)
    assert [(r.train_loss, r.val_loss, r.val_auc) for r in result.history] == \
        [(r.train_loss, r.val_loss, r.val_auc) for r in tiny_run.result.history]
    assert result.validation == tiny_run.result.validation
    streamed, in_memory = load_bundle(result.out_dir), load_bundle(tiny_run.out_dir)
    assert streamed.ood is not None and in_memory.ood is not None
    assert streamed.ood.threshold == in_memory.ood.threshold
    assert streamed.reference is not None and in_memory.reference is not None
    assert all(np.array_equal(streamed.reference[k], in_memory.reference[k]) for k in in_memory.reference)
    assert (result.out_dir / "split.csv").read_text() == (tiny_run.out_dir / "split.csv").read_text()


def test_stream_auto_streams_only_what_would_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepare, "memory_limit", lambda: 16 * 10**9)
    assert decide_streaming("auto", 5_000, 224)[0] is False  # 0.25 GB
    stream, why = decide_streaming("auto", 100_000, 512)  # 26 GB
    assert stream and "26.2 GB, over 25% of 16.0 GB memory" in why
    assert decide_streaming("on", 10, 32)[0] and not decide_streaming("off", 10**7, 512)[0]
    assert decide_streaming("auto", 10_000, 512)[0] is False  # 2.6 GB of a 4 GB budget ...
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # ... but four torchrun processes on this node each hold a copy
    stream, why = decide_streaming("auto", 10_000, 512)
    assert stream and "shared by 4 processes" in why
    with pytest.raises(PneumoscanError, match="stream 'sometimes': choose from auto, on, off"):
        decide_streaming("sometimes", 10, 32)
    assert TrainConfig().stream == "auto"
    assert TrainConfig(**TINY).stream == "auto"


def test_worker_count_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKERS_VARIABLE, "3")
    assert default_workers() == 3
    monkeypatch.setenv(WORKERS_VARIABLE, "many")
    with pytest.raises(PneumoscanError, match=f"{WORKERS_VARIABLE}='many'"):
        default_workers()
    monkeypatch.delenv(WORKERS_VARIABLE)
    assert 1 <= default_workers() <= 4


def test_a_streamed_set_reads_the_cache_not_the_originals_and_falls_back_when_evicted(tiny_synthetic: Path,
                                                                                       tmp_path: Path) -> None:
    shutil.copytree(tiny_synthetic / "val", tmp_path / "val")
    source = open_source(str(tmp_path / "val"), cache=ImageCache(tmp_path / "cache"))
    records = source.splits["all"]
    expected = load_images(source, records, SIZE, console=quiet()).images
    streamed = load_streamed(source, records, SIZE, console=quiet(), workers=0).images
    assert isinstance(streamed, StreamedImages) and all(entry is not None for entry in streamed.entries)
    Path(records[0].source).unlink()  # an epoch no longer needs the original ...
    assert torch.equal(streamed[0], expected[0])
    Path(streamed.entries[1]).unlink()  # ... and an evicted entry is decoded again from it
    assert torch.equal(streamed[1], expected[1]) and Path(streamed.entries[1]).exists()


def test_without_a_cache_a_streamed_set_decodes_each_read(tiny_synthetic: Path) -> None:
    source = open_source(str(tiny_synthetic), cache=None)
    records = source.splits["val"]
    streamed = load_streamed(source, records, SIZE, console=quiet(), workers=0).images
    assert isinstance(streamed, StreamedImages) and streamed.entries == [None] * len(records)
    assert torch.equal(streamed[:], load_images(source, records, SIZE, console=quiet()).images)


def test_streaming_more_than_the_cache_keeps_warns(tiny_synthetic: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    monkeypatch.setenv("PNEUMOSCAN_CACHE_MAX_GB", "0.00001")  # 10 kB: less than the tiny set's decoded images
    console = Console(file=io.StringIO(), width=200)
    data = prepare_data(TrainConfig(**{**TINY, "data": str(tiny_synthetic), "stream": "on"}), console)
    assert isinstance(data.train.images, StreamedImages)
    assert "more than the cache keeps" in console.file.getvalue()


def _without_run_specifics(metrics: dict) -> dict:  # type: ignore[type-arg]
    """metrics.json minus what names the output folder or the streaming setting itself."""
    kept = {k: v for k, v in metrics.items() if k not in ("figures", "evaluation")}
    if kept.get("audit"):
        kept["audit"] = {k: v for k, v in kept["audit"].items() if k != "figures"}
    return kept


def test_a_streamed_evaluation_equals_the_in_memory_one(tiny_run: TinyRun, tmp_path: Path) -> None:
    """issue 23: evaluate reading the films a batch at a time (weeks, guard probes, figures' picks, framing swaps,
    audit) reports what it reports with every film in memory."""
    import json

    from conftest import assert_close
    from pneumoscan.cli.main import main

    metrics = {}
    for mode in ("off", "on"):
        out = tmp_path / mode
        assert main(["evaluate", "--model", str(tiny_run.out_dir), "--data", tiny_run.config.data, "--split", "test",
                     "--stream", mode, "--bootstrap", "200", "--engine", "torch", "--out", str(out)]) == 0
        metrics[mode] = json.loads((out / "metrics.json").read_text())
    assert metrics["on"]["evaluation"]["stream"] == "on"
    assert_close(_without_run_specifics(metrics["on"]), _without_run_specifics(metrics["off"]), where="metrics.json")


def test_monitoring_weeks_are_read_a_chunk_at_a_time_alike(source: DataSource, monkeypatch: pytest.MonkeyPatch) -> None:
    """A week larger than a chunk is scored and described chunk by chunk: the same figures in memory and streamed,
    and as one whole week (the chunks change nothing)."""
    from pneumoscan.evaluation import monitoring
    from pneumoscan.evaluation.monitoring import simulate

    records = source.splits["train"]
    in_memory = load_images(source, records, 32, console=quiet())
    streamed = load_streamed(source, records, 32, console=quiet(), workers=0)
    labels = in_memory.labels.numpy().astype(int)
    reference = {**image_statistics(in_memory.images), "scores": np.linspace(0.1, 0.9, len(labels))}

    def score(pixels: torch.Tensor) -> np.ndarray:
        return pixels.flatten(1).float().mean(1).numpy()

    whole = simulate(in_memory.images, labels, score, 0.5, reference, weeks=2, seed=0, resamples=100)
    monkeypatch.setattr(monitoring, "CHUNK", 5)  # weeks of 24 films: five chunks each
    runs = [simulate(images, labels, score, 0.5, reference, weeks=2, seed=0, resamples=100)
            for images in (in_memory.images, streamed.images)]
    for week_a, week_b, week_whole in zip(runs[0].weeks, runs[1].weeks, whole.weeks, strict=True):
        assert week_a.ks_statistic == pytest.approx(week_whole.ks_statistic)
        assert week_a.ks_statistic == pytest.approx(week_b.ks_statistic)
        assert week_a.mean_probability == pytest.approx(week_b.mean_probability)
