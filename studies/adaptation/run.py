"""Compare the label-free adaptation methods of `pneumoscan adapt` on one site folder (issue 20).

    python studies/adaptation/run.py --model BUNDLE --site FOLDER --out runs/studies/adaptation [--labels-for-report]

Adapts BUNDLE to the images of FOLDER once per variant (batchnorm, self-training, each with and without the EM
prior), each into OUT/<variant>, exactly as `pneumoscan adapt` does: no variant reads a label. Writes OUT/table.md and
OUT/table.csv: per variant the methods the bundle kept, the fallback (if any), the site prevalence EM estimated, the
framing-flip shares and the threshold. With --labels-for-report, and only after every variant is adapted, the class
folder names (NORMAL/, PNEUMONIA/ under FOLDER) are read to report accuracy, sensitivity and specificity of the
unadapted model and of each variant; they never reach an adaptation.
"""

import argparse
import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from pneumoscan.config import AdaptConfig
from pneumoscan.data.decode import decode_grayscale
from pneumoscan.errors import PneumoscanError
from pneumoscan.models.bundle import Bundle, load_bundle
from pneumoscan.models.inference import predict_probabilities
from pneumoscan.pipeline.adapt import adapt_bundle
from pneumoscan.serving.predict import collect_images

VARIANTS = {
    "batchnorm": AdaptConfig(),
    "batchnorm+prior": AdaptConfig(prior=True),
    "self-training": AdaptConfig(method="self-training"),
    "self-training+prior": AdaptConfig(method="self-training", prior=True),
}
CLASS_FOLDERS = {"NORMAL": 0, "PNEUMONIA": 1}


@dataclass(frozen=True)
class LabelledFilms:
    """The site's films with labels from their class folders, read only to report after adapting."""

    images: torch.Tensor
    labels: np.ndarray


def read_labelled_films(site: Path, size: int) -> LabelledFilms:
    films, labels = [], []
    for name, label in CLASS_FOLDERS.items():
        for file in collect_images([site / name]) if (site / name).is_dir() else []:
            films.append(decode_grayscale(file, size))
            labels.append(label)
    if not films or len(set(labels)) < 2:
        raise PneumoscanError(f"{site}: --labels-for-report needs NORMAL/ and PNEUMONIA/ folders of images")
    return LabelledFilms(torch.from_numpy(np.stack(films)).unsqueeze(1), np.array(labels, dtype=bool))


def screening_figures(bundle: Bundle, films: LabelledFilms) -> dict[str, float]:
    called = predict_probabilities(bundle, films.images) >= bundle.manifest.threshold
    return {"accuracy": float(np.mean(called == films.labels)),
            "sensitivity": float(np.mean(called[films.labels])),
            "specificity": float(np.mean(~called[~films.labels]))}


def adapt_every_variant(model: str, site: Path, out: Path, min_images: int, max_ood_share: float) -> dict[str, Path]:
    folders = {}
    for name, config in VARIANTS.items():
        folders[name] = out / name
        if not (folders[name] / "model.json").is_file():  # rerunning resumes
            adapt_bundle(model, site, folders[name], replace(config, min_images=min_images,
                                                                   max_ood_share=max_ood_share))
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="bundle folder, or 'default'")
    parser.add_argument("--site", type=Path, required=True, help="folder of the site's images")
    parser.add_argument("--out", type=Path, default=Path("runs/studies/adaptation"))
    parser.add_argument("--min-images", type=int, default=100)
    parser.add_argument("--max-ood-share", type=float, default=0.75)
    parser.add_argument("--labels-for-report", action="store_true",
                        help="after adapting, read NORMAL/ and PNEUMONIA/ under --site to report accuracy")
    args = parser.parse_args()
    folders = adapt_every_variant(args.model, args.site, args.out, args.min_images, args.max_ood_share)
    rows = []
    unadapted = load_bundle(args.model)
    films = read_labelled_films(args.site, unadapted.preprocess.image_size) if args.labels_for_report else None
    if films is not None:
        rows.append({"variant": "unadapted", **screening_figures(unadapted, films)})
    for name, folder in folders.items():
        bundle = load_bundle(folder)
        record = bundle.manifest.adaptation
        rows.append({"variant": name, **(screening_figures(bundle, films) if films is not None else {}),
                     "kept": ", ".join(record.methods), "site_prevalence": record.site_prevalence,
                     "estimated_prevalence": record.estimated_prevalence, "threshold": record.threshold_after,
                     "flips_before": record.framing_flips_before, "flips_batchnorm": record.framing_flips_batchnorm,
                     "flips_after": record.framing_flips_after, "fallback": record.fallback or ""})
    write_tables(rows, args.out)
    Console().print((args.out / "table.md").read_text(), highlight=False)


def write_tables(rows: list[dict], out: Path) -> None:  # type: ignore[type-arg]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with (out / "table.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)

    def shown(value: object) -> str:
        return "" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(shown(row.get(column)) for column in columns) + " |" for row in rows]
    (out / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
