"""`gru-bench bench` runs on tiny grids and writes well-formed CSVs and tables (no timing asserts)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from gru_bench.cli import app
from gru_bench.errors import UserError
from gru_bench.experiments.bench import readme_table, run_bench, update_flops
from gru_bench.models import kernels


def test_bench_cli_writes_csv_and_figure(tmp_path: Path):
    out = tmp_path / "bench.csv"
    args = "bench --cells gru,tanh --impls fused --batch-sizes 1,2 --lengths 3 --hidden 5,7 --fast on,off"
    args = [
        *args.split(),
        "--repeats",
        "1",
        "--warmup",
        "1",
        "--lockstep-k",
        "2",
        "--no-jax",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    df = pd.read_csv(out)
    n_fast = 2 if kernels.available() else 1
    assert len(df) == 2 * 2 * 2 * (1 + 2 * n_fast)  # cells x hidden x batches x (torch.nn, modes x (K=1, 2))
    assert set(df.cell) == {"gru", "tanh"} and set(df.batch) == {1, 2} and set(df.hidden) == {5, 7}
    assert (df.steps_per_s > 0).all() and (df.peak_share > 0).all() and (df.peak_gflops > 0).all()
    assert df.vs_jax.isna().all()  # --no-jax
    assert (df[df.impl == "torch.nn"].vs_torch_nn == 1).all()
    modes = ("on", "off")[:n_fast]
    assert set(df[df.k == 2].variant) == {f"fused fast={m} K=2" for m in modes}
    assert (df[df.k == 1].vs_single == 1).all() and (df[df.k == 2].vs_single > 0).all()
    assert (tmp_path / "bench.png").exists() and (tmp_path / "bench.svg").exists()
    md = readme_table(out)
    assert md.count("\n| gru |") == len(df[df.cell == "gru"]) and "GFLOP/s" in md


def test_bench_has_a_jax_row_for_the_gru():
    pytest.importorskip("jax")
    df = run_bench(cells=["gru"], impls=["paper"], batch_sizes=[1], lengths=[4], hidden=[6], repeats=1)
    jax_row = df[df.impl == "jax"]
    assert len(jax_row) == 1 and jax_row.vs_jax.iloc[0] == 1
    assert (df.vs_jax > 0).all()


def test_epoch_bench_times_a_real_dataset(tmp_path: Path, jsb_data: Path):
    out = tmp_path / "epoch.csv"
    args = ["bench", "--dataset", "jsb", "--repeats", "1", "--no-jax", "--hidden", "8", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    df = pd.read_csv(out)
    assert list(df.variant) == ["ours (paper, compiled update)", "torch.nn"] and (df.sequences == 229).all()
    assert (df.epoch_s >= df.train_s).all() and (df.eval_s > 0).all()
    bench = tmp_path / "bench.csv"
    row = {"cell": "gru", "variant": "jax", "hidden": 46, "batch": 1, "length": 60, "steps_per_s": 1e5}
    row |= {"us_per_update": 600.0, "vs_torch_nn": 9.0, "vs_jax": 1.0, "peak_share": 0.2, "peak_gflops": 50.0}
    pd.DataFrame([row]).to_csv(bench, index=False)
    md = readme_table(bench, out)
    assert "| jsb, one epoch at batch 1 |" in md and "| torch.nn |" in md and "| gru | jax | 46 |" in md


def test_update_flops_counts_the_dense_matrix_products():
    # GRU 46: forward 2 x (88 x 138 + 46 x 138 + 46 x 88) per step; backward twice that
    assert update_flops("gru", 46, 1, 1) == 6 * (88 * 138 + 46 * 138 + 46 * 88)
    assert update_flops("lstm", 10, 2, 3, k=4) == 4 * 2 * 3 * 6 * (88 * 40 + 10 * 40 + 10 * 88)


def test_bench_rejects_bad_grid(tmp_path: Path):
    with pytest.raises(UserError):
        run_bench(cells=["rnn"])
    with pytest.raises(UserError):
        run_bench(cells=["gru"], batch_sizes=[0])
    with pytest.raises(UserError, match="--hidden"):
        run_bench(cells=["gru"], hidden=[0])
    result = CliRunner().invoke(app, ["bench", "--lengths", "5,x", "--out", str(tmp_path / "b.csv")])
    assert result.exit_code == 2 and "--lengths" in result.output
    assert not (tmp_path / "b.csv").exists()
