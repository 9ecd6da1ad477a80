"""`gru-bench compare`: every run under results/runs, grouped by settings, set beside the paper's Table 2.

A table cell (dataset x model) averages only finished runs that share one resolved configuration (up to
seed and bookkeeping keys). Unfinished, diverged and differently-configured runs are listed, never averaged
in: a mean over mixed settings would look like a result and be none.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from gru_bench import paper
from gru_bench.config import CONFIGS_DIR, LR_KEY, experiment_keys, flatten, load_config
from gru_bench.data.registry import DATASETS
from gru_bench.errors import UserError
from gru_bench.fsutil import atomic_files, write_json, write_text
from gru_bench.paths import runs_root
from gru_bench.report import figures, stats
from gru_bench.training.rundir import ERROR_FILE, last_error

RUN_COLUMNS = [
    "dataset", "cell", "run", "role", "status", "problem", "group", "main", "seed", "lr", "lr_searched",
    "impl", "hidden", "params", "epochs", "best_epoch", "pruned_epoch", "train_nll", "train_nll_seq",
    "valid_nll", "test_nll", "test_nll_seq", "baseline_train", "baseline_test", "baseline_train_seq",
    "baseline_test_seq", "seconds_per_epoch", "total_seconds", "search", "path", "settings",
]  # fmt: skip
SEARCHED_LR = LR_KEY  # an outcome, not a setting, when a learning-rate search chose it
BASELINE = "bernoulli"  # the `model` name of the independent-Bernoulli reference row
MANIFEST = ".compare-files.json"  # in the out dir: what the last `compare` wrote (all it may ever remove)
SEARCH_COLUMNS = [
    "dataset", "cell", "search", "trials", "finished", "pruned", "diverged", "other", "lr_min", "lr_max",
    "valid_min", "valid_median", "valid_max", "best_trial_lr", "record", "chosen_lr", "chosen_valid_nll",
]  # fmt: skip


@dataclass
class Report:
    """Everything `compare` writes, as data (tests and notebooks use it directly)."""

    runs: pd.DataFrame  # one row per run dir (runs.csv)
    table: pd.DataFrame  # one row per dataset x model of the main groups, plus baseline rows (table2.csv)
    problems: list[str] = field(default_factory=list)  # runs kept out of the table, and why
    other_groups: list[str] = field(default_factory=list)  # finished runs with other settings than the cell's
    searches: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SEARCH_COLUMNS))  # per search
    pairwise: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=stats.COLUMNS))
    curves: dict[tuple[str, str], list[pd.DataFrame]] = field(default_factory=dict)  # main-group metrics


# --- reading runs ---------------------------------------------------------------------------------------


def _read(path: Path, reader) -> tuple[Any, str]:
    """(content, "") or (None, why) — a broken file is a reported problem, not a crash."""
    if not path.exists():
        return None, f"no {path.name}"
    try:
        return reader(path), ""
    except (OSError, ValueError, yaml.YAMLError, pd.errors.ParserError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        return None, f"unreadable {path.name} ({type(e).__name__}: {first})"


def lr_from_search(config: dict, summary: dict | None) -> bool:
    """True when the run's learning rate was picked by `gru-bench search` (an outcome, not a setting)."""
    summary = summary or {}
    return bool(summary.get("lr_searched") or summary.get("search") or config.get("lr_searched"))


def settings(config: dict, searched_lr: bool = False) -> dict[str, Any]:
    """The resolved config minus what may differ between seeds of one experiment (dotted keys, sorted)."""
    kept = experiment_keys(flatten(config))
    return {k: v for k, v in sorted(kept.items()) if not (searched_lr and k == SEARCHED_LR)}


def group_id(s: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(s, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _problem(
    run_dir: Path, summary: dict | None, why_summary: str, metrics: pd.DataFrame | None, config: dict | None
) -> str:
    """Why a run cannot be averaged into its cell, or "" when it can."""
    error = last_error(run_dir)
    if error is not None and (summary or {}).get("status") != "complete":
        return f"failed ({ERROR_FILE}: {error or 'empty'})"
    if config is None and summary is None:
        return "no config.yaml and no summary.json"
    if summary is None:
        return why_summary if why_summary.startswith("unreadable") else f"{why_summary}: unfinished or killed"
    status = summary.get("status")
    epochs = int(summary.get("epochs") or 0)
    if status == "stopped_nan":
        return f"stopped on NaN after {_count(epochs, 'epoch')}"
    if status == "running":
        return f"status running: unfinished or killed ({_count(epochs, 'epoch')} done)"
    if status == "pruned":
        return f"pruned by its search after {_count(epochs, 'epoch')}"
    if status != "complete":
        return f"unknown status {status!r} in summary.json"
    if metrics is None or len(metrics) < epochs:
        rows = 0 if metrics is None else len(metrics)
        return f"metrics.csv has {rows} rows, summary.json says {epochs} epochs"
    if not _finite(summary.get("test_nll")):
        return "summary.json has no finite test_nll"
    return ""


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _run_dirs(runs_root: Path) -> list[Path]:
    marks = ("config.yaml", "summary.json", "metrics.csv", ERROR_FILE)
    found = {p.parent for m in marks for p in runs_root.rglob(m)}
    # hidden folders are scratch space (train --rebuild's .rebuild), not runs
    return sorted(d for d in found if not any(x.startswith(".") for x in d.relative_to(runs_root).parts))


def _run_row(run_dir: Path, rel: tuple[str, ...]) -> dict[str, Any]:
    config, why_config = _read(run_dir / "config.yaml", lambda p: yaml.safe_load(p.read_text()) or {})
    summary, why_summary = _read(run_dir / "summary.json", lambda p: json.loads(p.read_text()))
    if summary is not None and not isinstance(summary, dict):
        summary, why_summary = (
            None,
            f"unreadable summary.json (a JSON {type(summary).__name__}, not an object)",
        )
    metrics, _ = _read(run_dir / "metrics.csv", pd.read_csv)
    config = config if isinstance(config, dict) else None
    summ = summary if isinstance(summary, dict) else {}
    flat = flatten(config or {})
    searched = lr_from_search(config or {}, summ)
    trial = summ.get("search_trial") or {}
    final = summ.get("search") if isinstance(summ.get("search"), dict) else {}  # a run at a searched lr
    s = settings(config, searched) if config else {}
    problem = _problem(run_dir, summary, why_summary, metrics, config) or (
        why_config if config is None else ""
    )
    baseline, baseline_seq = summ.get("baseline_nll") or {}, summ.get("baseline_nll_seq") or {}
    return {
        "dataset": summ.get("dataset", flat.get("dataset", rel[0])),
        "cell": summ.get("cell", flat.get("model.cell", rel[1] if len(rel) > 1 else "?")),
        "run": "/".join(rel[2:]) or run_dir.name,
        "role": "search trial" if trial else ("ablation variant" if summ.get("variant") else "run"),
        "status": summ.get("status", "no summary"),
        "problem": problem,
        "group": group_id(s) if s else "",
        "main": False,
        "seed": summ.get("seed", flat.get("training.seed")),
        "lr": summ.get("lr", flat.get("training.lr")),
        "lr_searched": searched,
        "impl": summ.get("impl", flat.get("model.impl")),
        "hidden": summ.get("hidden", flat.get("model.hidden")),
        "params": summ.get("params"),
        "epochs": summ.get("epochs", 0 if metrics is None else len(metrics)),
        "best_epoch": summ.get("best_epoch"),
        "pruned_epoch": summ.get("pruned_epoch"),
        "train_nll": summ.get("train_nll"),
        "train_nll_seq": summ.get("train_nll_seq"),
        "valid_nll": summ.get("best_valid_nll"),  # in the run's select metric
        "test_nll": summ.get("test_nll"),
        "test_nll_seq": summ.get("test_nll_seq"),
        "baseline_train": baseline.get("train"),
        "baseline_test": baseline.get("test"),
        "baseline_train_seq": baseline_seq.get("train"),
        "baseline_test_seq": baseline_seq.get("test"),
        "seconds_per_epoch": summ.get("seconds_per_epoch"),
        "total_seconds": summ.get("total_seconds"),
        "search": trial.get("name") or final.get("name", ""),
        "path": str(run_dir),
        "settings": s,
    }


def collect_runs(results_dir: str | Path) -> pd.DataFrame:
    """One row per run dir under `results_dir/runs`: status, problem ("" if usable), role, settings group.

    The `main` column (in the table or not) is filled by `build_report`, which knows the cell configs.
    """
    root = runs_root(results_dir)
    rows = [_run_row(d, d.relative_to(root).parts) for d in _run_dirs(root)]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


# --- grouping -----------------------------------------------------------------------------------------


def _config_settings(configs_dir: Path | None, dataset: str, cell: str) -> dict[str, Any] | None:
    """Settings of configs/<dataset>/<cell>.yaml, the cell's reference experiment, if that file exists."""
    path = configs_dir / dataset / f"{cell}.yaml" if configs_dir else None
    if path is None or not path.exists():
        return None
    return settings(load_config(path).to_dict())


def _differences(a: dict, b: dict) -> str:
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {b.get(k, '-')} (table: {a.get(k, '-')})" for k in keys)


def choose_main_groups(runs: pd.DataFrame, configs_dir: Path | None) -> tuple[dict, list[str]]:
    """{(dataset, cell): group id} and one line per finished group left out of the table."""
    main, others = {}, []
    ok = runs[(runs["problem"] == "") & (runs["role"] == "run")]
    for (dataset, cell), cell_runs in ok.groupby(["dataset", "cell"], sort=False):
        sizes = cell_runs.groupby("group").size()
        by_group = {g: cell_runs[cell_runs["group"] == g]["settings"].iloc[0] for g in sizes.index}
        wanted = _config_settings(configs_dir, dataset, cell)
        # lr may be an outcome of a search: compare without it when the cell's runs say so
        if wanted is not None and cell_runs["lr_searched"].any():
            wanted.pop(SEARCHED_LR, None)
        matching = [g for g, s in by_group.items() if s == wanted]
        chosen = matching[0] if matching else sizes.sort_values(ascending=False, kind="stable").index[0]
        main[(dataset, cell)] = chosen
        if wanted is not None and not matching:
            others.append(
                f"{dataset}/{cell}: no run matches {configs_dir.name}/{dataset}/{cell}.yaml; the table shows "
                f"the largest group, {chosen}"
            )
        for g, n in sizes.items():
            if g != chosen:
                others.append(
                    f"{dataset}/{cell} group {g} ({_count(n, 'run')}): "
                    f"{_differences(by_group[chosen], by_group[g])}"
                )
    return main, others


# --- table ---------------------------------------------------------------------------------------------


def _mean_std(x: pd.Series) -> tuple[float, float]:
    x = pd.to_numeric(x, errors="coerce").dropna()
    return (float(x.mean()), float(x.std(ddof=1))) if len(x) else (math.nan, math.nan)


def build_table(runs: pd.DataFrame, main: dict) -> pd.DataFrame:
    """Table 2 rows for every dataset with runs (all three models, missing ones with n_runs 0) + baselines.

    `*_seq`: the paper's metric (mean over sequences), compared with the paper's numbers; the others are
    frame-weighted, compared with Bai et al. (2018) where they report the dataset. Runs that predate the
    per-sequence metric have only frame-weighted numbers (their `_seq` cells are NaN)."""
    rows = []
    found = set(runs["dataset"])
    in_main = runs[runs["main"]]
    for dataset in [d for d in DATASETS if d in found] + sorted(found - set(DATASETS)):
        for cell in paper.CELLS:
            r = in_main[(in_main["dataset"] == dataset) & (in_main["cell"] == cell)]
            ref = paper.paper_nll(dataset, cell) or (math.nan, math.nan)
            train, test = _mean_std(r["train_nll_seq"]), _mean_std(r["test_nll_seq"])
            train_f, test_f = _mean_std(r["train_nll"]), _mean_std(r["test_nll"])
            lrs = sorted(set(r["lr"].dropna()))
            rows.append(
                {
                    "dataset": dataset,
                    "model": cell,
                    "group": main.get((dataset, cell), ""),
                    "n_runs": len(r),
                    "lr": lrs[0] if len(lrs) == 1 else math.nan,
                    "lr_searched": bool(r["lr_searched"].any()),
                    "train_seq_mean": train[0],
                    "train_seq_std": train[1],
                    "test_seq_mean": test[0],
                    "test_seq_std": test[1],
                    "paper_train": ref[0],
                    "paper_test": ref[1],
                    "diff_train": train[0] - ref[0],
                    "diff_test": test[0] - ref[1],
                    "valid_mean": _mean_std(r["valid_nll"])[0],
                    "train_mean": train_f[0],
                    "train_std": train_f[1],
                    "test_mean": test_f[0],
                    "test_std": test_f[1],
                    "bai2018_test": paper.BAI2018_TEST.get(dataset, {}).get(cell, math.nan),
                    "seconds_per_epoch": _mean_std(r["seconds_per_epoch"])[0],
                    "seconds_per_epoch_std": _mean_std(r["seconds_per_epoch"])[1],
                    "best": False,
                }
            )
        ours = [row for row in rows if row["dataset"] == dataset and row["n_runs"]]
        if ours:
            key = "test_seq_mean" if all(math.isfinite(row["test_seq_mean"]) for row in ours) else "test_mean"
            min(ours, key=lambda row: row[key])["best"] = True
        base = in_main[in_main["dataset"] == dataset]
        rows.append(
            {
                "dataset": dataset,
                "model": BASELINE,
                "n_runs": 0,
                "best": False,
                "train_seq_mean": _mean_std(base["baseline_train_seq"])[0],
                "test_seq_mean": _mean_std(base["baseline_test_seq"])[0],
                "train_mean": _mean_std(base["baseline_train"])[0],
                "test_mean": _mean_std(base["baseline_test"])[0],
            }
        )
    return pd.DataFrame(rows)


def find_problems(runs: pd.DataFrame, main: dict) -> list[str]:
    """Unusable runs (search trials aside), and cells of datasets with runs that have no usable run."""
    bad = runs[(runs["problem"] != "") & (runs["role"] == "run")]
    out = [f"{r.dataset}/{r.cell}/{r.run}: {r.problem}" for r in bad.itertuples()]
    seen = [d for d in DATASETS if d in set(runs["dataset"])]
    out += [
        f"{d}/{c}: no finished run (missing cell)" for d in seen for c in paper.CELLS if (d, c) not in main
    ]
    unseen = [d for d in DATASETS if d not in seen]
    if unseen:
        out.append(f"no runs at all for: {', '.join(unseen)}")
    return out


def _search_record(results_dir: Path, dataset: str, cell: str, name: str) -> tuple[str, dict]:
    """(status, the chosen trial's numbers or {}) from results/search/<dataset>/<cell>/<name>/search.json."""
    path = results_dir / "search" / dataset / cell / name / "search.json"
    rec, why = _read(path, lambda p: json.loads(p.read_text()))
    if not isinstance(rec, dict):
        return why or "unreadable search.json (not an object)", {}
    chosen = rec.get("chosen")
    numbers = {k: v for k, v in chosen.items() if _finite(v)} if isinstance(chosen, dict) else {}
    return str(rec.get("status", "no status")), numbers


def summarize_searches(runs: pd.DataFrame, results_dir: Path) -> pd.DataFrame:
    """One row per learning-rate search: its trials (runs of their own, never in the table), the spread of
    their best valid NLLs, and the lr the search chose (from its search.json, the search's own record)."""
    rows = []
    trials = runs[runs["role"] == "search trial"]
    for (dataset, cell, name), t in trials.groupby(["dataset", "cell", "search"], sort=False):
        done = t[t["problem"] == ""]
        valid = pd.to_numeric(done["valid_nll"], errors="coerce")
        lrs = pd.to_numeric(t["lr"], errors="coerce")
        diverged = int((t["status"] == "stopped_nan").sum())
        pruned = int((t["status"] == "pruned").sum())
        record, chosen = _search_record(results_dir, dataset, cell, name)
        rows.append(
            {
                "dataset": dataset,
                "cell": cell,
                "search": name,
                "trials": len(t),
                "finished": len(done),
                "pruned": pruned,
                "diverged": diverged,
                "other": len(t) - len(done) - diverged - pruned,
                "lr_min": lrs.min(),
                "lr_max": lrs.max(),
                "valid_min": valid.min(),
                "valid_median": valid.median(),
                "valid_max": valid.max(),
                "best_trial_lr": float(done.loc[valid.idxmin(), "lr"]) if valid.notna().any() else math.nan,
                "record": record,
                "chosen_lr": chosen.get("lr", math.nan),
                "chosen_valid_nll": chosen.get("best_valid_nll", math.nan),
            }
        )
    return pd.DataFrame(rows, columns=SEARCH_COLUMNS)


def search_lines(searches: pd.DataFrame) -> list[str]:
    """The searches section of table2.md, one line per row of `summarize_searches`."""
    out = []
    for r in searches.itertuples():
        line = (
            f"{r.dataset}/{r.cell} search '{r.search}': {_count(r.trials, 'trial')} ({r.finished} finished, "
            f"{r.pruned} pruned, {r.diverged} diverged, {r.other} other), lr {r.lr_min:.3g} to {r.lr_max:.3g}"
        )
        if r.finished:
            line += (
                f"; best valid NLL of finished trials: min {r.valid_min:.3f} (lr {r.best_trial_lr:.3g}), "
                f"median {r.valid_median:.3f}, max {r.valid_max:.3f}"
            )
        if math.isfinite(r.chosen_lr):
            line += f"; **chosen lr {r.chosen_lr:.3g}** (valid NLL {r.chosen_valid_nll:.3f})"
        else:
            where = r.record if r.record.startswith(("no ", "unreadable")) else f"search.json: {r.record}"
            line += f"; no lr chosen ({where})"
        out.append(line)
    return out


def _drop_repeated_seeds(runs: pd.DataFrame) -> None:
    """A second table run with the settings AND seed of another is a repeat, not a new seed: counting it
    would shrink the std and break the pairing over seeds. The first by run name stays."""
    main = runs[runs["main"]].sort_values("run", kind="stable")
    key = ["dataset", "cell", "seed"]
    first = main.drop_duplicates(key).set_index(key)["run"]
    for i in main.index[main.duplicated(key)]:
        r = runs.loc[i]
        runs.loc[i, "main"] = False
        runs.loc[i, "problem"] = f"same settings and seed {r.seed} as {first[(r.dataset, r.cell, r.seed)]}"


def pairwise(runs: pd.DataFrame) -> pd.DataFrame:
    """`stats.pairwise_comparison` of the table's runs (one per dataset, cell and seed) in the paper's
    metric; datasets whose table runs predate it are compared frame-weighted (the `metric` column says)."""
    main = runs.loc[runs["main"], ["dataset", "cell", "seed", "test_nll", "test_nll_seq"]]
    parts = []
    for _, d in main.groupby("dataset", sort=False):
        seq = pd.to_numeric(d["test_nll_seq"], errors="coerce")
        metric = "seq" if seq.notna().all() else "frame"
        d = d.assign(test_nll=seq) if metric == "seq" else d
        parts.append(
            stats.pairwise_comparison(d[["dataset", "cell", "seed", "test_nll"]]).assign(metric=metric)
        )
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*stats.COLUMNS, "metric"])


def build_report(results_dir: str | Path, configs_dir: str | Path | None = CONFIGS_DIR) -> Report:
    """Read, group and tabulate every run (no files written). configs_dir None: each cell's largest group."""
    if configs_dir is not None and not Path(configs_dir).is_dir():  # else every cell silently falls back
        raise UserError(
            f"--configs {configs_dir} is not a folder: give the folder of <dataset>/<cell>.yaml cell configs "
            "(default: the repository's configs/)"
        )
    runs = collect_runs(results_dir)
    if runs.empty:
        raise UserError(f"no runs under {Path(results_dir) / 'runs'}: train first (gru-bench train or sweep)")
    main, others = choose_main_groups(runs, Path(configs_dir) if configs_dir else None)
    runs["main"] = [
        main.get((d, c)) == g and p == "" and role == "run"
        for d, c, g, p, role in runs[["dataset", "cell", "group", "problem", "role"]].itertuples(index=False)
    ]
    _drop_repeated_seeds(runs)
    curves = {}
    for r in runs[runs["main"]].itertuples():
        metrics = pd.read_csv(Path(r.path) / "metrics.csv")
        curves.setdefault((r.dataset, r.cell), []).append(metrics)
    return Report(
        runs=runs,
        table=build_table(runs, main),
        problems=find_problems(runs, main),
        other_groups=others,
        searches=summarize_searches(runs, Path(results_dir)),
        pairwise=pairwise(runs),
        curves=curves,
    )


# --- writing -----------------------------------------------------------------------------------------


def _fmt(mean: float, std: float = math.nan, digits: int = 2) -> str:
    if not math.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if math.isfinite(std) else "")


def _signed(x: float) -> str:
    return f"{x:+.2f}" if math.isfinite(x) else "—"


def table_markdown(table: pd.DataFrame) -> list[str]:
    """Table 2 as markdown, in the paper's metric beside the paper and frame-weighted beside Bai et al.
    (2018), then who is worse than the baseline; from `build_table`'s rows or the table2.csv they were saved
    to: table2.md and the generated blocks of the README both print this."""
    lines = [
        "### In the paper's metric: mean over sequences of each sequence's NLL per frame",
        "",
        "The pylearn2 monitor behind the paper's Table 2 averages over batches of one sequence each. "
        "— : the runs predate this metric (see the frame-weighted table).",
        "",
        "| dataset | model | runs | lr | train | paper | Δ | test | paper | Δ |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    frame = [
        "",
        "### Frame-weighted: all frames of a split pooled",
        "",
        "The metric of Boulanger-Lewandowski et al. (2012) and Bai et al. (2018); Bai et al.'s models are "
        f"larger (~300K parameters on JSB, ~1M on Nottingham). {paper.BAI2018}, Table 1.",
        "",
        "| dataset | model | runs | train | test | Bai et al. test |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for r in table.to_dict("records"):
        if r["model"] == BASELINE:
            lines.append(
                f"| {r['dataset']} | *{BASELINE}* | | | {_fmt(r['train_seq_mean'])} | | | "
                f"{_fmt(r['test_seq_mean'])} | | |"
            )
            frame.append(
                f"| {r['dataset']} | *{BASELINE}* | | {_fmt(r['train_mean'])} | {_fmt(r['test_mean'])} | |"
            )
            continue
        lr = "—" if not math.isfinite(r["lr"]) else f"{r['lr']:.3g}" + (" (search)" * r["lr_searched"])
        test = _fmt(r["test_seq_mean"], r["test_seq_std"])
        if r["best"] and math.isfinite(r["test_seq_mean"]):
            model, test = f"**{r['model']}**", f"**{test}**"
        else:
            model = r["model"]
        lines.append(
            f"| {r['dataset']} | {model} | {r['n_runs']} | {lr} "
            f"| {_fmt(r['train_seq_mean'], r['train_seq_std'])} | {_fmt(r['paper_train'])} "
            f"| {_signed(r['diff_train'])} | {test} | {_fmt(r['paper_test'])} | {_signed(r['diff_test'])} |"
        )
        test = _fmt(r["test_mean"], r["test_std"])
        if r["best"] and not math.isfinite(r["test_seq_mean"]):  # picked in this metric
            model, test = f"**{r['model']}**", f"**{test}**"
        frame.append(
            f"| {r['dataset']} | {model} | {r['n_runs']} | {_fmt(r['train_mean'], r['train_std'])} "
            f"| {test} | {_fmt(r['bai2018_test'])} |"
        )
    lines += frame
    base = table[table["model"] == BASELINE].set_index("dataset")["test_mean"]
    ours = table[(table["model"] != BASELINE) & (table["n_runs"] > 0)]
    worse = [
        f"{r.dataset}/{r.model}" for r in ours.itertuples() if r.test_mean >= base.get(r.dataset, math.inf)
    ]
    if worse:
        lines += ["", f"**Worse than the Bernoulli baseline** (undertrained or broken): {', '.join(worse)}"]
    return lines


def to_markdown(report: Report, results_dir: Path) -> str:
    """table2.md: the table, then what was left out of it and why."""
    lines = [
        "# Table 2: negative log-likelihood per frame (nats)",
        "",
        f"Runs under `{results_dir}/runs`. Ours: mean ± std over seeds of the best-validation model; "
        f"paper: {paper.CITATION}, Table 2. Δ = ours − paper. **Bold**: lowest mean test NLL of the dataset. "
        f"`{BASELINE}`: independent notes at their training frequencies (the bar any model must clear).",
        "",
        *table_markdown(report.table),
    ]
    table = report.table
    lines += ["", "## Left out of the table", ""]
    lines += [f"- {p}" for p in report.problems] or ["- nothing: every run found is finished and tabulated"]
    lines += ["", "## Finished runs with other settings (not averaged into the table)", ""]
    lines += [f"- {g}" for g in report.other_groups] or ["- none"]
    lines += pairwise_markdown(report.pairwise)
    if len(report.searches):
        lines += ["", "## Learning-rate searches (trial runs, not in the table)", ""]
        lines += [f"- {s}" for s in search_lines(report.searches)]
    lines += [
        "",
        "## Files",
        "",
        "- `table2.csv`: this table at full precision; `runs.csv`: every run, its status, problem, group",
        "- `pairwise.csv`: the model differences at full precision (`stats.COLUMNS`)",
    ]
    if len(report.searches):
        lines.append("- `searches.csv`: one row per learning-rate search (valid NLL spread, chosen lr)")
    if (table["n_runs"] > 0).any():
        lines += [
            "- `curves_<dataset>.png/.svg`: train and valid NLL vs epochs and vs wall-clock seconds",
            "- `test_nll.png/.svg`: test NLL per model (error bars: std over seeds; x: paper)",
            "- `epoch_time.png/.svg`: wall-clock seconds per epoch",
        ]
    lines.append("")
    return "\n".join(lines)


def pairwise_markdown(pw: pd.DataFrame) -> list[str]:
    """The "Model differences" section of table2.md (empty without a pair of models to compare)."""
    if pw.empty:
        return []
    lines = [
        "",
        "## Model differences (paired over seeds)",
        "",
        "Test NLL of model a − model b over the seeds both have (negative: a is better), mean ± std of the "
        "per-seed differences; paired t-test (two-sided). A verdict names a winner only when the gap "
        "exceeds the seed-to-seed spread (the larger of the two models' std over seeds) and p < "
        f"{stats.ALPHA:g}; see `gru_bench.report.stats.pairwise_comparison` for the exact rule. "
        "Metric: seq (the paper's) where every table run has it, else frame.",
        "",
        "| dataset | metric | a − b | difference | seeds | seed spread (a, b) | t | p | verdict |",
        "|---|---|---|--:|--:|--:|--:|--:|---|",
    ]
    for r in pw.itertuples():
        spread = f"{_fmt(r.std_a, digits=3)}, {_fmt(r.std_b, digits=3)}"
        t, p = (f"{r.t:.2f}", f"{r.p:.2g}") if math.isfinite(r.p) else ("—", "—")
        lines.append(
            f"| {r.dataset} | {r.metric} | {r.cell_a} − {r.cell_b} | {_fmt(r.mean_diff, r.std_diff, 3)} "
            f"| {r.n_paired} "
            f"| {spread} | {t} | {p} | {r.verdict} |"
        )
    return lines


def _write_outputs(out: Path, files: dict[str, str], report: Report) -> None:
    """Write the report into `out`, then remove what the previous `compare` wrote there and this one did
    not (e.g. the curves of a dataset whose runs are gone). Files `compare` never wrote are never touched."""
    old, _ = _read(out / MANIFEST, lambda p: json.loads(p.read_text()))
    with atomic_files(out) as staging:  # a failure (disk full) leaves the previous report whole
        for name, text in files.items():
            write_text(staging / name, text)
        written = [*files, *(p.name for p in figures.write_all(report.table, report.curves, staging))]
        write_json(staging / MANIFEST, sorted(written))
    stale = set(old if isinstance(old, list) else []) - set(written)
    for name in sorted(stale):
        if isinstance(name, str) and name == Path(name).name and name not in ("", ".", "..", MANIFEST):
            (out / name).unlink(missing_ok=True)


def compare(
    results_dir: str | Path = "results",
    out_dir: str | Path | None = None,
    configs_dir: str | Path | None = CONFIGS_DIR,
) -> Path:
    """Write table2.md/.csv, runs.csv, pairwise.csv, searches.csv (if any) and the figures into `out_dir`
    (default results_dir/report), removing only files an earlier `compare` wrote there and this one not."""
    results_dir = Path(results_dir)
    out = Path(out_dir) if out_dir is not None else results_dir / "report"
    report = build_report(results_dir, configs_dir)
    files = {
        "runs.csv": report.runs.drop(columns="settings").to_csv(index=False),
        "table2.csv": report.table.to_csv(index=False),
        "pairwise.csv": report.pairwise.to_csv(index=False),
        "table2.md": to_markdown(report, results_dir),
    }
    if len(report.searches):
        files["searches.csv"] = report.searches.to_csv(index=False)
    _write_outputs(out, files, report)
    return out


# --- ablations ------------------------------------------------------------------------------------------

ABLATION_METRICS = {"valid": "valid_nll_seq", "test": "test_nll_seq"}


def ablation_table(sweep_file: str | Path, baseline: str | None = None) -> pd.DataFrame:
    """Each variant of a sweep with `variants:` against the baseline variant (default: the first), paired
    over seeds per dataset and model, in the paper's metric at the best-validation epoch. Rows: dataset,
    cell, variant, metric (valid, test) and `stats.COLUMNS` (a = the variant, b = the baseline).
    Runs that did not finish are left out of the pairs (n_paired says how many seeds remain)."""
    from gru_bench.experiments import sweep as sweeps

    sw = sweeps.load_sweep(sweep_file)
    if not sw.variants:
        raise UserError(f"{sweep_file} has no variants: an ablation compares named variants of one setup")
    base = baseline or next(iter(sw.variants))
    if base not in sw.variants:
        raise UserError(f"--baseline {base}: not a variant of {sweep_file} ({', '.join(sw.variants)})")
    rows = []
    for spec in sweeps.expand(sw):
        variant = spec.name.removeprefix(f"{sw.name}-").rsplit("-seed", 1)[0]
        summary, _ = _read(spec.run_dir / "summary.json", lambda p: json.loads(p.read_text()))
        done = isinstance(summary, dict) and summary.get("status") == "complete"
        dataset, cell = spec.run_dir.parts[-3:-1]
        rows.append(
            {
                "dataset": dataset,
                "model": cell,
                "variant": variant,
                "seed": int(spec.name.rsplit("seed", 1)[1]),
            }
            | {m: summary.get(col) if done else None for m, col in ABLATION_METRICS.items()}
        )
    runs = pd.DataFrame(rows)
    out = []
    for (_, cell), r in runs.groupby(["dataset", "model"], sort=False):
        for metric in ABLATION_METRICS:
            df = r.rename(columns={"variant": "cell"})[["dataset", "cell", "seed", metric]]
            for variant in [v for v in sw.variants if v != base]:
                pair = stats.pairwise_comparison(df[df["cell"].isin([variant, base])], metric)
                pair = pair[(pair["cell_a"] == variant) | (pair["cell_b"] == variant)]
                if pair.empty:
                    continue
                row = pair.iloc[0].to_dict()
                if row["cell_a"] != variant:  # order a = variant, b = baseline
                    row = _swap(row)
                out.append({"model": cell, "variant": variant, "metric": metric, **row})
    return pd.DataFrame(out, columns=["model", "variant", "metric", *stats.COLUMNS])


def _swap(row: dict) -> dict:
    """A pairwise row with a and b exchanged (the difference changes sign)."""
    out = dict(row)
    for x in ("cell", "n", "mean", "std"):
        out[f"{x}_a"], out[f"{x}_b"] = row[f"{x}_b"], row[f"{x}_a"]
    out["mean_diff"], out["t"] = -row["mean_diff"], -row["t"]
    out["verdict"] = stats.verdict(
        out["cell_a"], out["cell_b"], row["n_paired"], out["mean_diff"], row["p"], row["beyond_spread"]
    )
    return out


def ablation_markdown(table: pd.DataFrame, sweep_file: str | Path) -> str:
    """ablation.md: one line per dataset, model, variant and metric."""
    lines = [
        f"# Ablation: {Path(sweep_file).name}",
        "",
        "Each variant against the baseline (b), paired over seeds: NLL per frame in the paper's metric (mean "
        "over sequences) of the best-validation model, variant − baseline (positive: the variant is worse); "
        "paired t-test; verdict as in table2.md.",
        "",
        "| dataset | model | variant | metric | variant | baseline | difference | seeds | p | verdict |",
        "|---|---|---|---|--:|--:|--:|--:|--:|---|",
    ]
    for r in table.itertuples():
        p = f"{r.p:.2g}" if math.isfinite(r.p) else "—"
        lines.append(
            f"| {r.dataset} | {r.model} | {r.variant} | {r.metric} | {_fmt(r.mean_a, r.std_a, 3)} "
            f"| {_fmt(r.mean_b, r.std_b, 3)} | {_fmt(r.mean_diff, r.std_diff, 3)} | {r.n_paired} | {p} "
            f"| {r.verdict} |"
        )
    return "\n".join(lines) + "\n"


def write_ablation(sweep_file: str | Path, out_dir: str | Path, baseline: str | None = None) -> Path:
    """ablation.csv and ablation.md of a sweep into `out_dir` (atomically, each)."""
    table = ablation_table(sweep_file, baseline)
    out = Path(out_dir)
    stem = Path(sweep_file).stem
    write_text(out / f"{stem}.csv", table.to_csv(index=False))
    write_text(out / f"{stem}.md", ablation_markdown(table, sweep_file))
    return out / f"{stem}.md"
