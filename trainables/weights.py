"""Pretrained-weights policy: resolve named weight files locally; never download implicitly.

Metrics and options that need ImageNet networks (VGG19 deep features, ResNet-34 for the
classification protocol, Inception for KID, AlexNet for LPIPS) ask `resolve_weights` for a
file. It looks in an explicit directory, `$DEFECT_SWEEPS_WEIGHTS`, and the torch hub cache
(`<torch hub dir>/checkpoints`, where torchvision and torch-fidelity put downloads), and
otherwise raises `WeightsUnavailable` saying how to provision the file. Callers then record
the metric as unavailable: random weights never stand in for a reported number.
`python -m platform.weights fetch` downloads them on a machine with internet.
"""

import os
import re
from pathlib import Path

import torch

from trainables.errors import WeightsUnavailable

# LPIPS's linear heads ship inside the lpips package; its AlexNet trunk is torchvision's.
ALIASES = {"lpips_alex": "alexnet"}


def weight_names() -> tuple[str, ...]:
    return ("vgg19", "resnet34", "alexnet", "inception")


def weight_url(name: str) -> str:
    """Download address of a named weight file (read from the library that defines it)."""
    name = ALIASES.get(name, name)
    if name == "inception":
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        return URL_INCEPTION_V3
    from torchvision import models

    enums = {"vgg19": models.VGG19_Weights, "resnet34": models.ResNet34_Weights,
             "alexnet": models.AlexNet_Weights}
    if name not in enums:
        raise WeightsUnavailable(f"unknown pretrained weights {name!r}; expected one of {list(weight_names())}")
    return enums[name].IMAGENET1K_V1.url


def search_dirs(weights_dir: str | os.PathLike | None = None) -> list[Path]:
    dirs = [weights_dir, os.environ.get("DEFECT_SWEEPS_WEIGHTS"), Path(torch.hub.get_dir()) / "checkpoints"]
    return [Path(d) for d in dirs if d]


def resolve_weights(name: str, weights_dir: str | os.PathLike | None = None) -> Path:
    """Path of the named weight file, or WeightsUnavailable with provisioning instructions."""
    filename = Path(weight_url(name)).name
    dirs = search_dirs(weights_dir)
    for directory in dirs:
        if (directory / filename).is_file():
            return directory / filename
    raise WeightsUnavailable(
        f"pretrained weights {name!r} not provisioned: {filename} is in none of "
        f"{[str(d) for d in dirs]}. Run `python -m platform.weights fetch {ALIASES.get(name, name)}` on a "
        f"machine with internet (or download {weight_url(name)}) and copy the file into {dirs[-1]} "
        "or a folder named by $DEFECT_SWEEPS_WEIGHTS")


def fetch_weights(name: str, dest: str | os.PathLike | None = None) -> Path:
    """Download one weight file into `dest` (default: the torch hub cache), checking its hash."""
    url = weight_url(name)
    dest = Path(dest) if dest else Path(torch.hub.get_dir()) / "checkpoints"
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / Path(url).name
    if not path.is_file():
        prefix = re.search(r"-([a-f0-9]+)\.", path.name)  # torchvision names carry a sha256 prefix
        torch.hub.download_url_to_file(url, str(path), hash_prefix=prefix.group(1) if prefix else None)
    return path
