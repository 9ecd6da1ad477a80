"""Pairwise comparison of cells across seeds, checked against a direct numpy/scipy computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from gru_bench.errors import UserError
from gru_bench.report.stats import COLUMNS, pairwise_comparison, verdict

NLL = {  # dataset -> cell -> test NLL per seed 0, 1, 2
    "jsb": {"tanh": [8.9, 9.1, 9.0], "lstm": [8.7, 8.8, 8.75], "gru": [8.5, 8.62, 8.61]},
    "nottingham": {"gru": [3.3, 3.1, 3.2], "lstm": [3.25, 3.2, 3.15]},
}


def runs() -> pd.DataFrame:
    rows = [{"dataset": d, "cell": c, "seed": s, "test_nll": x, "run": f"{c}{s}"}
            for d, cells in NLL.items() for c, xs in cells.items() for s, x in enumerate(xs)]  # fmt: skip
    rows += [{"dataset": "jsb", "cell": "gru", "seed": 3, "test_nll": np.nan, "run": "diverged"},
             {"dataset": "jsb", "cell": "tanh", "seed": 4, "test_nll": 9.6, "run": "unpaired"}]  # fmt: skip
    return pd.DataFrame(rows)


def test_pairwise_matches_a_direct_computation() -> None:
    out = pairwise_comparison(runs())
    assert list(out.columns) == COLUMNS
    pairs = [
        ("jsb", "tanh", "lstm"),
        ("jsb", "tanh", "gru"),
        ("jsb", "lstm", "gru"),
        ("nottingham", "lstm", "gru"),
    ]
    assert [(r.dataset, r.cell_a, r.cell_b) for r in out.itertuples()] == pairs
    for r in out.itertuples():
        a, b = NLL[r.dataset][r.cell_a], NLL[r.dataset][r.cell_b]
        a_all = a + (
            [9.6] if r.cell_a == "tanh" else []
        )  # the unpaired seed counts in the mean, not the pair
        diff = np.subtract(a, b)
        t = stats.ttest_rel(a, b)
        assert (r.n_a, r.n_b, r.n_paired) == (len(a_all), len(b), 3)
        assert r.mean_a == pytest.approx(np.mean(a_all)) and r.std_a == pytest.approx(np.std(a_all, ddof=1))
        assert r.mean_b == pytest.approx(np.mean(b)) and r.std_b == pytest.approx(np.std(b, ddof=1))
        assert r.mean_diff == pytest.approx(diff.mean()) and r.std_diff == pytest.approx(diff.std(ddof=1))
        assert (r.t, r.p) == (pytest.approx(t.statistic), pytest.approx(t.pvalue))
        assert r.beyond_spread == (abs(diff.mean()) > max(np.std(a_all, ddof=1), np.std(b, ddof=1)))
        assert r.verdict == verdict(r.cell_a, r.cell_b, 3, diff.mean(), t.pvalue, r.beyond_spread)
    by_pair = {(r.dataset, r.cell_a, r.cell_b): r for r in out.itertuples()}
    assert by_pair[("jsb", "tanh", "gru")].beyond_spread is True
    assert by_pair[("nottingham", "lstm", "gru")].beyond_spread is False
    assert by_pair[("jsb", "tanh", "gru")].verdict == "gru better (difference > seed spread, p < 0.05)"
    assert by_pair[("nottingham", "lstm", "gru")].verdict == "not distinguishable"


def test_single_seed_has_no_spread_and_no_test() -> None:
    one = pd.DataFrame(
        {"dataset": ["jsb"] * 2, "cell": ["gru", "lstm"], "seed": [0, 0], "test_nll": [8.5, 8.7]}
    )
    r = pairwise_comparison(one).iloc[0]
    assert (r.cell_a, r.cell_b, r.n_paired) == ("lstm", "gru", 1) and r.mean_diff == pytest.approx(0.2)
    assert np.isnan(r.std_a) and np.isnan(r.t) and np.isnan(r.p) and r.beyond_spread is None


def test_two_runs_of_one_seed_are_refused() -> None:
    twice = pd.concat([runs(), runs().iloc[:1]])
    with pytest.raises(UserError, match="several runs for dataset jsb, cell tanh, seed 0"):
        pairwise_comparison(twice)


@pytest.mark.parametrize(
    ("a", "b", "words"),
    [
        ([9.0, 9.1, 9.3], [8.0, 8.1, 8.2], "b better (difference > seed spread, p < 0.05)"),
        ([8.0, 9.0, 10.0], [8.5, 9.45, 10.55], "a consistently lower, by < seed spread (p="),  # seed shift
        ([8.0, 9.0, 8.0], [9.0, 8.0, 7.0], "not distinguishable"),
        ([8.0, 8.2], [9.0, 8.4], "a lower by > seed spread, not significant (p="),
        ([8.0], [9.0], "cannot tell (needs 2+ paired seeds)"),
    ],
)
def test_verdict_needs_both_a_gap_beyond_the_seed_spread_and_a_significant_paired_test(
    a: list[float], b: list[float], words: str
) -> None:
    rows = [{"dataset": "d", "cell": c, "seed": s, "test_nll": x}
            for c, xs in (("a", a), ("b", b)) for s, x in enumerate(xs)]  # fmt: skip
    r = pairwise_comparison(pd.DataFrame(rows)).iloc[0]
    assert r.verdict.startswith(words)
    if words.endswith("(p="):
        assert r.verdict.endswith(f"(p={stats.ttest_rel(a, b).pvalue:.2g})")
