"""The paper's learning-rate search: `trials` lrs with log(lr) uniform in a range; the best valid NLL wins.

Every trial is an ordinary run (results/runs/<dataset>/<cell>/<name>-lr<lr>-seed<seed>/), trained in lockstep
with the other trials where possible; the record of the search (every trial, and the chosen one) goes to
results/search/<dataset>/<cell>/<name>/search.json and search.csv.

Hopeless trials are pruned by successive halving (`Halving`, on by default; `prune=None` trains every trial
to the end): all trials of a search train as one stack, and at each rung epoch only the best third of them
by validation NLL so far go on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gru_bench.config import LR_KEY, NAME, SEED_KEY, override
from gru_bench.errors import UserError
from gru_bench.experiments import scheduler
from gru_bench.fsutil import write_json, write_text
from gru_bench.paper import LR_SEARCH_LOG_RANGE, LR_SEARCH_TRIALS
from gru_bench.paths import results_dir
from gru_bench.training import rundir

CSV_COLUMNS = [
    "trial",
    "lr",
    "log_lr",
    "status",
    "best_valid_nll",
    "test_nll",
    "epochs",
    "pruned_epoch",
    "run",
    "chosen",
    "error",
]


def sample_lrs(
    trials: int, log_lr_range: tuple[float, float] = LR_SEARCH_LOG_RANGE, seed: int = 0
) -> list[float]:
    """`trials` learning rates, ln(lr) uniform in `log_lr_range`, rounded to 4 significant digits.

    Deterministic in `seed`; trial i does not depend on `trials`, so a longer search extends a shorter one.
    """
    lo, hi = log_lr_range
    if trials < 1:
        raise UserError(f"search: trials {trials}: must be at least 1")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise UserError(
            f"search: log_lr_range {lo:g} {hi:g}: need finite low < high (ln of the lr), e.g. "
            f"{LR_SEARCH_LOG_RANGE[0]:g} {LR_SEARCH_LOG_RANGE[1]:g}"
        )
    if hi > 0:
        raise UserError(
            f"search: log_lr_range {lo:g} {hi:g} draws learning rates up to {math.exp(hi):.3g} (the range is "
            f"of ln(lr)): keep the high end <= 0 (lr <= 1); the paper's range is "
            f"{LR_SEARCH_LOG_RANGE[0]:g} {LR_SEARCH_LOG_RANGE[1]:g}"
        )
    logs = np.random.default_rng(seed).uniform(lo, hi, size=trials)
    return [float(f"{math.exp(x):.4g}") for x in logs]


@dataclass(frozen=True)
class Halving:
    """Synchronous successive halving over epochs: at each rung epoch, of the trials not pruned before, the
    ceil(n / eta) with the best validation NLL so far go on (trials that already stopped keep their place in
    the ranking); the others stop with status `pruned`.

    Default rungs 10, 30, 90 with eta 3 (10 trials -> 4 -> 2 -> 1): in the committed 50-epoch Nottingham tanh
    search the best 4 trials at epoch 10 were the best 4 at epoch 50, and the best 2 at epoch 30 the best 2 at
    50; rates that win late (3e-4 beats 1e-3 from epoch ~40, when 1e-3 explodes) are still in the race at 30
    and 90. 10 trials cost ~100 + 80 + 120 model-epochs up to epoch 90 instead of 900.

    Written here rather than taken from Optuna or Ray Tune: their halving pruners are asynchronous (a trial
    is judged against those that reported before it, so the first trial at a rung always goes on), while a
    stack brings every trial to a rung at the same epoch; decided from the run folders alone, this rule is
    the same whether the search ran in one go or was stopped and resumed.
    """

    rungs: tuple[int, ...] = (10, 30, 90)
    eta: int = 3

    def __post_init__(self) -> None:
        rungs = list(self.rungs)
        if not (rungs and all(isinstance(r, int) and r >= 1 for r in rungs) and rungs == sorted(set(rungs))):
            raise UserError(f"prune rungs {self.rungs}: need increasing epochs >= 1, e.g. 10,30,90")
        if not (isinstance(self.eta, int) and self.eta >= 2):
            raise UserError(f"prune eta {self.eta}: need an integer >= 2 (keep the best 1/eta at each rung)")


class SuccessiveHalving:
    """The `training.Pruner` of one search: `group` is every trial's run dir, `column` the metrics.csv column
    that ranks them (the select metric)."""

    def __init__(self, rule: Halving, group: Sequence[Path], column: str):
        self.rule, self.group, self.column = rule, list(group), column

    def __call__(self, epoch: int, alive: dict[Path, list[dict]]) -> dict[Path, str]:
        if epoch not in self.rule.rungs:
            return {}
        scores: dict[Path, float] = {}
        for d in self.group:
            rows = alive.get(d)
            if rows is None:  # a trial of this search that stopped earlier (in this process or before)
                pruned = (rundir.saved_summary(d) or {}).get("pruned_epoch")
                if pruned is not None and pruned < epoch:
                    continue  # out of the race since an earlier rung
                rows = rundir.read_metrics(d / "metrics.csv")
            seen = [float(r[self.column]) for r in rows if int(r["epoch"]) <= epoch and r[self.column] != ""]
            scores[d] = min((x for x in seen if math.isfinite(x)), default=math.inf)
        keep = math.ceil(len(scores) / self.rule.eta)
        ranked = sorted(scores, key=lambda d: (scores[d], str(d)))
        return {
            d: f"pruned at epoch {epoch}: valid NLL {scores[d]:.3f} ranked {ranked.index(d) + 1} of "
            f"{len(ranked)}, successive halving kept the best {keep}"
            for d in alive
            if d in scores and ranked.index(d) >= keep
        }


@dataclass
class Search:
    """One learning-rate search of one config (one dataset x cell)."""

    name: str  # names the trial runs and the record folder
    config: Path
    overrides: tuple[str, ...]
    dataset: str
    cell: str
    trials: int = LR_SEARCH_TRIALS
    log_lr_range: tuple[float, float] = LR_SEARCH_LOG_RANGE
    seed: int = 0
    prune: Halving | None = Halving()

    @property
    def folder(self) -> Path:
        return results_dir() / "search" / self.dataset / self.cell / self.name

    def specs(self) -> list[scheduler.RunSpec]:
        lrs = sample_lrs(self.trials, self.log_lr_range, self.seed)
        names = [f"{self.name}-lr{lr:.3e}-seed{self.seed}" for lr in lrs]
        dirs = tuple(rundir.run_dir_for(self.dataset, self.cell, n) for n in names)
        return [
            scheduler.RunSpec(
                name=name,
                config=self.config,
                overrides=(*self.overrides, override(LR_KEY, lr), override(SEED_KEY, self.seed)),
                run_dir=run_dir,
                # not `search`: compare reads that key as "lr chosen by a search", true of the final runs
                info={"search_trial": {"name": self.name, "trial": i, "trials": self.trials, "lr": lr}},
                prune=None if self.prune is None else (self.prune, dirs),
            )
            for i, (lr, name, run_dir) in enumerate(zip(lrs, names, dirs, strict=True))
        ]

    def record(self) -> dict[str, Any]:
        """Every trial's outcome so far; `chosen` once every trial has finished (lowest best valid NLL)."""
        rows = []
        for i, spec in enumerate(self.specs()):
            lr = spec.info["search_trial"]["lr"]
            s = rundir.saved_summary(spec.run_dir) or {}
            status = rundir.run_state(spec.run_dir)
            rows.append(
                {
                    "trial": i,
                    "lr": lr,
                    "log_lr": math.log(lr),
                    "status": status,
                    "best_valid_nll": s.get("best_valid_nll"),
                    "test_nll": s.get("test_nll"),
                    "epochs": s.get("epochs"),
                    "pruned_epoch": s.get("pruned_epoch"),
                    "run": spec.label,
                    "error": rundir.error_line(spec.run_dir) if status == "failed" else "",
                }
            )
        finished = all(r["status"] in rundir.SETTLED for r in rows)
        usable = [r for r in rows if r["status"] == "complete" and _finite(r["best_valid_nll"])]
        chosen = min(usable, key=lambda r: r["best_valid_nll"]) if finished and usable else None
        for r in rows:
            r["chosen"] = r is chosen
        status = ("complete" if chosen else "all trials diverged") if finished else "incomplete"
        return {
            "name": self.name,
            "dataset": self.dataset,
            "cell": self.cell,
            "config": str(self.config),
            "overrides": list(self.overrides),
            "seed": self.seed,
            "log_lr_range": list(self.log_lr_range),
            "n_trials": self.trials,
            "prune": None if self.prune is None else {"rungs": list(self.prune.rungs), "eta": self.prune.eta},
            "status": status,
            "chosen": None
            if chosen is None
            else {k: chosen[k] for k in ("trial", "lr", "best_valid_nll", "run")},
            "trials": rows,
        }

    def write(self) -> dict[str, Any]:
        rec = self.record()
        write_json(self.folder / "search.json", rec)
        write_text(
            self.folder / "search.csv", pd.DataFrame(rec["trials"], columns=CSV_COLUMNS).to_csv(index=False)
        )
        return rec


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def search(
    config: str | Path,
    trials: int = LR_SEARCH_TRIALS,
    log_lr_range: tuple[float, float] = LR_SEARCH_LOG_RANGE,
    seed: int = 0,
    overrides: tuple[str, ...] = (),
    name: str = "search",
    workers: int | None = None,
    backend: str = "local",
    address: str | None = None,
    k: int = LR_SEARCH_TRIALS,
    runner: scheduler.Runner = scheduler.train_task,
    prune: Halving | None = Halving(),
) -> dict[str, Any]:
    """Train every trial of a learning-rate search of `config` (finished trials are kept) and record it.

    `k` trials train in lockstep (one stack); with `prune` (successive halving) all of them, whatever `k`."""
    if not NAME[0](name):
        raise UserError(f"--name {name!r} names run dirs: use {NAME[1]}")
    if any(o.partition("=")[0].strip() == LR_KEY for o in overrides):
        raise UserError(f"search: the search chooses {LR_KEY}; leave it out of --set")
    config = Path(config)
    dataset, cell = scheduler.dataset_and_cell(config, overrides)
    s = Search(name, config, tuple(overrides), dataset, cell, trials, tuple(log_lr_range), seed, prune)
    scheduler.run_specs(s.specs(), workers=workers, backend=backend, address=address, k=k, runner=runner)
    return s.write()
