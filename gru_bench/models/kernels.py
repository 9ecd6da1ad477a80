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
    from numba import njit
except ImportError:  # pragma: no cover - the pure-torch path takes over
    njit = None

_jit = njit(cache=True, fastmath=False, nogil=True) if njit is not None else (lambda f: f)
ONE = np.float32(1.0)
TWO = np.float32(2.0)
F32 = np.float32


def available() -> bool:
    """True when numba imports (the kernels compile on first use and are cached on disk)."""
    return njit is not None


@_jit
def _sig(a):
    return ONE / (ONE + np.exp(-a))


@_jit
def _tanh(a):
    """tanh through one expf: 3x cheaper than libm's tanhf, absolute error ~1e-7 (saturates, no NaN)."""
    return ONE - TWO / (np.exp(TWO * a) + ONE)


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
def _vec_mat(v, M, col0, out):
    """out += v @ M[:, col0 : col0 + len(out)] (inner loop contiguous, vectorises)."""
    n = out.shape[0]
    for i in range(v.shape[0]):
        vi = v[i]
        for j in range(n):
            out[j] += vi * M[i, col0 + j]


@_jit
def _outer_acc(v, g, dM, col0):
    """dM[:, col0 : col0 + len(g)] += outer(v, g)."""
    n = g.shape[0]
    for i in range(v.shape[0]):
        vi = v[i]
        for j in range(n):
            dM[i, col0 + j] += vi * g[j]


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
                _vec_mat(hp, U[k], 0, a)
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
                _outer_acc(hp, g, dU[k], 0)
                dh[:] = 0
                _vec_mat(g, UT[k], 0, dh)


# --- paper GRU: r, z = sig(xp_rz + h U_rz); n = tanh(xp_n + (r h) U_n); h' = (1 - z) h + z n ---------


@_jit
def _gru_fwd(xp, U, hs, r, z, n, steps):
    K, B, T, H = hs.shape
    zero = np.zeros(H, F32)
    a = np.empty(3 * H, F32)
    rh = np.empty(H, F32)
    for k in range(K):
        for s in range(B):
            for t in range(steps[k, s]):
                hp = hs[k, s, t - 1] if t > 0 else zero
                a[:] = xp[k, s, t]
                _vec_mat(hp, U[k], 0, a[: 2 * H])
                for j in range(H):
                    r[k, s, t, j] = _sig(a[j])
                    z[k, s, t, j] = _sig(a[H + j])
                    rh[j] = r[k, s, t, j] * hp[j]
                _vec_mat(rh, U[k], 2 * H, a[2 * H :])
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
                _vec_mat(g[2 * H :], UT[k, 2 * H :], 0, drh)
                _outer_acc(rh, g[2 * H :], dU[k], 2 * H)
                for j in range(H):
                    rj = r[k, s, t, j]
                    g[j] = drh[j] * hp[j] * rj * (ONE - rj)
                    dh[j] += drh[j] * rj
                _outer_acc(hp, g[: 2 * H], dU[k], 0)
                _vec_mat(g[: 2 * H], UT[k, : 2 * H], 0, dh)


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
                _vec_mat(hp, U[k], 0, hu)
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
                _outer_acc(hp, gh, dU[k], 0)
                _vec_mat(gh, UT[k], 0, dh)


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
                _vec_mat(hp, U[k], 0, a)
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
                _outer_acc(hp, g, dU[k], 0)
                dh[:] = 0
                _vec_mat(g, UT[k], 0, dh)


# --- linear readout: logits = h @ V + c, summed over steps in sequence order -------------------------


@_jit
def _readout(hs, V, c, out, steps):
    K, B, T, _ = hs.shape
    for k in range(K):
        for s in range(B):
            for t in range(steps[k, s]):
                out[k, s, t] = c[k]
                _vec_mat(hs[k, s, t], V[k], 0, out[k, s, t])


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
                _outer_acc(hs[k, s, t], g, dV[k], 0)
                dhs[k, s, t] = 0
                _vec_mat(g, VT[k], 0, dhs[k, s, t])


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


class _NextFrame(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kind, x, W, b, U, V, c, extra, steps):
        xn, Wn, Un, Vn = _np(x), _np(W), _np(U), _np(V)
        K, B, T, _ = xn.shape
        H = Un.shape[1]
        steps = np.full((K, B), T, np.int64) if steps is None else _np(steps.clamp(0, T).long())
        xp = np.empty((K, B, T, Wn.shape[2]), np.float32)
        _project(xn, Wn, _np(b), xp, steps)
        hs = np.empty((K, B, T, H), np.float32)
        saved = _buffers(kind, hs, Wn.shape[2])
        ex = [] if extra is None else [_np(extra)]
        _FWD[kind](xp, Un, *ex, hs, *saved, steps)
        logits = np.zeros((K, B, T, Vn.shape[2]), np.float32)  # stays 0 after each sequence's end
        _readout(hs, Vn, _np(c), logits, steps)
        ctx.kind, ctx.arrays = kind, (xn, Un, Vn, ex, hs, saved, steps)
        return torch.from_numpy(logits)

    @staticmethod
    def backward(ctx, dlogits):
        xn, Un, Vn, ex, hs, saved, steps = ctx.arrays
        del ctx.arrays
        dV, dc, dhs = np.zeros_like(Vn), np.zeros((Vn.shape[0], Vn.shape[2]), np.float32), np.empty_like(hs)
        _readout_grad(_np(dlogits), hs, _t(Vn), dhs, dV, dc, steps)
        dxp = np.empty((*hs.shape[:3], Un.shape[2]), np.float32)
        dU = np.zeros_like(Un)
        dex = [np.zeros_like(e) for e in ex]
        peep = ex if ctx.kind == "lstm" else []  # b_hn is not needed backwards
        _BWD[ctx.kind](dhs, _t(Un), *peep, hs, *saved, dxp, dU, *dex, steps)
        dW = np.zeros((Un.shape[0], xn.shape[3], Un.shape[2]), np.float32)
        db = np.zeros((Un.shape[0], Un.shape[2]), np.float32)
        _project_grad(xn, dxp, dW, db, steps)
        grads = [torch.from_numpy(a) for a in (dW, db, dU, dV, dc)]
        return None, None, *grads, torch.from_numpy(dex[0]) if dex else None, None


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
) -> Tensor:
    """Logits (K, B, T, O) of x (K, B, T, I): W (K, I, G*H), b (K, G*H), U (K, H, G*H) (h @ U), readout
    V (K, H, O), c (K, O); extra: LSTM peepholes (K, 3, H) or the cuDNN GRU's b_hn (K, H). h0 = c0 = 0.
    steps (K, B): run sequence (k, s) for its first steps[k, s] steps only; later logits are 0."""
    if x.requires_grad:
        raise ValueError("the numba kernels do not return gradients for the input x")
    return _NextFrame.apply(kind, x, W, b, U, V, c, extra, steps)
