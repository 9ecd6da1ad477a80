"""Experiments: many runs at once. sweep.py expands a sweep file into runs, search.py runs the paper's
learning-rate search, scheduler.py plans them into lockstep tasks and trains them on processes or Ray;
bench.py measures training throughput."""

from gru_bench import lazy_exports

_EXPORTS = {
    "Outcome": "scheduler",
    "RunSpec": "scheduler",
    "Task": "scheduler",
    "plan": "scheduler",
    "run_specs": "scheduler",
    "run_tasks": "scheduler",
    "train_task": "scheduler",
    "Sweep": "sweep",
    "expand": "sweep",
    "load_sweep": "sweep",
    "preview": "sweep",
    "run_sweep": "sweep",
    "Halving": "search",
    "Search": "search",
    "SuccessiveHalving": "search",
    "sample_lrs": "search",  # search.search, the function, keeps its module's name: import it from there
    "run_bench": "bench",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
