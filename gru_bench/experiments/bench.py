"""`gru-bench bench`: training throughput (time steps/s of forward + backward + RMSProp update) per variant.

Every variant trains on the same random sparse piano roll. The baseline, measured in the same run, is what a
torch user would write: torch.nn.RNN/LSTM/GRU + Linear, BCE-with-logits and torch.optim.RMSprop. Our variants
run what `train` runs (the model's NLL and StackedRMSProp with update clipping; no weight noise). Lockstep
rows train a stack of K models at once and count the time steps of all K.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from rich.progress import track
from rich.table import Table
from torch import nn

from gru_bench.data.registry import N_NOTES
from gru_bench.errors import UserError
from gru_bench.fsutil import atomic_write
from gru_bench.models import CELLS, IMPLS, StackedModel, build_model, kernels
from gru_bench.models.optim import StackedRMSProp
from gru_bench.paper import HIDDEN_SIZES

_TORCH_NN = {"tanh": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@dataclass(frozen=True)
class Variant:
    cell: str
    impl: str  # "torch.nn" for the baseline
    fast: str  # "on" | "off" | "-"
    k: int = 1

    @property
    def name(self) -> str:
        label = "torch.nn" if self.impl == "torch.nn" else f"{self.impl} fast={self.fast}"
        return label if self.k == 1 else f"{label} K={self.k}"


def variants(cells: Iterable[str], impls: Iterable[str], lockstep_k: int) -> list[Variant]:
    """Baseline, then each impl with kernels off/on, alone and as a K-stack."""
    fast_modes = ("off", "on") if kernels.available() else ("off",)
    ks = (1, lockstep_k) if lockstep_k > 1 else (1,)
    out = []
    for cell in cells:
        out.append(Variant(cell, "torch.nn", "-"))
        out += [Variant(cell, impl, fast, k) for impl in impls for fast in fast_modes for k in ks]
    return out


class _Baseline(nn.Module):
    """torch.nn.RNN/LSTM/GRU + Linear readout, called like a K=1 StackedModel."""

    def __init__(self, cell: str, hidden: int):
        super().__init__()
        self.rnn, self.out = _TORCH_NN[cell](N_NOTES, hidden, batch_first=True), nn.Linear(hidden, N_NOTES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(x[0])[0]).unsqueeze(0)


def _baseline_step(model: _Baseline, x: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    inputs, targets = x[:, :, :-1], x[:, :, 1:]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.binary_cross_entropy_with_logits(model(inputs), targets)
        loss.backward()
        opt.step()

    return step


def _training_step(model: StackedModel, x: torch.Tensor) -> Callable[[], None]:
    """The update `train` makes (see training._update), less weight noise and bookkeeping."""
    k, b, t = x.shape[0], x.shape[1], x.shape[2] - 1
    opt = StackedRMSProp(list(model.parameters()), [0.9] * k, [0.95] * k, [1e-6] * k, "update", [1.0] * k)
    lengths = torch.full((k, b), t)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        (model.nll(x, lengths) / (b * t)).sum().backward()
        opt.step([1e-3] * k, [True] * k, opt.grad_norms())

    return step


def _setup(v: Variant, batch: int, length: int, seed: int) -> Callable[[], None]:
    hidden = HIDDEN_SIZES[v.cell]
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(1, batch, length + 1, N_NOTES, generator=g) < 0.05).float().expand(v.k, -1, -1, -1)
    if v.impl == "torch.nn":
        return _baseline_step(_Baseline(v.cell, hidden), x.contiguous())
    model = build_model(v.cell, v.impl, hidden, k=v.k, fast=v.fast)
    model.init_weights([torch.Generator().manual_seed(seed + i) for i in range(v.k)])
    return _training_step(model, x.contiguous())


def measure(
    vs: list[Variant], batch: int, length: int, repeats: int = 5, warmup: int = 2, seed: int = 0
) -> list[float]:
    """Median time steps per second (all K models counted) of one training update, per variant.

    The variants take turns within each repeat, so a busy machine slows them all alike. Each turn runs one
    untimed update first: the first update after another variant's (a large pure-torch stack's above all)
    runs up to 3x slower on memory and caches that variant left behind, which is not the variant's own cost.
    """
    steps = [_setup(v, batch, length, seed) for v in vs]
    for step in steps:
        for _ in range(warmup):  # also compiles / loads the numba kernels
            step()
    times: list[list[float]] = [[] for _ in vs]
    for _ in range(repeats):
        for step, ts in zip(steps, times, strict=True):
            step()
            t0 = time.perf_counter()
            step()
            ts.append(time.perf_counter() - t0)
    return [v.k * batch * length / statistics.median(ts) for v, ts in zip(vs, times, strict=True)]


@dataclass
class Row:
    cell: str
    variant: str
    impl: str
    fast: str
    k: int
    batch: int
    length: int
    hidden: int
    threads: int
    steps_per_s: float
    vs_torch_nn: float
    vs_single: float  # lockstep rows: vs the same variant with K=1 (= K sequential runs); else 1


def run_bench(
    cells: Iterable[str] = CELLS,
    impls: Iterable[str] = IMPLS,
    batch_sizes: Iterable[int] = (1, 8, 32),
    lengths: Iterable[int] = (50, 250),
    repeats: int = 5,
    warmup: int = 2,
    threads: int = 1,
    lockstep_k: int = 8,
    out: Path | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Measure every variant over the grid; write CSV to `out` (atomically) if given."""
    cells, impls, batch_sizes, lengths = list(cells), list(impls), list(batch_sizes), list(lengths)
    for option, values, allowed in (("--cells", cells, CELLS), ("--impls", impls, IMPLS)):
        if not values or any(v not in allowed for v in values):
            raise UserError(f"{option} {','.join(values)!r}: choose from {','.join(allowed)}")
    for option, values, low in (
        ("--batch-sizes", batch_sizes, 1),
        ("--lengths", lengths, 1),
        ("--repeats", [repeats], 1),
        ("--warmup", [warmup], 0),
        ("--threads", [threads], 1),
        ("--lockstep-k", [lockstep_k], 1),
    ):
        if not values or min(values) < low:
            raise UserError(f"{option} {','.join(map(str, values))!r}: every value must be >= {low}")
    if out is not None and Path(out).is_dir():
        raise UserError(f"--out {out} is a folder: give the CSV file to write, e.g. {Path(out, 'bench.csv')}")
    grid = [(cell, b, t) for cell in cells for b in batch_sizes for t in lengths]
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        speed = {}
        for cell, b, t in track(grid, description="bench", disable=not progress):
            vs = variants([cell], impls, lockstep_k)
            speed.update({(v, b, t): s for v, s in zip(vs, measure(vs, b, t, repeats, warmup), strict=True)})
    finally:
        torch.set_num_threads(old_threads)
    rows = []
    for (v, b, t), s in speed.items():
        single = speed[Variant(v.cell, v.impl, v.fast), b, t]  # the same variant alone: K sequential runs
        rows.append(
            Row(
                v.cell,
                v.name,
                v.impl,
                v.fast,
                v.k,
                b,
                t,
                HIDDEN_SIZES[v.cell],
                threads,
                s,
                s / speed[Variant(v.cell, "torch.nn", "-"), b, t],
                s / single,
            )
        )
    df = pd.DataFrame([asdict(r) for r in rows])
    if out is not None:
        with atomic_write(out, "w") as f:
            df.to_csv(f, index=False, float_format="%.4g")
    return df


def table(df: pd.DataFrame) -> Table:
    t = Table(title=f"training throughput (time steps/s, {df.threads.iloc[0]} thread(s), median)")
    for col in ("cell", "variant", "batch", "length", "steps/s", "x torch.nn", "x K=1"):
        t.add_column(col, justify="left" if col in ("cell", "variant") else "right")
    for r in df.itertuples():
        t.add_row(
            r.cell,
            r.variant,
            str(r.batch),
            str(r.length),
            f"{r.steps_per_s:,.0f}",
            f"{r.vs_torch_nn:.2f}",
            f"{r.vs_single:.2f}" if r.k > 1 else "",
        )
    return t
