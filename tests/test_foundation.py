"""Config building, checkpoints, device choice, texture bank, weights policy, pictures."""

import random
import subprocess
import sys
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest
import torch

from trainables.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from trainables.config import build_config, parse_overrides, to_flat
from trainables.data import load_texture_bank
from trainables.device import pick_device
from trainables.errors import UserInputError, WeightsUnavailable
from trainables.pictures import grid, save_pictures
from trainables.weights import resolve_weights, weight_names


@dataclass(frozen=True)
class Toy:
    preset: str = "small"
    lr: float = 1e-4
    epochs: int = 10
    lk: bool = True
    source: Literal["mvtec", "dtd"] = "mvtec"
    kernels: tuple[int, ...] = (31, 29)
    resume: str | None = None

    def validate(self):
        if self.epochs < 1:
            raise UserInputError(f"epochs={self.epochs}: expected >= 1")


PRESETS = {"tiny": {"epochs": 1}, "small": {}}


def test_config_merges_preset_and_typed_overrides():
    cfg = build_config(Toy, PRESETS, "tiny", parse_overrides(["lr=1e-3", "lk=false", "kernels=7,5", "resume=none"]))
    assert cfg == Toy(preset="tiny", lr=1e-3, epochs=1, lk=False, kernels=(7, 5), resume=None)
    assert to_flat(cfg)["kernels"] == [7, 5]


@pytest.mark.parametrize("overrides, message", [
    ({"lrr": "1"}, "unknown config key"), ({"epochs": "1.5"}, "expected int"),
    ({"lk": "maybe"}, "expected true or false"), ({"source": "imagenet"}, "expected one of"),
    ({"epochs": "0"}, "expected >= 1"),
])
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(UserInputError, match=message):
        build_config(Toy, PRESETS, "small", overrides)
    with pytest.raises(UserInputError, match="preset='huge'"):
        build_config(Toy, PRESETS, "huge")


def test_checkpoint_roundtrip_restores_every_rng(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    save_checkpoint(tmp_path, {"rng": rng_state(), "w": torch.ones(3), "step": 7})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    state = load_checkpoint(tmp_path)  # weights_only=True: plain containers and tensors only
    set_rng_state(state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert state["step"] == 7 and not list(tmp_path.glob("*.tmp"))


def test_device_choice():
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserInputError, match="CUDA is not available"):
            pick_device("cuda")


def test_texture_bank_falls_back_to_procedural_and_says_so(tmp_path):
    bank = load_texture_bank("auto", size=32, count=12)
    assert bank.source == "procedural" and bank.images.shape == (12, 32, 32, 3)
    assert len({image.tobytes() for image in bank.images}) == 12
    np.testing.assert_array_equal(bank.images, load_texture_bank("procedural", size=32, count=12).images)
    with pytest.raises(UserInputError, match="DTD not found"):
        load_texture_bank("dtd", dtd_root=tmp_path, size=32)


def test_weights_are_resolved_from_a_folder_or_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("DEFECT_SWEEPS_WEIGHTS", raising=False)
    for name in weight_names():
        with pytest.raises(WeightsUnavailable, match=f"platform.weights fetch {name}"):
            resolve_weights(name)
    (tmp_path / "resnet34-b627a593.pth").write_bytes(b"x")
    assert resolve_weights("resnet34", tmp_path) == tmp_path / "resnet34-b627a593.pth"


def test_weights_cli_status_and_bad_name():
    ok = subprocess.run([sys.executable, "-m", "platform.weights", "status", "vgg19"], capture_output=True, text=True)
    assert ok.returncode in (0, 1) and "vgg19" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "platform.weights", "status", "gpt"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "gpt" in bad.stderr


def test_nothing_downloads_at_import():
    code = ("import socket\n"
            "def refuse(*a, **k): raise AssertionError('network access at import')\n"
            "socket.socket.connect = refuse\n"
            "import trainables.data, trainables.weights, trainables.config, trainables.checkpoint\n"
            "import platform.data, platform.weights, platform.train\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-1500:]


def test_grid_and_png_writing(tmp_path):
    tiles = [np.full((4, 5, 3), k * 40, np.uint8) for k in range(5)]
    canvas = grid(tiles, ncols=3, pad=1)
    assert canvas.shape == (2 * 5 + 1, 3 * 6 + 1, 3) and canvas[1, 1, 0] == 0 and canvas[6, 1, 0] == 120
    paths = save_pictures({"g": canvas, "m": torch.zeros(4, 4, dtype=torch.uint8)}, tmp_path)
    assert [p.name for p in paths] == ["g.png", "m.png"]
