"""`python -m platform.bench`: seconds per training step of each trainer, the figures behind the
dry-run cost model (platform/cost.py).

Runs the real trainers in this process on one embedded category for a short wall-clock budget
each (the detector, DFMGAN stage 1, stage 2 from that stage 1, and the classification
protocol's ResNet-34), with `--threads` torch threads (1 is what a 1-CPU Ray trial gets), and
prints a line per kind of step, then the figures as one JSON line, the last line of stdout.
With `--draem-src DIR` (a checkout of DRAEM's official code, imported from there, never copied
into this repo) it also times one detector step with df and lk off, side by side
(`detector_vs_draem`): our R and D with the trainer's optimizer against DRAEM's `model_unet.py`
networks with the Adam that DRAEM's train_DRAEM.py builds (torch's default), and our networks
with that same Adam (the networks alone).
It also times the detector's input: anomaly synthesis alone (samples/s at the preset's size
and at 256 px, the paper's) and the detector step with synthesis in line vs in loader
processes (`loader_workers`, trainables/detector/pipeline.py), and says whether the input keeps
up (`input`): how many loader processes it takes to make batches as fast as this device's
step consumes them.
With the detector it also reports achieved GFLOP/s against this machine's float32 matmul peak,
measured in the same run at the same thread count (`flops`; on CPU the faster of torch.mm and
the same product as a 1x1 convolution, see `_matmul_peak`): the step's FLOPs are counted by
torch's FlopCounterMode on one forward+backward on the meta device, so nothing is computed and
`--only flops` prints the count of any preset in seconds (matmuls and convolutions, 2 per multiply-add;
elementwise work and the optimizer are not counted, so the ratio is a lower bound on the share
of compute well spent). Its formula for a convolution's weight gradient ignores `groups` and
counts a depthwise conv's C times over (torch 2.14); `conv_backward_flop` replaces it. They are
the model's FLOPs: counted with every convolution computed directly (`lk_weight_grad=direct`),
whichever way the timed step computes the large kernels' weight gradients (by FFT, with fewer).
Not a test: it asserts nothing, it measures this machine.
"""

import argparse
import copy
import dataclasses
import importlib.util
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from platform.cli import run_main
from trainables.checkpoint import persist
from trainables.config import parse_overrides
from trainables.data import EMBEDDED_CATEGORIES
from trainables.detector.config import make_config as detector_config
from trainables.detector.model import draem_init
from trainables.detector.pipeline import batch_at, default_workers
from trainables.detector.train import (_loss_terms, _train_step, build_loss, build_networks, make_optimizer,
                                       set_train_modes, train_detector)
from trainables.device import pick_device
from trainables.errors import UserInputError
from trainables.gan import make_config as gan_config, train_gan_stage1, train_gan_stage2
from trainables.gan.classify import train_and_test

NEVER = 10 ** 9   # a step or tick count no benchmark reaches: the minute budget ends each run
KINDS = ("detector", "gan_stage1", "gan_stage2", "classifier")   # the step kinds of platform/cost.py
VS_DRAEM = "detector_vs_draem"   # needs --draem-src; not a cost-model kind
INPUT = ("synthesis", "pipeline")   # the detector's input: synthesis alone; steps in line vs in loader processes
FLOPS = "flops"   # the detector step's FLOPs alone, counted and not timed (the detector kind includes them)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m platform.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small", help="tiny, small or paper (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seconds", type=float, default=30, help="training time per trainer (default: %(default)s)")
    parser.add_argument("--category", default="bolt", help="embedded category (default: %(default)s)")
    parser.add_argument("--only", nargs="+", choices=KINDS + INPUT + (FLOPS, VS_DRAEM),
                        help="time only these")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one detector config field (e.g. r_base=32); repeatable")
    parser.add_argument("--draem-src", type=Path, metavar="DIR",
                        help=f"a checkout of github.com/VitjanZ/DRAEM: also time {VS_DRAEM} with its model_unet.py")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = str(pick_device(args.device))
    minutes = args.seconds / 60
    common = {"category": args.category, "device": device}
    detector_common = {**common, **parse_overrides(args.set)}   # --set applies to every detector figure
    kinds = set(args.only or KINDS + INPUT + ((VS_DRAEM,) if args.draem_src else ()))
    if VS_DRAEM in kinds and args.draem_src is None:
        raise UserInputError(f"--only {VS_DRAEM}: needs --draem-src DIR (a checkout of github.com/VitjanZ/DRAEM)")
    figures, extra, comparison = {}, {}, None
    if VS_DRAEM in kinds:
        cfg = detector_config(args.preset, {**detector_common, "df": False, "lk": False})
        comparison = _draem_comparison(cfg, _load_draem(args.draem_src), args.seconds, device)
    if FLOPS in kinds and "detector" not in kinds:
        extra["flops"] = {"gflop_per_step": round(step_flop(detector_config(args.preset, detector_common)) / 1e9, 4)}
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        if "detector" in kinds:
            cfg = detector_config(args.preset, {**detector_common, "epochs": NEVER, "minutes": minutes,
                                                "report_every": NEVER, "checkpoint_minutes": None, "n_pictures": 0})
            figures["detector"] = _per_step(train_detector(cfg, _quiet), "step")
            extra["flops"] = _flops(cfg, figures["detector"], device, min(10.0, args.seconds / 3))
        stage1 = Path(folder) / "stage1"
        if kinds & {"gan_stage1", "gan_stage2"}:   # stage 2 starts from this stage 1
            cfg = gan_config(args.preset, {**common, "stage1_kimg": NEVER, "stage1_minutes": minutes,
                                           "tick_kimg": NEVER, "checkpoint_minutes": None})
            per_step = _per_step(train_gan_stage1(cfg, _keep_final(stage1)), "iteration")
            if "gan_stage1" in kinds:
                figures["gan_stage1"] = per_step
        if "gan_stage2" in kinds:
            defect = EMBEDDED_CATEGORIES[args.category][1][0]
            cfg = gan_config(args.preset, {**common, "defect": defect, "stage1": str(stage1), "stage2_kimg": NEVER,
                                           "stage2_minutes": minutes, "tick_kimg": NEVER, "checkpoint_minutes": None,
                                           "n_generate": 4, "n_pictures": 4, "kid_gen": 4, "clpips_gen": 4})
            figures["gan_stage2"] = _per_step(train_gan_stage2(cfg, _quiet), "iteration")
    if "classifier" in kinds:
        figures["classifier"] = _classifier_step(gan_config(args.preset, common), args.seconds, device)
    if "synthesis" in kinds:
        cfg = detector_config(args.preset, detector_common)
        extra["synthesis_samples_per_s"] = {str(size): _synthesis_rate(cfg, size, args.seconds / 2)
                                            for size in sorted({cfg.img_size, 256})}
    if "pipeline" in kinds:
        by_workers = {}
        for workers in (0, max(1, default_workers("cuda"))):  # what an accelerator rank would get, at least 1
            cfg = detector_config(args.preset, {**detector_common, "epochs": NEVER, "minutes": minutes,
                                                "report_every": NEVER, "checkpoint_minutes": None,
                                                "n_pictures": 0, "loader_workers": workers})
            by_workers[str(workers)] = _per_step(train_detector(cfg, _quiet), "step")
        extra["detector_s_per_step_by_loader_workers"] = by_workers
    if "s_per_step_compute" in extra.get("flops", {}) and "synthesis_samples_per_s" in extra:
        extra["input"] = _input_supply(detector_config(args.preset, detector_common), extra, device)

    threads = torch.get_num_threads()
    for kind, seconds in figures.items():
        print(f"{kind:<11} {args.preset} on {device}, {threads} thread(s): {seconds:.4f} s/step", file=sys.stderr)
    f = extra.get("flops", {})
    if "gflop_per_step" in f and "matmul_peak_gflops" not in f:
        print(f"detector   {args.preset}: {f['gflop_per_step']:.3f} GFLOP/step (counted, not timed)", file=sys.stderr)
    if "matmul_peak_gflops" in f:
        print(f"detector   {f['gflop_per_step']:.3f} GFLOP/step: {f['gflops_step']:.2f} GFLOP/s as trained "
              f"({f['share_of_peak_step']:.1%} of peak), {f['gflops_compute']:.2f} GFLOP/s on a fixed batch "
              f"({f['share_of_peak_compute']:.1%} median step, {f['share_of_peak_compute_best']:.1%} fastest); "
              f"matmul peak {f['matmul_peak_gflops']:.1f} GFLOP/s "
              f"(float32 {f['matmul_n']}x{f['matmul_n']} by {f['matmul_by']}, {threads} thread(s) on {device})",
              file=sys.stderr)
        if "share_of_peak_convs" in f:
            print(f"detector   its convolutions alone: {f['s_per_step_convs']:.4f} s/step, "
                  f"{f['share_of_peak_convs']:.1%} of peak (the step's ceiling if nothing else took time)",
                  file=sys.stderr)
    for size, rate in extra.get("synthesis_samples_per_s", {}).items():
        print(f"synthesis  {size} px, 1 process: {rate:.1f} samples/s", file=sys.stderr)
    for workers, seconds in extra.get("detector_s_per_step_by_loader_workers", {}).items():
        where = "in line" if workers == "0" else f"{workers} loader process(es)"
        print(f"detector   {args.preset} on {device}, {threads} thread(s), synthesis {where}: {seconds:.4f} s/step",
              file=sys.stderr)
    if "input" in extra:
        i = extra["input"]
        print(f"input      a loader process makes a batch in {i['s_per_batch']:.4f} s, the step computes in "
              f"{i['s_per_step_compute']:.4f} s: in line, synthesis takes {i['share_in_line']:.1%} of a step; "
              f"{i['loader_workers_needed']} loader process(es) with CPUs of their own would hide it "
              f"(default on {device}: {i['loader_workers_default']})", file=sys.stderr)
    out = {"preset": args.preset, "device": device, "threads": threads, "s_per_step": figures, **extra}
    if comparison is not None:
        c = comparison
        print(f"{VS_DRAEM} {c['img_size']} px, batch {c['batch_size']}, widths {c['r_base']}/{c['d_base']}, "
              f"{threads} thread(s) on {device}: ours {c['ours']['s_per_step']:.4f} s/step "
              f"(R, D {c['ours']['params']}, fused Adam), DRAEM {c['draem']['s_per_step']:.4f} s/step "
              f"(R, D {c['draem']['params']}, torch's default Adam as in train_DRAEM.py), "
              f"{c['draem']['s_per_step'] / c['ours']['s_per_step']:.3f}x; networks alone (both the default Adam): "
              f"ours {c['ours_default_adam']['s_per_step']:.4f} s/step, "
              f"{c['draem']['s_per_step'] / c['ours_default_adam']['s_per_step']:.3f}x; {c['steps']} steps each",
              file=sys.stderr)
        out[VS_DRAEM] = comparison
    print(json.dumps(out))
    return 0


def _quiet(metrics: dict, checkpoint: dict | None = None) -> None:
    pass


def _keep_final(folder: Path):
    def report(metrics: dict, checkpoint: dict | None = None) -> None:
        if checkpoint is not None and metrics.get("final"):
            persist({k: v for k, v in checkpoint.items() if k != "pictures"}, folder)
    return report


def _flops(cfg, s_per_step: float, device: str, seconds: float) -> dict:
    """The detector step's FLOPs (one forward+backward on a batch of the preset's shape), its
    achieved GFLOP/s as trained (`s_per_step`, input synthesis included) and on a fixed batch
    (compute only: the median step, and the fastest, measured like the peak), and the float32
    matmul peak of this process (the fastest of repeated matmuls, `_matmul_peak`)."""
    from trainables.detector.train import load_vgg_state

    batch = _first_batch(cfg)
    loss_fn = build_loss(cfg)

    def make_step(cfg):
        torch.manual_seed(cfg.seed)
        nets = build_networks(cfg, load_vgg_state(cfg)).to(device)
        R, D, F = nets["R"], nets["D"], nets["F"] if cfg.df else None
        optimizer = make_optimizer(cfg, [R, D] + ([F] if F is not None and cfg.df_update == "grad" else []))
        set_train_modes(cfg, nets)   # as the trainer runs them: a copied F in eval mode
        # float(loss) at its end syncs a GPU
        return lambda: _train_step(cfg, batch, R, D, F, loss_fn, optimizer, torch.device(device))

    flop = step_flop(cfg)
    step = make_step(cfg)
    step()   # warm-up: allocator, kernels
    times, began = [], time.perf_counter()
    while time.perf_counter() - began < seconds / 2 or len(times) < 3:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak, n, how = _matmul_peak(device, seconds / 2)
    compute, best = statistics.median(times), min(times)
    out = {"gflop_per_step": round(flop / 1e9, 4), "gflops_step": round(flop / s_per_step / 1e9, 3),
           "s_per_step_compute": round(compute, 4), "gflops_compute": round(flop / compute / 1e9, 3),
           "s_per_step_compute_best": round(best, 4), "matmul_peak_gflops": round(peak, 2), "matmul_n": n,
           "matmul_by": how,
           "share_of_peak_step": round(flop / s_per_step / 1e9 / peak, 4),
           "share_of_peak_compute": round(flop / compute / 1e9 / peak, 4),
           "share_of_peak_compute_best": round(flop / best / 1e9 / peak, 4)}
    if device == "cpu":
        convs = _conv_seconds(step)
        out.update(s_per_step_convs=round(convs, 4), share_of_peak_convs=round(flop / convs / 1e9 / peak, 4))
    return out


def step_flop(cfg) -> int:
    """FLOPs of one forward and backward of the detector's step at cfg's batch shape, counted on
    torch's meta device: the networks and the batch are shapes only and nothing is computed, so
    the paper preset's count takes seconds on any machine. Every convolution is counted as
    computed directly (`lk_weight_grad=direct`); the weights' values do not change the count."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = dataclasses.replace(cfg, lk_weight_grad="direct")
    S, B = cfg.img_size, cfg.batch_size
    with torch.device("meta"):
        nets = build_networks(cfg)
        batch = {"I": torch.empty(B, 3, S, S), "I_a": torch.empty(B, 3, S, S), "M": torch.empty(B, 1, S, S)}
    set_train_modes(cfg, nets)
    F = nets["F"] if cfg.df else None
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flop}) \
            as counter:
        _loss_terms(cfg, batch, nets["R"], nets["D"], F, build_loss(cfg), torch.device("meta"))["total"].backward()
    return counter.get_total_flops()


def _conv_seconds(step, steps: int = 3) -> float:
    """Seconds per step inside the convolutions (forward, backward, and the FFTs of the large
    kernels' weight gradients) on CPU, where each op returns when its kernel is done: the counted
    FLOPs over this time is the share of peak the step would reach if nothing else took any time.
    Each op is timed as it is dispatched (`_OpTimer`), its output's allocation included; torch's
    profiler gives the same figure within run-to-run noise, but its kineto logs an ERROR line
    ("gpuGetDeviceCount failed") on every machine without a GPU."""
    timer = _OpTimer({torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default,
                      torch.ops.aten._fft_r2c.default, torch.ops.aten._fft_c2r.default})
    with timer:
        for _ in range(steps):
            step()
    return timer.seconds / steps


class _OpTimer(TorchDispatchMode):
    """Adds up the wall-clock seconds spent in the given aten ops while active, backward's
    included (the autograd engine runs a CPU backward on the calling thread, in this mode)."""

    def __init__(self, ops: set):
        super().__init__()
        self.ops, self.seconds = ops, 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func not in self.ops:
            return func(*args, **(kwargs or {}))
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.seconds += time.perf_counter() - start
        return out


def conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                       _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of `aten.convolution_backward` (shapes in, as FlopCounterMode hands them over): each
    requested gradient, of the input and of the weight, costs what the forward conv costs,
    2 × N × (output positions) × (weight elements), where a weight [C_out, C_in / groups, k, k]
    already holds the grouping."""
    if transposed:
        raise NotImplementedError("conv_backward_flop: transposed convolutions are not counted")
    forward = 2 * grad_out_shape[0] * math.prod(grad_out_shape[2:]) * math.prod(w_shape)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def _matmul_peak(device: str, seconds: float) -> tuple[float, int, str]:
    """GFLOP/s of the fastest of repeated n x n float32 matmuls (2 n^3 FLOPs), n, and what ran it.
    On CPU the product is timed twice, by torch.mm (MKL) and as a 1x1 convolution (oneDNN, the
    step's convolutions' library), and the faster is the peak: where MKL's is the slower, as on
    an AVX-512 AMD EPYC, its figure alone made every share of it look larger (docs/detector.md §4.6)."""
    n = 8192 if device.startswith("cuda") else 2048
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    products = {"torch.mm": lambda: torch.mm(a, b)}
    if device == "cpu":   # [n positions, n channels] @ [n, n] as a 1x1 conv, channels-last like the step's
        x = a.reshape(1, n, 32, n // 32).contiguous(memory_format=torch.channels_last)
        w = b.reshape(n, n, 1, 1)
        products["a 1x1 conv"] = lambda: torch.nn.functional.conv2d(x, w)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fastest = {}
    for how, product in products.items():
        product()   # warm-up: allocator, kernels
        sync()
        fastest[how], began = float("inf"), time.perf_counter()
        while time.perf_counter() - began < seconds / len(products) or fastest[how] == float("inf"):
            start = time.perf_counter()
            product()
            sync()
            fastest[how] = min(fastest[how], time.perf_counter() - start)
    how = min(fastest, key=fastest.get)
    return 2 * n ** 3 / fastest[how] / 1e9, n, how


def _synthesizer(cfg, size: int):
    """The trainer's anomaly synthesis for cfg's category at size×size."""
    from trainables.detector.synthesis import AnomalySynthesizer, build_source_pool
    from trainables.detector.train import synthesis_params
    from trainables.runtime import load_category_or_fail

    root, data = load_category_or_fail(cfg.data, cfg.category, size)
    pool = build_source_pool(cfg.anomaly_source, root, cfg.category, size, cfg.source_per_category, cfg.dtd_root,
                             cfg.seed)
    return AnomalySynthesizer(np.asarray(data.train), data.kind, pool, synthesis_params(cfg))


def _first_batch(cfg) -> dict:
    """The trainer's first batch (seed, rank 0, step 0): real images, not noise."""
    return batch_at(_synthesizer(cfg, cfg.img_size), cfg.seed, 0, 0, cfg.batch_size)


def _synthesis_rate(cfg, size: int, seconds: float) -> float:
    """Samples per second of the detector's anomaly synthesis at size×size, in this process;
    batches of the preset's size, the images decoded and foregrounds computed beforehand."""
    synth = _synthesizer(cfg, size)
    samples, began = 0, time.perf_counter()
    while samples == 0 or time.perf_counter() - began < seconds:
        synth.batch(np.random.default_rng([cfg.seed, 0, samples]), cfg.batch_size)
        samples += cfg.batch_size
    return round(samples / (time.perf_counter() - began), 2)


def _input_supply(cfg, extra: dict, device: str) -> dict:
    """Whether the input keeps up with the step at the preset's size: the seconds one process
    takes to synthesise a batch, against the fixed-batch step's compute time; the loader
    processes that hide synthesis (each makes every n-th batch) and the device's default."""
    s_per_batch = cfg.batch_size / extra["synthesis_samples_per_s"][str(cfg.img_size)]
    compute = extra["flops"]["s_per_step_compute"]
    return {"s_per_batch": round(s_per_batch, 4), "s_per_step_compute": compute,
            "share_in_line": round(s_per_batch / (s_per_batch + compute), 4),
            "loader_workers_needed": math.ceil(s_per_batch / compute),
            "loader_workers_default": default_workers(device)}


def _per_step(metrics: dict, counter: str) -> float:
    return round(metrics["train_seconds"] / max(metrics[counter], 1), 4)


def _load_draem(src: Path):
    """DRAEM's official model_unet.py, imported from the user's checkout."""
    path = src / "model_unet.py"
    if not path.is_file():
        raise UserInputError(f"--draem-src {src}: no model_unet.py there; expected a checkout of "
                             "github.com/VitjanZ/DRAEM")
    spec = importlib.util.spec_from_file_location("draem_model_unet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _draem_comparison(cfg, unet, seconds: float, device: str) -> dict:
    """One detector step (df, lk off: L2 + SSIM + focal) on the trainer's first batch, three ways: our R
    and D with the trainer's optimizer (`ours`), DRAEM's networks at the same widths with the Adam
    of DRAEM's train_DRAEM.py, torch's default (`draem`), and our networks with that Adam too
    (`ours_default_adam`: the networks alone). All run channels-last, weights and activations,
    as the trainer runs ours. They take turns step by step, in an order that reverses each
    round, until `seconds` are spent, so all see the same machine load. Medians per step."""
    torch.manual_seed(cfg.seed)
    ours = build_networks(cfg)
    draem = (unet.ReconstructiveSubNetwork(in_channels=3, out_channels=3, base_width=cfg.r_base),
             unet.DiscriminativeSubNetwork(in_channels=6, out_channels=2, base_channels=cfg.d_base))
    for net in draem:
        net.apply(draem_init)   # what DRAEM's train_DRAEM.py applies
    pairs = {"ours": (ours["R"], ours["D"]), "draem": draem,
             "ours_default_adam": tuple(copy.deepcopy(ours[name]) for name in ("R", "D"))}
    batch = _first_batch(cfg)
    loss_fn = build_loss(cfg)
    steps, times = {}, {name: [] for name in pairs}
    for name, (R, D) in pairs.items():
        R.to(device, memory_format=torch.channels_last), D.to(device, memory_format=torch.channels_last)
        optimizer = make_optimizer(cfg, [R, D]) if name == "ours" else \
            torch.optim.Adam([p for net in (R, D) for p in net.parameters()], lr=cfg.lr)
        steps[name] = lambda R=R, D=D, optimizer=optimizer: _train_step(cfg, batch, R, D, None, loss_fn, optimizer,
                                                                         torch.device(device))
        steps[name]()   # warm-up: allocator, kernels
    began, order = time.perf_counter(), list(steps)
    while time.perf_counter() - began < seconds or len(times["ours"]) < 3:
        order.reverse()
        for name in order:
            step = steps[name]
            start = time.perf_counter()
            step()      # ends with float(loss): synchronises a GPU
            times[name].append(time.perf_counter() - start)
    return {"img_size": cfg.img_size, "batch_size": cfg.batch_size, "r_base": cfg.r_base, "d_base": cfg.d_base,
            "steps": len(times["ours"]),
            **{name: {"s_per_step": round(statistics.median(times[name]), 4),
                      "params": [sum(p.numel() for p in net.parameters()) for net in pairs[name]]}
               for name in pairs}}


def _classifier_step(cfg, seconds: float, device: str) -> float:
    """ResNet-34 steps on random images of the protocol's size; the difference of two runs, so
    building the network and testing it do not count. A first run warms up: it imports
    torchvision, which can take longer than the steps it would otherwise be subtracted from."""
    size = cfg.cls_img_size or cfg.resolution
    rng = np.random.default_rng(0)

    def timed(steps: int) -> float:
        n = steps * cfg.cls_batch
        x = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        y = np.arange(n) % 2
        began = time.perf_counter()
        train_and_test(dataclasses.replace(cfg, cls_epochs=1), x, y, x[:1], y[:1], 2, 0, device)
        return time.perf_counter() - began

    timed(1)
    short = timed(2)
    steps = max(4, int(seconds / max(short / 2, 1e-6)))
    return round((timed(steps + 2) - short) / steps, 4)


if __name__ == "__main__":
    run_main(main)
