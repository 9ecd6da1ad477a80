"""Stand-ins for training, injected into the real executor: they run in real worker processes (which import
this light module, not torch) and write what training would, in milliseconds."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

FAIL = "FAKE_TRAIN_FAILS"  # environment: comma-separated <cell>:<seed> that fake_train fails
CALLS = "calls.jsonl"  # fake_train appends one line per task to $GRU_BENCH_RESULTS/CALLS
DIVERGE_ABOVE = 1.5e-3  # a larger lr "diverges" (stopped_nan), with the lowest valid NLL of all


def valid_nll(lr: float) -> float:
    return (math.log(lr) + 9) ** 2  # best at lr = e^-9


def fake_train(task) -> None:
    """One JSON line per task; per run a config.yaml and a final summary.json (valid NLL = valid_nll(lr))."""
    with open(Path(os.environ["GRU_BENCH_RESULTS"]) / CALLS, "a") as f:
        f.write(
            json.dumps(
                {
                    "runs": [r.label for r in task.runs],
                    "resume": task.resume,
                    "pid": os.getpid(),
                    "cpus": os.environ.get("GRU_BENCH_CPUS"),
                }
            )
            + "\n"
        )
    for r, cfg in zip(task.runs, task.configs, strict=True):
        if f"{cfg.model.cell}:{cfg.training.seed}" in os.environ.get(FAIL, "").split(","):
            raise RuntimeError(f"boom in {r.name}")
        lr = cfg.training.lr
        diverged = lr > DIVERGE_ABOVE
        (r.run_dir / "config.yaml").write_text("fake\n")
        summary = {
            "status": "stopped_nan" if diverged else "complete",
            "seed": cfg.training.seed,
            "lr": lr,
            "epochs": 1,
            "best_valid_nll": -1.0 if diverged else valid_nll(lr),
            "test_nll": 1.0,
        }
        (r.run_dir / "summary.json").write_text(json.dumps(summary))


def crash_train(task) -> None:
    """A worker that dies without a Python exception (like the OOM killer)."""
    os._exit(9)


def calls(results: Path) -> list[dict]:
    path = results / CALLS
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def slow_train(task) -> None:
    """fake_train after a second: long enough for the executor's periodic progress lines."""
    import time

    time.sleep(1.0)
    fake_train(task)
