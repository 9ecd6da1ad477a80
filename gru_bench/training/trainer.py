"""Training and evaluation: next-frame NLL, RMSProp + weight noise, early stopping; run folders: rundir.

One code path: `train(cfg)` is `train_lockstep([cfg])`. K configs that differ only in per-model scalars
(seed, learning rate, weight noise, ...) train as ONE stacked model; every model keeps its own data order,
RNG streams, optimizer state, early stopping and run dir, written exactly as if it had been trained alone.

Determinism: model k draws its initial weights, its weight noise and its data order from three CPU
generators seeded from its own seed only, and all of its arithmetic runs on its own slice of the stack
(losses and norms slice by slice, updates elementwise), so a seed gives the same run alone or in a stack.
"""

from __future__ import annotations

import contextlib
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import Tensor

import gru_bench
from gru_bench import data as datasets
from gru_bench.config import (
    PER_MODEL,
    Config,
    config_hash,
    dump,
    load_config,
    parse_override,
    stack_settings,
    stack_threads,
)
from gru_bench.data.stats import bernoulli_baseline
from gru_bench.errors import Interrupted, UserError
from gru_bench.fsutil import write_text
from gru_bench.models import StackedModel
from gru_bench.models.fastpath import FastUpdate
from gru_bench.models.optim import StackedRMSProp
from gru_bench.training import tblog
from gru_bench.training.rundir import (
    default_run_dir,
    load_run,
    model_for,
    prepare_dir,
    run_config,
    run_lock,
    save_checkpoint,
    saved_summary,
    write_outputs,
)

STREAMS = ("init", "noise", "shuffle")
# False: every update takes the autograd path, also where the compiled one could run (tests, comparisons)
FAST_UPDATE = True
# What `train --resume` may change: the machine, not the experiment (keys config_hash ignores).
RESUME_KEYS = ("training.device", "training.threads", "training.eval_batch_size", "model.fast")


def _tensors(rolls: list[np.ndarray], keys: datasets.Keyboard) -> list[Tensor]:
    """A split's (T, 88) piano rolls as float32 tensors of the model's note columns."""
    return [torch.from_numpy(keys.from_piano(x).astype(np.float32)) for x in rolls]


def pad(seqs: list[list[Tensor] | None], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Per model a batch of (T_i, n) sequences (None: a stopped model) -> x (K, B, T, n) zero-padded to the
    longest sequence of all, mask (K, B, T - 1) of the predicted frames (frame t + 1 exists), and lengths
    (K, B) = T_i - 1, the input steps the model must run (0 for padding and stopped models)."""
    b = max(len(s) for s in seqs if s is not None)
    t = max(len(x) for s in seqs if s is not None for x in s)
    n = next(x.shape[-1] for s in seqs if s is not None for x in s)
    x = np.zeros((len(seqs), b, t, n), np.float32)  # numpy: a copy costs 1 us, not torch's ~5
    lengths = np.zeros((len(seqs), b), np.int64)
    for k, batch in enumerate(seqs):
        for i, s in enumerate(batch or ()):
            x[k, i, : len(s)] = s.numpy()
            lengths[k, i] = len(s) - 1
    lengths = torch.from_numpy(lengths)
    mask = torch.arange(t - 1) < lengths.unsqueeze(-1)
    return torch.from_numpy(x).to(device), mask.to(device), lengths.to(device)


class SplitNLL(NamedTuple):
    """NLL per predicted frame of every model of a stack on one split, in both metrics (nats)."""

    frame: list[float]  # all predicted frames of the split pooled (Boulanger-Lewandowski 2012, Bai et al.)
    seq: list[float]  # mean over sequences of each sequence's mean frame NLL (the paper's: pylearn2 monitor)

    def get(self, metric: str) -> list[float]:
        return self.seq if metric == "seq" else self.frame


@torch.no_grad()
def split_nll(
    model: StackedModel,
    seqs: list[Tensor],
    batch_size: int,
    device: torch.device,
    active: list[bool] | None = None,
) -> SplitNLL:
    """NLL per predicted frame of every model of the stack on `seqs`, frame-weighted and per sequence.

    Chung et al. (2014) report pylearn2 monitor channels: at batch size 1 the monitor averages the per-frame
    cost over batches, i.e. over sequences, so a short sequence counts as much as a long one. Sequences are
    sorted by length and padded in big batches for speed; masking makes both results independent of the
    batching (bit for bit, except that models wider than the paper's take the kernels' BLAS path in
    batches of 8 or more, kernels.use_blas, and the last, smaller batch differs from it in float32
    rounding), and passing the lengths lets the CPU kernels skip the padding. Models not `active`
    (stopped) are not evaluated: NaN.
    """
    seqs = [x for x in seqs if len(x) > 1]  # a 1-frame sequence predicts nothing
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    on = torch.tensor([True] * model.k if active is None else active, device=device)
    total, per_seq = np.zeros(model.k), np.zeros(model.k)
    frames = 0
    model.eval()
    for start in range(0, len(order), batch_size):
        batch = [seqs[i] for i in order[start : start + batch_size]]
        x, _, lengths = pad([batch], device)
        x = x.expand(model.k, -1, -1, -1).contiguous()
        n = lengths[0].double().cpu().numpy()
        sums = model.nll(x, torch.where(on.view(-1, 1), lengths, 0)).double().cpu().numpy()  # (K, B)
        total += sums.sum(1)
        per_seq += (sums / n).sum(1)
        frames += int(n.sum())
    model.train()
    off = ~on.cpu().numpy()
    if not frames:
        return SplitNLL([math.nan] * model.k, [math.nan] * model.k)
    return SplitNLL(
        np.where(off, math.nan, total / frames).tolist(),
        np.where(off, math.nan, per_seq / len(seqs)).tolist(),
    )


# --- per-model bookkeeping --------------------------------------------------------------------------------


def _generators(seed: int) -> dict[str, torch.Generator]:
    """Independent CPU streams for init, weight noise and data order, all derived from the seed alone."""
    states = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return {
        name: torch.Generator().manual_seed(int(s.generate_state(1, np.uint64)[0] >> 1))
        for name, s in zip(STREAMS, states, strict=True)
    }


def lr_at(cfg: Config, epoch: int) -> float:
    """Learning rate of an epoch (1-based): linear from lr to lr x lr_final at max_epochs, or constant."""
    tc = cfg.training
    if tc.lr_decay == "none" or tc.max_epochs == 1:
        return tc.lr
    return tc.lr * (1 - (1 - tc.lr_final) * (epoch - 1) / (tc.max_epochs - 1))


@dataclass
class _Run:
    """Everything one model of the stack owns; `last.pt` is this plus its weights and optimizer slice."""

    cfg: Config
    dir: Path
    gens: dict[str, torch.Generator]
    epoch: int = 0
    updates: int = 0
    seconds: float = 0.0
    best_valid: float = math.inf
    best_epoch: int | None = None
    bad_epochs: int = 0
    status: str = "running"
    message: str = ""
    test_nll: float | None = None
    test_nll_seq: float | None = None
    pruned_epoch: int | None = None
    metrics: list[dict] = field(default_factory=list)
    skipped: int = 0  # updates skipped because the gradient was not finite (see _update)
    grad_sum: float = 0.0  # this epoch's gradient norms (not saved: epochs end with a checkpoint)
    epoch_updates: int = 0

    @property
    def active(self) -> bool:
        return self.status == "running"

    def state(self) -> dict:
        return {key: getattr(self, key) for key in _SAVED} | {
            "rng": {n: g.get_state() for n, g in self.gens.items()}
        }

    def load(self, state: dict) -> None:
        for key in _SAVED:
            setattr(self, key, state.get(key, getattr(self, key)))  # a checkpoint may predate a key
        for name, g in self.gens.items():
            g.set_state(state["rng"][name])


_SAVED = (
    "epoch",
    "updates",
    "seconds",
    "best_valid",
    "best_epoch",
    "bad_epochs",
    "status",
    "message",
    "test_nll",
    "test_nll_seq",
    "pruned_epoch",
    "metrics",
    "skipped",
)


def _device(cfg: Config, strict: bool = True) -> torch.device:
    """training.device; not `strict` (evaluation): a run trained on a GPU is scored on the CPU if need be."""
    want, gpu = cfg.training.device, torch.cuda.is_available()
    if want == "cuda" and not gpu and strict:
        raise UserError(
            f"training.device is cuda (from --device, --set or {cfg.source}) but torch sees no GPU: "
            "use --device cpu (or auto)"
        )
    return torch.device("cuda" if want != "cpu" and gpu else "cpu")


def _model_state(model: StackedModel, i: int) -> dict[str, Tensor]:
    """Model i of the stack as the state dict of a K=1 model."""
    return {name: p[i : i + 1].detach().cpu().clone() for name, p in model.state_dict().items()}


@torch.no_grad()
def _load_model_state(model: StackedModel, i: int, state: dict[str, Tensor]) -> None:
    for name, p in model.state_dict().items():
        p[i].copy_(state[name][0])


# --- training ---------------------------------------------------------------------------------------------


def _check_stack(cfgs: list[Config]) -> None:
    ref = stack_settings(cfgs[0])
    for c in cfgs[1:]:
        diff = sorted(k for k, v in stack_settings(c).items() if ref.get(k) != v)
        if diff:
            raise UserError(
                f"lockstep: {c.source} differs from {cfgs[0].source} in {', '.join(diff)}; "
                f"only {', '.join(sorted(PER_MODEL))} may differ within a stack"
            )


def _at_best(run: _Run, key: str) -> float | None:
    best = next((m for m in run.metrics if m["epoch"] == run.best_epoch), None)
    return best.get(key) if best else None


def _summary(run: _Run, extra: dict) -> dict:
    cfg = run.cfg
    n = len(run.metrics)
    return {
        "dataset": cfg.dataset,
        "cell": cfg.model.cell,
        "impl": cfg.model.impl,
        "hidden": extra["hidden"],
        "params": extra["params"],
        "seed": cfg.training.seed,
        "lr": cfg.training.lr,
        "route": cfg.data.route,
        "run_name": run.dir.name,
        "status": run.status,
        "message": run.message,
        "epochs": run.epoch,
        "updates": run.updates,
        "skipped_updates": run.skipped,
        "select_metric": cfg.training.select,
        "best_epoch": run.best_epoch,
        "best_valid_nll": run.best_valid if run.best_epoch else None,  # in the select metric
        "pruned_epoch": run.pruned_epoch,
        # at the best epoch; *_seq: the paper's per-sequence mean, else frame-weighted
        **{key: _at_best(run, key) for key in ("train_nll", "train_nll_seq", "valid_nll", "valid_nll_seq")},
        "test_nll": run.test_nll,
        "test_nll_seq": run.test_nll_seq,
        "baseline_nll": extra["baseline"],
        "baseline_nll_seq": extra["baseline_seq"],
        "total_seconds": round(run.seconds, 3),
        "seconds_per_epoch": round(run.seconds / n, 3) if n else None,
        "config_hash": config_hash(cfg),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "gru_bench": gru_bench.__version__,
        },
        "device": extra["device"],
        "lockstep_k": extra["k"],
    }


def _progress(console: Console, quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
    )


class Pruner(Protocol):
    """Stops hopeless runs of a stack at the end of an epoch (see search.SuccessiveHalving)."""

    def __call__(self, epoch: int, runs: dict[Path, list[dict]]) -> dict[Path, str]:
        """`runs`: run dir -> metrics rows of the stack's running runs; returns run dir -> reason to stop."""
        ...


def train(
    cfg: Config, run_dir: Path | None = None, resume: bool = False, quiet: bool = False, restart: bool = False
) -> dict:
    """Train one model (a lockstep stack of one) and return its summary."""
    dirs = [run_dir] if run_dir else None
    return train_lockstep([cfg], dirs, resume=resume, quiet=quiet, restart=restart)[0]


def train_lockstep(
    cfgs: list[Config],
    run_dirs: list[Path] | None = None,
    resume: bool = False,
    quiet: bool = False,
    pruner: Pruner | None = None,
    restart: bool = False,
) -> list[dict]:
    """Train K models as one stack; each writes its own run dir (see the module docstring). Returns summaries.

    Ctrl-C or a crash loses at most the current epoch: every epoch ends with an atomic checkpoint, and
    `resume=True` continues every run from it with the same RNG states (a run dir with nothing saved yet
    starts afresh; `restart` starts unfinished runs over). `pruner` may stop runs at the end of an epoch
    (status `pruned`; search trials).

    CPU threads: `config.stack_threads` (default: torch on one, the stack's models over the free CPUs).
    """
    _check_stack(cfgs)
    threads = torch.get_num_threads()
    torch_threads, _ = stack_threads(cfgs[0].training.threads, len(cfgs))
    if torch_threads:
        torch.set_num_threads(torch_threads)
    console = Console(quiet=quiet, soft_wrap=True)
    dirs = [Path(d) for d in run_dirs] if run_dirs else [default_run_dir(c) for c in cfgs]
    if len(dirs) != len(cfgs) or len({d.resolve() for d in dirs}) != len(dirs):
        raise UserError(
            "lockstep: give one distinct run dir per config (two configs resolve to the same run name; "
            "set different seeds or run.name)"
        )
    try:
        with contextlib.ExitStack() as locks:
            for d in dirs:
                locks.enter_context(run_lock(d, console))
                locks.callback(tblog.close, d)
            return Trainer(cfgs, dirs, resume, console, pruner, restart).fit()
    finally:
        torch.set_num_threads(threads)


class Trainer:
    """One lockstep stack in training: its K runs, the stacked model, optimizer, device and data.

    `fit` is the loop; `update` is one optimizer step of every active model, `end_epoch` evaluates, selects,
    early-stops, prunes and checkpoints.
    """

    def __init__(
        self,
        cfgs: list[Config],
        dirs: list[Path],
        resume: bool,
        console: Console,
        pruner: Pruner | None = None,
        restart: bool = False,
    ):
        self.runs = [_Run(c, d, _generators(c.training.seed)) for c, d in zip(cfgs, dirs, strict=True)]
        states = [prepare_dir(r.dir, r.cfg, resume, restart) for r in self.runs]
        self.cfg, self.k, self.console, self.pruner = cfgs[0], len(cfgs), console, pruner
        self.device = _device(self.cfg)
        rolls = datasets.load(self.cfg.dataset, self.cfg.data.route)
        keys = datasets.Keyboard.of(self.cfg.data.pitches, rolls)
        self.seqs = {s: _tensors(v, keys) for s, v in rolls.splits.items()}
        for split in ("train", "valid"):
            if not any(len(x) > 1 for x in self.seqs.get(split, [])):
                raise UserError(
                    f"dataset {self.cfg.dataset}: the {split} split has no sequence of 2 or more frames"
                )
        self.train_seqs = [x for x in self.seqs["train"] if len(x) > 1]  # a 1-frame sequence predicts nothing

        self.model = model_for(self.cfg, self.k, keys.width)
        tc = [r.cfg.training for r in self.runs]
        self.model.init_weights([r.gens["init"] for r in self.runs], tc[0].init_scale, tc[0].init_orthogonal)
        self.model.to(self.device)
        self.opt = StackedRMSProp(
            list(self.model.parameters()),
            [t.momentum for t in tc],
            [t.rms_decay for t in tc],
            [t.rms_eps for t in tc],
            tc[0].clip,
            [t.clip_norm for t in tc],
            floor=[t.rms_floor for t in tc],
            clip_velocity=tc[0].clip_velocity,
        )
        noisy = self.model.layer_weights() if tc[0].noise_on == "input_recurrent" else []
        self.noisy = self.model.recurrent_weights() + noisy  # U first: U-only runs draw the same noise
        self.fast = None  # the compiled update where the kernels run (see update)
        if FAST_UPDATE and FastUpdate.possible(self.model, self.opt):
            per_frame = [t.loss == "mean" for t in tc]
            _, threads = stack_threads(tc[0].threads, self.k)  # the stack's models split over threads
            self.fast = FastUpdate(self.model, self.opt, self.noisy, per_frame, MAX_GRAD_NORM, threads)
        for i, (run, state) in enumerate(zip(self.runs, states, strict=True)):
            if state is None:
                continue
            try:
                _load_model_state(self.model, i, state["model"])
                self.opt.load_state_of(i, state["optim"])
                run.load(state["run"])
            except (KeyError, IndexError, RuntimeError, TypeError, ValueError) as e:  # an edited checkpoint
                raise UserError(
                    f"{run.dir / 'last.pt'} does not fit {run.dir / 'config.yaml'} ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:80]}): restore it, or start the run over with "
                    f"'gru-bench train --resume {run.dir} --restart'"
                ) from None
        self.extra = {
            "hidden": self.model.hidden,
            "params": self.model.num_params(),
            "baseline": bernoulli_baseline(rolls),
            "baseline_seq": bernoulli_baseline(rolls, per_sequence=True),
            "device": str(self.device),
            "k": self.k,
        }

    def fit(self) -> list[dict]:
        runs, console, cfg = self.runs, self.console, self.cfg
        for run in runs:
            if run.active:
                write_text(run.dir / "config.yaml", dump(run.cfg))
            if run.active or saved_summary(run.dir) is None:  # a finished run's damaged summary is rewritten
                write_outputs(run.dir, run.metrics, _summary(run, self.extra))
        if not any(r.active for r in runs):
            console.print("already finished: " + ", ".join(f"{r.dir} ({r.status})" for r in runs))
            return [_summary(r, self.extra) for r in runs]
        base, base_seq = self.extra["baseline"]["valid"], self.extra["baseline_seq"]["valid"]
        console.print(
            f"{cfg.dataset} {cfg.model.cell} ({cfg.model.impl}, hidden {self.model.hidden}): "
            f"{self.extra['params']} parameters per model, {self.k} model(s) on {self.device}; baseline "
            f"valid NLL {base_seq:.3f} per sequence, {base:.3f} per frame"
        )
        for run in runs:
            console.print(f"  -> {run.dir}" + (f" (resuming after epoch {run.epoch})" if run.epoch else ""))
        n_batches = math.ceil(len(self.train_seqs) / cfg.training.batch_size)
        max_epochs = max(r.cfg.training.max_epochs for r in runs)
        if self.device.type == "cpu" and self.model.use_kernels(self.seqs["train"][0][None, None]):
            console.print("the first update compiles the numba CPU kernels unless cached (about a minute)")
        try:
            with _progress(console, console.quiet) as progress:
                ep_task = progress.add_task("epochs", total=max_epochs, completed=min(r.epoch for r in runs))
                up_task = progress.add_task("updates", total=n_batches)
                while any(r.active for r in runs):
                    t0 = time.perf_counter()
                    trained = [r.active for r in runs]
                    batches = [_start_epoch(r, len(self.train_seqs)) if r.active else None for r in runs]
                    progress.update(up_task, completed=0)
                    for u in range(n_batches):
                        if not any(r.active for r in runs):
                            break
                        self.update([
                            [self.train_seqs[j] for j in b[u]] if b and r.active else None
                            for b, r in zip(batches, runs, strict=True)
                        ])  # fmt: skip
                        progress.advance(up_task)
                    self.end_epoch(trained, time.perf_counter() - t0)
                    done = min(max(r.epoch for r in runs), max_epochs)
                    progress.update(ep_task, completed=done, description=_describe(runs))
        except KeyboardInterrupt:
            resume = " ".join(f"--resume {r.dir}" for r in runs if r.active)
            raise Interrupted(f"interrupted: continue with 'gru-bench train {resume}'") from None
        return [_summary(r, self.extra) for r in runs]

    def update(self, batch: list[list[Tensor] | None]) -> None:
        """One update of every active model: loss and gradient at noisy weights, step from the clean ones.

        A model whose loss is not finite stops (`stopped_nan`); one whose loss is finite but whose gradient
        is not (BPTT through thousands of steps can overflow float32) skips this update only, counted in
        `skipped_updates`: RMSProp would otherwise divide inf by inf, or freeze a weight whose g^2 overflowed.
        On the CPU kernels the whole update is one compiled call (models/fastpath.py, the same numbers).
        """
        runs = self.runs
        active = [r.active for r in runs]
        lrs = [lr_at(r.cfg, r.epoch) for r in runs]
        if self.fast is not None:
            std = [r.cfg.training.weight_noise for r in runs]
            loss_ok, grad_ok, gnorm = self.fast(batch, lrs, active, std, [r.gens["noise"] for r in runs])
        else:
            loss_ok, grad_ok, gnorm = self._gradients(batch, active)
        step = list(active)
        for i, run in enumerate(runs):
            if not active[i]:
                continue
            if not loss_ok[i]:
                run.status, step[i] = "stopped_nan", False
                run.message = (
                    f"non-finite loss in epoch {run.epoch}, update {run.epoch_updates + 1}; "
                    f"kept the best model (epoch {run.best_epoch})"
                )
                self.console.print(f"[red]{run.dir}: {run.message}")
            elif not grad_ok[i]:
                step[i] = False
                run.skipped += 1
        if self.fast is None:
            self.opt.step(lrs, step, torch.tensor(gnorm, dtype=torch.float64))
        for run, a, g in zip(runs, step, gnorm, strict=True):
            if a:
                run.updates += 1
                run.epoch_updates += 1
                run.grad_sum += g

    def _gradients(self, batch: list[list[Tensor] | None], active: list[bool]) -> tuple[list, list, list]:
        """The autograd path (CUDA, float64, no numba): gradients at the noisy weights, clean weights back;
        per model whether the loss is finite, whether the gradient norm is, and that norm."""
        runs, model = self.runs, self.model
        x, _, lengths = pad(batch, self.device)  # a stopped model has no sequences: length 0, no compute
        clean = _add_noise(self.noisy, runs, [r.cfg.training.weight_noise for r in runs], self.device)
        seq_nll = model.nll(x, lengths)  # (K, B) float64
        # the loss of model k: its frame NLL summed over the batch (loss: sum, the authors') or per frame
        frames = lengths.sum(1).clamp(min=1).to(seq_nll.dtype)
        per_frame = torch.tensor([r.cfg.training.loss == "mean" for r in runs], device=self.device)
        weight = torch.where(per_frame, 1 / frames, torch.ones_like(frames))
        model.zero_grad(set_to_none=True)  # the new gradient is stored as is instead of added to zeros
        (seq_nll * weight.unsqueeze(1))[torch.tensor(active, device=self.device)].sum().backward()
        with torch.no_grad():
            for w, c in zip(self.noisy, clean, strict=True):
                w.copy_(c)
        gnorm = self.opt.grad_norms()
        loss_ok = torch.isfinite(seq_nll.sum(1)).tolist()
        grad_ok = (torch.isfinite(gnorm) & (gnorm < MAX_GRAD_NORM)).tolist()
        return loss_ok, grad_ok, gnorm.tolist()

    def end_epoch(self, trained: list[bool], seconds: float) -> None:
        """Evaluate, record, select, early-stop, prune and checkpoint every model that trained this epoch.

        The valid split is scored every epoch (it selects the model); the train split only at a new best and
        every `eval_train_every` epochs (empty cells in metrics.csv otherwise), the test split once, at the
        end, from best.pt. This saves ~40% of an epoch and changes no selected model.
        """
        runs, i_run = self.runs, range(self.k)
        if self.fast is not None:  # the noise generators back where this epoch's updates left them
            self.fast.settle()
        on = [r.active for r in runs]
        valid = self._nll("valid", on)
        new_best = [on[i] and valid.get(runs[i].cfg.training.select)[i] < runs[i].best_valid for i in i_run]
        due = [on[i] and (new_best[i] or _due(runs[i])) for i in i_run]
        train = self._nll("train", due) if any(due) else SplitNLL(*([[math.nan] * self.k] * 2))
        for i, run in enumerate(runs):
            if trained[i]:
                run.seconds += seconds
            if on[i]:
                self._record(i, valid, train, new_best[i], seconds)
        if self.pruner is not None:
            alive = {r.dir: r.metrics for r in runs if r.active}
            for run in runs:
                reason = self.pruner(run.epoch, alive).get(run.dir) if run.active else None
                if reason:
                    run.status, run.message, run.pruned_epoch = "pruned", reason, run.epoch
        for i, run in enumerate(runs):
            if not trained[i]:
                continue
            if not run.active:
                test = _best_nll(run, self.seqs, "test", self.device)
                run.test_nll, run.test_nll_seq = (test.frame[0], test.seq[0]) if test else (None, None)
                self.console.print(
                    f"{run.dir.name}: {run.status} ({run.message}); best valid {run.best_valid:.3f} "
                    f"@ epoch {run.best_epoch}, test {_fmt(run.test_nll_seq)} per sequence, "
                    f"{_fmt(run.test_nll)} per frame"
                )
            save_checkpoint(
                run.dir / "last.pt",
                {"model": _model_state(self.model, i), "optim": self.opt.state_of(i), "run": run.state()},
            )
            write_outputs(run.dir, run.metrics, _summary(run, self.extra))

    def _nll(self, split: str, which: list[bool]) -> SplitNLL:
        return split_nll(self.model, self.seqs[split], self.cfg.training.eval_batch_size, self.device, which)

    def _record(self, i: int, valid: SplitNLL, train: SplitNLL, new_best: bool, seconds: float) -> None:
        """Model i's metrics row, best model and stopping rule after an epoch it trained through."""
        run, tc = self.runs[i], self.runs[i].cfg.training
        row = {
            "epoch": run.epoch,
            "updates": run.updates,
            "seconds": round(run.seconds, 3),
            "lr": lr_at(run.cfg, run.epoch),
            "train_nll": _cell(train.frame[i]),
            "train_nll_seq": _cell(train.seq[i]),
            "valid_nll": valid.frame[i],
            "valid_nll_seq": valid.seq[i],
            "grad_norm": run.grad_sum / max(run.epoch_updates, 1),
        }
        run.metrics.append(row)
        tblog.log_epoch(run.dir, row, run.cfg.to_dict())
        score = valid.get(tc.select)[i]
        if not math.isfinite(score):
            run.status = "stopped_nan"
            run.message = f"non-finite valid NLL in epoch {run.epoch}; kept the best model"
        elif new_best:
            run.best_valid, run.best_epoch, run.bad_epochs = score, run.epoch, 0
            save_checkpoint(
                run.dir / "best.pt",
                {"model": _model_state(self.model, i), "epoch": run.epoch, "valid_nll": score},
            )
        else:
            run.bad_epochs += 1
        if run.active and run.epoch >= tc.max_epochs:
            run.status, run.message = "complete", "reached max_epochs"
        elif run.active and tc.patience and run.bad_epochs >= tc.patience:
            run.status, run.message = "complete", f"early stop: no better valid NLL for {tc.patience} epochs"
        self.console.print(
            f"{run.dir.name}  epoch {run.epoch:3d}  lr {row['lr']:.2e}  train {_fmt(row['train_nll_seq'])}  "
            f"valid {valid.seq[i]:.3f} per sequence, {valid.frame[i]:.3f} per frame  "
            f"best {run.best_valid:.3f}@{run.best_epoch}  {seconds:.1f}s"
        )


def _due(run: _Run) -> bool:
    """Whether the train split is scored this epoch besides new bests (every eval_train_every epochs)."""
    every = run.cfg.training.eval_train_every
    return every is not None and run.epoch % every == 0


def _cell(x: float) -> float | None:
    """A metrics.csv value: None (an empty cell) where the split was not scored this epoch."""
    return None if math.isnan(x) else x


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _start_epoch(run: _Run, n: int) -> list[list[int]]:
    """Advance a run to its next epoch; its batches of training-sequence indices, in its own order."""
    run.epoch += 1
    run.grad_sum, run.epoch_updates = 0.0, 0
    shuffle = run.cfg.training.shuffle
    order = torch.randperm(n, generator=run.gens["shuffle"]).tolist() if shuffle else list(range(n))
    bs = run.cfg.training.batch_size
    return [order[j : j + bs] for j in range(0, n, bs)]


# Beyond this gradient norm, g^2 can overflow float32 (max ~3.4e38) in the RMSProp accumulator.
MAX_GRAD_NORM = 1e18


def _describe(runs: list[_Run]) -> str:
    best = min(runs, key=lambda r: r.best_valid)
    last = best.metrics[-1] if best.metrics else None
    tail = f" valid {last['valid_nll_seq']:.3f}" if last else ""
    return f"epoch {best.epoch}{tail} best {best.best_valid:.3f}@{best.best_epoch}"


def _add_noise(
    weights: list[Tensor], runs: list[_Run], std: list[float], device: torch.device
) -> list[Tensor]:
    """Add each active model's weight noise (from its own stream) to `weights`; return the clean weights to
    restore after the backward pass (the update is applied to the clean weights)."""
    clean = [w.detach().clone() for w in weights]
    with torch.no_grad():
        for w in weights:
            for i, run in enumerate(runs):
                if run.active and std[i] > 0:
                    w[i].add_((torch.randn(w.shape[1:], generator=run.gens["noise"]) * std[i]).to(device))
    return clean


def _best_nll(run: _Run, seqs: dict[str, list[Tensor]], split: str, device: torch.device) -> SplitNLL | None:
    """NLL of the run's best model on a split, computed by a model of its own (as if it had trained alone)."""
    if run.best_epoch is None or split not in seqs:
        return None
    model, cfg = load_run(run.dir, "best")
    return split_nll(model.to(device), seqs[split], cfg.training.eval_batch_size, device)


def evaluate(run_dir: str | Path, split: str = "test", which: str = "best") -> SplitNLL:
    """Recompute the NLL per frame of a saved model (`best.pt` or `last.pt`) on a split, in both metrics."""
    model, cfg = load_run(run_dir, which)
    rolls = datasets.load(cfg.dataset, cfg.data.route)
    if split not in rolls.splits:
        raise UserError(f"--split must be one of {', '.join(rolls.splits)}, got {split!r}")
    device = _device(cfg, strict=False)
    keys = datasets.Keyboard.of(cfg.data.pitches, rolls)
    if keys.width != model.n_in:
        raise UserError(
            f"{run_dir} was trained on {model.n_in} note columns, {cfg.dataset} now gives {keys.width} "
            f"(data.pitches: {cfg.data.pitches}): was the dataset prepared again from other files?"
        )
    seqs = _tensors(rolls.splits[split], keys)
    return split_nll(model.to(device), seqs, cfg.training.eval_batch_size, device)


def train_command(
    config: str | Path | None,
    overrides: list[str] = (),
    seeds: list[int] | None = None,
    resume: list[Path] = (),
    quiet: bool = False,
    restart: bool = False,
    labels: dict[str, str] | None = None,
) -> list[dict]:
    """`gru-bench train`: one config (several `seeds` train in lockstep), or `resume` run dirs (one stack).

    A resumed run keeps its saved config; only keys of the machine, not of the experiment (--device, ...),
    may change. `restart` starts unfinished runs over; `labels` name the options behind `overrides`."""
    if resume:
        changed = sorted({parse_override(o)[0] for o in overrides} - set(RESUME_KEYS))
        extra = ["CONFIG"] * (config is not None) + ["--seeds"] * bool(seeds) + changed
        if extra:
            raise UserError(
                f"--resume continues a run with the config saved in its folder: leave out {', '.join(extra)} "
                f"(only {', '.join(RESUME_KEYS)} may change)"
            )
        cfgs = [run_config(Path(d), overrides) for d in resume]
        return train_lockstep(cfgs, [Path(d) for d in resume], resume=True, quiet=quiet, restart=restart)
    if config is None:
        raise UserError("give a CONFIG (e.g. configs/jsb/gru.yaml or jsb/gru) or --resume RUN_DIR")
    cfg = load_config(config, overrides, labels)
    if not seeds:
        return [train(cfg, quiet=quiet, restart=restart)]
    if cfg.run.name and len(seeds) > 1:
        raise UserError("--name names one run; with several --seeds leave it out (runs are named seed<seed>)")
    cfgs = [cfg.replace(**{"training.seed": s}) for s in seeds]
    return train_lockstep(cfgs, quiet=quiet, restart=restart)
