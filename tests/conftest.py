"""Shared fixtures: tiny image folders in the Kaggle layout, written fresh for each test."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumoscan.data.synthetic import SyntheticSource, SyntheticSpec

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "chest_xray"


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
