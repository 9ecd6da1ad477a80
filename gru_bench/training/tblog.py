"""TensorBoard event files beside each run's metrics.csv, so `tensorboard --logdir results/runs` shows every
run, seed and search trial live; metrics.csv stays the record (this is a view of it).

Written through torch.utils.tensorboard when the `tensorboard` extra is installed (`pip install
'gru-bench[tensorboard]'`), silently skipped otherwise. Every finite number of a metrics row is a scalar at
step = epoch, tagged by its column: `train_nll` -> `nll/train`, `valid_nll_seq` -> `nll/valid_seq`, `lr`
-> `lr`; the run's config is its hparams. A resumed run purges the points from the epoch it restarts at, so
an epoch logged before a crash (but not checkpointed) is not shown twice.
"""

from __future__ import annotations

import math
from numbers import Real
from pathlib import Path
from typing import Any

from gru_bench.config import flatten

_writers: dict[Path, Any] = {}  # run dir -> open SummaryWriter
_STEP = "epoch"
_METRICS = ("nll/train", "nll/valid")  # what the hparams table shows per run


def available() -> bool:
    """Whether TensorBoard logging works here (the `tensorboard` package is installed)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


def tag(column: str) -> str:
    """A metrics.csv column's TensorBoard tag: `<split>_nll<rest>` -> `nll/<split><rest>`, else itself."""
    split, nll, rest = column.partition("_nll")
    return f"nll/{split}{rest}" if nll and split else column


def flat_hparams(config: dict[str, Any]) -> dict[str, int | float | str | bool]:
    """A resolved config as TensorBoard hparams: dotted keys; numbers, strings, bools ("null" for None)."""
    return {
        key: value if isinstance(value, (bool, int, float, str)) else "null" if value is None else str(value)
        for key, value in flatten(config).items()
    }


def _open(run_dir: Path, first_step: int, hparams: dict[str, Any]) -> Any:
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    writer = SummaryWriter(log_dir=str(run_dir), purge_step=first_step)
    for summary in hparams_summaries(flat_hparams(hparams), dict.fromkeys(_METRICS, 0.0)):
        writer.file_writer.add_summary(summary)  # in this run's folder (add_hparams would make a new one)
    return writer


def log_epoch(run_dir: Path, row: dict[str, Any], hparams: dict[str, Any]) -> None:
    """Log one metrics.csv row (its `epoch` is the step); opens the run's writer on first use."""
    key = Path(run_dir).resolve()
    if key not in _writers:
        if not available():
            return
        _writers[key] = _open(key, int(row[_STEP]), hparams)
    writer = _writers[key]
    for column, value in row.items():
        number = isinstance(value, Real) and not isinstance(value, bool)
        if column != _STEP and number and math.isfinite(value):
            writer.add_scalar(tag(column), float(value), int(row[_STEP]))
    writer.flush()  # an epoch is minutes: show it now


def close(run_dir: Path) -> None:
    """Flush and close the run's writer, if one is open."""
    writer = _writers.pop(Path(run_dir).resolve(), None)
    if writer is not None:
        writer.close()
