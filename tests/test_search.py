"""Learning-rate search: log-uniform samples; the best valid NLL wins, never a diverged trial."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from fake_runners import DIVERGE_ABOVE, calls, fake_train, valid_nll
from scipy import stats
from typer.testing import CliRunner

from gru_bench.cli import app
from gru_bench.config import CONFIGS_DIR
from gru_bench.experiments import sweep
from gru_bench.experiments.search import CSV_COLUMNS, sample_lrs, search


def test_learning_rates_are_log_uniform_in_range_and_deterministic() -> None:
    lo, hi = -12.0, -6.0
    lrs = sample_lrs(4000, (lo, hi), seed=3)
    logs = np.log(lrs)
    assert lo - 1e-3 <= logs.min() and logs.max() <= hi + 1e-3  # 4 significant digits move ln(lr) < 5e-4
    assert stats.kstest((logs - lo) / (hi - lo), "uniform").pvalue > 1e-3
    assert sample_lrs(4000, (lo, hi), seed=3) == lrs and sample_lrs(10, (lo, hi), seed=4) != lrs[:10]
    assert sample_lrs(10, (lo, hi), seed=3) == lrs[:10]  # more trials extend a search, never reshuffle it
    assert all(float(f"{lr:.4g}") == lr for lr in lrs)


def test_search_trains_trials_in_lockstep_and_keeps_the_best_finished_one(results: Path) -> None:
    config = CONFIGS_DIR / "jsb" / "gru.yaml"
    rec = search(config, trials=8, seed=1, workers=2, k=10, runner=fake_train)
    lrs = sample_lrs(8, seed=1)
    assert any(lr > DIVERGE_ABOVE for lr in lrs) and any(lr <= DIVERGE_ABOVE for lr in lrs)
    finished = [i for i, lr in enumerate(lrs) if lr <= DIVERGE_ABOVE]
    best = min(finished, key=lambda i: valid_nll(lrs[i]))
    assert rec["status"] == "complete"
    assert rec["chosen"]["trial"] == best and rec["chosen"]["lr"] == lrs[best]
    assert [t["lr"] for t in rec["trials"]] == lrs and [t["chosen"] for t in rec["trials"]].count(True) == 1

    assert [len(c["runs"]) for c in calls(results)] == [8]  # one stack of all trials
    folder = results / "search" / "jsb" / "gru" / "search"
    assert json.loads((folder / "search.json").read_text()) == rec
    table = pd.read_csv(folder / "search.csv")
    assert list(table.columns) == CSV_COLUMNS and table.loc[table["chosen"], "trial"].tolist() == [best]
    trial = rec["trials"][best]
    summary = json.loads((results / "runs" / trial["run"] / "summary.json").read_text())
    assert summary["search_trial"] == {"name": "search", "trial": best, "trials": 8, "lr": lrs[best]}
    assert trial["run"] == f"jsb/gru/search-lr{lrs[best]:.3e}-seed1"

    n_calls = len(calls(results))
    assert search(config, trials=8, seed=1, workers=2, runner=fake_train) == rec  # finished trials are kept
    assert len(calls(results)) == n_calls


def test_search_sweep_trains_the_seeds_at_the_chosen_lr(tmp_path: Path, results: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps({
        "name": "s", "datasets": ["jsb"], "models": ["tanh"], "seeds": [0, 1],
        "config": str(CONFIGS_DIR / "{dataset}" / "{model}.yaml"), "search": {"trials": 4, "seed": 8},
    }))  # fmt: skip
    before = dict(sweep.preview(path))
    assert len(before) == 5 and before["jsb/tanh/s-seed*"] == "2 run(s) after the search"

    result = sweep.run_sweep(path, workers=2, runner=fake_train)
    lrs = sample_lrs(4, seed=8)
    assert any(lr > DIVERGE_ABOVE for lr in lrs)
    finished = [i for i, lr in enumerate(lrs) if lr <= DIVERGE_ABOVE]
    best = min(finished, key=lambda i: valid_nll(lrs[i]))
    assert result.failed == {} and result.waiting == []
    assert len(result.outcomes) == 4 + 2
    for seed in (0, 1):
        summary = json.loads(
            (results / "runs" / "jsb" / "tanh" / f"s-seed{seed}" / "summary.json").read_text()
        )
        assert (summary["lr"], summary["seed"]) == (lrs[best], seed)
        assert summary["search"] == {"name": "s", "trial": best, "lr": lrs[best]} and summary["sweep"] == "s"
    assert (
        json.loads((results / "search" / "jsb" / "tanh" / "s" / "search.json").read_text())["chosen"]["trial"]
        == best
    )
    assert {what for _, what in sweep.preview(path)} == {"skip (complete)", "skip (diverged)"}


def test_cli_search_trains_real_tiny_trials(results: Path, jsb_data: Path) -> None:
    tiny = ["model.hidden=6", "training.max_epochs=1", "training.batch_size=64", "training.weight_noise=0"]
    args = [
        "search",
        "jsb/lstm",
        "--trials",
        "2",
        "--log-lr-range",
        "-8",
        "-4",
        "--seed",
        "1",
        "--workers",
        "1",
    ]
    out = CliRunner().invoke(app, [*args, *(x for t in tiny for x in ("--set", t))])
    assert out.exit_code == 0, out.output
    rec = json.loads((results / "search" / "jsb" / "lstm" / "search" / "search.json").read_text())
    assert [t["lr"] for t in rec["trials"]] == sample_lrs(2, (-8, -4), seed=1)
    valid = [t["best_valid_nll"] for t in rec["trials"]]
    assert (
        rec["chosen"]["best_valid_nll"] == min(valid)
        and f"chosen: lr {rec['chosen']['lr']:.3e}" in out.output
    )
    for t in rec["trials"]:
        summary = json.loads((results / "runs" / t["run"] / "summary.json").read_text())
        assert summary["lr"] == t["lr"] and summary["lockstep_k"] == 2 and summary["seed"] == 1
