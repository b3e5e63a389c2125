"""pneumoscan: pneumonia detection in chest X-rays (research and education, not a medical device)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pneumoscan")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"

CLASS_NAMES: tuple[str, str] = ("NORMAL", "PNEUMONIA")
