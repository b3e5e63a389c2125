"""Scoring at any size (issue 23): does the peak memory of `evaluate` and `predict --out` stay flat when the films
grow fourfold, and is streaming no slower than holding the films in memory?

    .venv/bin/python benchmarks/scale_scoring.py --films ../shared/data/chest_xray/train --n 2500 [--factor 4]
        [--model default] [--evaluate-args "--bootstrap 1000"] [--save docs/results/scale_scoring.txt]

Builds two folders in the Kaggle layout (`test/NORMAL`, `test/PNEUMONIA`) of links to the given films: the first
N, and N x FACTOR (the films again under other names once they run out; no image is copied). Then each command runs
as its own process, as a user runs it, and its peak RSS is read from the kernel when it exits (os.wait4's
ru_maxrss: the command's own process; the decoding workers streaming starts are separate processes of a few
hundred MB that do not grow with the films either):

  evaluate --stream auto   on N and on N x FACTOR films (streamed past 32 MB of decoded films)
  evaluate --stream off    on N films: every film held in memory, the speed baseline of the same run
  evaluate --stream on     on N films: streamed, for the same comparison
  predict DIR --out F.csv  on N and on N x FACTOR films (a batch at a time)

Each evaluate gets its own empty decoded-image cache folder (a cold cache: the first pass decodes every film).
"""

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

SUFFIXES = (".jpeg", ".jpg", ".png")


def _linked_set(films: list[tuple[Path, str]], count: int, root: Path) -> Path:
    """`count` links in root/test/<label>/, cycling through `films` under new names once they run out."""
    for index in range(count):
        film, label = films[index % len(films)]
        folder = root / "test" / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"c{index // len(films)}_{film.name}").symlink_to(film.resolve())
    return root


def _films(folder: Path) -> list[tuple[Path, str]]:
    return [(path, label) for label in ("NORMAL", "PNEUMONIA")
            for path in sorted((folder / label).iterdir()) if path.suffix.lower() in SUFFIXES]


def _interleaved(films: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """Normals and pneumonias alternating, so the first N hold both classes in the data's proportion."""
    normal = [f for f in films if f[1] == "NORMAL"]
    pneumonia = [f for f in films if f[1] == "PNEUMONIA"]
    ratio = len(pneumonia) / max(1, len(normal))
    merged, taken = [], 0.0
    for film in normal:
        merged.append(film)
        taken += ratio
        while taken >= 1 and pneumonia:
            merged.append(pneumonia.pop(0))
            taken -= 1
    return merged + pneumonia


def _run(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one command run as its own process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {shlex.join(command)}\n{process.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=Path, required=True, help="a folder with NORMAL/ and PNEUMONIA/")
    parser.add_argument("--n", type=int, default=2500)
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--model", default="default")
    parser.add_argument("--evaluate-args", default="", help="more `evaluate` options, as one string")
    parser.add_argument("--save", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args()
    films = _interleaved(_films(args.films))
    pneumoscan = [sys.executable, "-m", "pneumoscan"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="pneumoscan-scale-") as scratch:
        work = Path(scratch)
        sets = {count: _linked_set(films, count, work / f"films-{count}") for count in (args.n, args.n * args.factor)}
        plan = [("evaluate --stream auto", count, "auto") for count in sets]
        plan += [("evaluate --stream off", args.n, "off"), ("evaluate --stream on", args.n, "on")]
        for name, count, stream in plan:
            env = {**os.environ, "PNEUMOSCAN_CACHE_DIR": str(work / f"cache-{name.split()[-1]}-{count}")}
            out = work / f"eval-{stream}-{count}"
            command = [*pneumoscan, "evaluate", "--model", args.model, "--data", str(sets[count]), "--stream", stream,
                       "--out", str(out), *shlex.split(args.evaluate_args)]
            seconds, peak = _run(command, env)
            rows.append((name, count, seconds, peak))
            print(f"{name}: {count} films, {seconds:.0f} s, peak RSS {peak:.0f} MB", flush=True)
        for count, folder in sets.items():
            seconds, peak = _run([*pneumoscan, "predict", "--model", args.model, str(folder / "test"), "--out",
                                  str(work / f"rows-{count}.csv")], dict(os.environ))
            rows.append(("predict DIR --out rows.csv", count, seconds, peak))
            print(f"predict --out: {count} films, {seconds:.0f} s, peak RSS {peak:.0f} MB", flush=True)
    table = Table("command", "films", "seconds", "films/s", "peak RSS MB",
                  title=f"--model {args.model}, films from {args.films}, N = {args.n}, x{args.factor}")
    for name, count, seconds, peak in rows:
        table.add_row(name, f"{count:,}", f"{seconds:.0f}", f"{count / seconds:.1f}", f"{peak:.0f}")
    console = Console(record=True, width=120)
    console.print(table)
    if args.save is not None:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(f"# {shlex.join([sys.executable, *sys.argv])}\n" + console.export_text(), encoding="utf-8")


if __name__ == "__main__":
    main()
