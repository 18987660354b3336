"""User-facing errors: bad input that a person can fix.

Raised anywhere in `trainables/`; the CLIs in `platform/` catch `UserInputError`, print its
one-line message and exit with status 2. Internal invariants use `assert`, never these.
"""


class UserInputError(ValueError):
    """A flag, value or file a person supplied is not what was expected (one line)."""


class DatasetError(UserInputError):
    """A dataset on disk is malformed; the message names the offending path."""

    def __init__(self, path, expected: str):
        self.path = str(path)
        super().__init__(f"{path}: {expected}")


class WeightsUnavailable(UserInputError):
    """A pretrained weight file is not provisioned; the message says how to provision it."""
