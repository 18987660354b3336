"""The sweep CLI without Ray: dry runs, the cost model and its benchmark, bad input, sweep ids."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import search_spaces
from platform import storage, sweep
from platform.cli import run_main

REPO = Path(__file__).resolve().parent.parent


def test_dry_run_of_the_full_paper_setting_starts_nothing(tmp_path, capsys):
    import ray

    db = tmp_path / "mlflow.db"
    code = sweep.main(["ablation", "--data", "embedded", "--grid", "paper-rows", "--seeds", "3", "--preset", "paper",
                       "--gpus-per-trial", "1", "--dry-run", "--storage", str(tmp_path / "storage"),
                       "--tracking-uri", f"sqlite:///{db}"])
    out = capsys.readouterr().out
    assert code == 0
    assert not ray.is_initialized() and not db.exists() and not (tmp_path / "storage").exists()
    lines = out.splitlines()
    assert lines[0].startswith("sweep ablation-paper-rows-paper-") and "315 trials" in lines[0]
    listed = [line for line in lines if line.strip()[:1].isdigit() and "-s" in line]
    assert len(listed) == 315 and "lens-df_grad-lk-src_mvtec-s2" in listed[-1]
    assert "1 worker (1 CPU, 1 GPU)" in out
    cost = next(line for line in lines if line.startswith("estimated cost:"))
    assert "trial-hours" in cost and "GPU-hours" in cost
    # 15 categories x 7 rows x 3 seeds x 700 epochs x 10 steps x the step time + 120 s each
    from platform.cost import STEP_SECONDS

    step = STEP_SECONDS["detector"][("paper", "gpu")]
    assert f"{315 * (700 * 10 * step + 120) / 3600:.2f} trial-hours" in cost
    # checkpoints every 10 minutes over a trial's 42.8 expected minutes (4) plus the final one, not
    # one per epoch; MLflow keeps the final weights only
    checkpoints = next(line for line in lines if line.startswith("checkpoints:"))
    assert "(5 x 1.7 GB: one every 10 min" in checkpoints and "final weights only" in checkpoints


def test_cost_model_counts_each_trainers_own_steps_and_budgets():
    from platform import cost
    from trainables.detector.config import make_config as detector_config
    from trainables.gan import make_config as gan_config

    step = {kind: table[("small", "cpu")] for kind, table in cost.STEP_SECONDS.items()}
    fixed = cost.FIXED_SECONDS["small"]
    detector = detector_config("small", {"category": "weave"})
    assert cost.trial_seconds(detector, cost.Trial("detector", 80, 3), "small", "cpu", 1) == pytest.approx(
        200 * 10 * step["detector"] + fixed)                       # 200 epochs x ceil(80 / 8) steps
    budget = detector_config("small", {"category": "weave", "minutes": 1})
    assert cost.trial_seconds(budget, cost.Trial("detector", 80, 3), "small", "cpu", 1) == 60 + fixed
    gan = gan_config("small", {"category": "bolt"})
    stage1 = 25_000 // 8 * step["gan_stage1"] + fixed             # stage1_kimg 25 at batch 8
    assert cost.trial_seconds(gan, cost.Trial("gan_stage1", 80, 2), "small", "cpu", 1) == pytest.approx(stage1)
    assert cost.trial_seconds(gan, cost.Trial("gan_stage1", 80, 2), "small", "cpu", 2) < stage1
    stage2 = cost.trial_seconds(gan, cost.Trial("gan_stage2", 80, 2), "small", "cpu", 1)
    assert stage2 == pytest.approx(15_000 // 8 * step["gan_stage2"] + fixed)
    one = gan_config("small", {"category": "bolt", "partition": 0})
    classifier = 10 * (2 * 200 // 8) * step["classifier"]         # 10 epochs over 2 types x 200 images
    assert cost.trial_seconds(one, cost.Trial("classifier", 80, 2), "small", "cpu", 1) == pytest.approx(
        2 * stage2 + classifier)
    assert cost.basis({"detector"}, "small", "cpu").startswith(f"detector {step['detector']:g} s/step (small preset "
                                                               f"on cpu, measured")
    assert "gan_stage2" in cost.basis({"classifier"}, "paper", "gpu") and "estimated" in cost.basis(
        {"classifier"}, "paper", "gpu")


def test_dry_run_of_a_nested_sweep_prints_its_resources(capsys):
    assert sweep.main(["ablation", "--categories", "weave", "--rows", "7", "--preset", "tiny",
                       "--workers-per-trial", "2", "--gpus-per-trial", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 Train workers x (1 CPU, 1 GPU) + a 0.1-CPU trial driver (nested TorchTrainer, DDP)" in out


@pytest.mark.parametrize("argv, message", [
    (["ablation", "--categories", "carpet"], "--categories carpet: not in dataset 'embedded'"),
    (["ablation", "--rows", "1"], "--rows 1: row 1 is DRAEM's published result"),
    (["ablation", "--set", "epochs=many"], "epochs='many': expected int"),
    (["ablation", "--workers-per-trial", "2", "--gpus-per-trial", "1"], "fractional GPUs only work with 1 worker"),
    (["ablation", "--data", "/nonexistent"], "/nonexistent: no such directory"),
    (["hpo", "--seeds", "2"], "--seeds 2: hpo runs one seed per study"),
    (["ablation", "--resume", "ablation-paper-rows-tiny-00000000"], "no such sweep"),
])
def test_bad_input_is_one_line_exit_2_and_no_mlflow_run(tmp_path, capsys, argv, message):
    import ray

    db = tmp_path / "mlflow.db"
    with pytest.raises(SystemExit) as exit_:
        run_main(sweep.main, [*argv, "--storage", str(tmp_path / "s"), "--tracking-uri", f"sqlite:///{db}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not db.exists() and not (tmp_path / "s").exists() and not ray.is_initialized()


def test_bad_input_from_the_real_command_line(tmp_path):
    db = tmp_path / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "platform.sweep", "ablation", "--categories", "weave", "nope"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: --categories nope: not in dataset 'embedded'") and not db.exists()


def test_sweep_id_is_a_deterministic_function_of_the_options():
    def sweep_id(**options):
        return storage.make_sweep_id(search_spaces.build("ablation", preset="tiny", **options))

    first = sweep_id(categories=["weave", "bolt"], rows=[2, 7])
    assert first == sweep_id(categories=["weave", "bolt"], rows=[7, 2])  # row order does not matter
    assert first.startswith("ablation-paper-rows-tiny-") and len(first.rsplit("-", 1)[1]) == 8
    assert first != sweep_id(categories=["weave", "bolt"], rows=[2, 7], seeds=2)
    assert first != sweep_id(categories=["bolt", "weave"], rows=[2, 7])  # category order is the table's
    plan = search_spaces.build("ablation", preset="tiny", categories=["weave", "bolt"], rows=[2, 7])
    assert storage.make_sweep_id(plan, workers=2) != first  # DDP changes the results


def test_help_runs_from_the_repo_root():
    proc = subprocess.run([sys.executable, "-m", "platform.sweep", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "ablation" in proc.stdout and "report" in proc.stdout


def test_bench_times_a_step_of_every_trainer_the_cost_model_knows():
    from platform.cost import STEP_SECONDS

    result = subprocess.run([sys.executable, "-m", "platform.bench", "--preset", "tiny", "--threads", "1",
                             "--seconds", "1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["preset"] == "tiny" and figures["threads"] == 1
    assert set(figures["s_per_step"]) == set(STEP_SECONDS) and all(v > 0 for v in figures["s_per_step"].values())
    assert figures["flops"]["matmul_by"] in ("torch.mm", "a 1x1 conv")   # on CPU the faster library's product
    assert figures["flops"]["s_per_step_convs"] > 0 and "ERROR" not in result.stderr   # no profiler's log lines
    supply = figures["input"]   # the input against the step: how many loader processes hide synthesis
    assert supply["s_per_step_compute"] == figures["flops"]["s_per_step_compute"]
    assert supply["loader_workers_needed"] >= 1 and supply["loader_workers_default"] == 0   # a CPU: in line


def test_bench_sizes_the_loader_from_synthesis_and_step_times():
    """A batch of 8 at 100 samples/s takes 0.08 s to make: against a 0.03 s step, three loader
    processes (each making every third batch) keep up, and in line it would be 0.08 / 0.11 of a step."""
    from platform.bench import _input_supply
    from trainables.detector.config import make_config

    cfg = make_config("small", {"category": "bolt", "batch_size": 8, "img_size": 64})
    extra = {"synthesis_samples_per_s": {"64": 100.0, "256": 10.0}, "flops": {"s_per_step_compute": 0.03}}
    supply = _input_supply(cfg, extra, "cpu")
    assert supply == {"s_per_batch": 0.08, "s_per_step_compute": 0.03, "share_in_line": round(0.08 / 0.11, 4),
                      "loader_workers_needed": 3, "loader_workers_default": 0}
    extra["flops"]["s_per_step_compute"] = 0.08   # exactly as fast as one process: one keeps up
    assert _input_supply(cfg, extra, "cpu")["loader_workers_needed"] == 1


DRAEM_STAND_IN = '''"""Stand-in for DRAEM's model_unet.py (not in this repo): its class names and keywords."""
from trainables.detector.model import DefectPredictor, ReconstructionNet


class ReconstructiveSubNetwork(ReconstructionNet):
    def __init__(self, in_channels=3, out_channels=3, base_width=128):
        super().__init__(base_width)


class DiscriminativeSubNetwork(DefectPredictor):
    def __init__(self, in_channels=3, out_channels=3, base_channels=64):
        super().__init__(base_channels, lk_kernels=None)
'''


def test_bench_times_our_detector_step_beside_draems_networks(tmp_path, capsys):
    from platform import bench
    from trainables.errors import UserInputError

    (tmp_path / "model_unet.py").write_text(DRAEM_STAND_IN)
    assert bench.main(["--preset", "tiny", "--seconds", "0.5", "--only", "detector_vs_draem",
                       "--draem-src", str(tmp_path), "--set", "r_base=8"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    c = out["detector_vs_draem"]
    assert out["s_per_step"] == {} and (c["img_size"], c["r_base"], c["d_base"]) == (32, 8, 4)
    assert c["ours"]["params"] == c["draem"]["params"] == c["ours_default_adam"]["params"] and c["steps"] >= 3
    assert all(c[name]["s_per_step"] > 0 for name in ("ours", "draem", "ours_default_adam"))
    with pytest.raises(UserInputError, match="no model_unet.py"):
        bench.main(["--only", "detector_vs_draem", "--draem-src", str(tmp_path / "missing")])
    with pytest.raises(UserInputError, match="needs --draem-src"):
        bench.main(["--only", "detector_vs_draem"])


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_bench_counts_a_grouped_convs_backward_once_per_gradient(groups):
    """The benchmark's FLOP count of a conv's forward and backward against the multiply-adds
    written out: torch's own formula counts a depthwise weight gradient C times over."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from platform.bench import conv_backward_flop

    N, C, H, k = 2, 16, 12, 5
    conv = torch.nn.Conv2d(C, C, k, padding=k // 2, groups=groups, bias=False)
    x = torch.randn(N, C, H, H, requires_grad=True)
    multiply_adds = N * H * H * C * (C // groups) * k * k  # every output: C / groups × k × k products
    mapping = {torch.ops.aten.convolution_backward: conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        conv(x).sum().backward()
    assert counter.get_total_flops() == 3 * 2 * multiply_adds   # forward, input grad, weight grad
    x = x.detach()   # no input gradient: the backward computes the weight's only
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        conv(x).sum().backward()
    assert counter.get_total_flops() == 2 * 2 * multiply_adds


def test_bench_times_the_convolutions_of_forward_and_backward():
    """The op timer behind "its convolutions alone" sees the ops that the autograd engine runs
    in backward, and only the ops it is given."""
    import torch

    from platform.bench import _OpTimer

    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 32, 32)
    backward = _OpTimer({torch.ops.aten.convolution_backward.default})
    with backward:
        conv(x).sum().backward()
    assert backward.seconds > 0
    with backward, torch.no_grad():
        before = backward.seconds
        conv(x)
    assert backward.seconds == before   # a forward only: no backward op ran


def test_bench_counts_the_detector_steps_flops_on_meta_tensors_as_on_real_ones(capsys):
    """`step_flop` counts on shapes only; a step computed on the CPU, with its real batch and
    weights, counts the same, and `--only flops` prints it without timing anything."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from platform import bench
    from trainables.detector.config import make_config
    from trainables.detector.train import _train_step, build_loss, build_networks, make_optimizer

    cfg = make_config("tiny", {"category": "bolt", "lk_weight_grad": "direct"})
    nets = build_networks(cfg)
    R, D, F = nets["R"], nets["D"], nets["F"]
    mapping = {torch.ops.aten.convolution_backward: bench.conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        _train_step(cfg, bench._first_batch(cfg), R, D, F, build_loss(cfg), make_optimizer(cfg, [R, D, F]),
                    torch.device("cpu"))
    assert bench.step_flop(cfg) == counter.get_total_flops() > 0
    assert bench.main(["--preset", "tiny", "--only", "flops"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["s_per_step"] == {} and out["flops"] == {"gflop_per_step": round(counter.get_total_flops() / 1e9, 4)}
