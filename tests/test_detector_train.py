"""Detector training loop: parameter copying, loss decrease, resume, configs, the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detector_fixtures import make_detector_dataset
from trainables.checkpoint import save_checkpoint
from trainables.config import to_flat
from trainables.detector.config import PRESETS, make_config
from trainables.detector.train import picture_indices, score_kernel, train_detector
from trainables.errors import UserInputError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_detector_dataset(tmp_path_factory.mktemp("det"))


def cloning_report(log: list):
    """A list-appending report; checkpoint tensors alias live weights, so keep copies."""
    def report(metrics, checkpoint=None):
        log.append((metrics, None if checkpoint is None else _clone(checkpoint)))
    return report


def _clone(obj):
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    return obj


def tiny(root, **overrides):
    return make_config("tiny", {"data": str(root), "category": "disc", **overrides})


def test_copy_mode_keeps_F_equal_to_R_encoder_after_every_step(root):
    log = []
    train_detector(tiny(root, epochs=3, steps_per_epoch=1), cloning_report(log))
    states = [ckpt["nets"] for _, ckpt in log]
    assert len(states) == 3  # one checkpoint per optimiser step (epoch = 1 step)
    for nets in states:
        encoder = {k[len("R.encoder."):]: v for k, v in nets.items() if k.startswith("R.encoder.")}
        copied = {k[len("F.encoder."):]: v for k, v in nets.items() if k.startswith("F.encoder.")}
        assert encoder.keys() == copied.keys() and any("running_var" in k for k in encoder)
        assert all(torch.equal(encoder[k], copied[k]) for k in encoder)  # weights and BN buffers, bit for bit
    assert not torch.equal(states[0]["F.encoder.b1.0.weight"], states[-1]["F.encoder.b1.0.weight"])


def test_grad_mode_trains_F_on_its_own(root):
    log = []
    train_detector(tiny(root, epochs=2, steps_per_epoch=1, df_update="grad"), cloning_report(log))
    first, last = log[0][1]["nets"], log[-1][1]["nets"]
    assert not torch.equal(first["F.encoder.b1.0.weight"], last["F.encoder.b1.0.weight"])
    assert not torch.equal(last["F.encoder.b1.0.weight"], last["R.encoder.b1.0.weight"])


def test_loss_decreases_over_a_tiny_run(root):
    log = []
    train_detector(tiny(root, epochs=12, steps_per_epoch=3, checkpoint_minutes=None, lk=False), cloning_report(log))
    totals = [m["loss/total"] for m, _ in log]
    assert totals[-1] < 0.7 * totals[0], totals
    final = log[-1][0]
    assert final["final"] == 1 and final["step"] == 36 and final["kimg"] == pytest.approx(36 * 4 / 1000)
    for name in ("image_AUROC", "image_AP", "pixel_AUROC", "pixel_AP", "pixel_AUPRO"):
        assert 0 <= final[name] <= 1
    assert final["leaky"] is False and final["dataset"] == "mvtec" and "AP" not in final
    picture = log[-1][1]["pictures"]["anomaly_maps"]
    assert picture.dtype == torch.uint8 and picture.shape[-1] == 3


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_a_mid_run_checkpoint_matches_an_uninterrupted_run(root, tmp_path, workers):
    """In line (0) and with synthesis in loader processes resumed mid-run: the uninterrupted
    run synthesises in line either way, so the pipeline must also reproduce its batches."""
    cfg = tiny(root, epochs=4, steps_per_epoch=2, df_update="copy", lk=True, loader_workers=0)
    full = []
    train_detector(cfg, cloning_report(full))
    middle = full[1][1]  # after epoch 2 of 4
    assert middle["step"] == 4 and middle["final"] == 0
    save_checkpoint(tmp_path / "mid", middle)
    resumed = []
    train_detector(make_config("tiny", {**to_flat(cfg), "loader_workers": workers, "resume": str(tmp_path / "mid")}),
                   cloning_report(resumed))
    assert resumed[-1][0]["loader_workers"] == workers
    a, b = full[-1][1], resumed[-1][1]
    assert a["step"] == b["step"] == 8
    assert a["nets"].keys() == b["nets"].keys()
    assert all(torch.equal(a["nets"][k], b["nets"][k]) for k in a["nets"])
    assert full[-1][0]["pixel_AUROC"] == resumed[-1][0]["pixel_AUROC"]


def test_resume_from_a_checkpoint_laid_out_nchw_matches_an_uninterrupted_run(root, tmp_path):
    """Checkpoints written before the weights were channels-last hold NCHW weights and Adam
    moments. The fused Adam pairs a weight and its moments as flat memory, so restoring must lay
    the moments out like the weights, or the resumed run silently diverges."""
    cfg = tiny(root, epochs=2, steps_per_epoch=2, loader_workers=0)
    full = []
    train_detector(cfg, cloning_report(full))
    middle = full[0][1]
    assert middle["nets"]["R.encoder.b1.0.weight"].is_contiguous(memory_format=torch.channels_last)
    nchw = {**middle, "nets": {k: v.contiguous() for k, v in middle["nets"].items()},
            "optimizer": {**middle["optimizer"], "state": {
                i: {k: v.contiguous() for k, v in state.items()} for i, state in middle["optimizer"]["state"].items()}}}
    assert not nchw["optimizer"]["state"][0]["exp_avg"].is_contiguous(memory_format=torch.channels_last)
    save_checkpoint(tmp_path / "mid", nchw)
    resumed = []
    train_detector(make_config("tiny", {**to_flat(cfg), "resume": str(tmp_path / "mid")}), cloning_report(resumed))
    a, b = full[-1][1]["nets"], resumed[-1][1]["nets"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_checkpoint_of_another_architecture(root, tmp_path):
    log = []
    train_detector(tiny(root, epochs=1, steps_per_epoch=1), cloning_report(log))
    save_checkpoint(tmp_path, log[-1][1])
    with pytest.raises(UserInputError, match="different \\['lk'\\]"):
        train_detector(tiny(root, lk=False, resume=str(tmp_path)), cloning_report([]))


@pytest.mark.parametrize("minutes, checkpointed", [(2.5, [4, 7, 8]), (0, list(range(1, 9))), (None, [8])])
def test_checkpoints_follow_the_wall_clock_interval(root, monkeypatch, minutes, checkpointed):
    """A fake clock advanced a minute per report: with checkpoint_minutes=2.5 the reports at
    0, 1, 2, 3 minutes pass the first checkpoint at step 4 (3 min), the next at step 7; the
    final report always carries one."""
    import trainables.runtime

    now = [0.0]
    monkeypatch.setattr(trainables.runtime, "clock", lambda: now[0])
    log = []

    def report(metrics, checkpoint=None):
        log.append((metrics["step"], checkpoint))
        now[0] += 60

    train_detector(tiny(root, epochs=8, steps_per_epoch=1, checkpoint_minutes=minutes), report)
    assert [step for step, _ in log] == list(range(1, 9))
    assert [step for step, checkpoint in log if checkpoint is not None] == checkpointed
    assert all(checkpoint["step"] == step for step, checkpoint in log if checkpoint is not None)  # snapshots


def test_minutes_budget_stops_training(root):
    log = []
    metrics = train_detector(tiny(root, epochs=10_000, minutes=0.02), cloning_report(log))
    assert 0 < metrics["step"] < 10_000 * 2 and metrics["train_seconds"] >= 1.2
    assert metrics["lr"] < tiny(root).lr  # the schedule follows the spent budget


def test_presets_instantiate_and_bad_values_are_user_errors(root, tmp_path, monkeypatch):
    for preset in PRESETS:
        cfg = make_config(preset, {"category": "weave"})
        assert cfg.preset == preset and score_kernel(cfg) % 2 == 1
    assert score_kernel(make_config("paper", {"category": "x"})) == 21
    for overrides, message in [({"img_size": 48}, "multiple of 32"), ({"category": ""}, "category"),
                               ({"opacity_range": "0.5,0.1"}, "opacity_range"), ({"df_update": "ema"}, "copy"),
                               ({"lk_kernels": "30,5"}, "odd")]:
        with pytest.raises(UserInputError, match=message):
            make_config("small", {"category": "weave", **overrides})
    with pytest.raises(UserInputError, match="not in"):
        train_detector(tiny(root, category="nosuch"), cloning_report([]))
    monkeypatch.setenv("DEFECT_SWEEPS_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(UserInputError, match="vgg19"):  # WeightsUnavailable: never random VGG weights
        train_detector(tiny(root, df_source="vgg19"), cloning_report([]))


def test_pictures_cover_every_defect_type_and_one_good_image():
    types = ("good", "good", "a", "a", "a", "b", "c", "c")
    picks = picture_indices(types, 4)
    assert {types[i] for i in picks} == {"good", "a", "b", "c"}


def test_cli_prints_json_last_and_writes_pictures(root, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "platform.train", "detector", "--data", str(root),
                             "--category", "carpet", "--preset", "tiny", "--out", str(out),
                             "--set", "anomaly_source=dtd"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["final"] == 1 and metrics["category"] == "carpet" and metrics["texture_source"] == "procedural"
    assert "image_AUROC" in metrics and "pixel_AUPRO" in metrics
    assert (out / "pictures" / "anomaly_maps.png").is_file() and (out / "checkpoint" / "checkpoint.pt").is_file()
    assert "epoch" in result.stderr
    bad = subprocess.run([sys.executable, "-m", "platform.train", "detector", "--data", str(root),
                          "--category", "carpet", "--preset", "tiny", "--set", "lk_kernels=4"],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "lk_kernels" in bad.stderr
    planned = subprocess.run([sys.executable, "-m", "platform.train", "detector", "--data", str(root),
                              "--category", "carpet", "--preset", "tiny", "--out", str(tmp_path / "dry"),
                              "--set", "lr=0.002", "--dry-run"], cwd=REPO, capture_output=True, text=True)
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout)["lr"] == 0.002 and not (tmp_path / "dry").exists()


def test_vgg19_features_load_from_a_provisioned_weight_file(root, tmp_path, monkeypatch):
    """The df_source=vgg19 path with a stand-in file under the real name (random values:
    this exercises loading and shapes only; no metric is ever reported from such a file)."""
    from torchvision.models.vgg import cfgs, make_layers

    from trainables.weights import weight_url

    features = make_layers(cfgs["E"])[:12]
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()},
               tmp_path / Path(weight_url("vgg19")).name)
    monkeypatch.setenv("DEFECT_SWEEPS_WEIGHTS", str(tmp_path))
    log = []
    train_detector(tiny(root, df_source="vgg19", epochs=1, steps_per_epoch=1), cloning_report(log))
    nets = log[-1][1]["nets"]
    assert torch.equal(nets["F.features.10.weight"], features[10].weight)  # frozen in copy mode
    assert not any(k.startswith("F.encoder") for k in nets)


def _ddp_worker(rank: int, world_size: int, root: str, folder: str, port: int) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        log = []
        train_detector(tiny(Path(root), epochs=2, steps_per_epoch=2, loader_workers=1, lk=False),
                       cloning_report(log))
        torch.save({"checkpoints": sum(c is not None for _, c in log), "steps": [m["step"] for m, _ in log],
                    "loader_workers": log[-1][0]["loader_workers"]}, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_with_loader_processes_stay_in_sync(root, tmp_path):
    """World size 2 (gloo, DDP): each rank's batches come from its own loader process (forked
    after the process group started); both report equally often, only rank 0 checkpoints."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, str(root), str(tmp_path), port), nprocs=2, join=True)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert rank0["steps"] == rank1["steps"] == [2, 4] and rank0["loader_workers"] == rank1["loader_workers"] == 1
    assert rank0["checkpoints"] == 2 and rank1["checkpoints"] == 0
