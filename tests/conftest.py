"""Shared fixtures: the real datasets in ../shared/datasets, isolated data and results folders per test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from gru_bench.config import exact_mkl

exact_mkl()  # as the CLI does: the BLAS path's bit-identity tests need MKL's reproducible branch

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


@pytest.fixture
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, existing GRU_BENCH_RESULTS folder, so tests never touch ./results."""
    monkeypatch.setenv("GRU_BENCH_RESULTS", str(tmp_path / "results"))
    (tmp_path / "results").mkdir()
    return tmp_path / "results"


@pytest.fixture(scope="session")
def jsb_npz(tmp_path_factory: pytest.TempPathFactory, shared_datasets: Path) -> Path:
    """JSB prepared once per session from the shared .mat (reference route); `jsb_data` copies it."""
    from gru_bench.data.prepare import prepare
    from gru_bench.paths import raw_dir

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRU_BENCH_DATA", str(tmp_path_factory.mktemp("jsb")))
        raw_dir("jsb").mkdir(parents=True)
        shutil.copy(shared_datasets / "mat" / "JSB_Chorales.mat", raw_dir("jsb"))
        return prepare("jsb", echo=lambda _: None)


@pytest.fixture
def jsb_data(data_home: Path, jsb_npz: Path) -> Path:
    """`data_home` with JSB prepared (as `gru-bench data prepare jsb` leaves it)."""
    from gru_bench.data import processed_path

    processed_path("jsb").parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(jsb_npz, processed_path("jsb"))
    return data_home


@pytest.fixture
def tiny_jsb(data_home: Path) -> Path:
    """A small random 'jsb' (sequences of 2..19 frames) in the isolated data folder."""
    from gru_bench.data import PianoRolls, processed_path

    rng = np.random.default_rng(0)

    def seqs(n: int) -> list[np.ndarray]:
        return [rng.random((int(rng.integers(2, 20)), 88)) < 0.08 for _ in range(n)]

    rolls = PianoRolls({"train": seqs(10), "valid": seqs(4), "test": seqs(3)}, meta={"dataset": "jsb"})
    path = processed_path("jsb")
    path.parent.mkdir(parents=True, exist_ok=True)
    rolls.save(path)
    return path
