"""Data sources by name: `--data PATH` opens a folder, `--data FILE.csv` a labels table (a run's split.csv is
one), `--data synthetic[:k=v,...]` renders in memory."""

from collections.abc import Callable
from dataclasses import fields

from pneumoscan.data.cache import ImageCache
from pneumoscan.data.sources import CsvSource, DataSource, FolderSource
from pneumoscan.data.synthetic import SyntheticSource, SyntheticSpec
from pneumoscan.errors import PneumoscanError

SourceFactory = Callable[[dict[str, str]], DataSource]
_SOURCES: dict[str, SourceFactory] = {}


def register_source(name: str) -> Callable[[SourceFactory], SourceFactory]:
    def decorate(factory: SourceFactory) -> SourceFactory:
        _SOURCES[name] = factory
        return factory
    return decorate


def _parse(kind: object, value: str) -> object:
    """A `key=value` option as its SyntheticSpec field's type (float, int or str, e.g. `age=adult`)."""
    if kind in (float, "float"):
        return float(value)
    if kind in (str, "str"):
        return value
    return int(value)


@register_source("synthetic")
def _synthetic(options: dict[str, str]) -> DataSource:
    types = {f.name: f.type for f in fields(SyntheticSpec)}
    unknown = sorted(set(options) - set(types))
    if unknown:
        raise PneumoscanError(f"synthetic: unknown option(s) {', '.join(unknown)}; known: {', '.join(types)}")
    try:
        values = {key: _parse(types[key], v) for key, v in options.items()}
    except ValueError as error:
        raise PneumoscanError(f"synthetic: bad option value ({error})") from None
    return SyntheticSource(SyntheticSpec(**values))


def list_sources() -> list[str]:
    return ["PATH (a folder in the Kaggle layout)",
            "FILE.csv (columns path, label; optional patient, subgroup, series, split; a run's split.csv is one)",
            *(f"{name}[:key=value,...]" for name in _SOURCES)]


def open_source(spec: str, cache: ImageCache | None = None) -> DataSource:
    """Resolve a `--data` argument. Anything that is not a registered name is a path: a `.csv` file (any case) is a
    labels table, anything else a folder; file-backed sources decode through `cache` when one is given."""
    name, _, option_text = spec.partition(":")
    if name in _SOURCES:
        options: dict[str, str] = {}
        for item in filter(None, option_text.split(",")):
            key, sep, value = item.partition("=")
            if not sep:
                raise PneumoscanError(f"{spec}: options must look like key=value, got '{item}'")
            options[key.strip()] = value.strip()
        return _SOURCES[name](options)
    source: DataSource = CsvSource(spec) if spec.lower().endswith(".csv") else FolderSource(spec)
    source.cache = cache
    return source
