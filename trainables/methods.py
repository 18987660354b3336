"""The trainer registry: which entry point and which config each sweep method runs.

A method is a key of `METHODS` or `package.module:function` for a trainer outside the registry
(the sweep tests' toy trainer). Its module exposes `make_config(preset, overrides)` (or
`make_<name>_config` for an entry point `train_<name>`, when it holds several trainers).

`make_trial_config` is the one way a trial's config is built, on the driver from the preset and
the plan's overrides, and again on the worker from the driver's flat dict (which names every
field, so the preset adds nothing there). Importing this module imports neither Ray nor torch;
`load_entry` imports the trainer module itself.
"""

import importlib
from typing import Any, Callable, Mapping

from trainables.errors import UserInputError

# method -> (config module, trainer module, entry point)
METHODS: dict[str, tuple[str, str, str]] = {
    "detector": ("trainables.detector.config", "trainables.detector.train", "train_detector"),
    "gan_stage1": ("trainables.gan.config", "trainables.gan.train", "train_gan_stage1"),
    "gan_stage2": ("trainables.gan.config", "trainables.gan.train", "train_gan_stage2"),
    "classifier": ("trainables.gan.config", "trainables.gan.classify", "train_classifier"),
}


def _locate(method: str) -> tuple[str, str, str]:
    if ":" in method:
        module_name, entry = method.split(":", 1)
        return module_name, module_name, entry
    if method in METHODS:
        return METHODS[method]
    raise UserInputError(f"method={method!r}: expected one of {sorted(METHODS)} or module:function")


def _import(method: str, module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise UserInputError(f"method {method}: its module {module_name} is not in this checkout") from None
        raise


def load_entry(method: str) -> Callable:
    """The trainer's entry point `train_*(cfg, report)`."""
    _, module_name, entry = _locate(method)
    return getattr(_import(method, module_name), entry)


def make_trial_config(method: str, preset: str, overrides: Mapping[str, Any]):
    """The method's frozen config: preset <- overrides, validated (UserInputError on bad input)."""
    config_module, _, entry = _locate(method)
    module = _import(method, config_module)
    make = getattr(module, f"make_{entry.removeprefix('train_')}_config", None) or module.make_config
    return make(preset, dict(overrides))
