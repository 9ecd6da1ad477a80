"""Default locations; one place so that the CLI, make and tests agree.

Data and results default to `./data` and `./results` (right for a checkout, which is where `make` runs); an
installed tool is pointed elsewhere with the environment variables below or the global options
`gru-bench --data-dir DIR --results-dir DIR <command>` (which set them, so that sweep workers inherit them).
The shipped configs are package data, found wherever the package is installed.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

DATA_ENV = "GRU_BENCH_DATA"
RESULTS_ENV = "GRU_BENCH_RESULTS"


def data_dir() -> Path:
    """Root of downloads and processed tensors (`GRU_BENCH_DATA` overrides `./data`)."""
    return Path(os.environ.get(DATA_ENV, "data"))


def raw_dir(dataset: str) -> Path:
    return data_dir() / "raw" / dataset


def processed_dir() -> Path:
    return data_dir() / "processed"


def results_dir() -> Path:
    """Root of runs/, search/, report/ and bench/ (`GRU_BENCH_RESULTS` overrides `./results`)."""
    return Path(os.environ.get(RESULTS_ENV, "results"))


def configs_dir() -> Path:
    """The shipped configs: defaults.yaml, <dataset>/<cell>.yaml and sweeps/*.yaml (package data)."""
    return Path(str(resources.files("gru_bench") / "configs"))


def runs_root(results: str | os.PathLike) -> Path:
    """`results/runs`, checked to exist (cheap: `compare` calls it before loading pandas and matplotlib)."""
    from gru_bench.errors import UserError

    root = Path(results) / "runs"
    if not root.is_dir():
        raise UserError(f"{root} not found: pass the folder that holds runs/ (train and sweep write there)")
    return root
