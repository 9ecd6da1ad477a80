"""`gru-bench bench`: training speed of our update against its peers, measured interleaved in one run.

Peers: what a torch user would write (torch.nn.RNN/LSTM/GRU + Linear, BCE-with-logits, torch.optim.RMSprop)
and what a speed-minded JAX user would write (jax_peer.py: the paper GRU, one jit per update, lax.scan; GRU
only, skipped with a note when JAX is missing). Ours runs what `train` runs: with the kernels the compiled
update (models/fastpath.py), else the model's NLL, autograd and StackedRMSProp. Synthetic rows train on a
random sparse piano roll (5% notes on, no weight noise); every row also states its share of the single-core
float32 matmul peak measured in the same run (dense flops of forward + backward: 6 x batch x steps x
(inputs + hidden + outputs) x gate units). The epoch mode (`--dataset`) times whole training epochs of a real
dataset at batch 1: data order, weight noise (U and W) and the valid split's evaluation included.
Lockstep rows train a stack of K models at once and count the time steps of all K.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.progress import track
from rich.table import Table
from torch import nn

from gru_bench.data.registry import N_NOTES
from gru_bench.errors import UserError
from gru_bench.experiments import jax_peer
from gru_bench.fsutil import atomic_write
from gru_bench.models import CELLS, IMPLS, StackedModel, build_model, kernels
from gru_bench.models.cells import GATES
from gru_bench.models.fastpath import FastUpdate
from gru_bench.models.optim import StackedRMSProp
from gru_bench.paper import HIDDEN_SIZES

_TORCH_NN = {"tanh": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
FAST_MODES = ("on", "off")


@dataclass(frozen=True)
class Variant:
    cell: str
    impl: str  # "torch.nn" and "jax" for the peers
    fast: str  # "on" | "off" | "-"
    k: int = 1

    @property
    def name(self) -> str:
        label = self.impl if self.impl in ("torch.nn", "jax") else f"{self.impl} fast={self.fast}"
        return label if self.k == 1 else f"{label} K={self.k}"


def variants(
    cells: Iterable[str],
    impls: Iterable[str],
    lockstep_k: int,
    fast: Iterable[str] = FAST_MODES,
    jax: bool = True,
) -> list[Variant]:
    """Per cell: torch.nn, JAX (GRU), then each impl in each fast mode, alone and as a K-stack."""
    fast_modes = [m for m in fast if m == "off" or kernels.available()]
    ks = (1, lockstep_k) if lockstep_k > 1 else (1,)
    out = []
    for cell in cells:
        out.append(Variant(cell, "torch.nn", "-"))
        if jax and cell == "gru":
            out.append(Variant(cell, "jax", "-"))
        out += [Variant(cell, impl, m, k) for impl in impls for m in fast_modes for k in ks]
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
        loss = nn.functional.binary_cross_entropy_with_logits(model(inputs), targets, reduction="sum")
        loss.backward()
        opt.step()

    return step


def _optimizer(model: StackedModel) -> StackedRMSProp:
    """`train`'s defaults: the authors' RMS floor, update clipping, unclipped velocity."""
    k = model.k
    return StackedRMSProp(
        list(model.parameters()), [0.9] * k, [0.95] * k, [0.0] * k, "update", [1.0] * k, floor=[0.01] * k,
        clip_velocity=False,
    )  # fmt: skip


def _training_step(model: StackedModel, x: torch.Tensor) -> Callable[[], None]:
    """The update `train` makes (Trainer.update) with the loss summed over frames, less weight noise."""
    k, b, t = x.shape[0], x.shape[1], x.shape[2] - 1
    opt = _optimizer(model)
    if FastUpdate.possible(model, opt):
        fast = FastUpdate(model, opt, model.recurrent_weights(), [False] * k, math.inf)
        batch = [list(x[i]) for i in range(k)]
        return lambda: fast(batch, [1e-3] * k, [True] * k)
    lengths = torch.full((k, b), t)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model.nll(x, lengths).sum().backward()
        opt.step([1e-3] * k, [True] * k, opt.grad_norms())

    return step


def _jax_step(hidden: int, x: torch.Tensor) -> Callable[[], None]:
    import jax

    update, _ = jax_peer.make_update()
    params = jax_peer.init(N_NOTES, hidden)
    box = [jax.device_put(params), jax.device_put(jax_peer.zeros_state(params))]
    xs = jax.device_put(x[0].numpy())
    mask = jax.device_put(np.ones((x.shape[1], x.shape[2] - 1), np.float32))
    key = jax.random.PRNGKey(0)

    def step() -> None:
        box[0], box[1], loss = update(box[0], box[1], xs, mask, key, 0)
        loss.block_until_ready()

    return step


def _setup(v: Variant, batch: int, length: int, hidden: int, seed: int) -> Callable[[], None]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(1, batch, length + 1, N_NOTES, generator=g) < 0.05).float().expand(v.k, -1, -1, -1)
    if v.impl == "torch.nn":
        return _baseline_step(_Baseline(v.cell, hidden), x.contiguous())
    if v.impl == "jax":
        return _jax_step(hidden, x.contiguous())
    model = build_model(v.cell, v.impl, hidden, k=v.k, fast=v.fast)
    model.init_weights([torch.Generator().manual_seed(seed + i) for i in range(v.k)])
    return _training_step(model, x.contiguous())


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def matmul_peak(n: int = 384, repeats: int = 15) -> float:
    """GFLOP/s of one float32 n x n matmul on torch's current threads: the reference for `peak_share`."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    out = torch.empty(n, n)
    return 2 * n**3 / _median_time(lambda: torch.mm(a, b, out=out), repeats) / 1e9


def update_flops(cell: str, hidden: int, batch: int, length: int, k: int = 1) -> float:
    """Dense flops of one update's matrix products: forward 2 (I G H + H G H + H O) per step, backward 2x."""
    g = GATES[cell] * hidden
    return 6.0 * k * batch * length * (N_NOTES * g + hidden * g + hidden * N_NOTES)


def measure(
    vs: list[Variant],
    batch: int,
    length: int,
    repeats: int = 5,
    warmup: int = 2,
    seed: int = 0,
    hidden: int | None = None,
) -> list[float]:
    """Median time steps per second (all K models counted) of one training update, per variant.

    The variants take turns within each repeat, so a busy machine slows them all alike. Each turn runs one
    untimed update first: the first update after another variant's (a large pure-torch stack's above all)
    runs up to 3x slower on memory and caches that variant left behind, which is not the variant's own cost.
    """
    steps = [_setup(v, batch, length, hidden or HIDDEN_SIZES[v.cell], seed) for v in vs]
    for step in steps:
        for _ in range(warmup):  # also compiles / loads the numba kernels and the jit
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
    us_per_update: float
    vs_torch_nn: float
    vs_jax: float  # NaN without a JAX row (JAX missing, or not a GRU)
    vs_single: float  # lockstep rows: vs the same variant with K=1 (= K sequential runs); else 1
    peak_share: float  # dense matmul flops per second / the matmul peak measured in this run
    peak_gflops: float


def _check(**options: tuple[list[int], int]) -> None:
    for option, (values, low) in options.items():
        if not values or min(values) < low:
            flag = "--" + option.replace("_", "-")
            raise UserError(f"{flag} {','.join(map(str, values))!r}: every value must be >= {low}")


def run_bench(
    cells: Iterable[str] = CELLS,
    impls: Iterable[str] = IMPLS,
    batch_sizes: Iterable[int] = (1, 8, 32),
    lengths: Iterable[int] = (60, 250),
    repeats: int = 5,
    warmup: int = 2,
    threads: int = 1,
    lockstep_k: int = 1,
    out: Path | None = None,
    progress: bool = False,
    hidden: Iterable[int] = (),
    fast: Iterable[str] = ("on",),
    jax: bool = True,
) -> pd.DataFrame:
    """Measure every variant over the grid (hidden: sizes to run, default each cell's paper size); write the
    CSV to `out` (atomically) if given. jax=False, or JAX missing, leaves the JAX rows out (with a note)."""
    cells, impls, batch_sizes, lengths = list(cells), list(impls), list(batch_sizes), list(lengths)
    hidden, fast = list(hidden), list(fast)
    for option, values, allowed in (
        ("--cells", cells, CELLS),
        ("--impls", impls, IMPLS),
        ("--fast", fast, FAST_MODES),
    ):
        if not values or any(v not in allowed for v in values):
            raise UserError(f"{option} {','.join(values)!r}: choose from {','.join(allowed)}")
    _check(
        batch_sizes=(batch_sizes, 1),
        lengths=(lengths, 1),
        repeats=([repeats], 1),
        warmup=([warmup], 0),
        threads=([threads], 1),
        lockstep_k=([lockstep_k], 1),
        hidden=(hidden or [1], 1),
    )
    if out is not None and Path(out).is_dir():
        raise UserError(f"--out {out} is a folder: give the CSV file to write, e.g. {Path(out, 'bench.csv')}")
    if jax and "gru" in cells and not jax_peer.available():
        print("note: JAX is not installed (pip install 'gru-bench[jax]'): no JAX rows")
        jax = False
    grid = [
        (c, h, b, t) for c in cells for h in hidden or [HIDDEN_SIZES[c]] for b in batch_sizes for t in lengths
    ]
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        peak = matmul_peak()
        speed = {}
        for cell, h, b, t in track(grid, description="bench", disable=not progress):
            vs = variants([cell], impls, lockstep_k, fast, jax)
            speed.update(
                {
                    (v, h, b, t): x
                    for v, x in zip(vs, measure(vs, b, t, repeats, warmup, hidden=h), strict=True)
                }
            )
        peak = max(peak, matmul_peak())  # before and after the grid: the better one is the peak
    finally:
        torch.set_num_threads(old_threads)
    rows = []
    for (v, h, b, t), x in speed.items():
        ref = speed[Variant(v.cell, "torch.nn", "-"), h, b, t]
        jx = speed.get((Variant(v.cell, "jax", "-"), h, b, t), math.nan)
        us = v.k * b * t / x * 1e6
        flops = update_flops(v.cell, h, b, t, v.k) / (us / 1e6)
        single = speed[Variant(v.cell, v.impl, v.fast), h, b, t]
        rows.append(
            Row(
                v.cell,
                v.name,
                v.impl,
                v.fast,
                v.k,
                b,
                t,
                h,
                threads,
                x,
                us,
                x / ref,
                x / jx,
                x / single,
                flops / (peak * 1e9),
                peak,
            )
        )
    return _frame(rows, out)


def _frame(rows: list, out: Path | None) -> pd.DataFrame:
    """The rows (dataclasses) as a DataFrame, also written to `out` as CSV (atomically) if given."""
    df = pd.DataFrame([asdict(r) for r in rows])
    if out is not None:
        with atomic_write(out, "w") as f:
            df.to_csv(f, index=False, float_format="%.4g")
    return df


def table(df: pd.DataFrame) -> Table:
    t = Table(
        title=f"training speed ({df.threads.iloc[0]} thread(s), medians; "
        f"matmul peak {df.peak_gflops.iloc[0]:.0f} GFLOP/s)"
    )
    for col in (
        "cell",
        "variant",
        "hidden",
        "batch",
        "length",
        "steps/s",
        "us/update",
        "x torch.nn",
        "x JAX",
        "% peak",
    ):
        t.add_column(col, justify="left" if col in ("cell", "variant") else "right")
    for r in df.itertuples():
        t.add_row(
            r.cell, r.variant, str(r.hidden), str(r.batch), str(r.length), f"{r.steps_per_s:,.0f}",
            f"{r.us_per_update:,.0f}", f"{r.vs_torch_nn:.2f}", _num(r.vs_jax), f"{100 * r.peak_share:.1f}",
        )  # fmt: skip
    return t


def _num(x: float, fmt: str = "{:.2f}") -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


# --- whole epochs of a real dataset ------------------------------------------------------------------------


@dataclass
class EpochRow:
    dataset: str
    variant: str
    hidden: int
    sequences: int
    epoch_s: float  # training updates + valid evaluation, median over repeats
    train_s: float
    eval_s: float
    compile_s: float  # JAX: compiling every padded length; all: the untimed first epoch's extra time
    vs_torch_nn: float
    vs_jax: float


def _epoch_ours(train: list[torch.Tensor], valid: list[torch.Tensor], hidden: int, noise: float) -> Callable:
    from gru_bench.training import split_nll

    model = build_model("gru", "paper", hidden, k=1)
    model.init_weights([torch.Generator().manual_seed(0)])
    opt = _optimizer(model)
    noisy = [*model.recurrent_weights(), *model.layer_weights()]
    if FastUpdate.possible(model, opt):
        fast = FastUpdate(model, opt, noisy, [False], math.inf)
    else:
        raise UserError("the epoch bench of our update needs the numba kernels (pip install numba)")
    gen, order_gen = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)

    def epoch() -> tuple[float, float]:
        t0 = time.perf_counter()
        for j in torch.randperm(len(train), generator=order_gen).tolist():
            fast([[train[j]]], [1e-3], [True], [noise], [gen])
        t1 = time.perf_counter()
        split_nll(model, valid, 64, torch.device("cpu"))
        return t1 - t0, time.perf_counter() - t1

    return epoch


def _epoch_torch_nn(
    train: list[torch.Tensor], valid: list[torch.Tensor], hidden: int, noise: float
) -> Callable:
    model = _Baseline("gru", hidden)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, momentum=0.9, alpha=0.95)
    noisy = [model.rnn.weight_hh_l0, model.rnn.weight_ih_l0]
    order_gen = torch.Generator().manual_seed(2)
    bce = nn.functional.binary_cross_entropy_with_logits

    def epoch() -> tuple[float, float]:
        t0 = time.perf_counter()
        for j in torch.randperm(len(train), generator=order_gen).tolist():
            x = train[j][None, None]
            clean = [w.detach().clone() for w in noisy]
            with torch.no_grad():
                for w in noisy:
                    w.add_(torch.randn_like(w) * noise)
            opt.zero_grad(set_to_none=True)
            bce(model(x[:, :, :-1]), x[:, :, 1:], reduction="sum").backward()
            with torch.no_grad():
                for w, c in zip(noisy, clean, strict=True):
                    w.copy_(c)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        t1 = time.perf_counter()
        with torch.no_grad():
            for x in valid:
                bce(model(x[None, None, :-1]), x[None, None, 1:], reduction="sum")
        return t1 - t0, time.perf_counter() - t1

    return epoch


def _padded(seqs: list[torch.Tensor], multiple: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(x (1, T + 1, n), mask (1, T)) per sequence, T rounded up to a multiple (padding masked out)."""
    out = []
    for s in seqs:
        t = len(s) - 1
        tp = -(-t // multiple) * multiple
        x = np.zeros((1, tp + 1, s.shape[1]), np.float32)
        x[0, : len(s)] = s.numpy()
        mask = np.zeros((1, tp), np.float32)
        mask[0, :t] = 1
        out.append((x, mask))
    return out


def _epoch_jax(
    train: list[torch.Tensor], valid: list[torch.Tensor], hidden: int, noise: float, multiple: int = 16
) -> tuple[Callable, float]:
    import jax

    update, nll = jax_peer.make_update(noise=noise)
    params = jax_peer.init(N_NOTES, hidden)
    box = [jax.device_put(params), jax.device_put(jax_peer.zeros_state(params))]
    tr = [tuple(jax.device_put(a) for a in p) for p in _padded(train, multiple)]
    va = [tuple(jax.device_put(a) for a in p) for p in _padded(valid, multiple)]
    key = jax.random.PRNGKey(0)
    t0 = time.perf_counter()  # compile every padded shape once, on copies
    for x, m in {a[0].shape: a for a in tr}.values():
        update(*box, x, m, key, 0)[2].block_until_ready()
    for x, m in {a[0].shape: a for a in va}.values():
        nll(box[0], x, m).block_until_ready()
    compile_s = time.perf_counter() - t0
    rng = np.random.default_rng(2)
    count = [0]

    def epoch() -> tuple[float, float]:
        t0 = time.perf_counter()
        loss = None
        for j in rng.permutation(len(tr)):
            box[0], box[1], loss = update(box[0], box[1], *tr[j], key, count[0])
            count[0] += 1
        loss.block_until_ready()
        t1 = time.perf_counter()
        total = sum(nll(box[0], x, m) for x, m in va)
        total.block_until_ready()
        return t1 - t0, time.perf_counter() - t1

    return epoch, compile_s


def run_epoch_bench(
    dataset: str = "jsb",
    repeats: int = 3,
    hidden: int = 46,
    noise: float = 0.075,
    threads: int = 1,
    jax: bool = True,
    out: Path | None = None,
) -> pd.DataFrame:
    """Whole epochs of `dataset` at batch 1 (GRU, paper size by default): ours, torch.nn and JAX take turns
    each repeat; the median epoch per variant."""
    from gru_bench import data as datasets

    _check(repeats=([repeats], 1), hidden=([hidden], 1), threads=([threads], 1))
    rolls = datasets.load(dataset)
    train, valid = (
        [torch.from_numpy(x.astype(np.float32)) for x in rolls.splits[s] if len(x) > 1]
        for s in ("train", "valid")
    )
    if jax and not jax_peer.available():
        print("note: JAX is not installed (pip install 'gru-bench[jax]'): no JAX row")
        jax = False
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        epochs = {"ours (paper, compiled update)": (_epoch_ours(train, valid, hidden, noise), 0.0)}
        epochs["torch.nn"] = (_epoch_torch_nn(train, valid, hidden, noise), 0.0)
        if jax:
            epochs["jax"] = _epoch_jax(train, valid, hidden, noise)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in epochs}
        first = {name: sum(epoch()) for name, (epoch, _) in epochs.items()}  # loads/compiles the kernels
        for _ in range(repeats):
            for name, (epoch, _) in epochs.items():
                times[name].append(epoch())
    finally:
        torch.set_num_threads(old_threads)
    med = {
        name: (
            statistics.median(a + b for a, b in ts),
            statistics.median(a for a, _ in ts),
            statistics.median(b for _, b in ts),
        )
        for name, ts in times.items()
    }
    rows = [
        EpochRow(
            dataset,
            name,
            hidden,
            len(train),
            *med[name],
            epochs[name][1] + max(0.0, first[name] - med[name][0]),
            med["torch.nn"][0] / med[name][0],
            med["jax"][0] / med[name][0] if "jax" in med else math.nan,
        )
        for name in epochs
    ]
    return _frame(rows, out)


def epoch_table(df: pd.DataFrame) -> Table:
    t = Table(title=f"{df.dataset.iloc[0]}: one epoch at batch 1 (updates + valid evaluation), medians")
    for col in ("variant", "epoch s", "train s", "eval s", "compile s", "x torch.nn", "x JAX"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for r in df.itertuples():
        t.add_row(
            r.variant,
            f"{r.epoch_s:.2f}",
            f"{r.train_s:.2f}",
            f"{r.eval_s:.2f}",
            _num(r.compile_s or math.nan),
            f"{r.vs_torch_nn:.2f}",
            _num(r.vs_jax),
        )
    return t


# --- README table and figure ------------------------------------------------------------------------------


def readme_table(bench_csv: Path, epoch_csv: Path | None = None) -> str:
    """The README's bench tables as markdown from the committed CSVs (for `gru-bench compare --readme`)."""
    df = pd.read_csv(bench_csv)
    lines = [
        "| cell | variant | hidden | batch | steps | steps/s | µs/update | × torch.nn | × JAX "
        "| % of matmul peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in df.itertuples():
        lines.append(
            f"| {r.cell} | {r.variant} | {r.hidden} | {r.batch} | {r.length} | {r.steps_per_s:,.0f} | "
            f"{r.us_per_update:,.0f} | {r.vs_torch_nn:.2f} | {_num(r.vs_jax)} | {100 * r.peak_share:.1f} |"
        )
    lines.append(
        f"\nMatmul peak (float32, one core, measured in the same run): {df.peak_gflops.iloc[0]:.0f} GFLOP/s."
    )
    if epoch_csv is not None and Path(epoch_csv).exists():
        ep = pd.read_csv(epoch_csv)
        lines += [
            "",
            f"| {ep.dataset.iloc[0]}, one epoch at batch 1 | epoch s | updates s | eval s | compile s "
            "| × torch.nn | × JAX |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in ep.itertuples():
            lines.append(
                f"| {r.variant} | {r.epoch_s:.2f} | {r.train_s:.2f} | {r.eval_s:.2f} | "
                f"{_num(r.compile_s if r.compile_s else math.nan, '{:.1f}')} | {r.vs_torch_nn:.2f} "
                f"| {_num(r.vs_jax)} |"
            )
    return "\n".join(lines) + "\n"


def plot(df: pd.DataFrame, stem: Path) -> list[Path]:
    """Steps/s against hidden size, one panel per (batch, length), one line per variant (log scales)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    from gru_bench.report.figures import save

    panels = sorted({(b, t) for b, t in zip(df.batch, df.length, strict=True)})
    fig = Figure(figsize=(4 * len(panels), 3.4), layout="constrained")  # no pyplot: no global state
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (b, t) in zip(axes[0], panels, strict=True):
        sub = df[(df.batch == b) & (df.length == t)]
        for name, g in sub.groupby(["cell", "variant"], sort=False):
            ax.plot(g.hidden, g.steps_per_s, marker="o", label=" ".join(name))
        ax.set(title=f"batch {b}, {t} steps", xlabel="hidden units", xscale="log", yscale="log")
        ax.set_xticks(sorted(set(sub.hidden)), [str(h) for h in sorted(set(sub.hidden))])
        ax.xaxis.set_minor_locator(NullLocator())
    axes[0, 0].set_ylabel("time steps / s (1 thread)")
    axes[0, -1].legend(fontsize=7)
    return save(fig, stem)
