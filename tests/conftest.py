"""Shared fixtures: the real datasets in ../shared/datasets, and an isolated data folder per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("GRU_BENCH_SHARED", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """`../shared/datasets` (the folder CI places beside the checkout)."""
    if not (SHARED / "SOURCES.md").exists():
        pytest.skip(f"real datasets not found at {SHARED} (set GRU_BENCH_SHARED)")
    return SHARED


@pytest.fixture
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh GRU_BENCH_DATA folder, so tests never touch ./data."""
    monkeypatch.setenv("GRU_BENCH_DATA", str(tmp_path / "data"))
    return tmp_path / "data"
