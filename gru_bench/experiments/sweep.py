"""Sweeps: a YAML grid of datasets x models x seeds (x config values) expanded into runs and trained.

A sweep file (see configs/sweeps/):

    name: reproduce                     # run names: <name>[-<grid values>]-seed<seed>
    datasets: all                       # or a list: [jsb, nottingham]
    models: [tanh, lstm, gru]
    seeds: [0, 1, 2]
    config: ../{dataset}/{model}.yaml   # base config per dataset x model, relative to this file
    overrides: {training.max_epochs: 3} # set in every run
    grid: {training.weight_noise: [0, 0.075]}   # every combination is a separate set of runs
    variants: {ours: {training.loss: mean}}     # named sets of overrides, each a separate set of runs
    search: {trials: 10, log_lr_range: [-12, -6], seed: 0}  # optional: learning-rate search first;
                                        # prune: {rungs: [10, 30, 90], eta: 3} (the default) or false
    lockstep: 3                         # runs per stacked model (seeds / lrs of one cell train together)

With `search`, each dataset x model x grid point first trains the search trials (search.py), then its seeds
with the learning rate of the best trial. Re-running a sweep skips finished runs, resumes interrupted ones and
retries failed ones (scheduler.py).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gru_bench import paper
from gru_bench.config import LR_KEY, NAME, SEED_KEY, override, read_yaml
from gru_bench.data import resolve
from gru_bench.data.registry import resolve_names
from gru_bench.errors import UserError
from gru_bench.experiments import scheduler
from gru_bench.experiments.search import Halving, Search
from gru_bench.training import rundir

KEYS = (
    "name",
    "datasets",
    "models",
    "seeds",
    "config",
    "overrides",
    "grid",
    "variants",
    "search",
    "lockstep",
)
SEARCH_KEYS = ("trials", "log_lr_range", "seed", "prune")
RESERVED = {"dataset": "datasets", "model.cell": "models", SEED_KEY: "seeds"}  # set by the sweep's own lists


@dataclass
class Sweep:
    path: Path
    name: str
    datasets: list[str]
    models: list[str]
    seeds: list[int]
    config: str = "../{dataset}/{model}.yaml"
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> overrides (ablations)
    search: dict[str, Any] | None = None
    k: int = 3  # the file's `lockstep:`, runs per stacked model


def _list(value: Any, where: str, kind: type | None = None) -> list:
    """A non-empty list (a scalar counts as a list of one), of `kind` if given (true/false is not an int)."""
    value = value if isinstance(value, list) else [value]
    if not value or kind and not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise UserError(
            f"{where} must be a non-empty list{f' of {kind.__name__}s' if kind else ''}, got {value!r}"
        )
    return value


def _dotted_map(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and "." in k or k == "dataset" for k in value
    ):
        raise UserError(
            f"{where} must map dotted config keys to values, e.g. {{training.max_epochs: 3}}, got {value!r}"
        )
    for key in value:
        if key in RESERVED:
            raise UserError(f"{where}: {key} is set by the sweep's `{RESERVED[key]}:` list; put it there")
    return value


def _search(raw: Any, where: str) -> dict[str, Any]:
    """Search settings with the paper's defaults (gru_bench.paper) for what is left out."""
    if not isinstance(raw, dict) or set(raw) - set(SEARCH_KEYS):
        raise UserError(f"{where} must be a mapping with keys {', '.join(SEARCH_KEYS)}, got {raw!r}")
    trials, seed = raw.get("trials", paper.LR_SEARCH_TRIALS), raw.get("seed", 0)
    lr_range = raw.get("log_lr_range", list(paper.LR_SEARCH_LOG_RANGE))
    ok_range = (
        isinstance(lr_range, list)
        and len(lr_range) == 2
        and all(isinstance(x, (int, float)) for x in lr_range)
        and lr_range[0] < lr_range[1]
    )
    if not (isinstance(trials, int) and trials >= 1 and isinstance(seed, int) and ok_range):
        raise UserError(
            f"{where}: need trials: integer >= 1, seed: integer, log_lr_range: [low, high], low < high; "
            f"got {raw!r}"
        )
    prune = raw.get("prune", {})
    if prune is not False and (not isinstance(prune, dict) or set(prune) - {"rungs", "eta"}):
        raise UserError(
            f"{where}: prune must be false or a mapping {{rungs: [10, 30, 90], eta: 3}}, got {prune!r}"
        )
    if prune is not False:
        try:
            prune = Halving(tuple(prune.get("rungs", Halving.rungs)), prune.get("eta", Halving.eta))
        except (TypeError, UserError) as e:
            raise UserError(f"{where}: {e}") from None
    return {
        "trials": trials,
        "log_lr_range": (float(lr_range[0]), float(lr_range[1])),
        "seed": seed,
        "prune": prune or None,
    }


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file (configs are checked later, when the runs are expanded)."""
    path = Path(path)
    raw = read_yaml(path, f"sweep file {path}") or {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: must be a mapping with keys {', '.join(KEYS)}")
    unknown = set(raw) - set(KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key {sorted(unknown)[0]} (allowed: {', '.join(KEYS)})")
    name = str(raw.get("name") or path.stem)
    if not NAME[0](name):
        raise UserError(f"{path}: name {name!r} names run dirs: use {NAME[1]}")
    datasets = [
        d.key for x in _list(raw.get("datasets", "all"), f"{path}: datasets", str) for d in resolve_names(x)
    ]
    models = _list(raw.get("models", list(paper.CELLS)), f"{path}: models", str)
    bad = [m for m in models if m not in paper.CELLS]
    if bad:
        raise UserError(f"{path}: models: unknown model {bad[0]!r} (choose from {', '.join(paper.CELLS)})")
    grid = _dotted_map(raw.get("grid") or {}, f"{path}: grid")
    grid = {k: _list(v, f"{path}: grid: {k}") for k, v in grid.items()}
    variants = raw.get("variants") or {}
    if not isinstance(variants, dict) or not all(isinstance(k, str) and NAME[0](k) for k in variants):
        raise UserError(f"{path}: variants must map names ({NAME[1]}) to overrides, got {variants!r}")
    variants = {k: _dotted_map(v or {}, f"{path}: variants: {k}") for k, v in variants.items()}
    search = raw.get("search")
    if search is not None:
        search = _search(search, f"{path}: search")
        if LR_KEY in grid or LR_KEY in (raw.get("overrides") or {}):
            raise UserError(
                f"{path}: {LR_KEY} is chosen by the search; remove it from grid/overrides or drop search"
            )
    config = str(raw.get("config", Sweep.config))
    try:
        config.format(dataset="jsb", model="gru")
    except (KeyError, IndexError, ValueError):
        raise UserError(
            f"{path}: config {config!r} may use only {{dataset}} and {{model}}, e.g. {Sweep.config}"
        ) from None
    k = raw.get("lockstep", 3)
    if not isinstance(k, int) or k < 1:
        raise UserError(f"{path}: lockstep must be an integer >= 1, got {k!r}")
    return Sweep(
        path=path,
        name=name,
        datasets=list(dict.fromkeys(datasets)),
        models=models,
        seeds=_list(raw.get("seeds", [0]), f"{path}: seeds", int),
        config=config,
        overrides=_dotted_map(raw.get("overrides") or {}, f"{path}: overrides"),
        grid=grid,
        variants=variants,
        search=search,
        k=k,
    )


def only_datasets(sweep: Sweep, names: str) -> list[str]:
    """The sweep's datasets restricted to comma-separated `names` (--datasets), in the order given."""
    wanted = [d.key for n in names.split(",") if n.strip() for d in resolve_names(n.strip())]
    missing = [d for d in wanted if d not in sweep.datasets]
    if missing or not wanted:
        raise UserError(
            f"--datasets {names}: {', '.join(missing) or 'nothing'} not in {sweep.path}'s datasets "
            f"({', '.join(sweep.datasets)})"
        )
    return list(dict.fromkeys(wanted))


def _tag(key: str, value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return key.rsplit(".", 1)[-1] + "".join(c if c.isalnum() or c in ".+-_" else "_" for c in text)


@dataclass
class Point:
    """One dataset x model x grid combination: its base config, overrides, and run-name prefix."""

    dataset: str
    model: str
    config: Path
    overrides: tuple[str, ...]
    prefix: str
    variant: str = ""  # the variant of an ablation sweep ("" for none): tagged in summary.json


def points(sweep: Sweep) -> list[Point]:
    out = []
    combos = list(itertools.product(*sweep.grid.values())) or [()]
    variants = list(sweep.variants.items()) or [("", {})]
    for dataset, model, combo, (variant, changes) in itertools.product(
        sweep.datasets, sweep.models, combos, variants
    ):
        values = {**sweep.overrides, **changes, **dict(zip(sweep.grid, combo, strict=True))}
        config = sweep.path.parent / sweep.config.format(dataset=dataset, model=model)
        tags = [_tag(k, v) for k, v in zip(sweep.grid, combo, strict=True)]
        prefix = "-".join([sweep.name, *([variant] if variant else []), *tags])
        out.append(
            Point(dataset, model, config, tuple(override(k, v) for k, v in values.items()), prefix, variant)
        )
    return out


def searches(sweep: Sweep) -> list[tuple[Point, Search]]:
    """The learning-rate search of every point (none for a sweep without `search:`)."""
    if sweep.search is None:
        return []
    return [
        (p, Search(p.prefix, p.config, p.overrides, p.dataset, p.model, **sweep.search))
        for p in points(sweep)
    ]


def _seed_runs(
    sweep: Sweep, p: Point, extra: tuple[str, ...] = (), info: dict | None = None
) -> list[scheduler.RunSpec]:
    return [
        scheduler.RunSpec(
            name=f"{p.prefix}-seed{seed}",
            config=p.config,
            overrides=(*p.overrides, *extra, override(SEED_KEY, seed)),
            run_dir=rundir.run_dir_for(p.dataset, p.model, f"{p.prefix}-seed{seed}"),
            # a variant's runs are an ablation's (`gru-bench ablation`), never a cell of Table 2
            info={"sweep": sweep.name, **({"variant": p.variant} if p.variant else {}), **(info or {})},
        )
        for seed in sweep.seeds
    ]


def expand(sweep: Sweep | str | Path) -> list[scheduler.RunSpec]:
    """Every run whose settings are known now, in a fixed order: all runs of a plain sweep; for a search sweep
    the trials, plus the seed runs of each point whose search has finished (with the chosen learning rate)."""
    sweep = sweep if isinstance(sweep, Sweep) else load_sweep(sweep)
    if sweep.search is None:
        return [r for p in points(sweep) for r in _seed_runs(sweep, p)]
    out = []
    for p, s in searches(sweep):
        out += s.specs()
        chosen = s.record()["chosen"]
        if chosen:
            out += _seed_runs(
                sweep,
                p,
                (override(LR_KEY, chosen["lr"]),),
                {"search": {"name": s.name, "trial": chosen["trial"], "lr": chosen["lr"]}},
            )
    return out


@dataclass
class SweepResult:
    outcomes: dict[str, scheduler.Outcome]  # run label -> outcome
    waiting: list[str] = field(default_factory=list)  # search points whose seed runs could not start, and why

    @property
    def failed(self) -> dict[str, str]:
        return {k: o.error for k, o in self.outcomes.items() if o.status in ("failed", "interrupted")}


def preview(sweep: Sweep | str | Path) -> list[tuple[str, str]]:
    """(run, what a sweep would do with it) for --dry-run; checks every config like a real sweep."""
    sweep = sweep if isinstance(sweep, Sweep) else load_sweep(sweep)
    out = []
    for s in expand(sweep):
        cfg = scheduler.load(s)
        state = rundir.run_state(s.run_dir)
        prepared = resolve(cfg.dataset, cfg.data.route).path.is_file()
        what = {
            "complete": "skip (complete)",
            "stopped_nan": "skip (diverged)",
            "pruned": "skip (pruned)",
            "new": "train"
            if prepared
            else f"train (data not prepared: gru-bench data prepare {cfg.dataset})",
            "partial": f"resume after epoch {rundir.epochs_done(s.run_dir)}",
            "failed": f"retry (failed: {rundir.error_line(s.run_dir)})",
        }[state]
        out.append((s.label, what))
    for p, s in searches(sweep):
        if s.record()["chosen"] is None:
            out.append(
                (f"{p.dataset}/{p.model}/{p.prefix}-seed*", f"{len(sweep.seeds)} run(s) after the search")
            )
    return out


def run_sweep(
    sweep: Sweep | str | Path,
    workers: int | None = None,
    backend: str = "local",
    address: str | None = None,
    k: int | None = None,
    runner: scheduler.Runner = scheduler.train_task,
    console: Any = None,
) -> SweepResult:
    """Train a sweep; for a search sweep the trials first, then the seeds at each point's chosen lr."""
    sweep = sweep if isinstance(sweep, Sweep) else load_sweep(sweep)
    kw = dict(
        workers=workers,
        backend=backend,
        address=address,
        k=sweep.k if k is None else k,
        runner=runner,
        console=console,
    )
    first = expand(sweep)
    outcomes = scheduler.run_specs(first, **kw)
    if sweep.search is None:
        return SweepResult(outcomes)
    waiting = []
    for _, s in searches(sweep):
        rec = s.write()
        if rec["status"] != "complete":
            waiting.append(f"{s.dataset}/{s.cell}/{s.name}: search {rec['status']}, seed runs not started")
    seen = {r.label for r in first}
    outcomes |= scheduler.run_specs([r for r in expand(sweep) if r.label not in seen], **kw)
    return SweepResult(outcomes, waiting)
