"""Training: the loop over a lockstep stack of models (trainer.py), the run folder it writes and resumes
from (rundir.py), and its optional TensorBoard log (tblog.py)."""

from gru_bench import lazy_exports

_EXPORTS = {
    "SplitNLL": "trainer",
    "Trainer": "trainer",
    "evaluate": "trainer",
    "split_nll": "trainer",
    "train": "trainer",
    "train_command": "trainer",
    "train_lockstep": "trainer",
    "load_run": "rundir",
    "rebuild": "rundir",
    "run_config": "rundir",
    "run_lock": "rundir",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
