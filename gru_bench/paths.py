"""Default locations; one place so that the CLI, make and tests agree."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """Root of downloads and processed tensors (`GRU_BENCH_DATA` overrides `./data`)."""
    return Path(os.environ.get("GRU_BENCH_DATA", "data"))


def raw_dir(dataset: str) -> Path:
    return data_dir() / "raw" / dataset


def processed_dir() -> Path:
    return data_dir() / "processed"


def results_dir() -> Path:
    return Path(os.environ.get("GRU_BENCH_RESULTS", "results"))


def runs_root(results: str | os.PathLike) -> Path:
    """`results/runs`, checked to exist (cheap: `compare` calls it before loading pandas and matplotlib)."""
    from gru_bench.errors import UserError

    root = Path(results) / "runs"
    if not root.is_dir():
        raise UserError(f"{root} not found: pass the folder that holds runs/ (train and sweep write there)")
    return root
