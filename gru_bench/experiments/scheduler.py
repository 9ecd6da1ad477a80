"""Train many runs: skip finished ones, resume interrupted ones, retry failed ones, on processes or Ray.

The run dir is the only state (training.rundir reads it): `summary.json` with a final status means done,
`config.yaml` means started (resumed from its last epoch checkpoint, never overwritten), `error.txt` means the
last attempt failed (it holds the traceback). So a sweep can be stopped and started again at any point, and a
failed run is retried simply by running the sweep again.
Runs that differ only in per-model scalars (seed, lr, ...) are grouped into one lockstep task so that a
K-model stack pays the per-op overhead once (training.train_lockstep).
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing as mp
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gru_bench.config import CPUS_VAR, available_cpus, config_hash
from gru_bench.data import resolve
from gru_bench.errors import UserError
from gru_bench.fsutil import atomic_write
from gru_bench.paths import data_dir
from gru_bench.training.rundir import (
    ERROR_FILE,
    RUN_FILES,
    SETTLED,
    clear_error,
    epochs_done,
    error_line,
    resumable,
    run_state,
    saved_summary,
    tag_summary,
    write_error,
)

BACKENDS = ("local", "ray")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


@dataclass
class RunSpec:
    """One run to train: a config file plus overrides, and where its run dir goes."""

    name: str
    config: Path
    overrides: tuple[str, ...]
    run_dir: Path
    # merged into summary.json when the run ends (sweep / search bookkeeping)
    info: dict[str, Any] = field(default_factory=dict)
    # search trials: (search.Halving, every trial's run dir); such runs train as one stack and are pruned
    prune: tuple[Any, tuple[Path, ...]] | None = None

    @property
    def label(self) -> str:
        """`dataset/cell/name`: the run dir relative to runs/."""
        return "/".join(self.run_dir.parts[-3:])


@dataclass
class Task:
    """Runs trained together in one process: one run, or a lockstep group."""

    runs: list[RunSpec]
    configs: list[Any]  # config.Config, one per run
    resume: bool
    cpus: int = 1  # CPUs its process may use: `training.threads: auto` spreads the stack's models over them


@dataclass
class Outcome:
    status: str  # complete | stopped_nan | skipped | failed | interrupted
    error: str = ""  # first useful line of the error
    summary: dict = field(default_factory=dict)


# --- planning -----------------------------------------------------------------------------------------------


def lockstep_key(cfg: Any) -> str:
    """Configs with equal keys can share one stacked model (config.stack_settings)."""
    from gru_bench.config import stack_settings

    return json.dumps(stack_settings(cfg), sort_keys=True, default=str)


def _chunks(items: list, k: int) -> list[list]:
    """Split into ceil(n/k) groups of near-equal size (10 runs, k=3 -> 3, 3, 2, 2)."""
    n_groups = math.ceil(len(items) / k)
    size, extra = divmod(len(items), n_groups)
    out, start = [], 0
    for i in range(n_groups):
        end = start + size + (i < extra)
        out.append(items[start:end])
        start = end
    return out


def plan(specs: list[RunSpec], configs: list[Any], k: int = 3) -> tuple[dict[str, Outcome], list[Task]]:
    """Skip finished runs; group the rest into tasks of at most `k` runs that can share a stack (`k`
    models in lockstep), longest tasks first."""
    if k < 1:
        raise UserError(f"--lockstep {k}: must be at least 1 (1 trains every run alone)")
    skipped: dict[str, Outcome] = {}
    groups: dict[tuple[str, bool], list[tuple[RunSpec, Any]]] = {}
    for spec, cfg in zip(specs, configs, strict=True):
        state = run_state(spec.run_dir)
        if state in SETTLED:
            summary = saved_summary(spec.run_dir) or {}
            if summary.get("config_hash") not in (
                None,
                config_hash(cfg),
            ):  # never pass old settings off as new
                raise UserError(
                    f"runs/{spec.label} finished with other settings (config hash {summary['config_hash']}, "
                    f"this run's {config_hash(cfg)}): move that folder away, or give the sweep another name"
                )
            if any(summary.get(key) != value for key, value in spec.info.items()):
                # it finished inside a stack that was stopped before the stack ended, so before its tagging
                tag_summary(spec.run_dir, spec.info)
                summary = {**summary, **spec.info}
            skipped[spec.label] = Outcome("skipped", summary=summary)
            continue
        if spec.prune:  # the trials of a pruned search compete at each rung: one stack, whatever k says
            key = "prune:" + str(spec.prune[1][0])
        else:
            key = lockstep_key(cfg) if k > 1 else spec.label
        groups.setdefault((key, resumable(spec.run_dir)), []).append((spec, cfg))
    tasks = []
    for (key, resume), members in groups.items():
        size = len(members) if key.startswith("prune:") else k
        for chunk in _chunks(members, size):
            tasks.append(Task([s for s, _ in chunk], [c for _, c in chunk], resume=resume))
    return skipped, sorted(tasks, key=_cost, reverse=True)


def _cost(task: Task) -> int:
    """Rough work of a task (train frames x epochs): longest first, so no worker idles at the end."""
    cfg = task.configs[0]
    dataset = resolve(cfg.dataset, cfg.data.route).dataset
    frames = dataset.split_frames["train"] if dataset else 0  # a user's folder: unknown, last
    return frames * max(c.training.max_epochs for c in task.configs)


# --- running one task (in a worker) -------------------------------------------------------------------------


def train_task(task: Task) -> None:
    """The default runner: one run alone, or a lockstep group, single-threaded (workers run in parallel)."""
    import torch

    from gru_bench.training import trainer

    torch.set_num_threads(1)
    dirs = [r.run_dir for r in task.runs]
    pruner = None
    if task.runs[0].prune:
        from gru_bench.experiments.search import SuccessiveHalving

        rule, group = task.runs[0].prune
        column = "valid_nll_seq" if task.configs[0].training.select == "seq" else "valid_nll"
        pruner = SuccessiveHalving(rule, group, column)
    trainer.train_lockstep(task.configs, dirs, resume=task.resume, quiet=True, pruner=pruner)


Runner = Callable[[Task], None]


def _run_task(runner: Runner, task: Task) -> bool:
    """Run, then tag summaries with the spec's info; on an exception write error.txt into each run dir."""
    for var in THREAD_VARS:
        os.environ.setdefault(var, "1")
    os.environ[CPUS_VAR] = str(task.cpus)
    try:
        runner(task)
    except Exception:
        for r in task.runs:
            write_error(r.run_dir, traceback.format_exc())
        return False
    for r in task.runs:
        tag_summary(r.run_dir, r.info)
    return True


def _child(runner: Runner, task: Task) -> None:
    try:
        ok = _run_task(runner, task)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0 if ok else 1)


# --- backends -----------------------------------------------------------------------------------------------


Done = Callable[[Task, int | None], None]  # called with the task and the worker's exit code (None: unknown)


Tick = Callable[[list[Task]], None]  # called every few seconds with the running tasks (progress display)
TICK_SECONDS = 5.0


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """`kill` (or a batch system's time limit) stops the workers as Ctrl-C does, instead of orphaning them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _local(tasks: list[Task], workers: int, runner: Runner, done: Done, tick: Tick | None = None) -> None:
    """Each task in a fresh spawned process (clean torch/numba state; a crash costs one task).

    Cores that no worker would use (fewer tasks than workers) go to the tasks as threads: a stack's models
    then update in parallel in one process (bit-identical), where a second process has nothing to train."""
    ctx = mp.get_context("spawn")
    cpus = max(1, available_cpus() // max(1, min(workers, len(tasks))))
    pending, running = [replace(t, cpus=cpus) for t in tasks], {}
    with _sigterm_as_ctrl_c():
        try:
            while pending or running:
                while pending and len(running) < workers:
                    task = pending.pop(0)
                    proc = ctx.Process(target=_child, args=(runner, task), name=task.runs[0].label)
                    proc.start()
                    running[proc.sentinel] = (proc, task)
                for sentinel in mp.connection.wait(list(running), timeout=TICK_SECONDS):
                    proc, task = running.pop(sentinel)
                    proc.join()
                    done(task, proc.exitcode)
                if tick:
                    tick([t for _, t in running.values()])
        except KeyboardInterrupt:
            _stop([p for p, _ in running.values()])
            raise


def _stop(procs: list) -> None:
    """Ctrl-C: ask workers to stop (they finish writing the current file), then make sure they are gone.

    From a terminal the workers got the SIGINT too; give them a moment before asking again.
    """
    for grace, stop in ((5, lambda p: os.kill(p.pid, signal.SIGINT)), (30, lambda p: p.terminate())):
        deadline = time.monotonic() + grace
        for p in procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.is_alive():
                stop(p)
    for p in procs:
        p.join()


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def _pack(run_dir: Path) -> dict[str, bytes]:
    return {n: (run_dir / n).read_bytes() for n in RUN_FILES if (run_dir / n).is_file()}


def _ray_task(runner: Runner, task: Task, files: list[dict[str, bytes]], env: dict[str, str]):
    """On a Ray worker: rebuild the run dirs in a scratch folder, train, send every run file back.

    So the driver's results/ gets the usual layout whether or not the nodes share a filesystem.
    """
    os.environ.update(env)
    scratch = Path(tempfile.mkdtemp(prefix="gru-bench-"))
    try:
        moved = {r.run_dir: scratch / str(i) / r.run_dir.name for i, r in enumerate(task.runs)}
        local = [
            replace(
                r,
                run_dir=moved[r.run_dir],
                prune=r.prune and (r.prune[0], tuple(moved.get(d, d) for d in r.prune[1])),
            )
            for r in task.runs
        ]
        for r, content in zip(local, files, strict=True):
            r.run_dir.mkdir(parents=True)
            for name, data in content.items():
                _write_bytes(r.run_dir / name, data)
        _run_task(runner, replace(task, runs=local))
        return [_pack(r.run_dir) for r in local]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _ray(tasks: list[Task], workers: int | None, runner: Runner, address: str | None, done: Done) -> None:
    try:
        import ray
    except ImportError:
        raise UserError(
            "--backend ray needs Ray: pip install -e '.[ray]' (or pip install 'ray>=2.9')"
        ) from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
    env = {"GRU_BENCH_DATA": str(data_dir().resolve()), **{v: "1" for v in THREAD_VARS}}
    pending, running = list(tasks), {}
    try:
        while pending or running:
            while pending and len(running) < (workers or len(tasks)):
                task = pending.pop(0)
                running[remote.remote(runner, task, [_pack(r.run_dir) for r in task.runs], env)] = task
            ready, _ = ray.wait(list(running), num_returns=1)
            task = running.pop(ready[0])
            try:
                for r, content in zip(task.runs, ray.get(ready[0]), strict=True):
                    clear_error(r.run_dir)
                    for name, data in content.items():
                        _write_bytes(r.run_dir / name, data)
            except ray.exceptions.RayError as e:
                for r in task.runs:
                    write_error(r.run_dir, f"Ray task failed:\n{e}\n")
            done(task, None)
    except KeyboardInterrupt:
        for ref in running:
            ray.cancel(ref)
        raise
    finally:
        if started:
            ray.shutdown()


def check_options(workers: int | None, backend: str, address: str | None) -> None:
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if address and backend != "ray":
        raise UserError("--address is only for --backend ray")
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers}: must be at least 1")


def run_tasks(
    tasks: list[Task],
    workers: int | None = None,
    backend: str = "local",
    address: str | None = None,
    runner: Runner = train_task,
    on_outcome: Callable[[RunSpec, Outcome], None] | None = None,
    on_tick: Tick | None = None,
) -> dict[str, Outcome]:
    """Run every task; a failing task does not stop the others. Returns {run label: outcome}.

    `on_tick` sees the running tasks every few seconds (local backend only: Ray run dirs are remote).
    """
    check_options(workers, backend, address)
    outcomes: dict[str, Outcome] = {}

    def done(task: Task, exitcode: int | None) -> None:
        for r in task.runs:
            outcome = _outcome(r.run_dir, exitcode)
            outcomes[r.label] = outcome
            if on_outcome:
                on_outcome(r, outcome)

    for task in tasks:
        for r in task.runs:
            r.run_dir.mkdir(parents=True, exist_ok=True)
            clear_error(r.run_dir)
    if backend == "ray":
        _ray(tasks, workers, runner, address, done)
    else:
        _local(tasks, workers or os.cpu_count() or 1, runner, done, on_tick)
    return outcomes


def _outcome(run_dir: Path, exitcode: int | None) -> Outcome:
    summary = saved_summary(run_dir) or {}
    if summary.get("status") in SETTLED:
        return Outcome(summary["status"], summary=summary)
    if (run_dir / ERROR_FILE).exists():
        return Outcome("failed", error_line(run_dir))
    if exitcode in (130, -signal.SIGINT):
        return Outcome("interrupted", "interrupted: resumes on the next run")
    why = (
        f"worker exited with code {exitcode}"
        if exitcode
        else "training returned without a final summary.json"
    )
    write_error(run_dir, why + " (killed? out of memory?)\n")
    return Outcome("failed", error_line(run_dir))


# --- configs ------------------------------------------------------------------------------------------------


def load(spec: RunSpec) -> Any:
    """The spec's config, checked against its place in runs/<dataset>/<cell>/ (where compare looks)."""
    from gru_bench.config import load_config

    cfg = load_config(spec.config, list(spec.overrides))
    if (cfg.dataset, cfg.model.cell) != spec.run_dir.parts[-3:-1]:
        raise UserError(
            f"{spec.config}: dataset {cfg.dataset}, cell {cfg.model.cell} does not belong in "
            f"runs/{spec.label}: check the sweep's config template"
        )
    return cfg


def dataset_and_cell(config: Path, overrides: tuple[str, ...] = ()) -> tuple[str, str]:
    """Where a config's runs go: results/runs/<dataset>/<cell>/."""
    from gru_bench.config import load_config

    cfg = load_config(config, list(overrides))
    return cfg.dataset, cfg.model.cell


# --- the whole thing, with progress -------------------------------------------------------------------------


def _describe(outcome: Outcome) -> str:
    s = outcome.summary
    if not s:
        return outcome.error
    nll = " ".join(
        f"{k} {s[key]:.3f}" for k, key in (("valid", "best_valid_nll"), ("test", "test_nll")) if s.get(key)
    )
    return f"{nll}  ({s.get('epochs', '?')} epochs) {s.get('message', '')}".strip()


PROGRESS_SECONDS = float(os.environ.get("GRU_BENCH_PROGRESS_SECONDS", 60))


class _ProgressLog:
    """Off a terminal (nohup, a CI log) the live display does not draw: print a line every PROGRESS_SECONDS
    with the epochs of every running stack, the time so far and an estimate of what is left."""

    def __init__(self, total: int, console: Any):
        self.total, self.console, self.finished = total, console, 0
        self.start = self.last = time.monotonic()

    def tick(self, running: list[Task]) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_SECONDS:
            return
        self.last = now
        stacks = ", ".join(
            f"{t.runs[0].label}{f' +{len(t.runs) - 1}' if len(t.runs) > 1 else ''} epoch "
            f"{max(epochs_done(r.run_dir) for r in t.runs)}/{max(c.training.max_epochs for c in t.configs)}"
            for t in running
        )
        elapsed = now - self.start
        # runs finish early (early stopping, pruning), so epochs say little: extrapolate finished runs
        left = (
            f"~{_clock(elapsed * (self.total - self.finished) / self.finished)} left" if self.finished else ""
        )
        self.console.print(
            f"[{_clock(elapsed)}] {self.finished}/{self.total} runs finished{', ' + left if left else ''}; "
            f"training: {stacks or '-'}"
        )


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


def run_specs(
    specs: list[RunSpec],
    workers: int | None = None,
    backend: str = "local",
    address: str | None = None,
    k: int = 3,
    runner: Runner = train_task,
    console: Any = None,
) -> dict[str, Outcome]:
    """Load and check every config first (bad input stops before any training), then train what is left."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    check_options(workers, backend, address)
    console = console or Console(stderr=True)
    labels = [s.label for s in specs]
    dup = {x for x in labels if labels.count(x) > 1}
    if dup:
        raise UserError(
            f"two runs share the run dir runs/{sorted(dup)[0]}: give them different names or grid values"
        )
    skipped, tasks = plan(specs, [load(s) for s in specs], k)
    n = sum(len(t.runs) for t in tasks)
    if skipped:
        console.print(f"{len(skipped)} run(s) already finished: skipped")
    if not tasks:
        return skipped
    resumed = sum(len(t.runs) for t in tasks if t.resume)
    console.print(f"training {n} run(s) in {len(tasks)} task(s) ({resumed} resumed), backend {backend}")
    marks = {
        "complete": "[green]done[/]",
        "stopped_nan": "[yellow]diverged[/]",
        "failed": "[red]FAILED[/]",
        "interrupted": "[yellow]interrupted[/]",
    }
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("runs", total=n)
        rows: dict[int, Any] = {}  # id(task) -> its progress row (epochs of its furthest run)
        log = _ProgressLog(n, console) if not console.is_terminal else None

        def report(spec: RunSpec, outcome: Outcome) -> None:
            progress.console.print(
                f"{marks.get(outcome.status, outcome.status)} {spec.label}  {_describe(outcome)}"
            )
            progress.advance(bar)
            if log:
                log.finished += 1

        def tick(running: list[Task]) -> None:
            if log:
                log.tick(running)
            for t in running:
                if id(t) not in rows:
                    name = t.runs[0].label + (f" +{len(t.runs) - 1}" if len(t.runs) > 1 else "")
                    total = max(c.training.max_epochs for c in t.configs)
                    rows[id(t)] = progress.add_task(f"  {name} epochs", total=total)
                progress.update(rows[id(t)], completed=max(epochs_done(r.run_dir) for r in t.runs))
            for key in set(rows) - {id(t) for t in running}:
                progress.remove_task(rows.pop(key))

        outcomes = run_tasks(tasks, workers, backend, address, runner, report, tick)
    return {**skipped, **outcomes}
