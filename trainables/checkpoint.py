"""Checkpoint files: atomic `torch.save` of tensors and plain containers, loaded with
`weights_only=True`, plus capture/restore of every RNG a training loop draws from.

A checkpoint is a dict; trainers decide its keys. `persist` is what every consumer of a
trainer's `report` does with one (the CLIs, the Ray adapter, the benchmark): the file, plus
its "pictures" as PNGs. This module knows nothing of Ray: the Ray adapters wrap the
directory a checkpoint lives in.
"""

import os
import random
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(directory: str | os.PathLike, state: dict, name: str = CHECKPOINT_FILE) -> Path:
    """Write `state` to `<directory>/<name>` atomically (never a half-written file)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def persist(checkpoint: dict, folder: str | os.PathLike,
            pictures_dir: str | os.PathLike | None = None) -> list[Path]:
    """`save_checkpoint(folder, checkpoint)`, then a finished stage 2's triplet bank (if any) as
    `<folder>/triplets.npz` (a detector reads it without loading the GAN), then each of the
    dict's "pictures" (if any) as `<pictures_dir>/<stem>.png` (default `<folder>/pictures`);
    returns the pictures' paths."""
    from trainables.gan.generate import TRIPLETS, save_triplets
    from trainables.pictures import save_pictures

    save_checkpoint(folder, {k: v for k, v in checkpoint.items() if k != TRIPLETS})
    if checkpoint.get(TRIPLETS):
        save_triplets(folder, checkpoint[TRIPLETS])
    if not checkpoint.get("pictures"):
        return []
    return save_pictures(checkpoint["pictures"], Path(folder) / "pictures" if pictures_dir is None else pictures_dir)


class BackgroundPersist:
    """`persist` on a background thread, one write at a time, so training goes on meanwhile.

    `submit` waits for the previous write (at most one checkpoint waits in memory), starts
    this one and returns; `wait` blocks until it is written and returns its picture paths,
    raising what the write raised. The checkpoint must not change after `submit`: hand over a
    CPU snapshot (trainables.runtime.snapshot), as the trainers' reports do.
    """

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="persist")
        self._pending = None

    def submit(self, checkpoint: dict, folder: str | os.PathLike,
               pictures_dir: str | os.PathLike | None = None) -> None:
        self.wait()
        self._pending = self._pool.submit(persist, checkpoint, folder, pictures_dir)

    def wait(self) -> list[Path]:
        pending, self._pending = self._pending, None
        return pending.result() if pending is not None else []


def load_checkpoint(directory: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint` (a directory or the file itself)."""
    path = Path(directory)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    return torch.load(path, map_location=map_location, weights_only=True)


def rng_state() -> dict:
    """Every RNG state a loop draws from, as tensors and plain containers."""
    np_state = np.random.get_state()
    state = {
        "python": _to_plain(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_to_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_plain(obj):
    return [_to_plain(o) for o in obj] if isinstance(obj, (tuple, list)) else obj


def _to_tuple(obj):
    return tuple(_to_tuple(o) for o in obj) if isinstance(obj, list) else obj
