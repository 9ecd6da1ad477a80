"""The run folder: config.yaml, metrics.csv, summary.json, best.pt and last.pt of one trained model, error.txt
of a failed attempt, and the lock of the process writing it.

The folder is a run's only state, so everything that reads or guards it lives here, apart from the training
loop: a fresh `train` never overwrites earlier work, `--resume` continues from last.pt, one process at a time
writes it (`run_lock`), `run_state` tells a sweep what is left to do, and `load_run` rebuilds the trained
model for `evaluate` and `sample`. torch is imported only by the functions that need it: the scheduler and the
report read run state without it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from gru_bench.config import Config, config_hash, load_config, run_name
from gru_bench.data.registry import N_NOTES
from gru_bench.errors import UserError
from gru_bench.fsutil import atomic_write, write_json, write_text
from gru_bench.paths import results_dir

if TYPE_CHECKING:
    from torch import Tensor

    from gru_bench.models import StackedModel

try:
    import fcntl
except ImportError:  # Windows: runs train unlocked (see run_lock)
    fcntl = None

# The columns of metrics.csv, a row per epoch: *_nll pools all frames of a split, *_nll_seq is the mean over
# sequences (the paper's metric); train_* cells are empty in epochs where the train split was not scored.
METRICS = (
    "epoch", "updates", "seconds", "lr",
    "train_nll", "train_nll_seq", "valid_nll", "valid_nll_seq",
    "grad_norm",
)  # fmt: skip


# Statuses of a finished run (its folder is never retrained or overwritten).
FINAL = ("complete", "stopped_nan")
# Statuses that running a sweep again cannot change: finished, or stopped by its search's pruning.
SETTLED = (*FINAL, "pruned")
ERROR_FILE = "error.txt"
# summary.json last: a final status in it means "done", so it must never land before the checkpoints do
RUN_FILES = ("config.yaml", "metrics.csv", "best.pt", "last.pt", ERROR_FILE, "summary.json")


def run_dir_for(dataset: str, cell: str, name: str, root: Path | None = None) -> Path:
    """<root, default results/runs>/<dataset>/<cell>/<name>: where compare looks for a run."""
    return (root or results_dir() / "runs") / dataset / cell / name


def default_run_dir(cfg: Config) -> Path:
    """<out_dir or results/runs>/<dataset>/<cell>/<run name>: where `train` writes a config's run."""
    root = Path(cfg.run.out_dir) if cfg.run.out_dir else None
    return run_dir_for(cfg.dataset, cfg.model.cell, run_name(cfg), root)


# --- run state (what a sweep has left to do) -------------------------------------------------------------


def resumable(run_dir: Path) -> bool:
    """A run dir that training has started (config.yaml written) is continued, never overwritten."""
    return (run_dir / "config.yaml").exists()


def run_state(run_dir: Path) -> str:
    """complete | stopped_nan | pruned (settled), failed (error.txt), partial (started: resumable) or new."""
    status = (saved_summary(run_dir) or {}).get("status")
    if status in SETTLED:
        return status
    if (run_dir / ERROR_FILE).exists():
        return "failed"
    return "partial" if resumable(run_dir) else "new"


def epochs_done(run_dir: Path) -> int:
    """Epochs a resume starts after (metrics.csv rows beside a last.pt)."""
    if not (run_dir / "last.pt").exists():
        return 0
    return len(read_metrics(run_dir / "metrics.csv"))


def last_error(run_dir: Path) -> str | None:
    """The last non-empty line of error.txt ("" if it has none); None without an error.txt."""
    try:
        lines = [x for x in (run_dir / ERROR_FILE).read_text(errors="replace").splitlines() if x.strip()]
    except FileNotFoundError:
        return None
    return lines[-1].strip() if lines else ""


def error_line(run_dir: Path) -> str:
    """Why the last attempt failed: the exception message of error.txt's traceback (a UserError's alone)."""
    line = last_error(run_dir)
    if line is None:
        return ""
    return line.removeprefix(f"{UserError.__module__}.UserError: ") or "unknown error"


def write_error(run_dir: Path, text: str) -> None:
    write_text(run_dir / ERROR_FILE, text)


def clear_error(run_dir: Path) -> None:
    """A new attempt: its own error, if any, replaces the last one."""
    (run_dir / ERROR_FILE).unlink(missing_ok=True)


def tag_summary(run_dir: Path, info: dict) -> None:
    """Merge bookkeeping (sweep, search) into a run's summary.json, if it has one."""
    summary = saved_summary(run_dir)
    if summary and info:
        write_json(run_dir / "summary.json", {**summary, **info})


def _hidden(cfg: Config, n_in: int) -> int | None:
    from gru_bench.models import hidden_for_budget

    m = cfg.model
    return hidden_for_budget(m.cell, m.impl, m.param_budget, n_in) if m.param_budget else m.hidden


# float32 copies of the weights training holds: weights, gradients, noisy weights and three RMSProp buffers
_COPIES = 6


def model_for(cfg: Config, k: int, n_in: int = N_NOTES) -> StackedModel:
    """A stack of k untrained models of the config's cell, implementation and size over n_in note columns
    (`data.Keyboard.width`); a size that cannot fit in memory is a UserError that says how much it would
    need."""
    from gru_bench.models import build_model, count_params

    hidden = _hidden(cfg, n_in)
    need = count_params(cfg.model.cell, cfg.model.impl, hidden or 1, n_in) * k * 4 * _COPIES
    have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 0
    too_big = f"model.hidden {hidden}: {k} model(s) of this size need about {need / 2**30:.1f} GiB to train"
    if have and need > have:
        raise UserError(f"{too_big}, this machine has {have / 2**30:.1f} GiB: use a smaller model.hidden")
    try:
        return build_model(cfg.model.cell, cfg.model.impl, hidden, k=k, fast=cfg.model.fast, n_in=n_in)
    except (MemoryError, RuntimeError) as e:  # torch raises RuntimeError when an allocation fails
        if "alloc" not in str(e).lower() and not isinstance(e, MemoryError):
            raise
        raise UserError(f"{too_big}, more than is free now: use a smaller model.hidden") from None


def load_run(run_dir: str | Path, which: str = "best") -> tuple[StackedModel, Config]:
    """A run's saved model (K=1, eval mode, CPU) from `best.pt` or `last.pt`, and its resolved config."""
    run_dir = Path(run_dir)
    if which not in ("best", "last"):
        raise UserError(f"--which must be best or last, got {which!r}")
    cfg = run_config(run_dir)
    path = run_dir / f"{which}.pt"
    if not path.exists() and (run_dir / "last.pt").exists():  # every epoch saves last.pt, best.pt if finite
        raise UserError(
            f"{path} not found: no epoch of {run_dir} reached a finite valid NLL; try --which last"
        )
    if not path.exists() and (saved_summary(run_dir) or {}).get("status") in FINAL:
        raise UserError(f"{path} not found: {run_dir} is finished; {_REBUILD.format(run_dir=run_dir)}")
    if not path.exists():
        raise UserError(
            f"{path} not found: {run_dir} has not finished an epoch yet; continue it with "
            f"'gru-bench train --resume {run_dir}'"
        )
    weights = load_checkpoint(path).get("model")
    if not isinstance(weights, dict):
        raise UserError(f"{path} holds no model weights: not a gru-bench checkpoint of {run_dir}")
    readout = weights.get("c")  # (1, n_in): the note columns the run was trained on (data.pitches)
    model = model_for(cfg, 1, readout.shape[-1] if hasattr(readout, "shape") else N_NOTES)
    diff = _mismatch(model.state_dict(), weights)
    if diff:
        raise UserError(
            f"{path} does not match {run_dir / 'config.yaml'} ({cfg.model.cell}, hidden {model.hidden}): "
            f"the checkpoint has {diff}; was the config edited after training? restore it"
        )
    model.load_state_dict(weights)
    return model.eval(), cfg


def run_config(run_dir: Path, overrides: list[str] = ()) -> Config:
    """The resolved config a run dir was trained with (`overrides`: see training.RESUME_KEYS)."""
    if not (run_dir / "config.yaml").is_file():
        raise UserError(
            f"{run_dir} is not a run folder (no config.yaml): give a folder that 'gru-bench train' wrote, "
            "e.g. results/runs/jsb/gru/seed1"
        )
    return load_config(run_dir / "config.yaml", overrides)


# --- fresh or resumed -------------------------------------------------------------------------------------


_REBUILD = (
    "rebuild its missing checkpoints with 'gru-bench train --rebuild {run_dir}' (trains the same config and "
    "seed again and keeps them only if the numbers match metrics.csv)"
)


def prepare_dir(run_dir: Path, cfg: Config, resume: bool, restart: bool = False) -> dict | None:
    """The checkpoint to resume from (None: start fresh); refuses to overwrite existing work.

    `restart` starts an unfinished run over (e.g. its last.pt is damaged); a finished run is never restarted.
    """
    last, summary = run_dir / "last.pt", run_dir / "summary.json"
    status = (saved_summary(run_dir) or {}).get("status")
    if status in SETTLED and (resume or restart) and not last.exists():
        fix = (
            "a pruned search trial is not rebuilt (its numbers are in metrics.csv)"
            if status == "pruned"
            else _REBUILD.format(run_dir=run_dir)
        )
        raise UserError(
            f"{run_dir} holds a finished run ({status}) without last.pt: never retrained or overwritten; "
            + fix
        )
    if restart:
        if status in SETTLED:
            raise UserError(f"{run_dir} holds a finished run ({status}): --restart never overwrites it")
        return None
    if resume:
        if not (run_dir / "config.yaml").exists():
            return None  # nothing was saved yet: start it
        saved = load_config(run_dir / "config.yaml")
        started = (saved_summary(run_dir) or {}).get("config_hash")
        if started and started != config_hash(saved):
            raise UserError(
                f"{run_dir}/config.yaml was edited after the run started (summary.json has config hash "
                f"{started}, the file {config_hash(saved)}): restore it; to train the edited config, copy it "
                "elsewhere and 'gru-bench train' that copy"
            )
        if config_hash(saved) != config_hash(cfg) or saved.training.seed != cfg.training.seed:
            raise UserError(
                f"{run_dir}: the config differs from the one the run started with; resume with "
                f"'gru-bench train --resume {run_dir}' (it reads {run_dir}/config.yaml)"
            )
        if not last.exists():
            return None
        try:
            return load_checkpoint(last)
        except UserError as e:
            again = (
                _REBUILD
                if status in FINAL
                else "or start it over with 'gru-bench train --resume {run_dir} --restart'"
            )
            raise UserError(
                f"{str(e).split(': restore it')[0]}: restore it, {again.format(run_dir=run_dir)}"
            ) from None
    if last.exists() or summary.exists():
        saved = saved_summary(run_dir)
        if saved is None and summary.exists():
            raise UserError(
                f"{summary} is damaged (not a JSON object): 'gru-bench train --resume {run_dir}' continues "
                "the run (from last.pt, if any) and rewrites it; or train a new one with another --name"
            )
        status = (saved or {}).get("status", "running")
        if status == "running":
            raise UserError(
                f"{run_dir} holds an unfinished run; continue it with 'gru-bench train --resume "
                f"{run_dir}', start it over with 'gru-bench train --resume {run_dir} --restart', or train a "
                "new one with another --name"
            )
        raise UserError(
            f"{run_dir} holds a finished run ({status}); never overwritten: train a new one with "
            "another --name or seed"
        )
    return None


def rebuild(run_dir: Path, quiet: bool = False) -> dict:
    """Recreate a finished run's missing (or damaged) best.pt / last.pt: train its saved config and seed again
    in `run_dir/.rebuild` and move the checkpoints in only if every epoch's numbers match metrics.csv.

    summary.json and metrics.csv are never touched; a damaged checkpoint is kept as `<name>.damaged`.
    """
    from gru_bench.training.trainer import train  # training imports this module

    summary = saved_summary(run_dir)
    if (summary or {}).get("status") not in FINAL:
        raise UserError(
            f"--rebuild {run_dir}: only a finished run is rebuilt (summary.json status "
            f"{(summary or {}).get('status')!r}); continue an unfinished one with 'gru-bench train --resume "
            f"{run_dir}'"
        )
    todo = [n for n in ("best.pt", "last.pt") if not _loads(run_dir / n)]
    if not todo:
        raise UserError(f"--rebuild {run_dir}: best.pt and last.pt are both there and readable")
    scratch = run_dir / ".rebuild"  # hidden: compare does not take it for a run
    with run_lock(run_dir, Console(quiet=quiet)):
        shutil.rmtree(scratch, ignore_errors=True)  # an interrupted rebuild's own leftovers
        train(run_config(run_dir), scratch, quiet=quiet)
        diff = _metrics_diff(read_metrics(run_dir / "metrics.csv"), read_metrics(scratch / "metrics.csv"))
        if diff:
            raise UserError(
                f"--rebuild {run_dir}: the retrained run does not reproduce metrics.csv ({diff}; another "
                f"device or library version?): its files are in {scratch}, {run_dir} is unchanged"
            )
        for name in todo:
            if (run_dir / name).exists():
                os.replace(run_dir / name, run_dir / f"{name}.damaged")
            os.replace(scratch / name, run_dir / name)
        shutil.rmtree(scratch)
    return summary


def _loads(path: Path) -> bool:
    try:
        load_checkpoint(path)
    except UserError:
        return False
    return True


def read_metrics(path: Path) -> list[dict[str, str]]:
    """metrics.csv's rows as strings (empty if missing)."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def _metrics_diff(want: list[dict[str, str]], got: list[dict[str, str]], rtol: float = 1e-6) -> str:
    """'' if two metrics.csv agree in every column but the wall-clock seconds, else the first difference."""
    if len(want) != len(got):
        return f"{len(got)} epochs, not {len(want)}"
    for a, b in zip(want, got, strict=True):
        for key in METRICS:
            if key == "seconds":
                continue
            x, y = float(a.get(key) or "nan"), float(b.get(key) or "nan")
            if not (math.isclose(x, y, rel_tol=rtol) or (math.isnan(x) and math.isnan(y))):
                return f"epoch {a.get('epoch')}: {key} {b.get(key)}, not {a.get(key)}"
    return ""


def saved_summary(run_dir: Path) -> dict | None:
    """A run dir's summary.json; None if it is missing or damaged (atomic writes never leave it half-done,
    but a disk error or an editor can)."""
    try:
        saved = json.loads((run_dir / "summary.json").read_text())
    except (FileNotFoundError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    return saved if isinstance(saved, dict) else None


# --- files ------------------------------------------------------------------------------------------------


def save_checkpoint(path: Path, obj: dict) -> None:
    """best.pt or last.pt, written atomically: an interrupted save leaves the previous one."""
    import torch

    with atomic_write(path) as f:
        torch.save(obj, f)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's dict (on the CPU); a missing or damaged file is a one-line UserError."""
    import torch

    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles on stderr: the error says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path} not found") from None
    except Exception as e:  # a truncated or foreign file; torch's own text runs to several sentences
        text = str(e).strip()
        why = type(e).__name__ + (f": {text.splitlines()[0].split('. ')[0][:100]}" if text else "")
        raise UserError(
            f"{path} is damaged or not a gru-bench checkpoint ({why}): restore it, or train the run again"
        ) from None
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a gru-bench checkpoint (it holds a {type(state).__name__})")
    return state


def _mismatch(want: dict[str, Tensor], got: dict) -> str:
    """How a checkpoint's weights differ from a model's, briefly (torch's text gives a line per tensor)."""
    from torch import Tensor

    diffs = [f"no {k}" for k in want if k not in got] + [f"an extra {k}" for k in got if k not in want]
    for k, v in want.items():
        if k in got and not isinstance(got[k], Tensor):
            diffs.append(f"{k} as a {type(got[k]).__name__}")
        elif k in got and got[k].shape != v.shape:
            diffs.append(f"{k} of shape {tuple(got[k].shape)}, not {tuple(v.shape)}")
    return diffs[0] + (f" (and {len(diffs) - 1} more differences)" if len(diffs) > 1 else "") if diffs else ""


def write_outputs(run_dir: Path, metrics: list[dict], summary: dict) -> None:
    """metrics.csv and summary.json, rewritten whole after every epoch."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRICS, lineterminator="\n")
    w.writeheader()
    w.writerows(metrics)
    write_text(run_dir / "metrics.csv", buf.getvalue())
    write_json(run_dir / "summary.json", summary)


# --- one writer per run dir -------------------------------------------------------------------------------

LOCK = ".lock"


@contextlib.contextmanager
def run_lock(run_dir: Path, console: Console) -> Iterator[None]:
    """Hold `run_dir/.lock` while training writes the folder, so that a second `train` or `--resume` of it is
    refused instead of both writing it.

    The lock is an flock on the file, not the file itself: the OS drops it when its process dies however it
    dies (kill -9, a sweep stopping its workers), so a file left behind is stale and simply taken over. The
    file names the holder (PID and host) for the error message. Folders created here and still empty at the
    end (training refused to start) are removed again.
    """
    created = [d for d in (run_dir, *run_dir.parents) if not d.exists()]
    path = run_dir / LOCK
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path, run_dir, console)
    except OSError as e:
        raise UserError(
            f"cannot write {path} ({e.strerror or e}): give another run folder, or fix its permissions"
        ) from None
    try:
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # before the lock is released: a waiting process then locks a fresh file
            os.close(fd)
        for d in created:  # innermost first
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty


def _acquire(path: Path, run_dir: Path, console: Console) -> int | None:
    """The locked file descriptor of `path` (None where the filesystem cannot lock: warned, not refused)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if fcntl is None:
                raise OSError("no fcntl on this system")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(
                f"{run_dir} is being trained by {holder}: wait for it to finish, or stop it and then "
                f"'gru-bench train --resume {run_dir}'"
            ) from None
        except OSError as e:  # e.g. a network filesystem without locks
            os.close(fd)
            path.unlink()
            console.print(
                f"[yellow]cannot lock {path} ({e.strerror or e}); make sure no other training uses it"
            )
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file between our open and lock: lock the new one
    stale = os.read(fd, 200).decode(errors="replace").strip()
    if stale:
        console.print(f"[yellow]{path}: taking over the lock of {stale}, which ended without removing it")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd
