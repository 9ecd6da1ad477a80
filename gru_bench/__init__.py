"""gru-bench: reproduce Chung et al. (2014) on the four polyphonic-music datasets.

The pipeline, one layer per folder: data/ (datasets) -> models/ (cells, stacks, optimizer) -> training/
(the loop and the run folder) -> experiments/ (sweeps, searches, benchmarks) -> report/ (tables, figures,
samples) -> cli.py (the `gru-bench` commands; api.py is the same from Python).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__version__ = "0.1.0"


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A package's `__getattr__` that imports `name` from its module `exports[name]` on first use.

    So `from gru_bench.training import train` works while importing one light module of a package (e.g. the
    run folder, from a sweep's worker processes) does not load torch through its siblings.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__
