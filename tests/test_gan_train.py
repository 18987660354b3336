"""DFMGAN training loops on the embedded dataset (tiny preset): stages, freezing, resume, config, CLI."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.errors import UserInputError
from trainables.gan import PRESETS, make_config, train_classifier, train_gan_stage1, train_gan_stage2
from trainables.gan.classify import split_partition
from trainables.gan.train import build_networks

REPO = Path(__file__).resolve().parents[1]
CATEGORY, DEFECT = "washer", "missing"


class Stop(Exception):
    """Raised by a report to simulate an interrupted run."""


def saving_report(folder: Path, log: list, stop_after: int | None = None):
    """Persist checkpoints like the CLI does; optionally stop the run after that many reports."""
    def report(metrics, checkpoint=None):
        log.append(metrics)
        if checkpoint is not None:
            save_checkpoint(folder, checkpoint)
        if stop_after is not None and len(log) >= stop_after:
            raise Stop
    return report


def checksums(state: dict) -> dict[str, str]:
    return {k: hashlib.sha1(v.detach().cpu().numpy().tobytes()).hexdigest() for k, v in state.items()}


def config(**overrides):
    return make_config("tiny", {"category": CATEGORY, "defect": DEFECT, "device": "cpu", **overrides})


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gan") / "stage1"
    log = []
    train_gan_stage1(config(), saving_report(folder, log))
    return folder, log


@pytest.fixture(scope="module")
def stage2(stage1, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gan") / "stage2"
    log = []
    train_gan_stage2(config(stage1=str(stage1[0])), saving_report(folder, log))
    return folder, log


def test_stage1_then_stage2_run_and_checkpoint(stage1, stage2):
    (folder1, log1), (folder2, log2) = stage1, stage2
    first, second = load_checkpoint(folder1), load_checkpoint(folder2)
    assert first["stage"] == 1 and first["final"] == 1 and "D_match" not in first
    assert second["stage"] == 2 and second["final"] == 1
    for key in ("G", "G_ema", "D", "D_match", "opt_G", "opt_D", "opt_Dm", "ada_p", "pl_mean", "cur_nimg",
                "iteration", "rng", "config"):
        assert key in second, key
    assert [m["kimg"] for m in log1] == [0.008, 0.016] and log1[-1]["final"] == 1 and "final" not in log1[0]
    assert {"loss/G", "loss/D_real", "loss/pl", "loss/r1"} <= set(log1[0])
    assert {"loss/G_match", "loss/ms", "loss/Dm_real", "loss/Dm_r1"} <= set(log2[0])
    assert first["pictures"]["stage1_samples"].dtype == torch.uint8
    final = log2[-1]
    assert 0 <= final["mask_coverage_ok"] <= 1 and "diff_inside_mask" in final
    assert final["KID_x1e3"] == "unavailable" or isinstance(final["KID_x1e3"], float)
    pictures = second["pictures"]
    n = config().n_generate
    assert {f"triplet_{k:03d}_{part}" for k in range(n) for part in ("image", "mask", "good")} < set(pictures)
    assert pictures["triplet_000_image"].shape == (32, 32, 3) and "triplets_grid" in pictures


def test_stage2_changes_only_the_defect_branch_d_and_d_match(stage1, stage2):
    """Backbone checksums equal stage 1's; the defect mapping, residual blocks, ToMask, D and
    D_match all moved away from where they started."""
    first, second = load_checkpoint(stage1[0]), load_checkpoint(stage2[0])
    torch.manual_seed(config().seed)                      # the stage-2 run's initial draw
    G_init, _, D_match_init = build_networks(config(), 2)
    before, after, init = checksums(first["G"]), checksums(second["G"]), checksums(G_init.state_dict())
    new = {k for k in after if k.startswith(("defect_mapping.", "synthesis.res_b"))}
    params = {name for name, _ in G_init.named_parameters()}
    assert new and {k for k in after if k not in new} == set(before)
    assert all(after[k] == before[k] for k in before if k in params)           # frozen backbone
    changed = {k for k in new & params if after[k] != init[k]}
    untouched = sorted(new & params - changed)
    assert all(k.endswith("noise_strength") for k in untouched), untouched   # noise strengths start at 0
    assert {"synthesis.res_b8.head.weight", "synthesis.res_b8.head.bias", "defect_mapping.fcs.0.weight",
            "synthesis.res_b32.conv1.weight"} <= changed
    assert checksums(second["D"]) != checksums(first["D"])
    d_match_after, d_match_init = checksums(second["D_match"]), checksums(D_match_init.state_dict())
    assert all(d_match_after[k] != d_match_init[k] for k, _ in D_match_init.named_parameters())


@pytest.mark.parametrize("stage", [1, 2])
def test_resume_reproduces_an_uninterrupted_run(stage, stage1, tmp_path):
    """Stop after the first checkpoint, run the same config with resume set: every network,
    optimiser, ADA p and the path-length mean equal an uninterrupted run's, bit for bit."""
    overrides = {"stage1_kimg": 0.032, "stage2_kimg": 0.032, "stage1": str(stage1[0]), "ada_target": 0.0}
    train = train_gan_stage1 if stage == 1 else train_gan_stage2
    train(config(**overrides), saving_report(tmp_path / "whole", []))
    with pytest.raises(Stop):
        train(config(**overrides), saving_report(tmp_path / "parts", [], stop_after=1))
    assert load_checkpoint(tmp_path / "parts")["iteration"] == 2
    train(config(**overrides, resume=str(tmp_path / "parts")), saving_report(tmp_path / "parts", []))
    whole, parts = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "parts")
    assert whole["iteration"] == parts["iteration"] == 8
    assert whole["ada_p"] == parts["ada_p"] > 0                               # p did move
    nets = ["G", "G_ema", "D"] + (["D_match"] if stage == 2 else [])
    for name in nets:
        assert checksums(whole[name]) == checksums(parts[name]), name
    for name in ["opt_G", "opt_D"] + (["opt_Dm"] if stage == 2 else []):
        for (k, a), (_, b) in zip(sorted(whole[name]["state"].items()), sorted(parts[name]["state"].items())):
            assert checksums(a) == checksums(b), (name, k)
    assert torch.equal(whole["pl_mean"], parts["pl_mean"])


def test_checkpoints_follow_the_wall_clock_interval(monkeypatch):
    """A fake clock advanced a minute per report: ticks at iterations 2, 4, 6 see 0, 1, 2
    minutes, so checkpoint_minutes=1.5 checkpoints at iteration 6, then at the end (8)."""
    import trainables.runtime

    now = [0.0]
    monkeypatch.setattr(trainables.runtime, "clock", lambda: now[0])
    log = []

    def report(metrics, checkpoint=None):
        log.append((metrics["iteration"], checkpoint))
        now[0] += 60

    train_gan_stage1(config(stage1_kimg=0.032, checkpoint_minutes=1.5, n_pictures=1), report)
    assert [it for it, _ in log] == [2, 4, 6, 8]
    assert [it for it, checkpoint in log if checkpoint is not None] == [6, 8]
    assert log[2][1]["G"]["mapping.fcs.0.weight"].device.type == "cpu"


def test_configs_and_user_errors(stage1, tmp_path):
    for preset in PRESETS:
        cfg = make_config(preset, {"category": CATEGORY})
        assert cfg.batch % cfg.mbstd_group == 0
    assert make_config("paper", {"category": CATEGORY}).gamma == pytest.approx(0.4096)
    assert make_config("small", {"category": CATEGORY}).gamma == pytest.approx(0.1024)
    with pytest.raises(UserInputError, match="unknown config key"):
        config(lambda_mss=1)
    with pytest.raises(UserInputError, match="batch=6"):
        config(batch=6)
    with pytest.raises(UserInputError, match="stage1: stage 2 needs"):
        train_gan_stage2(config(), lambda *a, **k: None)
    with pytest.raises(UserInputError, match="architecture differs"):
        train_gan_stage2(config(stage1=str(stage1[0]), mapping_layers=3), lambda *a, **k: None)
    with pytest.raises(UserInputError, match="no such defect type"):
        train_gan_stage2(config(stage1=str(stage1[0]), defect="bent"), lambda *a, **k: None)


def test_cli_writes_triplets_and_a_grid_and_prints_json_last(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "platform.train", "gan", "--data", "embedded", "--category", CATEGORY,
               "--defect", DEFECT, "--preset", "tiny", "--generate", "5", "--lambda-ms", "0.2", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    assert metrics["final"] == 1 and metrics["stage"] == 2 and Path(metrics["grid"]).is_file()
    assert {"mask_coverage_ok", "diff_inside_mask", "diff_outside_mask", "KID_x1e3", "clustered_LPIPS"} <= set(metrics)
    for part in ("image", "mask", "good"):
        assert (out / "pictures" / f"triplet_004_{part}.png").is_file()
    assert load_checkpoint(out / "stage2" / "checkpoint")["config"]["lambda_ms"] == 0.2
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "stage 1: reusing the finished run" in again.stderr
    bad = subprocess.run(command[:-2] + ["--out", str(out), "--set", "batch=6"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: batch=6")


def test_classification_protocol_and_its_resume(stage1, tmp_path):
    """Partition 1/3 base vs 2/3 test per type, one stage 2 per type on its base set, generated
    images train ResNet-34 (from scratch here: no ImageNet file), real test images score it."""
    split = split_partition({"a": 8, "b": 3}, seed=0, partition=0, base_fraction=1 / 3)
    assert [len(split["a"][0]), len(split["a"][1]), len(split["b"][0]), len(split["b"][1])] == [3, 5, 1, 2]
    assert split_partition({"a": 8}, 0, 1, 1 / 3)["a"][0].tolist() != split["a"][0].tolist()
    log = []
    cfg = config(stage1=str(stage1[0]), partition=0, cls_per_type=4)
    metrics = train_classifier(cfg, saving_report(tmp_path / "cls", log))
    n_types = len(metrics["defect_types"].split(","))
    assert n_types >= 2 and len(log) == n_types + 2 and log[-1]["final"] == 1
    assert 0 <= metrics["accuracy"] == metrics["accuracy_P1"] <= 1
    assert metrics["classifier_init"] in ("scratch", "imagenet") and metrics["classifier_init_note"]
    # resume after the first finished stage-2 model: the remaining units only
    log2 = []
    with pytest.raises(Stop):
        train_classifier(cfg, saving_report(tmp_path / "parts", log2, stop_after=1))
    assert len(load_checkpoint(tmp_path / "parts")["generated"]) == 1
    resumed = train_classifier(config(**{**cfg.__dict__, "resume": str(tmp_path / "parts")}),
                               saving_report(tmp_path / "parts", log2))
    assert resumed["accuracy"] == metrics["accuracy"] and len(log2) == 1 + n_types + 1



def _ddp_worker(rank: int, world_size: int, folder: str, port: int) -> None:
    import os

    import torch.distributed as dist

    from trainables.gan.train import load_images, run

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        cfg, log = config(batch=8, stage1_kimg=0.024), []
        _, G_ema = run(cfg, 1, saving_report(Path(folder) / "ckpt", log) if rank == 0 else
                       (lambda metrics, checkpoint=None: log.append((metrics, checkpoint))), load_images(cfg, 1)[0])
        torch.save({"G_ema": checksums(G_ema.state_dict()), "n_reports": len(log),
                    "checkpoints": sum(1 for entry in log if isinstance(entry, tuple) and entry[1] is not None)},
                   Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_stay_in_sync(tmp_path):
    """World size 2 (gloo): each rank draws its own half batch, gradients are averaged, so the
    ranks' weights stay identical (w_avg, a per-rank running mean used only for truncation,
    may differ, as in the reference); both call report equally often, only rank 0 checkpoints."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, str(tmp_path), port), nprocs=2, join=True)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    weights = [k for k in rank0["G_ema"] if not k.endswith("w_avg")]
    assert len(weights) > 50 and all(rank0["G_ema"][k] == rank1["G_ema"][k] for k in weights)
    assert rank0["n_reports"] == rank1["n_reports"] == 3 and rank1["checkpoints"] == 0
    assert load_checkpoint(tmp_path / "ckpt")["iteration"] == 3


def _budget_worker(rank: int, world_size: int, folder: str, port: int) -> None:
    import os
    import time

    import torch.distributed as dist

    from trainables.gan.train import load_images, run

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        cfg = config(batch=8, stage1_kimg=1000, stage1_minutes=0.05, tick_kimg=0.008)

        def report(metrics, checkpoint=None):
            if rank == 1:
                time.sleep(0.4)  # rank 1's clock runs ahead of rank 0's

        metrics, _ = run(cfg, 1, report, load_images(cfg, 1)[0], evaluate=False)
        torch.save({"iteration": metrics["iteration"]}, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_with_different_clocks_stop_together_at_the_minute_budget(tmp_path):
    """Each rank's clock says something else; a rank leaving on its own would leave the other
    waiting in the gradient all-reduce (a hang), so the ranks agree and stop at one iteration."""
    import socket
    import time

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.spawn(_budget_worker, args=(2, str(tmp_path), port), nprocs=2, join=False)
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail("the ranks did not finish: one is waiting for the other")
    iterations = [torch.load(tmp_path / f"rank{rank}.pt")["iteration"] for rank in (0, 1)]
    assert iterations[0] == iterations[1] >= 1
