"""Sizing for a cluster, without one: concurrency from what an autoscaling cluster can grow to,
the resource shapes asked of the autoscaler, and the bytes checkpoints write (state dicts counted
on the meta device against the real files, the checkpoint interval, what MLflow keeps)."""

from pathlib import Path

import torch

from platform import cost
from platform.resources import Resources, size_for_cluster
from trainables.checkpoint import CHECKPOINT_FILE, save_checkpoint
from trainables.detector.config import make_config
from trainables.ray_adapter import WEIGHTS_FILE, _persist
from trainables.sizes import checkpoint_size


def test_concurrency_comes_from_what_the_cluster_can_grow_to():
    one = Resources(workers=1, gpus_per_trial=0, cpus_per_worker=1, max_concurrent=None)
    empty = {"memory": 1e9}   # a head with no CPUs, no worker nodes yet
    assert size_for_cluster(one, empty, on_cluster=True).concurrent == 1
    grown = size_for_cluster(one, empty, on_cluster=True, ceiling={"CPU": 3, "GPU": 1})
    assert grown.concurrent == 3 and grown.resources.max_concurrent == 3
    ddp = Resources(workers=2, gpus_per_trial=0, cpus_per_worker=0.5, max_concurrent=None)
    assert size_for_cluster(ddp, empty, on_cluster=True, ceiling={"CPU": 3}).concurrent == 2  # 1.1 CPU each
    gpu = Resources(workers=2, gpus_per_trial=2, cpus_per_worker=4, max_concurrent=None)
    assert size_for_cluster(gpu, {"CPU": 16}, on_cluster=True, ceiling={"CPU": 64, "GPU": 8}).concurrent == 4
    # a DDP trial asks the autoscaler for its driver and one bundle per worker
    assert gpu.bundles() == [{"CPU": 0.1}, {"CPU": 4, "GPU": 1.0}, {"CPU": 4, "GPU": 1.0}]


def test_meta_device_sizes_match_the_state_the_trainer_saves(tmp_path):
    """The dry run's count of the tiny detector equals the bytes of its real state dicts plus
    Adam's two moments per trained parameter (the trainer's optimiser: R and D with F copied)."""
    from trainables.detector.train import build_networks

    cfg = make_config("tiny", {"category": "weave", "df_source": "ae_encoder"})
    counted = checkpoint_size("detector", cfg)
    nets = build_networks(cfg)
    optimizer = torch.optim.Adam([p for name in ("R", "D") for p in nets[name].parameters()])
    sum(p.sum() for p in nets.parameters() if p.requires_grad).backward()
    optimizer.step()
    tensors = lambda state: [t for t in state.values() if torch.is_tensor(t)]
    weights = sum(t.numel() * t.element_size() for t in tensors(nets.state_dict()))
    moments = sum(t.numel() * t.element_size() for s in optimizer.state_dict()["state"].values()
                  for k, t in s.items() if k != "step")
    assert counted.weights == weights and counted.full == weights + moments
    saved = save_checkpoint(tmp_path, {"nets": nets.state_dict(), "optimizer": optimizer.state_dict()})
    assert counted.full < saved.stat().st_size < 1.2 * counted.full   # torch.save adds per-tensor records


def test_checkpoints_by_interval_and_what_mlflow_keeps():
    cfg = make_config("paper", {"category": "weave"})   # 700 epochs, checkpoint every 10 min
    size = checkpoint_size("detector", cfg)
    assert 1.3e9 < size.full < 1.5e9 and size.weights < size.full / 2   # R, D, F + Adam; nets alone
    hour = cost.checkpoint_bytes(cfg, "detector", 3600, size.full, size.weights)
    assert hour.checkpoints == 7 and hour.written == 7 * size.full and hour.kept == size.full
    assert hour.mlflow == size.weights
    assert cost.checkpoint_bytes(cfg, "detector", 3600, size.full, size.weights, full_in_mlflow=True).mlflow \
        == size.full
    every_epoch = make_config("paper", {"category": "weave", "checkpoint_minutes": 0})
    assert cost.checkpoint_bytes(every_epoch, "detector", 3600, size.full, size.weights).checkpoints == 700


def test_final_checkpoint_folder_holds_weights_beside_the_full_state(tmp_path):
    nets = {"R": {"w": torch.zeros(3)}}
    _persist({"nets": nets, "optimizer": {"state": {}}, "config": {"a": 1}, "final": 0}, str(tmp_path / "mid"), [])
    assert not (tmp_path / "mid" / WEIGHTS_FILE).exists()   # only the final one: MLflow logs that
    _persist({"nets": nets, "optimizer": {"state": {}}, "config": {"a": 1}, "final": 1}, str(tmp_path / "end"), [])
    weights = torch.load(tmp_path / "end" / WEIGHTS_FILE, weights_only=True)
    assert set(weights) == {"nets", "config"} and (Path(tmp_path / "end") / CHECKPOINT_FILE).exists()
