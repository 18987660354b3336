"""Stand-in for the standard library's `platform` module, and the project's control plane.

`python -m platform.sweep` puts the repo root first on `sys.path`, so this package shadows
the standard module of the same name; `uuid`, torch, Ray and MLflow then call
`platform.system()` and friends at import. To keep them working, this file executes the
standard library's `platform.py` into its own namespace. It has that one job: the control
plane lives in the submodules (`platform.sweep`, `platform.train`, `platform.data`, ...).
See docs/platform.md §2.
"""

import os as _os
import sysconfig as _sysconfig

_STDLIB_PLATFORM = _os.path.join(_sysconfig.get_paths()["stdlib"], "platform.py")
with open(_STDLIB_PLATFORM, encoding="utf-8") as _source:
    exec(compile(_source.read(), _STDLIB_PLATFORM, "exec"), globals())
