"""DFMGAN (Duan et al., AAAI 2023): StyleGAN2-ADA backbone, defect-aware transfer, generation,
KID / clustered LPIPS and the defect-classification protocol, in plain PyTorch.

Entry points (the Ray adapter's registry): `train_gan_stage1`, `train_gan_stage2`,
`train_classifier`, all configured by one `GanConfig` built with `make_config(preset, overrides)`.
"""

from trainables.gan.classify import train_classifier
from trainables.gan.train import PRESETS, GanConfig, make_config, train_gan_stage1, train_gan_stage2

__all__ = ["PRESETS", "GanConfig", "make_config", "train_classifier", "train_gan_stage1", "train_gan_stage2"]
