"""`python -m platform.data {check,embedded}`: validate a dataset, or write the embedded one.

`check ROOT` validates every category (or `--categories`) in the MVTec AD layout and prints
a summary; a malformed dataset prints one line naming the offending path and exits 2.
`embedded OUT` writes the deterministic embedded dataset (15 synthetic categories).
"""

import argparse
from pathlib import Path

import numpy as np

from platform.cli import run_main
from trainables.data import generate_embedded, list_categories, load_category, scan_category
from trainables.data.mvtec import GOOD, read_image
from trainables.errors import UserInputError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m platform.data", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate a dataset in the MVTec AD layout and summarise it")
    check.add_argument("root", type=Path)
    check.add_argument("--categories", nargs="+", help="categories to check (default: every folder)")
    check.add_argument("--size", type=int, default=64, help="decode size used to test-read every file (px)")
    embedded = commands.add_parser("embedded", help="write the embedded dataset")
    embedded.add_argument("out", type=Path)
    embedded.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "embedded":
        if args.out.exists() and any(args.out.iterdir()):
            raise UserInputError(f"{args.out}: folder exists and is not empty; expected a new or empty folder")
        generate_embedded(args.out, seed=args.seed)
        print(f"wrote the embedded dataset (seed {args.seed}) to {args.out}")
        return 0
    return check_dataset(args.root, args.categories, args.size)


def check_dataset(root: Path, categories: list[str] | None, size: int) -> int:
    found = list_categories(root)
    unknown = sorted(set(categories or []) - set(found))
    if unknown:
        raise UserInputError(f"--categories {unknown}: not under {root}; found {found}")
    print(f"{'category':14s} {'train':>5s} {'test good':>9s}  defects (images)                   size(s)     colour")
    for name in categories or found:
        index = scan_category(root, name)
        data = load_category(root, name, size)  # decodes every file: truncated ones fail here
        counts = {t: data.test_types.count(t) for t in data.defect_types}
        sizes = sorted({read_image(p).shape[1::-1] for p in index.train[:20]})
        gray = all(_is_gray(image) for image in data.train[:20])
        defects = ", ".join(f"{t} ({n})" for t, n in counts.items()) or "none"
        print(f"{name:14s} {len(data.train):5d} {data.test_types.count(GOOD):9d}  {defects:34s} "
              f"{' '.join(f'{w}x{h}' for w, h in sizes):11s} {'grayscale' if gray else 'colour'}")
        if not data.has_both_labels:
            print(f"  note: {name} has {'no defective' if not counts else 'no good'} test images: "
                  "its image-level metrics are undefined")
    return 0


def _is_gray(image: np.ndarray) -> bool:
    return bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())


if __name__ == "__main__":
    run_main(main)
