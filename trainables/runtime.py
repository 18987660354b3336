"""Trainer runtime: the pieces every training loop needs besides its model and its losses.

`rank_world()` says which process this is; `agree(local, device)` turns a per-rank decision
(a wall-clock budget spent, a checkpoint interval elapsed) into one every rank shares, so no
rank leaves a loop while the others wait in an all-reduce; `load_category_or_fail` resolves
the `data` setting and decodes one category, with the user error that names the flag;
`Interval` says when a wall-clock interval (between checkpoints) has passed, the same on
every rank; `snapshot` copies a checkpoint to CPU memory, so whoever receives it can write it
while training goes on. Not here: persisting checkpoint files (trainables/checkpoint.py), Ray
(trainables/ray_adapter.py).
"""

import time

import torch

from trainables.errors import UserInputError


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless torch.distributed is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def agree(local: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when `local` is True on any rank (an all-reduce of a flag).

    Each rank's clock runs differently: a loop that stops or checkpoints on its own clock can
    leave one rank in a collective the others never join. Every rank must call this at the
    same point of the loop. `device` is where the process group's backend wants tensors
    (cuda for NCCL).
    """
    _, world = rank_world()
    if world == 1:
        return bool(local)
    import torch.distributed as dist

    flag = torch.tensor([float(local)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def clock() -> float:
    """Seconds on the clock intervals are measured by (a module attribute: tests replace it)."""
    return time.monotonic()


class Interval:
    """Fires when `minutes` of wall-clock time have passed since it last fired (or began);
    0 = at every call, None = never.

    `due()` is a collective under DDP when minutes > 0 (it calls `agree`): every rank calls it
    at the same point of the loop, and all fire together although their clocks differ.
    """

    def __init__(self, minutes: float | None, device: torch.device | str = "cpu"):
        self.seconds = None if minutes is None else minutes * 60
        self.device = device
        self.last = clock()

    def due(self) -> bool:
        if self.seconds is None or self.seconds == 0:
            return self.seconds == 0  # the same on every rank: no collective needed
        fired = agree(clock() - self.last >= self.seconds, self.device)
        if fired:
            self.last = clock()
        return fired


def snapshot(obj):
    """A copy of a checkpoint (dicts, lists, tuples, tensors, plain values) with every tensor
    cloned to CPU memory: the live weights move on after `report` returns, the snapshot keeps
    the step it was taken at, and writing it needs no accelerator."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


def resolve_category_or_fail(data: str, category: str):
    """The DataRoot of `data` ("embedded" or an MVTec-layout folder), which must hold
    `category`: else a UserInputError naming the categories there. Decodes nothing."""
    from trainables.data import resolve_data

    root = resolve_data(data)
    if category not in root.categories:
        raise UserInputError(f"category={category!r}: not in {root.path}; expected one of {list(root.categories)}")
    return root


def load_category_or_fail(data: str, category: str, size: int):
    """(DataRoot, CategoryData) of `category` under `data` at size×size (see resolve_category_or_fail)."""
    from trainables.data import load_category

    root = resolve_category_or_fail(data, category)
    return root, load_category(root.path, category, size)
