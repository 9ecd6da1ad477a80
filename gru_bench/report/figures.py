"""The report's figures (PNG + SVG): learning curves as in the paper's Figures 2-3, test NLL, epoch time."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FormatStrFormatter

from gru_bench import paper
from gru_bench.fsutil import atomic_write

COLORS = {"tanh": "tab:green", "lstm": "tab:blue", "gru": "tab:red"}
# Committed report files must not change when nothing changed: no date or matplotlib version in the
# metadata, and SVG element ids hashed with a fixed salt instead of a random one.
METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}
SVG_HASHSALT = "gru-bench"


def save(fig: Figure, stem: Path) -> list[Path]:
    """`stem`.png and `stem`.svg, each written atomically, byte-identical for the same figure."""
    paths = []
    for ext in ("png", "svg"):
        path = stem.with_suffix(f".{ext}")
        with matplotlib.rc_context({"svg.hashsalt": SVG_HASHSALT}), atomic_write(path) as f:
            fig.savefig(f, format=ext, dpi=120, bbox_inches="tight", metadata=METADATA[ext])
        paths.append(path)
    return paths


def mean_curve(runs: list[pd.DataFrame], x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds of `y` (and of `x`) per epoch, over the epochs every seed reached and scored (the
    train split is not scored every epoch: its empty cells are NaN)."""
    n = min(len(m) for m in runs)
    xs = np.mean([m[x].to_numpy(float)[:n] for m in runs], axis=0)
    ys = np.mean([m[y].to_numpy(float)[:n] for m in runs], axis=0)
    ok = np.isfinite(ys)
    return xs[ok], ys[ok]


def _metric(runs: list[pd.DataFrame], split: str) -> str:
    """The column of a split's NLL: the paper's metric where every run has it, else frame-weighted."""
    seq = f"{split}_nll_seq"
    return seq if all(seq in m and m[seq].notna().any() for m in runs) else f"{split}_nll"


def plot_curves(dataset: str, curves: dict[str, list[pd.DataFrame]], stem: Path) -> list[Path]:
    """2x2: (train, valid) NLL x (epochs, wall-clock seconds); bold mean over seeds, thin line per seed."""
    fig = Figure(figsize=(10, 7), layout="constrained")  # no pyplot: no global state, no display backend
    axes = fig.subplots(2, 2)
    for row, x in enumerate(("epoch", "seconds")):
        for col, split in enumerate(("train", "valid")):
            ax = axes[row, col]
            for cell in paper.CELLS:
                runs = [m for m in curves.get(cell, []) if len(m)]
                if not runs:
                    continue
                y = _metric(runs, split)
                for m in runs:
                    scored = m[m[y].notna()]
                    ax.plot(scored[x], scored[y], color=COLORS[cell], alpha=0.25, linewidth=0.8)
                ax.plot(*mean_curve(runs, x, y), color=COLORS[cell], label=f"{cell} ({len(runs)})")
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
            ax.set_xlabel("epoch" if x == "epoch" else "wall-clock seconds")
            ax.set_ylabel(f"{split} NLL per frame (nats)")
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(title="model (seeds)")
    fig.suptitle(f"{dataset}: learning curves")
    return save(fig, stem)


def plot_test_nll(table: pd.DataFrame, stem: Path) -> list[Path]:
    """Test NLL per dataset and model: ours with std error bars, the paper as x, the baseline dashed."""
    datasets = list(dict.fromkeys(table["dataset"]))
    fig = Figure(figsize=(max(6.0, 3.2 * len(datasets)), 3.6), layout="constrained")
    axes = fig.subplots(1, len(datasets), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        t = table[table["dataset"] == dataset].set_index("model")
        seq = all(math.isfinite(t.loc[c, "test_seq_mean"]) for c in paper.CELLS if t.loc[c, "n_runs"])
        mean, std = ("test_seq_mean", "test_seq_std") if seq else ("test_mean", "test_std")
        for i, cell in enumerate(paper.CELLS):
            r = t.loc[cell]
            if r["n_runs"]:
                ax.errorbar(i, r[mean], yerr=np.nan_to_num(r[std]), fmt="o", color=COLORS[cell], capsize=4)
            if math.isfinite(r["paper_test"]):
                ax.plot(i, r["paper_test"], "x", color="black", markersize=8)
        base = t.loc["bernoulli", mean] if "bernoulli" in t.index else math.nan
        if math.isfinite(base):
            ax.axhline(base, color="gray", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(paper.CELLS)), paper.CELLS)
        ax.set_xlim(-0.5, len(paper.CELLS) - 0.5)
        ax.set_title(f"{dataset} ({'per sequence' if seq else 'frame-weighted'})")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("test NLL per frame (nats)")
    legend = [
        Line2D([], [], marker="o", color="gray", linestyle="", label="ours: mean ± std over seeds"),
        Line2D([], [], marker="x", color="black", linestyle="", label="paper (Table 2)"),
        Line2D([], [], color="gray", linestyle="--", label="independent-Bernoulli baseline"),
    ]
    fig.legend(handles=legend, loc="outside lower center", ncols=3, fontsize="small")
    return save(fig, stem)


def plot_epoch_time(table: pd.DataFrame, stem: Path) -> list[Path]:
    """Mean wall-clock seconds per epoch per dataset and model (error bars: std over seeds)."""
    t = table[table["model"].isin(paper.CELLS)]
    datasets = list(dict.fromkeys(t["dataset"]))
    fig = Figure(figsize=(1.8 + 1.6 * len(datasets), 3.6))
    ax = fig.subplots()
    width = 0.8 / len(paper.CELLS)
    for i, cell in enumerate(paper.CELLS):
        r = t[t["model"] == cell].set_index("dataset").reindex(datasets)
        ax.bar(
            np.arange(len(datasets)) + (i - 1) * width,
            r["seconds_per_epoch"],
            width,
            yerr=r["seconds_per_epoch_std"].fillna(0),
            color=COLORS[cell],
            capsize=3,
            label=cell,
        )
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylabel("wall-clock seconds per epoch")
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    return save(fig, stem)


def write_all(
    table: pd.DataFrame, curves: dict[tuple[str, str], list[pd.DataFrame]], out: Path
) -> list[Path]:
    """Every figure of the report into `out`: `table` is Table 2 (table2.csv's rows), `curves` the metrics
    of each (dataset, cell)'s table runs."""
    paths = []
    for dataset in dict.fromkeys(d for d, _ in curves):
        cells = {c: m for (d, c), m in curves.items() if d == dataset}
        paths += plot_curves(dataset, cells, out / f"curves_{dataset}")
    if (table["n_runs"] > 0).any():
        paths += plot_test_nll(table, out / "test_nll")
        paths += plot_epoch_time(table, out / "epoch_time")
    return paths
