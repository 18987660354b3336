"""`python -m platform.train gan`: DFMGAN stage 1, stage 2 and generation on one category, no Ray.

Stage 1 (StyleGAN2-ADA on `train/good`) writes `<out>/stage1/checkpoint/`, stage 2 (the
defect type `--defect`) `<out>/stage2/checkpoint/`; the generated triplets (defect image,
mask, defect-free twin) and their grid go to `<out>/pictures/`. Progress goes to stderr, the
final metrics are the last line of stdout as one JSON object. Running the same command again
resumes an interrupted stage; a finished stage 1 with the same settings is reused (so several
defect types can share it); a finished stage 2 is replaced by a fresh run.
"""

import json
import sys
import time
from pathlib import Path

from trainables.checkpoint import BackgroundPersist, load_checkpoint
from trainables.config import parse_overrides, to_flat
from trainables.gan import make_config, train_gan_stage1, train_gan_stage2
from trainables.gan.config import STAGE2_ONLY


def main(args) -> int:
    out = Path(args.out or Path("runs") / "gan" / f"{args.category}-{args.defect}")
    overrides = parse_overrides(args.set)
    overrides.update(data=args.data, category=args.category, defect=args.defect, seed=args.seed,
                     device=args.device, n_generate=args.generate)
    for field in ("stage1_minutes", "stage2_minutes", "lambda_ms"):
        if getattr(args, field, None) is not None:
            overrides[field] = getattr(args, field)
    cfg1 = make_config(args.preset, overrides)
    cfg2 = make_config(args.preset, {**overrides, "stage1": str(out / "stage1" / "checkpoint")})
    if getattr(args, "dry_run", False):
        print(json.dumps(to_flat(cfg2)))
        return 0
    print(f"gan {cfg1.category}/{cfg1.defect} preset={cfg1.preset} {cfg1.resolution}px batch={cfg1.batch} "
          f"λ_ms={cfg1.lambda_ms} stage1 {cfg1.stage1_minutes} min / {cfg1.stage1_kimg} kimg, stage2 "
          f"{cfg1.stage2_minutes} min / {cfg1.stage2_kimg} kimg -> {out}", file=sys.stderr)
    started = time.perf_counter()

    folder1 = out / "stage1" / "checkpoint"
    previous = load_checkpoint(folder1) if (folder1 / "checkpoint.pt").is_file() else None
    if previous is not None and previous.get("final") and _same_stage1(previous["config"], to_flat(cfg1)):
        print(f"stage 1: reusing the finished run in {folder1}", file=sys.stderr)
    else:
        if previous is not None and not previous.get("final"):
            cfg1 = make_config(args.preset, {**overrides, "resume": str(folder1)})
            print(f"stage 1: resuming the interrupted run in {folder1}", file=sys.stderr)
        train_gan_stage1(cfg1, _reporter(out, folder1, started))

    folder2 = out / "stage2" / "checkpoint"
    if (folder2 / "checkpoint.pt").is_file() and not load_checkpoint(folder2).get("final", 0):
        cfg2 = make_config(args.preset, {**overrides, "stage1": str(folder1), "resume": str(folder2)})
        print(f"stage 2: resuming the interrupted run in {folder2}", file=sys.stderr)
    metrics = train_gan_stage2(cfg2, _reporter(out, folder2, started))
    metrics["grid"] = str(out / "pictures" / "triplets_grid.png")
    metrics["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(metrics))
    return 0


def _same_stage1(saved: dict, wanted: dict) -> bool:
    return {k: v for k, v in saved.items() if k not in STAGE2_ONLY} == \
        {k: v for k, v in wanted.items() if k not in STAGE2_ONLY}


def _reporter(out: Path, folder: Path, started: float):
    """Checkpoints are CPU snapshots: written on a background thread while training goes on; the
    final one is waited for (stage 2 reads stage 1's, and the pictures are listed)."""
    writer = BackgroundPersist()

    def report(metrics: dict, checkpoint: dict | None = None) -> None:
        if checkpoint is not None:
            writer.submit(checkpoint, folder, out / "pictures")
        if metrics.get("final"):
            paths = writer.wait()
            if paths:
                grids = [p for p in paths if "grid" in p.stem or "samples" in p.stem]
                print(f"wrote {len(paths)} pictures to {out / 'pictures'} ({', '.join(map(str, grids))})",
                      file=sys.stderr)
        losses = " ".join(f"{k[5:]}={v:.3f}" for k, v in metrics.items() if k.startswith("loss/"))
        print(f"stage {metrics['stage']} kimg {metrics['kimg']:.2f} it {metrics['iteration']} p {metrics['ada_p']:.3f} "
              f"{losses} {metrics['steps_per_s']:.2f} it/s train {metrics['train_seconds']:.0f}s "
              f"wall {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return report
