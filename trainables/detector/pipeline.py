"""Input pipeline of the detector: synthetic-anomaly batches made off the training thread.

Anomaly synthesis (synthesis.py, numpy, one sample at a time) makes 136-164 samples/s at
256 px on one CPU core (`python -m platform.bench`, docs/detector.md §4.6): 0.05-0.06 s per
batch of 8, which an accelerator's step would wait for if it ran in line (the benchmark's `input` line says how
many loader processes hide it on a given machine). `batches(...)` yields the batches of steps
`start, start + 1, ...` either in line (`workers=0`) or from a torch DataLoader whose worker
processes each make every `workers`-th step and prefetch ahead. Either way the batch of step
s is `batch_at(synth, seed, rank, s, n)`, a pure function of (seed, rank, step), so a resumed
run draws exactly the batches of an uninterrupted one and the two paths give equal batches.
Workers are forked where the platform allows it, so the decoded images, foreground masks and
source pool are shared copy-on-write rather than copied per worker; under spawn the
synthesizer is pickled to each worker once. Not here: the synthesis itself (synthesis.py).
"""

import multiprocessing
import os
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from trainables.detector.synthesis import AnomalySynthesizer


def batch_at(synth: AnomalySynthesizer, seed: int, rank: int, step: int, n: int) -> dict[str, torch.Tensor]:
    """The batch of (seed, rank, step) as tensors (see AnomalySynthesizer.batch), plus its "step"."""
    batch = synth.batch(np.random.default_rng([seed, rank, step]), n)
    return {**{k: torch.from_numpy(v) for k, v in batch.items()}, "step": torch.tensor(step)}


class SynthesisStream(IterableDataset):
    """Steps start..stop−1 of one rank; worker w of W makes steps start+w, start+w+W, ...

    The DataLoader asks its workers in turn, so the interleaved output is in step order.
    """

    def __init__(self, synth: AnomalySynthesizer, seed: int, rank: int, batch_size: int, start: int, stop: int):
        super().__init__()
        self.synth, self.seed, self.rank, self.batch_size = synth, seed, rank, batch_size
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for step in range(self.start + worker, self.stop, workers):
            yield batch_at(self.synth, self.seed, self.rank, step, self.batch_size)


def batches(synth: AnomalySynthesizer, seed: int, rank: int, batch_size: int, start: int, stop: int,
            workers: int = 0, prefetch: int = 2, pin_memory: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """The batches of steps start..stop−1, in order; `workers` > 0 makes them in that many
    processes, each `prefetch` batches ahead. Close the generator (or let it be collected) to
    end the workers early."""
    if workers == 0:
        for step in range(start, stop):
            yield batch_at(synth, seed, rank, step, batch_size)
        return
    methods = multiprocessing.get_all_start_methods()
    loader = DataLoader(SynthesisStream(synth, seed, rank, batch_size, start, stop), batch_size=None,
                        num_workers=workers, prefetch_factor=prefetch, pin_memory=pin_memory,
                        multiprocessing_context="fork" if "fork" in methods else None)
    iterator = iter(loader)
    try:
        for step, batch in zip(range(start, stop), iterator):
            assert int(batch["step"]) == step, (int(batch["step"]), step)  # the workers' interleaving
            yield batch
    finally:
        del iterator  # the last reference: its workers end now, not when the generator is collected


def default_workers(device: torch.device | str) -> int:
    """Loader processes for a rank on `device`: on an accelerator one per CPU but the training
    thread's, at most 4; on a CPU none (in line), since torch's threads already use every CPU
    of the trial and synthesis costs a few per cent of a CPU step (`python -m platform.bench`).

    The trial's CPUs are the fewer of the affinity mask and torch's thread count (Ray sets the
    latter from the trial's CPU resources while the mask spans the node).
    """
    if torch.device(device).type == "cpu":
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(4, max(0, min(cpus, torch.get_num_threads()) - 1))
