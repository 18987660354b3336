"""`python -m platform.weights {status,fetch}`: see and provision pretrained weights.

Nothing in the project downloads weights on its own; this command does, on a machine with
internet. Copy the files it writes (the torch hub cache, `~/.cache/torch/hub/checkpoints`)
to machines without internet, or point `$DEFECT_SWEEPS_WEIGHTS` at a folder holding them.
"""

import argparse

from platform.cli import run_main
from trainables.errors import UserInputError, WeightsUnavailable
from trainables.weights import fetch_weights, resolve_weights, weight_names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m platform.weights", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("status", "fetch"))
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"weights to act on (default: all of {', '.join(weight_names())})")
    parser.add_argument("--dir", help="folder to read from / download into (default: the torch hub cache)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(weight_names()))
    if unknown:
        raise UserInputError(f"weights {unknown}: expected names from {list(weight_names())}")
    missing = 0
    for name in args.names or weight_names():
        if args.action == "fetch":
            print(f"{name:10s} {fetch_weights(name, args.dir)}")
            continue
        try:
            print(f"{name:10s} ok       {resolve_weights(name, args.dir)}")
        except WeightsUnavailable as error:
            missing += 1
            print(f"{name:10s} missing  {error}")
    return 1 if missing else 0


if __name__ == "__main__":
    run_main(main)
