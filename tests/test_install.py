"""A plain (non-editable) install works from any folder: build the wheel, install it into a fresh virtual
environment and run the whole pipeline from a temporary folder outside the checkout.

Takes a few minutes (mostly installing torch and the other dependencies; pip's cache makes repeats faster).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.install


def _run(cmd: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path, shared_datasets: Path) -> None:
    # build from a copy of the sources, so the checkout gets no build/ or egg-info
    src = tmp_path / "src"
    shutil.copytree(REPO / "gru_bench", src / "gru_bench", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRU_BENCH_", "PYTHON", "VIRTUAL_ENV"))}
    _run([*pip, "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", src], tmp_path, env)
    (wheel,) = (tmp_path / "dist").glob("gru_bench-*.whl")

    # a fresh environment (no system site-packages) without pip of its own: the running pip installs into it
    venv.create(tmp_path / "venv", with_pip=False)
    python = tmp_path / "venv" / "bin" / "python"
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"  # the CPU wheel the suite runs on
    # --no-compile: byte-compiling torch would take longer than installing it
    _run([*pip, "--python", python, "install", "-q", "--no-compile", torch_pin, wheel], tmp_path, env)

    work = tmp_path / "elsewhere"  # no configs/, data/ or results/ here: everything comes from the package
    work.mkdir()
    gb = [tmp_path / "venv" / "bin" / "gru-bench"]
    _run([*gb, "data", "download", "jsb", "--source", shared_datasets], work, env)
    _run([*gb, "data", "prepare", "jsb"], work, env)
    tiny = ["--epochs", "1", "--set", "model.hidden=8", "--name", "tiny", "-q"]
    out = _run([*gb, "train", "jsb/gru", *tiny], work, env)
    assert "jsb/gru/tiny: complete" in out
    run = work / "results" / "runs" / "jsb" / "gru" / "tiny"
    assert len(pd.read_csv(run / "metrics.csv")) == 1
    assert "test NLL" in _run([python, "-m", "gru_bench", "evaluate", run], work, env)
    _run([*gb, "compare"], work, env)
    assert (work / "results" / "report" / "table2.md").is_file()

    # the global options move data and results elsewhere
    other = tmp_path / "other"
    download = ["data", "download", "jsb", "--source", shared_datasets]
    _run([*gb, "--data-dir", other / "data", *download], work, env)
    paths = _run([*gb, "--results-dir", other / "results", "--paths"], work, env)
    assert str(other / "results") in paths and str(python.parents[1]) in paths  # configs: in the venv
    assert (other / "data" / "raw" / "jsb").is_dir()
