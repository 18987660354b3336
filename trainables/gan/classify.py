"""DFMGAN's downstream defect-classification protocol (paper §4.3, Table 2; docs/dfmgan.md §6).

For each seeded partition: every defect type's images are split 1/3 "base" vs 2/3 test;
one stage-2 DFMGAN per defect type is trained on its base set (all starting from the same
stage-1 checkpoint); each generates `cls_per_type` images; a torchvision ResNet-34 (ImageNet
weights when provisioned, else from scratch, and the report says which) is trained on the
generated images only and tested on the real test images of all types. Reported: accuracy per
partition (`accuracy_P1`, ...) and their mean `accuracy`. The paper leaves the classifier's
training unspecified; this follows the documented fallback (AnomalyDiffusion's script: Adam
1e-4, batch 8, 30 epochs, lr ×0.2 at 80% and 90%, generated images only). Resume works at the
granularity of one finished (partition, defect type) model or one finished partition.
"""

import dataclasses

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F_

from trainables.checkpoint import load_checkpoint, rng_state
from trainables.config import to_flat
from trainables.data.split import split_partition  # noqa: F401  (the joined ablation grid uses it too)
from trainables.device import pick_device
from trainables.errors import UserInputError, WeightsUnavailable
from trainables.gan.generate import to_uint8
from trainables.gan.train import GanConfig, Report, run, step_seed
from trainables.runtime import load_category_or_fail, rank_world
from trainables.weights import resolve_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@torch.no_grad()
def generate_images(G, n: int, seed: int, device, batch: int = 32) -> np.ndarray:
    """n defect images (uint8 [n, R, R, 3]) with independent z, z_defect and constant noise."""
    G.eval()
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch):
        m = min(batch, n - i)
        z, zd = torch.randn(m, G.z_dim, generator=gen), torch.randn(m, G.z_dim, generator=gen)
        out.append(to_uint8(G(z.to(device), zd.to(device), noise_mode="const")[0]))
    return np.concatenate(out)


def build_classifier(n_classes: int, cfg: GanConfig) -> tuple[nn.Module, str, str]:
    """ResNet-34 with a new FC layer; (model, "imagenet" | "scratch", note)."""
    import torchvision

    model = torchvision.models.resnet34()
    init, note = "scratch", "cls_pretrained=false"
    if cfg.cls_pretrained:
        try:
            path = resolve_weights("resnet34", cfg.weights_dir)
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            init, note = "imagenet", str(path)
        except WeightsUnavailable as error:
            note = f"trained from scratch: {error}"
    model.fc = nn.Linear(model.fc.in_features, n_classes)
    return model, init, note


def classifier_input(images: np.ndarray, size: int, device) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255).to(device)
    if x.shape[-1] != size:
        x = F_.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
    return (x - mean) / std


def train_and_test(cfg: GanConfig, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                   test_y: np.ndarray, n_classes: int, seed: int, device) -> tuple[float, str, str]:
    """Train ResNet-34 on (train_x, train_y), return (test accuracy, init, note)."""
    torch.manual_seed(seed)
    model, init, note = build_classifier(n_classes, cfg)
    model.to(device)
    size = cfg.cls_img_size or cfg.resolution
    steps_per_epoch = max(1, -(-len(train_x) // cfg.cls_batch))
    total = cfg.cls_epochs * steps_per_epoch
    opt = torch.optim.Adam(model.parameters(), lr=cfg.cls_lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(0.8 * total), int(0.9 * total)], gamma=0.2)
    labels = torch.from_numpy(train_y).long()
    model.train()
    for epoch in range(cfg.cls_epochs):
        order = torch.randperm(len(train_x))
        for i in range(steps_per_epoch):
            idx = order[i * cfg.cls_batch:(i + 1) * cfg.cls_batch].numpy()
            loss = F_.cross_entropy(model(classifier_input(train_x[idx], size, device)), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(classifier_input(test_x[i:i + 64], size, device)).cpu()
                            for i in range(0, len(test_x), 64)])
    return float((logits.argmax(1).numpy() == test_y).mean()), init, note


def train_classifier(cfg: GanConfig, report: Report) -> dict:
    """The protocol on `cfg.category` for `cfg.partition` (or all `cfg.partitions`); final metrics."""
    device = pick_device(cfg.device)
    rank, _ = rank_world()
    _, data = load_category_or_fail(cfg.data, cfg.category, cfg.resolution)
    types = data.defect_types
    if len(types) < 2:
        raise UserInputError(f"category={cfg.category}: classification needs at least 2 defect types, has {list(types)}")
    defects = {t: data.defects(t) for t in types}
    small = [t for t, (images, _) in defects.items() if len(images) < 2]
    if small:
        raise UserInputError(f"defect types {small} of {cfg.category}: need at least 2 images (1 base + 1 test)")
    partitions = [cfg.partition] if cfg.partition is not None else list(range(cfg.partitions))
    state = {"generated": {}, "accuracy": {}, "init": "", "init_note": ""}
    if cfg.resume:
        saved = load_checkpoint(cfg.resume)
        state.update({k: saved[k] for k in state})

    def checkpoint(final: bool) -> dict | None:
        if rank != 0:
            return None
        return {"kind": "classifier", "config": to_flat(cfg), "final": int(final), "rng": rng_state(), **state}

    units = 0
    for p in partitions:
        if str(p) in state["accuracy"]:
            continue
        split = split_partition({t: len(defects[t][0]) for t in types}, cfg.seed, p, cfg.base_fraction)
        for label, t in enumerate(types):
            key = f"{p}/{t}"
            if key in state["generated"]:
                continue
            base = split[t][0]
            stage2_cfg = dataclasses.replace(cfg, defect=t, resume=None)
            _, G_ema = run(stage2_cfg, 2, lambda metrics, checkpoint=None: None,
                           defects[t][0][base], defects[t][1][base], evaluate=False)
            images = generate_images(G_ema, cfg.cls_per_type, step_seed(cfg.seed, p, label), device)
            state["generated"][key] = torch.from_numpy(images)
            units += 1
            report({"partition": p, "defect_type_index": label, "units": units, "epoch": units, "kimg": 0.0},
                   checkpoint(False))
        train_x = np.concatenate([state["generated"][f"{p}/{t}"].numpy() for t in types])
        train_y = np.concatenate([np.full(cfg.cls_per_type, label) for label, t in enumerate(types)])
        test_x = np.concatenate([defects[t][0][split[t][1]] for t in types])
        test_y = np.concatenate([np.full(len(split[t][1]), label) for label, t in enumerate(types)])
        accuracy, state["init"], state["init_note"] = train_and_test(
            cfg, train_x, train_y, test_x, test_y, len(types), step_seed(cfg.seed, p, 1_000_003), device)
        state["accuracy"][str(p)] = accuracy
        for t in types:                                   # a finished partition needs only its accuracy
            del state["generated"][f"{p}/{t}"]
        report({"partition": p, "accuracy_partition": round(accuracy, 4), "n_test": len(test_y),
                "units": units, "epoch": units, "kimg": 0.0}, checkpoint(False))
    metrics = {f"accuracy_P{int(p) + 1}": round(a, 4) for p, a in sorted(state["accuracy"].items())}
    metrics.update({"accuracy": round(float(np.mean(list(state["accuracy"].values()))), 4),
                    "classifier_init": state["init"], "classifier_init_note": state["init_note"],
                    "defect_types": ",".join(types), "final": 1})
    report(metrics, checkpoint(True))
    return metrics
