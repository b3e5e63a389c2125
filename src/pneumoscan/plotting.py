"""What every figure module shares: matplotlib without a display, PNG at 150 dpi, written atomically.

`pneumoscan.training.figures` (training curves) and `pneumoscan.evaluation.figures` (everything drawn from an
evaluation) both draw through `plt` from here and save with `save_figure`.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pneumoscan.atomic import atomic_path  # noqa: E402

__all__ = ["DPI", "plt", "save_figure"]

DPI = 150


def save_figure(figure: Figure, path: Path) -> Path:
    """Write `figure` to `path` as a PNG (atomically: a reader never sees half a file) and close it."""
    with atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
    plt.close(figure)
    return Path(path)
