"""DFMGAN (Duan et al., AAAI 2023): StyleGAN2-ADA backbone, defect-aware transfer, generation,
KID / clustered LPIPS and the defect-classification protocol, in plain PyTorch.

Entry points (the trainer registry, trainables/methods.py): `train_gan_stage1`,
`train_gan_stage2`, `train_classifier`, all configured by one `GanConfig` built with
`make_config(preset, overrides)`. The config imports without torch; the trainers are imported
on first use, so validating a sweep's plan stays light.
"""

from trainables.gan.config import PRESETS, GanConfig, make_config

_TRAINERS = {"train_gan_stage1": "trainables.gan.train", "train_gan_stage2": "trainables.gan.train",
             "train_classifier": "trainables.gan.classify"}


def __getattr__(name: str):
    if name in _TRAINERS:
        import importlib

        return getattr(importlib.import_module(_TRAINERS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PRESETS", "GanConfig", "make_config", *_TRAINERS]
