"""`pneumoscan synth`: a synthetic dataset in the Kaggle layout."""

import argparse
from pathlib import Path

from rich.console import Console

from pneumoscan.config import MAX_IMAGE_SIZE, check_seed
from pneumoscan.data.synthetic import AGES, SyntheticSource, SyntheticSpec
from pneumoscan.errors import PneumoscanError

HELP = "write a synthetic dataset in the Kaggle layout"


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("synth", help=HELP,
                                 description="Write synthetic radiographs as train|val|test/{NORMAL,PNEUMONIA}/*.png.")
    parser.add_argument("--out", type=Path, required=True, help="folder to create (must not hold a dataset)")
    parser.add_argument("--n-per-class", type=int, default=SyntheticSpec.n_per_class,
                        help="training images per class (test gets a quarter)")
    parser.add_argument("--size", type=int, default=SyntheticSpec.size, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=SyntheticSpec.seed)
    parser.add_argument("--difficulty", type=float, default=SyntheticSpec.difficulty,
                        help="0 (obvious opacities) .. 1 (faint, small)")
    parser.add_argument("--age", choices=AGES, default=SyntheticSpec.age,
                        help="anatomy: child (the training kind) or adult (to test that the guard refuses adults)")


def run(args: argparse.Namespace, console: Console, out: Console, command: str) -> None:
    check_seed("--seed", args.seed)
    if args.size > MAX_IMAGE_SIZE:
        raise PneumoscanError(f"--size must be 32 to {MAX_IMAGE_SIZE} pixels, got {args.size}")
    count = SyntheticSource(SyntheticSpec(n_per_class=args.n_per_class, size=args.size, seed=args.seed,
                                          difficulty=args.difficulty, age=args.age)).write(args.out)
    console.print(f"wrote {count} images to {args.out}")
