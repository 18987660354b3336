"""Device choice: CUDA when present, else CPU; never assumed."""

import torch


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` picks cuda:0 when available, else cpu; `cpu`/`cuda[:i]` are taken as given."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        from trainables.errors import UserInputError

        raise UserInputError(f"device={requested}: CUDA is not available on this machine")
    return device
