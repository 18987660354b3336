"""Trainer runtime: ranks agree on per-rank decisions, category errors, checkpoint persistence."""

import socket
from pathlib import Path

import pytest
import torch

from trainables.checkpoint import load_checkpoint, persist
from trainables.errors import UserInputError
from trainables.runtime import agree, load_category_or_fail, rank_world


def _agree_worker(rank: int, world_size: int, folder: str, port: int) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        # rank 0's budget is spent, rank 1's is not: both must stop; neither spent: both go on
        decisions = [agree(rank == 0), agree(False), agree(rank == 1)]
        torch.save({"rank_world": rank_world(), "decisions": decisions}, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ranks_agree_when_any_rank_says_so(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_agree_worker, args=(2, str(tmp_path), port), nprocs=2, join=True)
    for rank in (0, 1):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        assert saved["rank_world"] == (rank, 2) and saved["decisions"] == [True, False, True]
    assert rank_world() == (0, 1) and agree(True) and not agree(False)


def test_an_absent_category_is_a_user_error_naming_the_choices():
    with pytest.raises(UserInputError, match="category='nosuch': not in .*expected one of .*'weave'"):
        load_category_or_fail("embedded", "nosuch", 32)


def test_persist_writes_the_checkpoint_and_its_pictures(tmp_path):
    picture = torch.zeros(4, 6, 3, dtype=torch.uint8)
    assert persist({"step": 3}, tmp_path / "plain") == []
    assert not (tmp_path / "plain" / "pictures").exists()
    paths = persist({"step": 5, "pictures": {"grid": picture}}, tmp_path / "ckpt")
    assert paths == [tmp_path / "ckpt" / "pictures" / "grid.png"] and paths[0].is_file()
    assert load_checkpoint(tmp_path / "ckpt")["step"] == 5
    elsewhere = persist({"step": 6, "pictures": {"grid": picture}}, tmp_path / "ckpt", tmp_path / "pictures")
    assert elsewhere == [tmp_path / "pictures" / "grid.png"] and elsewhere[0].is_file()
