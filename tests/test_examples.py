"""examples/quickstart.py (the Python API on a tiny budget) and scripts/samples.py (`make samples`) run as a
user runs them, from a folder outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str | Path], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRU_BENCH_")}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True)


def test_quickstart_then_samples(tmp_path: Path, shared_datasets: Path) -> None:
    out = tmp_path / "qs"
    done = _run([REPO / "examples" / "quickstart.py", "--source", shared_datasets, "--out", out], tmp_path)
    assert done.returncode == 0, done.stderr
    for cell in ("tanh", "lstm", "gru"):
        assert f"{cell:5s} valid NLL" in done.stdout
        assert {"mid", "png", "wav"} <= {p.suffix[1:] for p in (out / "samples").glob(f"jsb-{cell}.*")}
    assert "bernoulli" in done.stdout  # the Table 2 DataFrame, with the baseline row

    runs = sorted((out / "results" / "runs" / "jsb").glob("*/*"))
    assert len(runs) == 3
    done = _run([REPO / "scripts" / "samples.py", *runs, "--out", tmp_path / "s", "--steps", "8"], tmp_path)
    assert done.returncode == 0, done.stderr
    for run in runs:
        stem = f"jsb-{run.parent.name}-{run.name}"
        assert {"mid", "png", "wav"} <= {p.suffix[1:] for p in (tmp_path / "s").glob(f"{stem}.*")}

    done = _run([REPO / "scripts" / "samples.py", tmp_path], tmp_path)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "is not a run folder" in done.stderr
