"""One training update as one compiled call: weight noise, forward, loss, backward, norms, RMSProp step.

The autograd path of an update (`Trainer.update`) costs ~0.3 ms besides the arithmetic at batch 1: the
autograd graph, private copies of every weight, fresh gradient arrays, ~15 torch ops around the loss, two
optimizer calls. Here one @njit driver runs the very same numba kernels (kernels.py) and optimizer passes
(optim.py) in the same order over buffers allocated once, so the numbers are bit for bit those of the
autograd path (tests/test_fastpath.py checks weights, optimizer state and losses over real updates). The
update allocates nothing (the kernels take their scratch from `_work`), so the driver is compiled without
numba's reference counting (`_raw`), which cost ~200 atomic counter updates a call.

The driver reads the batch's sequences where they are (their addresses, `_copy_in`): copying them in from
Python (`.numpy()` and a numpy slice assignment per sequence) cost ~3 us, and as much again in the driver,
whose caches that Python code had evicted (GRU 46, a 1-step update: 50 -> 47 us in all).

The buffers live in three flat arenas (float32: weight-sized; float32 and float64: batch-sized) carved into
views inside the driver: numba unboxes each array argument for ~0.4 us, and an update needs ~40 of them.
Weight noise is still drawn by torch from each model's generator (into a preallocated buffer, the same
values) and added inside the call, to copies: the clean weights are never touched before the step. Those
draws cost about as much as a 40-step update of the paper's GRU (torch's generator makes ~3.6 ns a number;
18.5K numbers), so with a core to spare a second thread draws the next update's noise while this update
runs, into a second buffer (`_draw_ahead`); a next update that wants other noise (a model stopped, another
std) puts the generators back and draws its own, so every update gets the values it would have drawn.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor, nn

try:
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - FastUpdate.possible is False without numba
    intrinsic = None

from gru_bench.config import available_cpus
from gru_bench.models import kernels as kn
from gru_bench.models.cells import GATES
from gru_bench.models.optim import LANES, StackedRMSProp, _grad_norms, _mark_modified, _rmsprop

_jit, _raw = kn._jit, kn._raw
# views returned from a function without NRT must be inlined into it
_view = kn.njit(inline="always", **kn._OPTIONS)

# views of the weight-sized arena: kernel-layout weights the forward runs with, noise, kernel-layout
# gradients, and the fused model's gradients in torch.nn's layout
FIXED = ("Wk", "Uk", "bk", "bhn", "pk", "noise_u", "noise_w", "dW", "db", "dU", "dV", "dc")
FIXED += ("dpeep", "dbhn", "gw_ih", "gw_hh", "gb_hh", "noise_u2", "noise_w2")  # *2: noise drawn ahead
# views of the batch-sized arena; s0..s3: what the recurrence keeps for its backward (see kernels._buffers)
SEQ = ("x", "xp", "hs", "s0", "s1", "s2", "s3", "logits", "dlog", "dhs", "dxp")
(WK, UK, BK, BHN, PK, NOISE_U, NOISE_W, DW, DB, DU, DV, DC, DPEEP, DBHN, GW_IH, GW_HH, GB_HH) = range(
    len(FIXED) - 2
)
NOISE_U2, NOISE_W2 = len(FIXED) - 2, len(FIXED) - 1
X, XP, HS, S0, S1, S2, S3, LOGITS, DLOG, DHS, DXP = range(len(FIXED), len(FIXED) + len(SEQ))


# draw the next update's noise ahead only after an update of at least this many steps: shorter updates end
# before the draw, and waiting for the other thread then costs more than the draw (GRU 46, AMD EPYC: 1.3x
# the time at 1 step, 0.83x at 64)
AHEAD_STEPS = 32


def _shapes(kind: str, fused: bool, k: int, b: int, t: int, n_in: int, h: int) -> dict[str, tuple[int, ...]]:
    """Every view's shape ((0,) where a kind or layout does not use it)."""
    gh = GATES["gru" if kind == "gru_cudnn" else kind] * h
    none = (0,)
    state = {"tanh": [], "gru": [h] * 3, "gru_cudnn": [h] * 4, "lstm": [h, gh, h]}[kind]
    return {
        "Wk": (k, n_in, gh),
        "Uk": (k, h, gh),
        "bk": (k, gh) if fused else none,
        "bhn": (k, h) if kind == "gru_cudnn" else none,
        "pk": (k, 3, h) if kind == "lstm" else none,
        "noise_u": (k, h * gh),
        "noise_w": (k, n_in * gh),
        "dW": (k, n_in, gh),
        "db": (k, gh),
        "dU": (k, h, gh),
        "dV": (k, h, n_in),
        "dc": (k, n_in),
        "dpeep": (k, 3, h) if kind == "lstm" else none,
        "dbhn": (k, h) if kind == "gru_cudnn" else none,
        "gw_ih": (k, gh, n_in) if fused else none,
        "gw_hh": (k, gh, h) if fused else none,
        "gb_hh": (k, gh) if kind == "gru_cudnn" else none,
        "noise_u2": (k, h * gh),
        "noise_w2": (k, n_in * gh),
        "x": (k, b, t, n_in),
        "xp": (k, b, t, gh),
        "hs": (k, b, t, h),
        **{f"s{i}": (k, b, t, state[i]) if i < len(state) else none for i in range(4)},
        "logits": (k, b, t, n_in),
        "dlog": (k, b, t, n_in),
        "dhs": (k, b, t, h),
        "dxp": (k, b, t, gh),
    }


def _layout(names: Sequence[str], shapes: dict[str, tuple[int, ...]]) -> tuple[np.ndarray, int]:
    """Rows [offset, d0, d1, d2, d3] (dims padded with 1) of consecutive views, and the arena's size."""
    rows, off = [], 0
    for name in names:
        shape = shapes[name]
        rows.append([off, *shape, *[1] * (4 - len(shape))])
        off += int(np.prod(shape))
    return np.array(rows, np.int64).reshape(-1, 5), off


@_view
def _v(arena, lay, i):
    return arena[lay[i, 0] : lay[i, 0] + lay[i, 1] * lay[i, 2] * lay[i, 3] * lay[i, 4]]


@_view
def _v2(arena, lay, i):
    return _v(arena, lay, i).reshape((lay[i, 1], lay[i, 2] * lay[i, 3] * lay[i, 4]))


@_view
def _v3(arena, lay, i):
    return _v(arena, lay, i).reshape((lay[i, 1], lay[i, 2], lay[i, 3] * lay[i, 4]))


@_view
def _v4(arena, lay, i):
    return _v(arena, lay, i).reshape((lay[i, 1], lay[i, 2], lay[i, 3], lay[i, 4]))


if intrinsic is not None:

    @intrinsic
    def _copy_from(typingctx, address, out, n):
        """out's first n float32 = the n at the int64 `address` (a memcpy; out C-contiguous)."""

        def codegen(context, builder, sig, args):
            dst = context.make_array(sig.args[1])(context, builder, args[1]).data
            src = builder.inttoptr(args[0], dst.type)
            cgutils.raw_memcpy(builder, dst, src, args[2], context.get_abi_sizeof(dst.type.pointee))
            return context.get_dummy_value()

        return types.none(types.int64, out, types.int64), codegen


@_jit
def _copy_in(src, x, steps, lo, hi):
    """Models lo..hi-1's sequences into x from the memory they are in: src[k, s] = (address, frames - 1) of
    sequence s of model k, (0, 0) where there is none (FastUpdate._load); steps[k, s] = frames - 1."""
    n_in = x.shape[3]
    for k in range(lo, hi):
        for s in range(steps.shape[1]):
            address, m = src[k, s, 0], src[k, s, 1]
            steps[k, s] = m
            if address != 0 and m >= 0:
                _copy_from(address, x[k, s], (m + 1) * n_in)


@_jit
def _noisy(w, noise, std, out, transpose):
    """out[k] = w[k] + noise[k] * std[k] (torch's `w.add_(randn * std)`), w[k] itself where std[k] == 0;
    transposed (last two dims) if asked."""
    K, m, n = w.shape
    for k in range(K):
        s = std[k]
        wk, zk, ok = w[k], noise[k].reshape((m, n)) if s != 0 else w[k], out[k]
        if transpose:
            kn._transpose_sum(wk, zk, s, ok)
        else:  # element loops: an array copy may need a temporary, which cannot be allocated without NRT
            for i in range(m):
                for j in range(n):
                    ok[i, j] = wk[i, j] + zk[i, j] * s if s != 0 else wk[i, j]


@_jit
def _any_nonzero(a):
    """np.any(a != 0) without the temporary array (the driver may not allocate)."""
    for i in range(a.shape[0]):
        if a[i] != 0:
            return True
    return False


@_jit
def _transpose(a, out):
    for k in range(a.shape[0]):
        kn._transpose_sum(a[k], None, np.float32(0.0), out[k])


@_raw
def _update(
    kind, fused, noise_w, clip, keep_v, max_norm, fixed, seq, lay, f64, src, steps, flags, hyper, w, n, v,
    blas, work, iwork, g, lo, hi,
):  # fmt: skip
    """One update of every active model; see the module docstring and Trainer.update (the same steps).

    kind: index into kernels.KINDS; fused: torch.nn's parameter layout (w_ih, w_hh, b_ih, b_hh, V, c), else
    the paper's (W, U, b, peep or (K, 0), V, c); w: those six (K, m) parameter views. src: where the
    sequences are (`_copy_in`), steps: their frames - 1 (filled here). flags rows: active,
    per_frame (in); loss_ok, grad_ok, step (out). hyper rows: lr, mu, rho, 1 - rho, eps, floor, limit,
    noise std of U and of W (0: none). f64: per-sequence NLL sums (K, B), gradient norms (K,), LANES lanes
    per model, and n_in more for the loss's sums. blas: the kernels' BLAS path (kernels.use_blas) instead
    of the element loops. work, iwork: float32 and int64 scratch (kernels.work_floats; n_in), row g for
    this thread. Only models lo..hi-1 are touched (each model's arithmetic is its own: two threads may
    update disjoint ranges at once). Nothing is allocated: no NRT (_raw)."""
    Kall, B = steps.shape
    _copy_in(src, _v4(seq, lay, X), steps, lo, hi)
    steps = steps[lo:hi]
    K = hi - lo
    active, per_frame, loss_ok = flags[0][lo:hi], flags[1][lo:hi], flags[2][lo:hi]
    grad_ok, step = flags[3][lo:hi], flags[4][lo:hi]
    x, xp, hs = _v4(seq, lay, X)[lo:hi], _v4(seq, lay, XP)[lo:hi], _v4(seq, lay, HS)[lo:hi]
    dlog, dhs = _v4(seq, lay, DLOG)[lo:hi], _v4(seq, lay, DHS)[lo:hi]
    s0, s1, s2, s3 = (
        _v4(seq, lay, S0)[lo:hi],
        _v4(seq, lay, S1)[lo:hi],
        _v4(seq, lay, S2)[lo:hi],
        _v4(seq, lay, S3)[lo:hi],
    )
    logits, dxp = _v4(seq, lay, LOGITS)[lo:hi], _v4(seq, lay, DXP)[lo:hi]
    Wk, Uk = _v3(fixed, lay, WK)[lo:hi], _v3(fixed, lay, UK)[lo:hi]
    n_in, H, GH = Wk.shape[1], Uk.shape[1], Uk.shape[2]
    sums = f64[: Kall * B].reshape((Kall, B))[lo:hi]
    gnorm = f64[Kall * B + lo : Kall * B + hi]
    acc = f64[Kall * (B + 1) + lo * LANES : Kall * (B + 1) + (lo + 1) * LANES]
    acc_nll = f64[Kall * (B + 1 + LANES) + lo * n_in : Kall * (B + 1 + LANES) + (lo + 1) * n_in]
    work, iwork = work[g], iwork[g]
    std_u, std_w = hyper[7][lo:hi], hyper[8][lo:hi]
    w = (w[0][lo:hi], w[1][lo:hi], w[2][lo:hi], w[3][lo:hi], w[4][lo:hi], w[5][lo:hi])
    n, v = n[lo:hi], v[lo:hi]

    # the weights the forward runs with: noisy copies, re-laid out for the kernels in the fused layout
    V = w[4].reshape((K, H, n_in))
    if fused:
        w_hh = w[1].reshape((K, GH, H))
        _noisy(w[0].reshape((K, GH, n_in)), _v2(fixed, lay, NOISE_W)[lo:hi], std_w, Wk, True)
        _noisy(w_hh, _v2(fixed, lay, NOISE_U)[lo:hi], std_u, Uk, True)  # w_hh is U transposed
        Wx, Ux, bx = Wk, Uk, _v2(fixed, lay, BK)[lo:hi]
        b_ih, b_hh = w[2], w[3]
        for k in range(K):  # b_ih + b_hh, the cuDNN GRU's b_hn kept apart (stacked._kernel_forward)
            for j in range(GH):
                bx[k, j] = b_ih[k, j] + (b_hh[k, j] if kind != 2 or j < 2 * H else np.float32(0.0))
        peep = _v3(fixed, lay, PK)[lo:hi]
        peep[:] = 0
        bhn = _v2(fixed, lay, BHN)[lo:hi]
        if kind == 2:
            for k in range(K):
                for j in range(H):
                    bhn[k, j] = b_hh[k, 2 * H + j]
    else:
        Wx, Ux, bx = w[0].reshape((K, n_in, GH)), w[1].reshape((K, H, GH)), w[2]
        if noise_w:
            _noisy(Wx, _v2(fixed, lay, NOISE_W)[lo:hi], std_w, Wk, False)
            Wx = Wk
        if _any_nonzero(std_u):
            _noisy(Ux, _v2(fixed, lay, NOISE_U)[lo:hi], std_u, Uk, False)
            Ux = Uk
        peep = w[3].reshape((K, 3, H)) if kind == 3 else _v3(fixed, lay, PK)[lo:hi]
        bhn = _v2(fixed, lay, BHN)[lo:hi]

    # forward, loss (kernels._NextFrame.forward with nll=True)
    kn._project(x, Wx, bx, xp, steps, iwork)
    kn._forward(kind, blas, xp, Ux, peep, bhn, hs, s0, s1, s2, s3, V, w[5], logits, steps, work)
    kn._nll(logits, x, steps, sums, dlog, acc_nll, work)

    # d loss / d logits: each model's sum over sequences, per frame (training.loss mean) or not, as float32
    for k in range(K):
        total, frames = 0.0, 0
        for s in range(B):
            total += sums[k, s]
            frames += steps[k, s]
        loss_ok[k] = np.isfinite(total)
        scale = np.float32(1.0 / max(frames, 1)) if per_frame[k] else np.float32(1.0)
        if not active[k]:
            scale = np.float32(0.0)
        if scale != 1:
            for s in range(B):
                for t in range(steps[k, s]):
                    row = dlog[k, s, t]
                    for j in range(row.shape[0]):
                        row[j] *= scale

    # backward (kernels._NextFrame.backward)
    dW, db = _v3(fixed, lay, DW)[lo:hi], _v2(fixed, lay, DB)[lo:hi]
    dU, dV = _v3(fixed, lay, DU)[lo:hi], _v3(fixed, lay, DV)[lo:hi]
    dc, dpeep, dbhn = _v2(fixed, lay, DC)[lo:hi], _v3(fixed, lay, DPEEP)[lo:hi], _v2(fixed, lay, DBHN)[lo:hi]
    for a in (dW, dU, dV, dpeep):
        a[:] = 0
    for a in (db, dc, dbhn):
        a[:] = 0
    kn._backward(
        kind, blas, dlog, Ux, V, peep, hs, s0, s1, s2, s3, dhs, dxp, dU, dV, dc, dpeep, dbhn, steps, work
    )
    kn._project_grad(x, dxp, dW, db, steps, iwork)

    # the parameters' gradients in their order and layout (autograd's transposes and slice sums)
    if fused:
        gw_ih, gw_hh = _v3(fixed, lay, GW_IH)[lo:hi], _v3(fixed, lay, GW_HH)[lo:hi]
        gb_hh = _v2(fixed, lay, GB_HH)[lo:hi]
        _transpose(dW, gw_ih)
        _transpose(dU, gw_hh)
        if kind == 2:  # two slices of b_hh: autograd adds each one's zero-padded gradient
            for k in range(K):
                for j in range(GH):
                    gb_hh[k, j] = (
                        db[k, j] + np.float32(0.0) if j < 2 * H else np.float32(0.0) + dbhn[k, j - 2 * H]
                    )
        else:
            gb_hh = db
        grads = (gw_ih.reshape((K, -1)), gw_hh.reshape((K, -1)), db, gb_hh, dV.reshape((K, -1)), dc)
    else:
        dp = dpeep.reshape((K, -1)) if kind == 3 else w[3]  # w[3]: (K, 0), no parameter
        grads = (dW.reshape((K, -1)), dU.reshape((K, -1)), db, dp, dV.reshape((K, -1)), dc)

    # norms, the checks of Trainer.update, the step (StackedRMSProp.step)
    _grad_norms(grads, acc, gnorm)
    for k in range(K):
        grad_ok[k] = np.isfinite(gnorm[k]) and gnorm[k] < max_norm
        step[k] = active[k] and loss_ok[k] and grad_ok[k]
    lr, mu, rho, omr = hyper[0][lo:hi], hyper[1][lo:hi], hyper[2][lo:hi], hyper[3][lo:hi]
    eps, floor, limit = hyper[4][lo:hi], hyper[5][lo:hi], hyper[6][lo:hi]
    _rmsprop(grads, w, n, v, step, lr, mu, rho, omr, eps, floor, limit, gnorm, clip, keep_v, acc)


def _update_group(args: tuple, g: int, lo: int, hi: int) -> None:
    """`_update` of models lo..hi-1 (group g) next to the other groups: its sgemm calls on one thread each."""
    with kn.blas_threads(1):
        _update(*args, g, lo, hi)


class FastUpdate:
    """The update of `Trainer.update` for a CPU float32 stack with numba kernels and a numba optimizer."""

    @staticmethod
    def possible(model: nn.Module, opt: StackedRMSProp) -> bool:
        """Whether this model and optimizer take the compiled update (else: the autograd path)."""
        params = list(model.parameters())
        return (
            opt.fast
            and model.use_kernels(params[0].new_empty(0))
            and all(p.is_contiguous() for p in params)
            and [id(p) for p in opt.params] == [id(p) for p in params]
        )

    def __init__(
        self,
        model: nn.Module,
        opt: StackedRMSProp,
        noisy: Sequence[Tensor],
        per_frame: Sequence[bool],
        max_grad_norm: float,
        threads: int = 1,
        draw_ahead: bool | None = None,
    ):
        """noisy: the weights that get weight noise (recurrent first, then input: `Trainer.noisy`);
        per_frame: per model, training.loss == "mean"; max_grad_norm: a larger gradient norm skips a step;
        threads > 1: the models of the stack are split into that many contiguous groups updated at once (the
        driver releases the GIL; every model's arithmetic is its own, so the numbers do not change);
        draw_ahead: draw each update's weight noise during the update before (see the module docstring;
        None: where threads == 1 and this process may use more than one CPU, config.available_cpus).
        Call `settle` before the noise generators are read or drawn from elsewhere."""
        if not self.possible(model, opt):
            raise ValueError("the compiled update needs numba, CPU float32 parameters and a numba optimizer")
        self.model, self.opt, self.k, self.max_norm = model, opt, model.k, float(max_grad_norm)
        self.fused = model.impl == "fused"
        self.kind = "gru_cudnn" if self.fused and model.cell == "gru" else model.cell
        recurrent, layer = model.recurrent_weights()[0], model.layer_weights()[0]
        ids = [id(t) for t in noisy]
        if ids not in ([id(recurrent)], [id(recurrent), id(layer)]):
            raise ValueError(
                "weight noise must be on the recurrent weights, or on them and the input weights"
            )
        self.noise_w = len(ids) == 2
        self.params = tuple(model.parameters())
        h, n_in = model.hidden, model.n_in
        self.lay_fixed, size = _layout(FIXED, _shapes(self.kind, self.fused, self.k, 0, 0, n_in, h))
        self.fixed = np.zeros(size, np.float32)
        self._torch_fixed = torch.from_numpy(self.fixed)
        # two sets of noise buffers (the driver reads one while the next update's noise goes into the other):
        # per set, noisy weight (recurrent, then input) and model, the row torch.randn draws into, its shape
        self._noise_sets = []
        for u, w in ((NOISE_U, NOISE_W), (NOISE_U2, NOISE_W2)):
            bufs = [self._view(u).view(recurrent.shape), self._view(w).view(layer.shape)][: 1 + self.noise_w]
            self._noise_sets.append([[(buf[i], buf.shape[1:]) for i in range(self.k)] for buf in bufs])
        self.hyper = np.zeros((9, self.k), np.float32)
        self.hyper[1:7] = [opt._np_mu, opt._np_rho, opt._np_omr, opt._np_eps, opt._np_floor, opt._np_limit]
        self.flags = np.zeros((5, self.k), np.bool_)
        self.flags[1] = list(per_frame)
        self._cap = (0, 0)
        self._quiet = (0.0,) * self.k  # the noise std of a call without noise
        self._last: list = [None, None, self._quiet]  # active, lr, noise std set in the last call
        self._ok = self.flags[2:4]  # loss_ok, grad_ok: what a call returns
        # kernels.use_blas per batch size, asked once: it reads GRU_BENCH_BLAS, ~2 us a call
        self._blas: dict[int, bool] = {}
        groups = np.array_split(np.arange(self.k), max(1, min(threads, self.k)))
        self.groups = [(int(g[0]), int(g[-1]) + 1) for g in groups]
        self.pool = ThreadPoolExecutor(len(self.groups) - 1) if len(self.groups) > 1 else None
        if draw_ahead is None:  # with a core to spare that the stack's own threads do not take
            draw_ahead = self.pool is None and available_cpus() > 1
        self._drawer = ThreadPoolExecutor(1) if draw_ahead else None
        # the noise drawn ahead: (its future, its set, (std, generators) it was drawn for, the generators'
        # states before it), or None
        self._ahead: tuple[Future, int, tuple, list] | None = None
        self._weights()
        self._grow(1, 2)
        self._attach_grads()

    def _view(self, i: int) -> Tensor:
        """A torch view of row i of the weight-sized arena's layout (flat)."""
        off, *dims = self.lay_fixed[i]
        return self._torch_fixed[off : off + int(np.prod(dims))]

    def _weights(self) -> None:
        """(K, m) numpy views of the six parameters (paper tanh/GRU: a (K, 0) array in peep's place)."""
        ps = [p.detach().numpy().reshape(self.k, -1) for p in self.params]
        if len(ps) == 5:
            ps.insert(3, np.zeros((self.k, 0), np.float32))
        self.w = tuple(ps)
        self._ptrs = [p.data_ptr() for p in self.params]
        self._bind()

    def _bind(self) -> None:
        """The driver's arguments but the model range, [blas][noise set] (built again when a buffer or a view
        changes). Noise set 1 is the same layout with the rows of the two sets' noise views swapped."""
        opt = self.opt
        if not hasattr(self, "seq"):
            return
        swapped = self.lay.copy()
        swapped[[NOISE_U, NOISE_W, NOISE_U2, NOISE_W2]] = self.lay[[NOISE_U2, NOISE_W2, NOISE_U, NOISE_W]]
        head = (kn.KINDS.index(self.kind), self.fused, self.noise_w, opt._clip_code, not opt.clip_velocity)
        head += (self.max_norm, self.fixed, self.seq)
        tail = (self.f64, self._src, self.steps, self.flags, self.hyper, self.w, opt._np_n, opt._np_v)
        self._args = tuple(
            tuple((*head, lay, *tail, blas, self._work, self._iwork) for lay in (self.lay, swapped))
            for blas in (False, True)
        )

    def _grow(self, b: int, t: int) -> None:
        """(Re)allocate the batch-sized arena for b sequences of up to t frames (t rounded up to 64)."""
        b, t = max(b, self._cap[0]), max(-(-t // 64) * 64, self._cap[1])
        if (b, t) == self._cap:
            return
        shapes = _shapes(self.kind, self.fused, self.k, b, t, self.model.n_in, self.model.hidden)
        lay_seq, size = _layout(SEQ, shapes)
        self.lay = np.concatenate([self.lay_fixed, lay_seq])
        self.seq = np.zeros(size, np.float32)
        self._src = np.zeros((self.k, b, 2), np.int64)  # see _copy_in
        self._src_flat, self._counts = memoryview(self._src.reshape(-1)), [0] * self.k
        self.steps = np.zeros((self.k, b), np.int64)
        n_in, h = self.model.n_in, self.model.hidden
        self.f64 = np.zeros(self.k * (b + 1 + LANES + n_in))
        gates = shapes["Uk"][2]
        self._work = np.zeros((len(self.groups), kn.work_floats(gates, h, n_in, b, t)), np.float32)
        self._iwork = np.zeros((len(self.groups), n_in), np.int64)
        self._gnorm = self.f64[self.k * b : self.k * (b + 1)]
        self._cap = (b, t)
        self._bind()

    def _attach_grads(self) -> None:
        """p.grad: views of the gradients the update computes (what the autograd path leaves there)."""
        names = ["gw_ih", "gw_hh", "db", "gb_hh" if self.kind == "gru_cudnn" else "db", "dV", "dc"]
        if not self.fused:
            names = ["dW", "dU", "db", *(["dpeep"] if self.kind == "lstm" else []), "dV", "dc"]
        for p, name in zip(self.params, names, strict=True):
            p.grad = self._view(FIXED.index(name)).view(p.shape)

    def losses(self) -> Tensor:
        """(K, B) float64: each sequence's summed frame NLL in the last update (B: the buffers' capacity,
        zeros beyond the batch); `StackedModel.nll` of the noisy weights."""
        k, b = self.k, self._cap[0]
        return torch.from_numpy(self.f64[: k * b].reshape(k, b).copy())

    def __call__(
        self,
        batch: Sequence[Sequence[Tensor] | None],
        lr: Sequence[float],
        active: Sequence[bool],
        noise_std: Sequence[float] = (),
        generators: Sequence[torch.Generator] = (),
    ) -> tuple[list[bool], list[bool], list[float]]:
        """One update. batch: per model its sequences (T_i, n_in) (None: stopped); noise_std, generators:
        per model (none if empty). Returns per model: loss finite, gradient finite and below the limit, and
        the gradient norm (float64); a model steps where active and both hold."""
        if list(map(Tensor.data_ptr, self.params)) != self._ptrs:
            self._weights()
        b, _held = self._load(batch)  # _held: copies of sequences the driver reads, alive until it returns
        if active != self._last[0]:  # numpy assignments cost ~1 us each: only on a change
            self.flags[0] = self._last[0] = list(active)
        if lr != self._last[1]:
            self.hyper[0] = self._last[1] = list(lr)
        if noise_std:
            std = [s if on and s > 0 else 0.0 for on, s in zip(active, noise_std, strict=False)]
            std += [0.0] * (self.k - len(std))
        else:
            std = self._quiet
        if std != self._last[2]:
            self.hyper[7] = std
            self.hyper[8] = std if self.noise_w else 0.0
            self._last[2] = std
        noisy = std is not self._quiet and any(std)
        # the set of buffers that holds this update's noise
        noise = self._noise(std, generators) if noisy or self._ahead is not None else 0
        blas = self._blas.get(b)
        if blas is None:
            blas = self._blas[b] = kn.use_blas(b, self.model.hidden)
        args = self._args[blas][noise]
        if noisy and self._drawer is not None and self._longest >= AHEAD_STEPS:
            self._draw_ahead(1 - noise, std, generators)
        if self.pool is None:
            _update(*args, 0, 0, self.k)
        else:
            others = [self.pool.submit(_update_group, args, g, *lh) for g, lh in enumerate(self.groups) if g]
            _update_group(args, 0, *self.groups[0])
            for f in others:
                f.result()
        _mark_modified(self.params)
        loss_ok, grad_ok = self._ok.tolist()
        return loss_ok, grad_ok, self._gnorm.tolist()

    def _fill(self, which: int, std: list[float], generators: Sequence[torch.Generator]) -> None:
        """Draw one update's noise into noise set `which` as training._add_noise draws it: U for every
        model with noise, then W."""
        for rows in self._noise_sets[which]:
            for i, (out, shape) in enumerate(rows):
                if std[i]:
                    torch.randn(shape, generator=generators[i], out=out)

    def _noise(self, std: list[float], generators: Sequence[torch.Generator]) -> int:
        """The noise set holding this update's noise: the one drawn ahead if it was drawn for this std and
        these generators, else (the generators put back first) set 0, drawn now."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            future, which, (drawn_std, drawn_gens), states = ahead
            future.result()
            same_gens = len(drawn_gens) == len(generators) and all(map(operator.is_, drawn_gens, generators))
            if drawn_std == std and same_gens:
                return which
            for g, state in states:
                g.set_state(state)
        if any(std):
            self._fill(0, std, generators)
        return 0

    def _draw_ahead(self, which: int, std: list[float], generators: Sequence[torch.Generator]) -> None:
        """Start drawing the next update's noise (for the same std) into noise set `which`, on the second
        thread, remembering where the generators were."""
        states = [(g, g.get_state()) for g, s in zip(generators, std, strict=False) if s]
        future = self._drawer.submit(self._fill, which, std, generators)
        self._ahead = (future, which, (std, tuple(generators)), states)

    def settle(self) -> None:
        """Drop the noise drawn ahead and put its generators back where the updates so far left them."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead[0].result()
            for g, state in ahead[3]:
                g.set_state(state)

    def _load(self, batch: Sequence[Sequence[Tensor] | None]) -> tuple[int, list[Tensor]]:
        """Where the batch's sequences are, for the driver to copy them in (`_copy_in`; the buffers grown
        first where they do not fit); its size B. A sequence that is not a C-contiguous CPU float32 tensor
        is copied into one first: the copies are returned with B, to be held until the update ends.
        Written through a memoryview (~2x faster than numpy's item assignment); a model's entries past its
        sequences are zeroed only where the last call had more (`_counts`)."""
        cap_b, cap_t = self._cap
        src, counts, n_in, held = self._src_flat, self._counts, self.model.n_in, []
        b = longest = 0
        for k, ss in enumerate(batch):
            n = len(ss) if ss else 0
            if n > cap_b:
                return self._regrow(batch)
            j = 2 * cap_b * k
            for i in range(n):
                s = ss[i]
                t, width = s.shape if s.dim() == 2 else (0, None)
                if width != n_in:
                    raise ValueError(f"model {k}'s sequence {i} has shape {tuple(s.shape)}, not (T, {n_in})")
                if t > cap_t:
                    return self._regrow(batch)
                if s.dtype is not torch.float32 or not s.is_cpu or not s.is_contiguous():
                    s = s.detach().to("cpu", torch.float32).contiguous()
                    held.append(s)
                src[j + 2 * i] = s.data_ptr()
                src[j + 2 * i + 1] = t - 1
                if t > longest:
                    longest = t
            for i in range(n, counts[k]):
                src[j + 2 * i] = src[j + 2 * i + 1] = 0
            counts[k] = n
            if n > b:
                b = n
        self._longest = longest - 1
        return b, held

    def _regrow(self, batch: Sequence[Sequence[Tensor] | None]) -> tuple[int, list[Tensor]]:
        """`_load` of a batch larger than the buffers: grow them, then load."""
        seqs = [s or () for s in batch]
        self._grow(max(map(len, seqs)), max((s.shape[0] for ss in seqs for s in ss), default=2))
        return self._load(batch)
