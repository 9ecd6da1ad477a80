"""`gru-bench bench` runs on a tiny grid and writes a well-formed CSV (no timing asserts)."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from gru_bench.cli import app
from gru_bench.errors import UserError
from gru_bench.experiments.bench import run_bench
from gru_bench.models import kernels


def test_bench_cli_writes_csv(tmp_path):
    out = tmp_path / "bench.csv"
    args = "bench --cells gru,tanh --impls fused --batch-sizes 1,2 --lengths 3 --repeats 1 --warmup 1"
    args = [*args.split(), "--lockstep-k", "2", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    df = pd.read_csv(out)
    n_fast = 2 if kernels.available() else 1
    assert len(df) == 2 * 2 * (1 + 2 * n_fast)  # cells x batches x (torch.nn, fast modes x (alone, K=2))
    assert set(df.cell) == {"gru", "tanh"} and set(df.batch) == {1, 2} and set(df.length) == {3}
    assert (df.steps_per_s > 0).all() and df.notna().all().all()
    base = df[df.impl == "torch.nn"]
    assert (base.vs_torch_nn == 1).all()
    modes = ("off", "on")[:n_fast]
    assert set(df[df.k == 2].variant) == {f"fused fast={m} K=2" for m in modes}
    assert (df[df.k == 1].vs_single == 1).all() and (df[df.k == 2].vs_single > 0).all()


def test_bench_rejects_bad_grid(tmp_path):
    with pytest.raises(UserError):
        run_bench(cells=["rnn"])
    with pytest.raises(UserError):
        run_bench(cells=["gru"], batch_sizes=[0])
    result = CliRunner().invoke(app, ["bench", "--lengths", "5,x", "--out", str(tmp_path / "b.csv")])
    assert result.exit_code == 2 and "--lengths" in result.output
    assert not (tmp_path / "b.csv").exists()
