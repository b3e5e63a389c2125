"""Shared fixtures: tiny image folders in the Kaggle layout, and one tiny trained run with its evaluation.

The run and its evaluation are made once per session (a few seconds) and only read by the tests that
use them; a test that needs a differently trained model trains its own, equally tiny one.
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from pneumoscan.config import EvalConfig, TrainConfig
from pneumoscan.data.synthetic import SyntheticSource, SyntheticSpec

if TYPE_CHECKING:
    from pneumoscan.evaluation.evaluate import EvaluationResult
    from pneumoscan.pipeline.packaging import RunResult
    from pneumoscan.training.prepare import PreparedData

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "chest_xray"

# the smallest run that exercises everything: the reference CNN at 32 px, 2 epochs, float32 (comparable anywhere)
TINY = {"arch": "baseline", "image_size": 32, "batch_size": 8, "epochs": 2, "val_fraction": 0.25,
        "precision": "fp32", "device": "cpu"}  # the same result on every machine, GPU or not


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Graphs the ONNX Runtime engine exports on first use go to a folder of this session, never the user's cache
    (pneumoscan.serving.engine.cache_dir); subprocesses inherit it."""
    import os

    from pneumoscan.serving.engine import CACHE_VARIABLE

    folder = tmp_path_factory.mktemp("onnx-cache")
    previous = os.environ.get(CACHE_VARIABLE)
    os.environ[CACHE_VARIABLE] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(CACHE_VARIABLE, None)
    else:
        os.environ[CACHE_VARIABLE] = previous


def quiet() -> Console:
    return Console(quiet=True)


def assert_close(actual: Any, expected: Any, *, rtol: float = 1e-5, atol: float = 1e-6, where: str = "") -> None:
    """`actual == expected`, except that floats (and float arrays) need only be close: for results computed
    through two paths that batch the images differently, whose last bits differ from one CPU to another
    (vectorised kernels pick their summation order by batch shape). Everything else (ints, bools, strings,
    None, the structure of dataclasses, dicts and sequences) must be equal."""
    where = where or "result"
    if is_dataclass(actual) and not isinstance(actual, type):
        assert type(actual) is type(expected), f"{where}: {type(actual).__name__} != {type(expected).__name__}"
        for field in fields(actual):
            assert_close(getattr(actual, field.name), getattr(expected, field.name), rtol=rtol, atol=atol,
                         where=f"{where}.{field.name}")
    elif isinstance(actual, dict):
        assert isinstance(expected, dict) and actual.keys() == expected.keys(), f"{where}: keys differ"
        for key in actual:
            assert_close(actual[key], expected[key], rtol=rtol, atol=atol, where=f"{where}[{key!r}]")
    elif isinstance(actual, (list, tuple)):
        assert isinstance(expected, (list, tuple)) and len(actual) == len(expected), f"{where}: lengths differ"
        for index, (a, b) in enumerate(zip(actual, expected, strict=True)):
            assert_close(a, b, rtol=rtol, atol=atol, where=f"{where}[{index}]")
    elif isinstance(actual, np.ndarray) and actual.dtype.kind == "f":
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=where)
    elif isinstance(actual, (float, np.floating)) and not isinstance(expected, bool):
        assert isinstance(expected, (float, int, np.floating)), f"{where}: {actual!r} != {expected!r}"
        assert math.isclose(actual, expected, rel_tol=rtol, abs_tol=atol) or (math.isnan(actual) and
                                                                           math.isnan(expected)), \
            f"{where}: {actual!r} != {expected!r} (rtol {rtol:g}, atol {atol:g})"
    elif isinstance(actual, np.ndarray):
        assert np.array_equal(actual, expected), where
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def write_image(path: Path, value: int = 128, size: tuple[int, int] = (40, 40), mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode in ("L", "I;16", "I") else (value,) * len(mode)).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset on disk (train 24/class, val 8/class, test 8/class at 96 px)."""
    root = tmp_path_factory.mktemp("synthetic")
    SyntheticSource(SyntheticSpec(n_per_class=24, size=96, seed=3, difficulty=0.0)).write(root)
    return root


@pytest.fixture(autouse=True, scope="session")
def _private_image_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the decoded-image cache of test runs out of the user's ~/.cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("PNEUMOSCAN_CACHE_DIR", str(tmp_path_factory.mktemp("image-cache")))
    yield
    patch.undo()


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@dataclass
class TinyRun:
    """The session's trained run: its config, the data it saw, and what run_training returned."""

    config: TrainConfig
    data: "PreparedData"
    result: "RunResult"

    @property
    def out_dir(self) -> Path:
        return self.result.out_dir


@pytest.fixture(scope="session")
def tiny_run(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """`baseline` at 32 px for 2 epochs on tiny_synthetic, augmentation preset `none` (not the default, so a
    report that always said `standard` is caught) and the Youden threshold (its scores are still near 0.5
    after two epochs, so at 0.5 it would call nearly everything normal)."""
    from pneumoscan.pipeline.train import run_training
    from pneumoscan.training.prepare import prepare_data

    config = TrainConfig(data=str(tiny_synthetic), augment="none", threshold_policy="youden", **TINY)
    data = prepare_data(config, quiet())
    result = run_training(config, tmp_path_factory.mktemp("tiny-run") / "run", quiet(), command="pytest tiny run",
                          data=data)
    return TinyRun(config, data, result)


@pytest.fixture(scope="session")
def tiny_evaluation(tiny_run: TinyRun, tiny_synthetic: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> "tuple[EvaluationResult, Path]":
    """The tiny run evaluated on tiny_synthetic's test split (16 images), with label-shift adaptation."""
    from pneumoscan.evaluation.evaluate import evaluate
    from pneumoscan.models.bundle import load_bundle

    out = tmp_path_factory.mktemp("tiny-evaluation")
    return evaluate(load_bundle(tiny_run.out_dir), str(tiny_synthetic), out,
                    EvalConfig(bootstrap=200, adapt_prior=True), quiet()), out
