"""`python -m platform.train {detector,gan}`: train and evaluate one run without Ray.

The same trainer entry points the sweeps run on Ray workers, called in this process:
progress on stderr, pictures and the final checkpoint in `--out`, and the final metrics as
one JSON line, the last line of stdout.
"""

import argparse
import importlib

from platform.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m platform.train", description=__doc__.split("\n")[0])
    methods = parser.add_subparsers(dest="method", required=True)

    detector = methods.add_parser("detector", help="the detector of Peng et al. (Sensors 2024)")
    _common(detector)
    detector.add_argument("--minutes", type=float, help="wall-clock training budget; evaluation follows")

    gan = methods.add_parser("gan", help="DFMGAN (Duan et al., AAAI 2023): stage 1, stage 2, generation")
    _common(gan)
    gan.add_argument("--defect", required=True, help="defect type to learn in stage 2")
    gan.add_argument("--stage1-minutes", type=float, help="wall-clock budget of stage 1")
    gan.add_argument("--stage2-minutes", type=float, help="wall-clock budget of stage 2")
    gan.add_argument("--lambda-ms", type=float, help="mode-seeking loss weight (default: the preset's)")
    gan.add_argument("--generate", type=int, default=64, help="number of triplets to generate")
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="embedded", help="'embedded' or a folder in the MVTec AD layout")
    parser.add_argument("--category", required=True)
    parser.add_argument("--preset", default="small", help="tiny (tests), small (CPU laptop) or paper")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field; repeatable")
    parser.add_argument("--out", help="output folder (default: runs/<method>/<category>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON; train nothing")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    handler = importlib.import_module(f"platform.train_{args.method}")
    return handler.main(args)


if __name__ == "__main__":
    run_main(main)
