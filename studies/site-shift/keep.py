"""Keep a study's small files in the repository, or put them back so the study command can resume.

    python studies/site-shift/keep.py runs/site-shift-intensity            # runs/ -> studies/site-shift/
    python studies/site-shift/keep.py --restore runs/site-shift-intensity  # studies/site-shift/ -> runs/

Kept per run: model.json (config, validation record, proxy) and metrics.csv (the epochs): enough for
`study` to reuse a finished run (it matches the stored config) and for table.py; weights are not kept.
Per study: study.json, study.md, study.csv and study_curves.png when the study has finished.
"""

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUN_FILES = ("model.json", "metrics.csv")
STUDY_FILES = ("study.json", "study.md", "study.csv", "study_curves.png")


def copy(source: Path, target: Path) -> int:
    count = 0
    for path in sorted(source.rglob("*")):
        if path.name in RUN_FILES + STUDY_FILES and path.is_file():
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
            count += 1
    return count


def main(arguments: list[str]) -> None:
    restore = "--restore" in arguments
    for folder in (Path(a) for a in arguments if a != "--restore"):
        kept = HERE / folder.name
        count = copy(kept, folder) if restore else copy(folder, kept)
        print(f"{'restored' if restore else 'kept'} {count} files: {kept if not restore else folder}")


if __name__ == "__main__":
    main(sys.argv[1:])
