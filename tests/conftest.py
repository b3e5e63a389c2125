"""Shared fixtures: tiny image folders in the Kaggle layout, and one tiny trained run with its evaluation.

The run and its evaluation are made once per session (a few seconds) and only read by the tests that
use them; a test that needs a differently trained model trains its own, equally tiny one.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

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


def quiet() -> Console:
    return Console(quiet=True)


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
    from pneumoscan.pipeline.run import run_training
    from pneumoscan.training.prepare import prepare_data

    config = TrainConfig(data=str(tiny_synthetic), augment="none", threshold="youden", **TINY)
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
