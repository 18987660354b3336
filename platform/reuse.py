"""Finished DFMGAN checkpoints shared between sweeps, found by what produced them.

A stage-1 or stage-2 trial is expensive and its checkpoint depends only on its config and on
the checkpoints it started from. Every finished GAN trial is recorded under
`<storage>/checkpoints/<fingerprint>.json` (its checkpoint folder, final metrics, trial and
sweep), where the fingerprint hashes the method, the config without the run-local fields
(`resume`, `device`, the dependency pointers) and, in their place, the fingerprints of the
trials it started from. A later sweep in the same storage (a `gan` sweep, then the joined
`ablation --sources dfmgan` grid, or the same sweep again) takes such a checkpoint instead of
retraining. Only GAN trials are shared; a detector trial always runs. Not here: MLflow (the
runner logs a reused trial as a child run tagged `reused_from`).
"""

import hashlib
import json
from pathlib import Path

from platform import storage
from trainables.gan.config import STAGE2_ONLY

SHARED = ("gan_stage1", "gan_stage2")
RUN_LOCAL = ("resume", "device", "checkpoint_minutes")
FOLDER = "checkpoints"


def fingerprints(trials) -> dict[str, str]:
    """{trial name: fingerprint} for the shareable trials of a plan (in phase order)."""
    keys: dict[str, str] = {}
    for trial in trials:
        if trial.method not in SHARED or not all(name in keys for name in trial.needs):
            continue
        ignored = RUN_LOCAL + (STAGE2_ONLY if trial.method == "gan_stage1" else ())  # fields it never reads
        config = {k: v for k, v in trial.config.items() if k not in ignored and k != trial.needs_key}
        blob = json.dumps({"method": trial.method, "config": config, "needs": [keys[n] for n in trial.needs]},
                          sort_keys=True, default=str)
        keys[trial.name] = hashlib.sha256(blob.encode()).hexdigest()[:20]
    return keys


def lookup(sweep_storage: str, key: str) -> dict | None:
    """The record of a finished checkpoint with this fingerprint whose folder still exists, or None."""
    try:
        record = json.loads(storage.read_text(storage.join(sweep_storage, FOLDER, f"{key}.json")))
    except FileNotFoundError:
        return None
    path = record.get("path", "")
    if "://" not in path and not (Path(path) / "checkpoint.pt").is_file():
        return None  # the folder was deleted since
    return record


def record(sweep_storage: str, key: str, path: str, trial: str, sweep_id: str, metrics: dict) -> None:
    final = {k: v for k, v in (metrics or {}).items()
             if isinstance(v, (int, float, str)) and not isinstance(v, bool) and k not in ("checkpoint_dir_name",)}
    storage.write_text(storage.join(sweep_storage, FOLDER, f"{key}.json"), json.dumps(
        {"path": path, "trial": trial, "sweep_id": sweep_id, "metrics": final}, indent=2, sort_keys=True))
