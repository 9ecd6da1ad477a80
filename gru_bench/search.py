"""The paper's learning-rate search: `trials` lrs with log(lr) uniform in a range; the best valid NLL wins.

Every trial is an ordinary run (results/runs/<dataset>/<cell>/<name>-lr<lr>-seed<seed>/), trained in lockstep
with the other trials where possible; the record of the search (every trial, and the chosen one) goes to
results/search/<dataset>/<cell>/<name>/search.json and search.csv.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gru_bench import execute
from gru_bench.config import NAME
from gru_bench.errors import UserError
from gru_bench.fsutil import write_json, write_text
from gru_bench.paper import LR_SEARCH_LOG_RANGE, LR_SEARCH_TRIALS
from gru_bench.paths import results_dir

LR_KEY = "training.lr"
SEED_KEY = "training.seed"
CSV_COLUMNS = [
    "trial",
    "lr",
    "log_lr",
    "status",
    "best_valid_nll",
    "test_nll",
    "epochs",
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
    logs = np.random.default_rng(seed).uniform(lo, hi, size=trials)
    return [float(f"{math.exp(x):.4g}") for x in logs]


def override(key: str, value: Any) -> str:
    """`key=value` with the value in YAML, which is how `load_config` reads overrides (1e-05 -> 1.0e-05)."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True).strip()  # a scalar ends "\n..." (document end)
    return f"{key}={text.removesuffix('...').strip()}"


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

    @property
    def folder(self) -> Path:
        return results_dir() / "search" / self.dataset / self.cell / self.name

    def specs(self) -> list[execute.RunSpec]:
        out = []
        for i, lr in enumerate(sample_lrs(self.trials, self.log_lr_range, self.seed)):
            name = f"{self.name}-lr{lr:.3e}-seed{self.seed}"
            out.append(execute.RunSpec(
                name=name,
                config=self.config,
                overrides=(*self.overrides, override(LR_KEY, lr), override(SEED_KEY, self.seed)),
                run_dir=execute.run_dir_for(self.dataset, self.cell, name),
                # not `search`: compare reads that key as "lr chosen by a search", which is true of final runs
                info={"search_trial": {"name": self.name, "trial": i, "trials": self.trials, "lr": lr}},
            ))  # fmt: skip
        return out

    def record(self) -> dict[str, Any]:
        """Every trial's outcome so far; `chosen` once every trial has finished (lowest best valid NLL)."""
        rows = []
        for i, spec in enumerate(self.specs()):
            lr = spec.info["search_trial"]["lr"]
            s = execute.read_summary(spec.run_dir)
            status = execute.run_state(spec.run_dir)
            rows.append(
                {
                    "trial": i,
                    "lr": lr,
                    "log_lr": math.log(lr),
                    "status": status,
                    "best_valid_nll": s.get("best_valid_nll"),
                    "test_nll": s.get("test_nll"),
                    "epochs": s.get("epochs"),
                    "run": spec.label,
                    "error": execute.error_line(spec.run_dir) if status == "failed" else "",
                }
            )
        finished = all(r["status"] in execute.FINAL for r in rows)
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
    lockstep: int = LR_SEARCH_TRIALS,
    runner: execute.Runner = execute.train_task,
) -> dict[str, Any]:
    """Train every trial of a learning-rate search of `config` (finished trials are kept) and record it."""
    if not NAME[0](name):
        raise UserError(f"--name {name!r} names run dirs: use {NAME[1]}")
    config = Path(config)
    dataset, cell = execute.dataset_and_cell(config, overrides)
    s = Search(name, config, tuple(overrides), dataset, cell, trials, tuple(log_lr_range), seed)
    execute.run_specs(
        s.specs(), workers=workers, backend=backend, address=address, lockstep=lockstep, runner=runner
    )
    return s.write()
