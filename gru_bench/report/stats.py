"""Is one cell really better than another? Seed-to-seed spread and paired tests across matching seeds.

Runs trained with the same seed share the minibatch order and the random stream of their initial weights, so
differences between cells are compared pairwise over seeds (paired t-test), not as two independent samples.
`compare` shows the result under "Model differences (paired over seeds)" and in pairwise.csv.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy import stats

from gru_bench.errors import UserError
from gru_bench.paper import CELLS

COLUMNS = [
    "dataset", "cell_a", "cell_b", "n_a", "mean_a", "std_a", "n_b", "mean_b", "std_b",
    "n_paired", "mean_diff", "std_diff", "t", "p", "beyond_spread", "verdict",
]  # fmt: skip
ALPHA = 0.05  # two-sided level of the paired t-test


def _cell_order(cells: list[str]) -> list[str]:
    return [c for c in CELLS if c in cells] + sorted(set(cells) - set(CELLS))


def pairwise_comparison(df: pd.DataFrame, metric: str = "test_nll") -> pd.DataFrame:
    """Per dataset and pair of cells (a, b): mean and std of `metric` over seeds, and a paired comparison.

    `df` has one row per run with columns dataset, cell, seed and `metric`; rows whose metric is missing
    (diverged or unfinished runs) are ignored. Output columns: `COLUMNS`, where
    - std_* are sample standard deviations over seeds (ddof=1; NaN for a single seed);
    - mean_diff / std_diff are over seeds present for both cells, diff = a - b (negative: a is better);
    - t, p come from `scipy.stats.ttest_rel` (two-sided; NaN with fewer than two paired seeds);
    - beyond_spread: "the difference is larger than the seed-to-seed spread" means |mean_diff| exceeds
      the larger of the two cells' seed standard deviations (std_a, std_b), i.e. the gap between the
      cells is bigger than what changing only the seed typically does to either one (an effect size of
      more than one seed-sd); None if undefined;
    - verdict, in words, for n_paired >= 2 (fewer: "cannot tell (needs 2+ paired seeds)"):
      "<winner> better (difference > seed spread, p < ALPHA)" when the gap is beyond the spread AND the
      paired t-test rejects equal means; "<winner> lower by > seed spread, not significant (p=...)" when
      only the gap is large (with 2-3 seeds a wide gap can still be luck: the seed sds are themselves
      noisy); "<winner> consistently lower, by < seed spread (p=...)" when only the test rejects (a
      real but small difference: pairing removed a seed effect both cells share); else "not
      distinguishable". Requiring both guards against each criterion's failure: the spread rule ignores
      how few seeds estimate it, the t-test calls any tiny gap significant given enough seeds.
    """
    missing = {"dataset", "cell", "seed", metric} - set(df.columns)
    if missing:
        raise UserError(
            f"runs table lacks column(s) {', '.join(sorted(missing))}: pass dataset, cell, seed, {metric}"
        )
    runs = df.dropna(subset=[metric])
    dup = runs.duplicated(["dataset", "cell", "seed"], keep=False)
    if dup.any():
        d = runs[dup].iloc[0]
        raise UserError(
            f"several runs for dataset {d['dataset']}, cell {d['cell']}, seed {d['seed']}: "
            "select one run per seed (e.g. one sweep) before comparing"
        )
    rows = []
    for dataset, group in runs.groupby("dataset", sort=True):
        by_cell = {c: g.set_index("seed")[metric].astype(float) for c, g in group.groupby("cell")}
        for a, b in itertools.combinations(_cell_order(list(by_cell)), 2):
            xa, xb = by_cell[a], by_cell[b]
            seeds = xa.index.intersection(xb.index)
            diff = (xa[seeds] - xb[seeds]).to_numpy()
            std_a, std_b = xa.std(ddof=1), xb.std(ddof=1)
            t = p = np.nan
            if len(seeds) >= 2:
                t, p = stats.ttest_rel(xa[seeds].to_numpy(), xb[seeds].to_numpy())
            mean_diff = diff.mean() if len(diff) else np.nan
            spread = np.nanmax([std_a, std_b]) if not (np.isnan(std_a) and np.isnan(std_b)) else np.nan
            beyond = None if np.isnan(mean_diff) or np.isnan(spread) else bool(abs(mean_diff) > spread)
            std_diff = diff.std(ddof=1) if len(diff) >= 2 else np.nan
            rows.append([
                dataset, a, b, len(xa), xa.mean(), std_a, len(xb), xb.mean(), std_b,
                len(seeds), mean_diff, std_diff, float(t), float(p), beyond,
                verdict(a, b, len(seeds), mean_diff, float(p), beyond),
            ])  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def verdict(a: str, b: str, n_paired: int, mean_diff: float, p: float, beyond: bool | None) -> str:
    """The plain-words column of `pairwise_comparison` (rules in its docstring); lower metric is better."""
    if n_paired < 2 or beyond is None:
        return "cannot tell (needs 2+ paired seeds)"
    winner = a if mean_diff < 0 else b
    significant = bool(p < ALPHA)  # NaN (all differences 0) is not significant
    if beyond and significant:
        return f"{winner} better (difference > seed spread, p < {ALPHA:g})"
    if beyond:
        return f"{winner} lower by > seed spread, not significant (p={p:.2g})"
    if significant:
        return f"{winner} consistently lower, by < seed spread (p={p:.2g})"
    return "not distinguishable"
