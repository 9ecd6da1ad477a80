"""Fast CPU path: numba loops over (K, B, T) with hand-written BPTT, wrapped in one autograd.Function.

At batch 1 and ~50 hidden units, torch spends most of its time dispatching ~20 tiny ops per time step;
here one compiled call runs input projection, recurrence and readout. The projections run in numba too
(not torch GEMMs) for two reasons: the input one skips zero inputs (piano rolls are >90% zeros), and every
sum runs in a fixed order per model, so model k's outputs and gradients are bit-identical whatever K is
and however far the batch is zero-padded (a GEMM's reduction blocking depends on the padded shape).

Kinds: "tanh", "gru" (paper: reset before U), "lstm" (peepholes; zeros = torch's LSTM), "gru_cudnn"
(torch/cuDNN GRU: n = tanh(xp_n + r * (h U_n + b_hn))). Gate blocks are ordered as in cells.py / torch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

try:
    from llvmlite import ir
    from numba import njit, types
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - the pure-torch path takes over
    njit = None

# error_model="numpy": x / 0 is IEEE inf/NaN, not a Python exception, whose check per division keeps LLVM
# from vectorising the gate loops
_OPTIONS = {"cache": True, "fastmath": False, "nogil": True, "error_model": "numpy"}
_jit = njit(**_OPTIONS) if njit is not None else (lambda f: f)
ONE = np.float32(1.0)
TWO = np.float32(2.0)
F32 = np.float32


def available() -> bool:
    """True when numba imports (the kernels compile on first use and are cached on disk)."""
    return njit is not None


if njit is not None:

    @intrinsic
    def _f32_from_bits(typingctx, bits):
        """The float32 whose IEEE bits are the int32 `bits` (free: a register reinterpretation)."""

        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], ir.FloatType())

        return types.float32(types.int32), codegen


@_jit
def _exp(a):
    """expf from +, *, floor and a bit cast (Cephes' polynomial, ~1 ulp on [-87, 88], clamped outside, NaN
    kept). libm's expf is an opaque call that stops LLVM from vectorising every gate loop; this is not."""
    a = F32(-87.0) if a < F32(-87.0) else (F32(88.0) if a > F32(88.0) else a)
    n = np.floor(a * F32(1.44269504) + F32(0.5))
    r = a - n * F32(0.693359375) - n * F32(-2.12194440e-4)
    p = F32(1.9875691500e-4) * r + F32(1.3981999507e-3)
    p = (((p * r + F32(8.3334519073e-3)) * r + F32(4.1665795894e-2)) * r + F32(1.6666665459e-1)) * r
    p = (p + F32(5.0000001201e-1)) * (r * r) + r + ONE
    n = n if n == n else F32(0.0)  # NaN: the int conversion below would be undefined
    return p * _f32_from_bits(np.int32((np.int32(n) + 127) << 23))


@_jit
def _log1p01(e):
    """log(1 + e) for e in [0, 1], vectorisable: 2 atanh(u), u = e / (2 + e) <= 1/3, as an odd series."""
    u = e / (TWO + e)
    w = u * u
    p = F32(1 / 13) + w * F32(1 / 15)
    p = F32(1 / 7) + w * (F32(1 / 9) + w * (F32(1 / 11) + w * p))
    return TWO * u * (ONE + w * (F32(1 / 3) + w * (F32(1 / 5) + w * p)))


@_jit
def _sig(a):
    return ONE / (ONE + _exp(-a))


@_jit
def _tanh(a):
    """tanh through one exp (saturates to +-1, never NaN for finite a); absolute error ~1e-7."""
    return ONE - TWO / (_exp(TWO * a) + ONE)


@_jit
def _project(x, W, b, xp, steps):
    """xp = x @ W + b per (k, sequence, step), skipping zero inputs."""
    K, B, T, n_in = x.shape
    for k in range(K):
        for s in range(B):
            for t in range(steps[k, s]):
                out = xp[k, s, t]
                out[:] = b[k]
                for i in range(n_in):
                    v = x[k, s, t, i]
                    if v != 0:
                        for j in range(out.shape[0]):
                            out[j] += v * W[k, i, j]


@_jit
def _project_grad(x, dxp, dW, db, steps):
    K, B, T, n_in = x.shape
    for k in range(K):
        for s in range(B):
            for t in range(steps[k, s]):
                g = dxp[k, s, t]
                for j in range(g.shape[0]):
                    db[k, j] += g[j]
                for i in range(n_in):
                    v = x[k, s, t, i]
                    if v != 0:
                        for j in range(g.shape[0]):
                            dW[k, i, j] += v * g[j]


@_jit
def _vec_mat(v, M, out):
    """out += v @ M[:, : len(out)] (inner loop contiguous, vectorises; a column offset would not: numba's
    negative-index wraparound on a runtime offset blocks it, 9x slower)."""
    n = out.shape[0]
    for i in range(v.shape[0]):
        vi = v[i]
        for j in range(n):
            out[j] += vi * M[i, j]


@_jit
def _outer_acc(v, g, dM):
    """dM[:, : len(g)] += outer(v, g)."""
    n = g.shape[0]
    for i in range(v.shape[0]):
        vi = v[i]
        for j in range(n):
            dM[i, j] += vi * g[j]


# --- tanh-RNN: h' = tanh(xp + h U) ------------------------------------------------------------------


@_jit
def _tanh_fwd(xp, U, hs, steps):
    K, B, T, H = hs.shape
    zero = np.zeros(H, F32)
    a = np.empty(H, F32)
    for k in range(K):
        for s in range(B):
            for t in range(steps[k, s]):
                hp = hs[k, s, t - 1] if t > 0 else zero
                a[:] = xp[k, s, t]
                _vec_mat(hp, U[k], a)
                for j in range(H):
                    hs[k, s, t, j] = _tanh(a[j])


@_jit
def _tanh_bwd(dhs, UT, hs, dxp, dU, steps):
    K, B, T, H = hs.shape
    zero = np.zeros(H, F32)
    dh = np.zeros(H, F32)
    for k in range(K):
        for s in range(B):
            dh[:] = 0
            for t in range(steps[k, s] - 1, -1, -1):
                hp = hs[k, s, t - 1] if t > 0 else zero
                h, g = hs[k, s, t], dxp[k, s, t]
                for j in range(H):
                    g[j] = (dhs[k, s, t, j] + dh[j]) * (ONE - h[j] * h[j])
                _outer_acc(hp, g, dU[k])
                dh[:] = 0
                _vec_mat(g, UT[k], dh)


# --- paper GRU: r, z = sig(xp_rz + h U_rz); n = tanh(xp_n + (r h) U_n); h' = (1 - z) h + z n ---------


@_jit
def _gru_fwd(xp, U, hs, r, z, n, steps):
    K, B, T, H = hs.shape
    zero = np.zeros(H, F32)
    a = np.empty(3 * H, F32)
    rh = np.empty(H, F32)
    for k in range(K):
        Un = np.ascontiguousarray(U[k, :, 2 * H :])  # see _vec_mat: no column offsets
        for s in range(B):
            for t in range(steps[k, s]):
                hp = hs[k, s, t - 1] if t > 0 else zero
                a[:] = xp[k, s, t]
                _vec_mat(hp, U[k], a[: 2 * H])
                for j in range(H):
                    r[k, s, t, j] = _sig(a[j])
                    z[k, s, t, j] = _sig(a[H + j])
                    rh[j] = r[k, s, t, j] * hp[j]
                _vec_mat(rh, Un, a[2 * H :])
                for j in range(H):
                    n[k, s, t, j] = _tanh(a[2 * H + j])
                    zj = z[k, s, t, j]
                    hs[k, s, t, j] = (ONE - zj) * hp[j] + zj * n[k, s, t, j]


@_jit
def _gru_bwd(dhs, UT, hs, r, z, n, dxp, dU, steps):
    K, B, T, H = hs.shape
    zero = np.zeros(H, F32)
    dh = np.zeros(H, F32)
    drh = np.zeros(H, F32)
    rh = np.zeros(H, F32)
    for k in range(K):
        dUn = np.zeros((H, H), F32)  # accumulated apart, see _vec_mat
        for s in range(B):
            dh[:] = 0
            for t in range(steps[k, s] - 1, -1, -1):
                hp = hs[k, s, t - 1] if t > 0 else zero
                g = dxp[k, s, t]
                for j in range(H):
                    d = dhs[k, s, t, j] + dh[j]
                    zj, nj = z[k, s, t, j], n[k, s, t, j]
                    g[2 * H + j] = d * zj * (ONE - nj * nj)
                    g[H + j] = d * (nj - hp[j]) * zj * (ONE - zj)
                    dh[j] = d * (ONE - zj)
                    rh[j] = r[k, s, t, j] * hp[j]
                drh[:] = 0
                _vec_mat(g[2 * H :], UT[k, 2 * H :], drh)
                _outer_acc(rh, g[2 * H :], dUn)
                for j in range(H):
                    rj = r[k, s, t, j]
                    g[j] = drh[j] * hp[j] * rj * (ONE - rj)
                    dh[j] += drh[j] * rj
                _outer_acc(hp, g[: 2 * H], dU[k])
                _vec_mat(g[: 2 * H], UT[k, : 2 * H], dh)
        dU[k, :, 2 * H :] = dUn


# --- torch/cuDNN GRU: n = tanh(xp_n + r (h U_n + b_hn)); h' = (1 - z) n + z h ---------------------------


@_jit
def _gru_cudnn_fwd(xp, U, bhn, hs, r, z, n, hn, steps):
    K, B, T, H = hs.shape
    zero = np.zeros(H, F32)
    hu = np.empty(3 * H, F32)
    for k in range(K):
        for s in range(B):
            for t in range(steps[k, s]):
                hp = hs[k, s, t - 1] if t > 0 else zero
                hu[:] = 0
                _vec_mat(hp, U[k], hu)
                a = xp[k, s, t]
                for j in range(H):
                    rj = _sig(a[j] + hu[j])
                    zj = _sig(a[H + j] + hu[H + j])
                    hnj = hu[2 * H + j] + bhn[k, j]
                    nj = _tanh(a[2 * H + j] + rj * hnj)
                    r[k, s, t, j], z[k, s, t, j], n[k, s, t, j], hn[k, s, t, j] = rj, zj, nj, hnj
                    hs[k, s, t, j] = (ONE - zj) * nj + zj * hp[j]


@_jit
def _gru_cudnn_bwd(dhs, UT, hs, r, z, n, hn, dxp, dU, dbhn, steps):
    K, B, T, H = hs.shape
    zero = np.zeros(H, F32)
    dh = np.zeros(H, F32)
    gh = np.zeros(3 * H, F32)
    for k in range(K):
        for s in range(B):
            dh[:] = 0
            for t in range(steps[k, s] - 1, -1, -1):
                hp = hs[k, s, t - 1] if t > 0 else zero
                g = dxp[k, s, t]
                for j in range(H):
                    d = dhs[k, s, t, j] + dh[j]
                    rj, zj, nj = r[k, s, t, j], z[k, s, t, j], n[k, s, t, j]
                    dan = d * (ONE - zj) * (ONE - nj * nj)
                    g[j] = dan * hn[k, s, t, j] * rj * (ONE - rj)
                    g[H + j] = d * (hp[j] - nj) * zj * (ONE - zj)
                    g[2 * H + j] = dan
                    gh[j], gh[H + j], gh[2 * H + j] = g[j], g[H + j], dan * rj
                    dbhn[k, j] += dan * rj
                    dh[j] = d * zj
                _outer_acc(hp, gh, dU[k])
                _vec_mat(gh, UT[k], dh)


# --- LSTM with peepholes (Graves 2013), gates i, f, g, o; o peeks at the new cell --------------------


@_jit
def _lstm_fwd(xp, U, peep, hs, cs, gates, tc, steps):
    K, B, T, H = hs.shape
    zero = np.zeros(H, F32)
    a = np.empty(4 * H, F32)
    for k in range(K):
        p = peep[k]
        for s in range(B):
            for t in range(steps[k, s]):
                hp = hs[k, s, t - 1] if t > 0 else zero
                cp = cs[k, s, t - 1] if t > 0 else zero
                a[:] = xp[k, s, t]
                _vec_mat(hp, U[k], a)
                gt = gates[k, s, t]
                for j in range(H):
                    i_ = _sig(a[j] + p[0, j] * cp[j])
                    f_ = _sig(a[H + j] + p[1, j] * cp[j])
                    g_ = _tanh(a[2 * H + j])
                    c_ = f_ * cp[j] + i_ * g_
                    o_ = _sig(a[3 * H + j] + p[2, j] * c_)
                    tc_ = _tanh(c_)
                    gt[j], gt[H + j], gt[2 * H + j], gt[3 * H + j] = i_, f_, g_, o_
                    cs[k, s, t, j], tc[k, s, t, j], hs[k, s, t, j] = c_, tc_, o_ * tc_


@_jit
def _lstm_bwd(dhs, UT, peep, hs, cs, gates, tc, dxp, dU, dpeep, steps):
    K, B, T, H = hs.shape
    zero = np.zeros(H, F32)
    dh = np.zeros(H, F32)
    dc = np.zeros(H, F32)
    for k in range(K):
        p = peep[k]
        for s in range(B):
            dh[:] = 0
            dc[:] = 0
            for t in range(steps[k, s] - 1, -1, -1):
                hp = hs[k, s, t - 1] if t > 0 else zero
                cp = cs[k, s, t - 1] if t > 0 else zero
                gt, g = gates[k, s, t], dxp[k, s, t]
                for j in range(H):
                    d = dhs[k, s, t, j] + dh[j]
                    i_, f_, g_, o_ = gt[j], gt[H + j], gt[2 * H + j], gt[3 * H + j]
                    tc_ = tc[k, s, t, j]
                    dao = d * tc_ * o_ * (ONE - o_)
                    dcj = dc[j] + d * o_ * (ONE - tc_ * tc_) + dao * p[2, j]
                    dai = dcj * g_ * i_ * (ONE - i_)
                    daf = dcj * cp[j] * f_ * (ONE - f_)
                    g[j], g[H + j], g[2 * H + j], g[3 * H + j] = dai, daf, dcj * i_ * (ONE - g_ * g_), dao
                    dpeep[k, 0, j] += dai * cp[j]
                    dpeep[k, 1, j] += daf * cp[j]
                    dpeep[k, 2, j] += dao * cs[k, s, t, j]
                    dc[j] = dcj * f_ + dai * p[0, j] + daf * p[1, j]
                _outer_acc(hp, g, dU[k])
                dh[:] = 0
                _vec_mat(g, UT[k], dh)


# --- linear readout: logits = h @ V + c, summed over steps in sequence order -------------------------


@_jit
def _readout(hs, V, c, out, steps):
    K, B, T, _ = hs.shape
    for k in range(K):
        for s in range(B):
            for t in range(steps[k, s]):
                out[k, s, t] = c[k]
                _vec_mat(hs[k, s, t], V[k], out[k, s, t])


@_jit
def _readout_grad(dout, hs, VT, dhs, dV, dc, steps):
    """Sums over (sequence, step) run in a fixed order, so zero-gradient padding appended to a batch
    (longer T or more sequences) leaves every gradient bit-identical."""
    K, B, T, _ = hs.shape
    for k in range(K):
        for s in range(B):
            for t in range(steps[k, s]):
                g = dout[k, s, t]
                for j in range(g.shape[0]):
                    dc[k, j] += g[j]
                _outer_acc(hs[k, s, t], g, dV[k])
                dhs[k, s, t] = 0
                _vec_mat(g, VT[k], dhs[k, s, t])


# --- autograd glue -------------------------------------------------------------------------------------


def _buffers(kind: str, hs: np.ndarray, n_gates: int) -> list[np.ndarray]:
    """What each forward keeps for its backward besides hs."""
    if kind == "lstm":  # cells, gate activations, tanh(cells)
        return [np.empty_like(hs), np.empty((*hs.shape[:3], n_gates), np.float32), np.empty_like(hs)]
    return [np.empty_like(hs) for _ in range({"tanh": 0, "gru": 3, "gru_cudnn": 4}[kind])]  # r, z, n, hn


_FWD = {"tanh": _tanh_fwd, "gru": _gru_fwd, "gru_cudnn": _gru_cudnn_fwd, "lstm": _lstm_fwd}
_BWD = {"tanh": _tanh_bwd, "gru": _gru_bwd, "gru_cudnn": _gru_cudnn_bwd, "lstm": _lstm_bwd}


def _np(t: Tensor) -> np.ndarray:
    """A private contiguous copy: in-place edits of a parameter (weight noise) cannot reach the backward."""
    return np.array(t.detach().numpy(), order="C", copy=True)


def _t(a: np.ndarray) -> np.ndarray:
    """(K, m, n) -> contiguous (K, n, m), for the vectorisable form of M @ g."""
    return np.ascontiguousarray(a.transpose(0, 2, 1))


@_jit
def _nll(logits, x, steps, sums, dlog):
    """sums[k, s]: frame NLL of the targets x[k, s, t + 1] summed over sequence s's steps, in float64 per note
    and then over notes (a fixed order that vectorises); dlog = d sums / d logits = sigmoid(logits) - y
    (within each sequence's steps only)."""
    K, B = steps.shape
    zero = F32(0.0)
    acc = np.empty(logits.shape[3], np.float64)
    for k in range(K):
        for s in range(B):
            acc[:] = 0.0
            for t in range(steps[k, s]):
                a, y, d = logits[k, s, t], x[k, s, t + 1], dlog[k, s, t]
                for j in range(acc.shape[0]):
                    e = _exp(-abs(a[j]))  # stable: log(1 + exp(-|a|)) never overflows
                    acc[j] += max(a[j], zero) - a[j] * y[j] + _log1p01(e)
                    d[j] = (ONE if a[j] >= zero else e) / (ONE + e) - y[j]
            sums[k, s] = acc.sum()


class _NextFrame(torch.autograd.Function):
    """Logits of x (nll=False), or each sequence's summed NLL of predicting x[:, :, 1:] (nll=True): the loss
    and its gradient then never leave numba, which saves ~10 torch ops per model and update."""

    @staticmethod
    def forward(ctx, kind, x, W, b, U, V, c, extra, steps, nll):
        xn, Wn, Un, Vn = _np(x), _np(W), _np(U), _np(V)
        K, B, T, _ = xn.shape
        if nll:
            T -= 1  # the last frame is only a target
        steps = np.full((K, B), T, np.int64) if steps is None else _np(steps.clamp(0, T).long())
        xp = np.empty((K, B, T, Wn.shape[2]), np.float32)
        _project(xn, Wn, _np(b), xp, steps)
        hs = np.empty((K, B, T, Un.shape[1]), np.float32)
        saved = _buffers(kind, hs, Wn.shape[2])
        ex = [] if extra is None else [_np(extra)]
        _FWD[kind](xp, Un, *ex, hs, *saved, steps)
        logits = np.zeros((K, B, T, Vn.shape[2]), np.float32)  # stays 0 after each sequence's end
        _readout(hs, Vn, _np(c), logits, steps)
        ctx.kind, ctx.arrays, ctx.dlog = kind, (xn, Un, Vn, ex, hs, saved, steps), None
        if not nll:
            return torch.from_numpy(logits)
        sums = np.zeros((K, B), np.float64)
        dlog = np.empty_like(logits)
        _nll(logits, xn, steps, sums, dlog)
        ctx.dlog = dlog
        return torch.from_numpy(sums)

    @staticmethod
    def backward(ctx, dout):
        xn, Un, Vn, ex, hs, saved, steps = ctx.arrays
        del ctx.arrays
        if ctx.dlog is None:
            dlogits = _np(dout)
        else:  # dout (K, B): each sequence's weight in the loss (e.g. 1 / frames); inf/NaN pass on
            with np.errstate(invalid="ignore", over="ignore"):
                dlogits = ctx.dlog * dout.numpy().astype(np.float32)[:, :, None, None]
        dV, dc, dhs = np.zeros_like(Vn), np.zeros((Vn.shape[0], Vn.shape[2]), np.float32), np.empty_like(hs)
        _readout_grad(dlogits, hs, _t(Vn), dhs, dV, dc, steps)
        dxp = np.empty((*hs.shape[:3], Un.shape[2]), np.float32)
        dU = np.zeros_like(Un)
        dex = [np.zeros_like(e) for e in ex]
        peep = ex if ctx.kind == "lstm" else []  # b_hn is not needed backwards
        _BWD[ctx.kind](dhs, _t(Un), *peep, hs, *saved, dxp, dU, *dex, steps)
        dW = np.zeros((Un.shape[0], xn.shape[3], Un.shape[2]), np.float32)
        db = np.zeros((Un.shape[0], Un.shape[2]), np.float32)
        _project_grad(xn, dxp, dW, db, steps)
        grads = [torch.from_numpy(a) for a in (dW, db, dU, dV, dc)]
        return None, None, *grads, torch.from_numpy(dex[0]) if dex else None, None, None


def run(
    kind: str,
    x: Tensor,
    W: Tensor,
    b: Tensor,
    U: Tensor,
    V: Tensor,
    c: Tensor,
    extra: Tensor | None = None,
    steps: Tensor | None = None,
    nll: bool = False,
) -> Tensor:
    """Logits (K, B, T, O) of x (K, B, T, I): W (K, I, G*H), b (K, G*H), U (K, H, G*H) (h @ U), readout
    V (K, H, O), c (K, O); extra: LSTM peepholes (K, 3, H) or the cuDNN GRU's b_hn (K, H). h0 = c0 = 0.
    steps (K, B): run sequence (k, s) for its first steps[k, s] steps only; later logits are 0.
    nll: x is (K, B, T + 1, I) and the result is each sequence's float64 NLL of x[:, :, 1:] summed over the
    steps run, shape (K, B)."""
    if x.requires_grad:
        raise ValueError("the numba kernels do not return gradients for the input x")
    return _NextFrame.apply(kind, x, W, b, U, V, c, extra, steps, nll)
