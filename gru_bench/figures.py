"""The report's figures (PNG + SVG): learning curves as in the paper's Figures 2-3, test NLL, epoch time."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FormatStrFormatter  # noqa: E402

from gru_bench import paper  # noqa: E402
from gru_bench.fsutil import atomic_write  # noqa: E402

if TYPE_CHECKING:
    from gru_bench.report import Report

COLORS = {"tanh": "tab:green", "lstm": "tab:blue", "gru": "tab:red"}


def save(fig: plt.Figure, stem: Path) -> list[Path]:
    """`stem`.png and `stem`.svg, each written atomically."""
    paths = []
    for ext in ("png", "svg"):
        path = stem.with_suffix(f".{ext}")
        with atomic_write(path) as f:
            fig.savefig(f, format=ext, dpi=120, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def mean_curve(runs: list[pd.DataFrame], x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds of `y` (and of `x`) per epoch, over the epochs every seed reached."""
    n = min(len(m) for m in runs)
    xs = np.mean([m[x].to_numpy(float)[:n] for m in runs], axis=0)
    ys = np.mean([m[y].to_numpy(float)[:n] for m in runs], axis=0)
    return xs, ys


def plot_curves(dataset: str, curves: dict[str, list[pd.DataFrame]], stem: Path) -> list[Path]:
    """2x2: (train, valid) NLL x (epochs, wall-clock seconds); bold mean over seeds, thin line per seed."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), layout="constrained")
    for row, x in enumerate(("epoch", "seconds")):
        for col, y in enumerate(("train_nll", "valid_nll")):
            ax = axes[row, col]
            for cell in paper.CELLS:
                runs = [m for m in curves.get(cell, []) if len(m)]
                if not runs:
                    continue
                for m in runs:
                    ax.plot(m[x], m[y], color=COLORS[cell], alpha=0.25, linewidth=0.8)
                ax.plot(*mean_curve(runs, x, y), color=COLORS[cell], label=f"{cell} ({len(runs)})")
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
            ax.set_xlabel("epoch" if x == "epoch" else "wall-clock seconds")
            ax.set_ylabel(f"{y.split('_')[0]} NLL per frame (nats)")
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(title="model (seeds)")
    fig.suptitle(f"{dataset}: learning curves")
    return save(fig, stem)


def plot_test_nll(table: pd.DataFrame, stem: Path) -> list[Path]:
    """Test NLL per dataset and model: ours with std error bars, the paper as x, the baseline dashed."""
    datasets = list(dict.fromkeys(table["dataset"]))
    fig, axes = plt.subplots(
        1, len(datasets), figsize=(max(6.0, 3.2 * len(datasets)), 3.6), squeeze=False, layout="constrained"
    )
    for ax, dataset in zip(axes[0], datasets, strict=True):
        t = table[table["dataset"] == dataset].set_index("model")
        for i, cell in enumerate(paper.CELLS):
            r = t.loc[cell]
            if r["n_runs"]:
                std = 0 if math.isnan(r["test_std"]) else r["test_std"]
                ax.errorbar(i, r["test_mean"], yerr=std, fmt="o", color=COLORS[cell], capsize=4)
            if math.isfinite(r["paper_test"]):
                ax.plot(i, r["paper_test"], "x", color="black", markersize=8)
        base = t.loc["bernoulli", "test_mean"] if "bernoulli" in t.index else math.nan
        if math.isfinite(base):
            ax.axhline(base, color="gray", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(paper.CELLS)), paper.CELLS)
        ax.set_xlim(-0.5, len(paper.CELLS) - 0.5)
        ax.set_title(dataset)
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
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(datasets), 3.6))
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


def write_all(report: Report, out: Path) -> list[Path]:
    """Every figure of the report into `out`."""
    paths = []
    for dataset in dict.fromkeys(d for d, _ in report.curves):
        cells = {c: m for (d, c), m in report.curves.items() if d == dataset}
        paths += plot_curves(dataset, cells, out / f"curves_{dataset}")
    if (report.table["n_runs"] > 0).any():
        paths += plot_test_nll(report.table, out / "test_nll")
        paths += plot_epoch_time(report.table, out / "epoch_time")
    return paths
