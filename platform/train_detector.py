"""`python -m platform.train detector`: train and evaluate the detector on one category, no Ray.

Progress goes to stderr (one line per report), checkpoints to `<out>/checkpoint/`, the
anomaly-map pictures to `<out>/pictures/`, and the final metrics are the last line of
stdout as one JSON object. Running the same command again resumes an interrupted run from
`<out>/checkpoint/`; a finished run there is not resumed (a fresh run replaces it).
"""

import json
import sys
import time
from pathlib import Path

from trainables.checkpoint import BackgroundPersist, load_checkpoint
from trainables.config import parse_overrides, to_flat
from trainables.detector.config import make_config
from trainables.detector.train import train_detector


def main(args) -> int:
    out = Path(args.out or Path("runs") / "detector" / args.category)
    overrides = parse_overrides(args.set)
    overrides.update(data=args.data, category=args.category, seed=args.seed, device=args.device)
    if args.minutes is not None:
        overrides["minutes"] = args.minutes
    if "resume" not in overrides and _interrupted(out / "checkpoint"):
        overrides["resume"] = str(out / "checkpoint")
        print(f"resuming the interrupted run in {out / 'checkpoint'}", file=sys.stderr)
    cfg = make_config(args.preset, overrides)
    if getattr(args, "dry_run", False):
        print(json.dumps(to_flat(cfg)))
        return 0
    print(f"detector {cfg.category} preset={cfg.preset} img_size={cfg.img_size} df={cfg.df}"
          f"({cfg.df_update}) lk={cfg.lk} source={cfg.anomaly_source} minutes={cfg.minutes} -> {out}",
          file=sys.stderr)
    started = time.perf_counter()

    writer = BackgroundPersist()  # checkpoints are CPU snapshots: written while training goes on

    def report(metrics: dict, checkpoint: dict | None = None) -> None:
        if checkpoint is not None:
            writer.submit(checkpoint, out / "checkpoint", out / "pictures")
        if metrics.get("final"):
            for path in writer.wait():
                print(f"wrote {path}", file=sys.stderr)
        losses = " ".join(f"{k[5:]}={v:.4f}" for k, v in metrics.items() if k.startswith("loss/"))
        print(f"epoch {metrics['epoch']:.1f} step {metrics['step']} kimg {metrics['kimg']:.1f} "
              f"lr {metrics['lr']:.1e} {losses} {metrics['steps_per_s']:.2f} steps/s "
              f"train {metrics['train_seconds']:.0f}s wall {time.perf_counter() - started:.0f}s", file=sys.stderr)

    try:
        metrics = train_detector(cfg, report)
    finally:
        writer.wait()
    metrics["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(metrics))
    return 0


def _interrupted(directory: Path) -> bool:
    """A checkpoint of a run that has not reached its final report."""
    if not (directory / "checkpoint.pt").is_file():
        return False
    return not load_checkpoint(directory).get("final", 0)
