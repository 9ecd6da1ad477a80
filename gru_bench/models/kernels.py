"""Fast CPU path: numba loops over (K, B, T) with hand-written BPTT, wrapped in one autograd.Function.

At batch 1 and ~50 hidden units, torch spends most of its time dispatching ~20 tiny ops per time step;
here one compiled call runs input projection, recurrence and readout. The projections run in numba too
(not torch GEMMs) for two reasons: the input one skips zero inputs (piano rolls are >90% zeros), and every
sum runs in a fixed order per model, so model k's outputs and gradients are bit-identical whatever K is
and however far the batch is zero-padded (a GEMM's reduction blocking depends on the padded shape).
From batch 8 on, for models wider than the paper's, the recurrence and readout products go to sgemm
instead (the BLAS path below, `use_blas`): there, sharing U across the batch beats any element loop.

The element loops are laid out for these sizes without changing a single sum (every output element adds
the same terms in the same order, multiply and add apart: the reproduction's numbers stay bit for bit):
matrix-vector products take four rows per pass (_vec_mat), their outputs are padded to whole turns of the
vector loop (_lanes), the backward's outer products are summed after each sequence's recurrence four
steps per pass (_outer_acc_steps), the loss's float32 part runs 8 lanes wide, and the input projection
visits a branch-free list of the notes on (_nonzero).

Kinds: "tanh", "gru" (paper: reset before U), "lstm" (peepholes; zeros = torch's LSTM), "gru_cudnn"
(torch/cuDNN GRU: n = tanh(xp_n + r * (h U_n + b_hn))). Gate blocks are ordered as in cells.py / torch.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

try:
    from llvmlite import binding, ir
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
# the modules whose compiled functions call each other (fastpath's update runs these kernels and optim's
# passes)
COMPILED = ("kernels.py", "fastpath.py", "optim.py")


def drop_stale_cache(folder: Path = Path(__file__).parent) -> bool:
    """Delete the numba disk cache of the COMPILED modules in `folder` when any of their sources changed.

    numba checks a cached function against its own file only: after an edit of kernels.py, fastpath's
    update would still load its cached machine code with the old kernels compiled in. So the cache goes
    as a whole when the hash of the sources differs from the one stored with it. Returns whether it went."""
    cache = folder / "__pycache__"
    digest = hashlib.sha256(b"".join((folder / name).read_bytes() for name in COMPILED)).hexdigest()
    stamp = cache / "numba-sources.sha256"
    try:
        if stamp.read_text() == digest:
            return False
    except OSError:
        pass
    stale = [
        f
        for name in COMPILED
        for pattern in ("*.nbi", "*.nbc")
        for f in cache.glob(Path(name).stem + "." + pattern)
    ]
    try:
        for f in stale:
            f.unlink(missing_ok=True)
        cache.mkdir(exist_ok=True)
        tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}")
        tmp.write_text(digest)
        tmp.replace(stamp)
    except OSError:  # a read-only install: numba keeps its cache elsewhere, replaced with the package
        return False
    return bool(stale)


if njit is not None:
    drop_stale_cache()


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
def _nonzero(v, on):
    """on[: m] = the indices of v's non-zero entries in order; returns m. Branch-free: a piano-roll frame
    has ~4 of 88 notes on at random places, which a branch per entry mispredicts."""
    m = 0
    for i in range(v.shape[0]):
        on[m] = i
        m += v[i] != 0
    return m


@_jit
def _project(x, W, b, xp, steps):
    """xp = x @ W + b per (k, sequence, step), skipping zero inputs."""
    K, B, T, n_in = x.shape
    on = np.empty(n_in, np.int64)
    for k in range(K):
        for s in range(B):
            for t in range(steps[k, s]):
                out = xp[k, s, t]
                out[:] = b[k]
                m = _nonzero(x[k, s, t], on)
                q = 0
                while q + 4 <= m:  # four rows per pass over out, each element's sum in the same order
                    i0, i1, i2, i3 = on[q], on[q + 1], on[q + 2], on[q + 3]
                    v0, v1, v2, v3 = x[k, s, t, i0], x[k, s, t, i1], x[k, s, t, i2], x[k, s, t, i3]
                    w0, w1, w2, w3 = W[k, i0], W[k, i1], W[k, i2], W[k, i3]
                    for j in range(out.shape[0]):
                        out[j] = (((out[j] + v0 * w0[j]) + v1 * w1[j]) + v2 * w2[j]) + v3 * w3[j]
                    q += 4
                for i in on[q:m]:
                    v, w = x[k, s, t, i], W[k, i]
                    for j in range(out.shape[0]):
                        out[j] += v * w[j]


@_jit
def _project_grad(x, dxp, dW, db, steps):
    K, B, T, n_in = x.shape
    on = np.empty(n_in, np.int64)
    for k in range(K):
        for s in range(B):
            for t in range(steps[k, s]):
                g = dxp[k, s, t]
                for j in range(g.shape[0]):
                    db[k, j] += g[j]
                for q in range(_nonzero(x[k, s, t], on)):
                    v, dw = x[k, s, t, on[q]], dW[k, on[q]]
                    for j in range(g.shape[0]):
                        dw[j] += v * g[j]


@_jit
def _vec_mat(v, M, out):
    """out += v @ M[:, : len(out)] (inner loop contiguous, vectorises; a column offset would not: numba's
    negative-index wraparound on a runtime offset blocks it, 9x slower)."""
    n, m = out.shape[0], v.shape[0]
    i = 0
    while i + 4 <= m:
        v0, v1, v2, v3 = v[i], v[i + 1], v[i + 2], v[i + 3]
        r0, r1, r2, r3 = M[i], M[i + 1], M[i + 2], M[i + 3]
        for j in range(n):
            out[j] = (((out[j] + v0 * r0[j]) + v1 * r1[j]) + v2 * r2[j]) + v3 * r3[j]
        i += 4
    while i < m:
        vi, r = v[i], M[i]
        for j in range(n):
            out[j] += vi * r[j]
        i += 1


@_jit
def _lanes(n):
    """The width a matrix-vector product's output is padded to. LLVM's vector loop takes 16 floats a turn,
    then 4 at a time, then 1 (46 units: 32 + 12 + 2); where more than 8 would be left over, n goes up to
    the next multiple of 16, whose zero columns cost less than that narrow tail (46 -> 48: 1.3x faster)."""
    r = n % 16
    return n + 16 - r if r > 8 else n


@_jit
def _padded(M, width):
    """M with zero columns appended up to `width` (a private copy: the products' outputs gain lanes that
    are never read, and every real one is the same sum)."""
    out = np.zeros((M.shape[0], width), F32)
    out[:, : M.shape[1]] = M
    return out


@_jit
def _transposed(M, width):
    """M transposed, zero columns appended up to `width`: the backward's g @ M.T as the vectorising
    _vec_mat(g, MT, out)."""
    out = np.zeros((M.shape[1], width), F32)
    _transpose_sum(M, M, F32(0.0), out)
    return out


@_jit
def _transpose_sum(a, z, s, out):
    """out[: n, : m] = (a + z * s).T for a (m, n), a.T itself where s == 0, in 16 x 16 tiles: a plain loop
    writes every element a row apart, and at 512 units (a 512 x 1536 U) the tiles take a third of its
    time."""
    m, n = a.shape
    for i0 in range(0, m, 16):
        for j0 in range(0, n, 16):
            for i in range(i0, min(i0 + 16, m)):
                for j in range(j0, min(j0 + 16, n)):
                    out[j, i] = a[i, j] + z[i, j] * s if s != 0 else a[i, j]


@_jit
def _outer_acc(v, g, dM):
    """dM[:, : len(g)] += outer(v, g)."""
    n = g.shape[0]
    for i in range(v.shape[0]):
        vi = v[i]
        for j in range(n):
            dM[i, j] += vi * g[j]


@_jit
def _outer_acc_steps(vs, gs, c0, c1, dM, rev):
    """dM[:, : c1 - c0] += outer(vs[t], gs[t, c0:c1]) for every row t, in order (last to first if rev).

    Each element gets the additions of one _outer_acc per row, in the same order, so the sum is bit for
    bit the same; taking four rows per pass over dM quarters its loads and stores, which bound the per-row
    loop (these products are ~40% of the element kernels' backward). So the backward kernels keep each
    step's gradients and accumulate dU (and the readout dV) after a sequence's recurrence."""
    n = vs.shape[0]
    q = 0
    while q + 4 <= n:
        t0, d = (n - 1 - q, -1) if rev else (q, 1)
        v0, v1, v2, v3 = vs[t0], vs[t0 + d], vs[t0 + 2 * d], vs[t0 + 3 * d]
        g0, g1, g2 = gs[t0, c0:c1], gs[t0 + d, c0:c1], gs[t0 + 2 * d, c0:c1]
        g3 = gs[t0 + 3 * d, c0:c1]
        for i in range(vs.shape[1]):
            a0, a1, a2, a3 = v0[i], v1[i], v2[i], v3[i]
            row = dM[i]
            for j in range(c1 - c0):
                row[j] = (((row[j] + a0 * g0[j]) + a1 * g1[j]) + a2 * g2[j]) + a3 * g3[j]
        q += 4
    while q < n:
        t = n - 1 - q if rev else q
        _outer_acc(vs[t], gs[t, c0:c1], dM)
        q += 1


@_jit
def _seq_dU(hs, gs, c0, c1, dU, n):
    """dU[:, : c1 - c0] += outer(h_{t-1}, gs[t, c0:c1]) for t = n - 1 down to 0 (h_{-1} = 0): a sequence's
    recurrent-weight gradient, in the order of its backward pass."""
    if n > 1:
        _outer_acc_steps(hs[: n - 1], gs[1:n], c0, c1, dU, True)
    if n > 0:
        _outer_acc(np.zeros(hs.shape[1], F32), gs[0, c0:c1], dU)


# --- the gate arithmetic of one step and sequence, shared by the element and the BLAS kernels ----------
#
# Each takes 1-D rows of C arrays (one step of one sequence: a = its pre-activations, hp/cp = the previous
# state, g = the pre-activations' gradients) and loops over the H units, which LLVM vectorises. The
# kernels below differ only in how they form the products with U: element loops or sgemm.


@_jit
def _tanh_step(a, h):
    for j in range(h.shape[0]):
        h[j] = _tanh(a[j])


@_jit
def _tanh_step_bwd(dhs, dh, h, g):
    """g = (dhs + dh) tanh'(a); dh: dL/dh from the step after (through U)."""
    for j in range(h.shape[0]):
        g[j] = (dhs[j] + dh[j]) * (ONE - h[j] * h[j])


@_jit
def _gru_rz(a, hp, r, z, rh):
    """The reset and update gates from a[: 2H]; rh = r * hp, the input of U_n."""
    H = hp.shape[0]
    for j in range(H):
        r[j] = _sig(a[j])
        z[j] = _sig(a[H + j])
        rh[j] = r[j] * hp[j]


@_jit
def _gru_new(an, hp, z, n, h):
    """n = tanh(an) (an = xp_n + (r h) U_n); h = (1 - z) hp + z n."""
    for j in range(hp.shape[0]):
        n[j] = _tanh(an[j])
        zj = z[j]
        h[j] = (ONE - zj) * hp[j] + zj * n[j]


@_jit
def _gru_new_bwd(dhs, dh, hp, z, n, g):
    """g[H:] (z and n blocks) from d = dhs + dh; dh becomes d (1 - z), the direct part of dL/dhp."""
    H = hp.shape[0]
    for j in range(H):
        d = dhs[j] + dh[j]
        zj, nj = z[j], n[j]
        g[2 * H + j] = d * zj * (ONE - nj * nj)
        g[H + j] = d * (nj - hp[j]) * zj * (ONE - zj)
        dh[j] = d * (ONE - zj)


@_jit
def _gru_rz_bwd(drh, hp, r, g, dh):
    """g[: H] (reset block) from drh = dL/d(r hp); dh += the part of dL/dhp through r hp."""
    for j in range(hp.shape[0]):
        rj = r[j]
        g[j] = drh[j] * hp[j] * rj * (ONE - rj)
        dh[j] += drh[j] * rj


@_jit
def _gru_cudnn_step(a, hu, bhn, hp, r, z, n, hn, h):
    """The torch/cuDNN GRU step from a = xp and hu = hp U; hn = hp U_n + b_hn is kept for the backward."""
    H = hp.shape[0]
    for j in range(H):
        rj = _sig(a[j] + hu[j])
        zj = _sig(a[H + j] + hu[H + j])
        hnj = hu[2 * H + j] + bhn[j]
        nj = _tanh(a[2 * H + j] + rj * hnj)
        r[j], z[j], n[j], hn[j] = rj, zj, nj, hnj
        h[j] = (ONE - zj) * nj + zj * hp[j]


@_jit
def _gru_cudnn_step_bwd(dhs, dh, hp, r, z, n, hn, g, gh, dbhn):
    """g: gradients of the xp blocks; gh: of hp U (its n block is r times g's); dbhn += that n block; dh
    becomes the direct part d z of dL/dhp."""
    H = hp.shape[0]
    for j in range(H):
        d = dhs[j] + dh[j]
        rj, zj, nj = r[j], z[j], n[j]
        dan = d * (ONE - zj) * (ONE - nj * nj)
        g[j] = dan * hn[j] * rj * (ONE - rj)
        g[H + j] = d * (hp[j] - nj) * zj * (ONE - zj)
        g[2 * H + j] = dan
        gh[j], gh[H + j], gh[2 * H + j] = g[j], g[H + j], dan * rj
        dbhn[j] += dan * rj
        dh[j] = d * zj


@_jit
def _lstm_step(a, p, cp, gt, c, tc, h):
    """Gates i, f, g, o (into gt) from a = xp + hp U and the peepholes p (3, H); the cell c, tanh(c), h."""
    H = h.shape[0]
    for j in range(H):
        i_ = _sig(a[j] + p[0, j] * cp[j])
        f_ = _sig(a[H + j] + p[1, j] * cp[j])
        g_ = _tanh(a[2 * H + j])
        c_ = f_ * cp[j] + i_ * g_
        o_ = _sig(a[3 * H + j] + p[2, j] * c_)
        tc_ = _tanh(c_)
        gt[j], gt[H + j], gt[2 * H + j], gt[3 * H + j] = i_, f_, g_, o_
        c[j], tc[j], h[j] = c_, tc_, o_ * tc_


@_jit
def _lstm_step_bwd(dhs, dh, dc, p, cp, gt, tc, c, g, dpeep):
    """g: the four gates' pre-activation gradients from d = dhs + dh and dc (the cell gradient from the
    step after, replaced by this step's); dpeep (3, H) += the peepholes' gradients."""
    H = c.shape[0]
    for j in range(H):
        d = dhs[j] + dh[j]
        i_, f_, g_, o_ = gt[j], gt[H + j], gt[2 * H + j], gt[3 * H + j]
        tc_ = tc[j]
        dao = d * tc_ * o_ * (ONE - o_)
        dcj = dc[j] + d * o_ * (ONE - tc_ * tc_) + dao * p[2, j]
        dai = dcj * g_ * i_ * (ONE - i_)
        daf = dcj * cp[j] * f_ * (ONE - f_)
        g[j], g[H + j], g[2 * H + j], g[3 * H + j] = dai, daf, dcj * i_ * (ONE - g_ * g_), dao
        dpeep[0, j] += dai * cp[j]
        dpeep[1, j] += daf * cp[j]
        dpeep[2, j] += dao * c[j]
        dc[j] = dcj * f_ + dai * p[0, j] + daf * p[1, j]


# --- tanh-RNN: h' = tanh(xp + h U) ------------------------------------------------------------------


@_jit
def _tanh_fwd(xp, U, hs, steps):
    K, B, T, H = hs.shape
    zero = np.zeros(H, F32)
    a = np.zeros(_lanes(H), F32)
    for k in range(K):
        Uk = _padded(U[k], a.shape[0])
        for s in range(B):
            for t in range(steps[k, s]):
                hp = hs[k, s, t - 1] if t > 0 else zero
                a[:H] = xp[k, s, t]
                _vec_mat(hp, Uk, a)
                _tanh_step(a, hs[k, s, t])


@_jit
def _tanh_bwd(dhs, U, hs, dxp, dU, steps):
    K, B, T, H = hs.shape
    dh = np.zeros(_lanes(H), F32)
    for k in range(K):
        UT = _transposed(U[k], dh.shape[0])
        for s in range(B):
            dh[:] = 0
            for t in range(steps[k, s] - 1, -1, -1):
                g = dxp[k, s, t]
                _tanh_step_bwd(dhs[k, s, t], dh, hs[k, s, t], g)
                dh[:] = 0
                _vec_mat(g, UT, dh)
            _seq_dU(hs[k, s], dxp[k, s], 0, H, dU[k], steps[k, s])


# --- paper GRU: r, z = sig(xp_rz + h U_rz); n = tanh(xp_n + (r h) U_n); h' = (1 - z) h + z n ---------


@_jit
def _gru_fwd(xp, U, hs, r, z, n, steps):
    K, B, T, H = hs.shape
    zero = np.zeros(H, F32)
    arz, an = np.zeros(_lanes(2 * H), F32), np.zeros(_lanes(H), F32)  # the r and z blocks, the n block
    rh = np.empty(H, F32)
    for k in range(K):
        Urz, Un = _padded(U[k, :, : 2 * H], arz.shape[0]), _padded(U[k, :, 2 * H :], an.shape[0])
        for s in range(B):
            for t in range(steps[k, s]):
                hp = hs[k, s, t - 1] if t > 0 else zero
                arz[: 2 * H] = xp[k, s, t, : 2 * H]
                _vec_mat(hp, Urz, arz)
                _gru_rz(arz, hp, r[k, s, t], z[k, s, t], rh)
                an[:H] = xp[k, s, t, 2 * H :]
                _vec_mat(rh, Un, an)
                _gru_new(an, hp, z[k, s, t], n[k, s, t], hs[k, s, t])


@_jit
def _gru_bwd(dhs, U, hs, r, z, n, dxp, dU, steps):
    K, B, T, H = hs.shape
    zero = np.zeros(H, F32)
    dh = np.zeros(_lanes(H), F32)
    drh = np.zeros(_lanes(H), F32)
    rh = np.zeros((T, H), F32)  # r * hp per step: U_n's input
    for k in range(K):
        UT = _transposed(U[k], dh.shape[0])
        dUn = np.zeros((H, H), F32)  # accumulated apart, see _vec_mat
        for s in range(B):
            dh[:] = 0
            for t in range(steps[k, s] - 1, -1, -1):
                hp = hs[k, s, t - 1] if t > 0 else zero
                g = dxp[k, s, t]
                _gru_new_bwd(dhs[k, s, t], dh, hp, z[k, s, t], n[k, s, t], g)
                for j in range(H):
                    rh[t, j] = r[k, s, t, j] * hp[j]
                drh[:] = 0
                _vec_mat(g[2 * H :], UT[2 * H :], drh)
                _gru_rz_bwd(drh, hp, r[k, s, t], g, dh)
                _vec_mat(g[: 2 * H], UT[: 2 * H], dh)
            _outer_acc_steps(rh[: steps[k, s]], dxp[k, s], 2 * H, 3 * H, dUn, True)
            _seq_dU(hs[k, s], dxp[k, s], 0, 2 * H, dU[k], steps[k, s])
        dU[k, :, 2 * H :] = dUn


# --- torch/cuDNN GRU: n = tanh(xp_n + r (h U_n + b_hn)); h' = (1 - z) n + z h ---------------------------


@_jit
def _gru_cudnn_fwd(xp, U, bhn, hs, r, z, n, hn, steps):
    K, B, T, H = hs.shape
    zero = np.zeros(H, F32)
    hu = np.zeros(_lanes(3 * H), F32)
    for k in range(K):
        Uk = _padded(U[k], hu.shape[0])
        for s in range(B):
            for t in range(steps[k, s]):
                hp = hs[k, s, t - 1] if t > 0 else zero
                hu[:] = 0
                _vec_mat(hp, Uk, hu)
                _gru_cudnn_step(
                    xp[k, s, t], hu, bhn[k], hp, r[k, s, t], z[k, s, t], n[k, s, t], hn[k, s, t], hs[k, s, t]
                )


@_jit
def _gru_cudnn_bwd(dhs, U, hs, r, z, n, hn, dxp, dU, dbhn, steps):
    K, B, T, H = hs.shape
    zero = np.zeros(H, F32)
    dh = np.zeros(_lanes(H), F32)
    gh = np.zeros((T, 3 * H), F32)  # per step: the gradient of hp U
    for k in range(K):
        UT = _transposed(U[k], dh.shape[0])
        for s in range(B):
            dh[:] = 0
            for t in range(steps[k, s] - 1, -1, -1):
                hp = hs[k, s, t - 1] if t > 0 else zero
                _gru_cudnn_step_bwd(
                    dhs[k, s, t], dh, hp, r[k, s, t], z[k, s, t], n[k, s, t], hn[k, s, t], dxp[k, s, t],
                    gh[t], dbhn[k],
                )  # fmt: skip
                _vec_mat(gh[t], UT, dh)
            _seq_dU(hs[k, s], gh, 0, 3 * H, dU[k], steps[k, s])


# --- LSTM with peepholes (Graves 2013), gates i, f, g, o; o peeks at the new cell --------------------


@_jit
def _lstm_fwd(xp, U, peep, hs, cs, gates, tc, steps):
    K, B, T, H = hs.shape
    zero = np.zeros(H, F32)
    a = np.zeros(_lanes(4 * H), F32)
    for k in range(K):
        Uk = _padded(U[k], a.shape[0])
        for s in range(B):
            for t in range(steps[k, s]):
                hp = hs[k, s, t - 1] if t > 0 else zero
                cp = cs[k, s, t - 1] if t > 0 else zero
                a[: 4 * H] = xp[k, s, t]
                _vec_mat(hp, Uk, a)
                _lstm_step(a, peep[k], cp, gates[k, s, t], cs[k, s, t], tc[k, s, t], hs[k, s, t])


@_jit
def _lstm_bwd(dhs, U, peep, hs, cs, gates, tc, dxp, dU, dpeep, steps):
    K, B, T, H = hs.shape
    zero = np.zeros(H, F32)
    dh = np.zeros(_lanes(H), F32)
    dc = np.zeros(H, F32)
    for k in range(K):
        UT = _transposed(U[k], dh.shape[0])
        for s in range(B):
            dh[:] = 0
            dc[:] = 0
            for t in range(steps[k, s] - 1, -1, -1):
                cp = cs[k, s, t - 1] if t > 0 else zero
                g = dxp[k, s, t]
                _lstm_step_bwd(
                    dhs[k, s, t], dh, dc, peep[k], cp, gates[k, s, t], tc[k, s, t], cs[k, s, t], g, dpeep[k]
                )
                dh[:] = 0
                _vec_mat(g, UT, dh)
            _seq_dU(hs[k, s], dxp[k, s], 0, 4 * H, dU[k], steps[k, s])


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
def _readout_grad(dout, hs, V, dhs, dV, dc, steps):
    """Sums over (sequence, step) run in a fixed order, so zero-gradient padding appended to a batch
    (longer T or more sequences) leaves every gradient bit-identical."""
    K, B, T, H = hs.shape
    dh = np.zeros(_lanes(H), F32)
    for k in range(K):
        VT = _transposed(V[k], dh.shape[0])
        for s in range(B):
            for t in range(steps[k, s]):
                g = dout[k, s, t]
                for j in range(g.shape[0]):
                    dc[k, j] += g[j]
                dh[:] = 0
                _vec_mat(g, VT, dh)
                dhs[k, s, t] = dh[:H]
            _outer_acc_steps(hs[k, s, : steps[k, s]], dout[k, s], 0, dout.shape[3], dV[k], False)


# --- BLAS path: per-step (B, H) x (H, G*H) products, one product per sequence for dU and the readout -----
#
# The element loops above stream U through once per sequence and step; one (B, H) x (H, G*H) product per
# step shares it across the batch, with a BLAS's register blocking (use_blas says when). These
# kernels take the same buffers but hand every product to sgemm:
# forwards h @ U per step for all B rows, backwards g @ U.T per step, and per sequence over all its steps
# the readout, dV, dhs and dU (a sum over rows, so only steps within the sequence enter it). The gate
# arithmetic is the element kernels'. What stays exact, where MKL rounds a row the same for every M >= 8
# and wherever the data lie (its AVX2 branch: AMD by default, Intel with MKL_CBWR=AVX2,STRICT; see
# docs/models-and-speed.md): model k's numbers do not depend on K, on padding of T or on the batch size
# from 8 on. They match the element kernels to float32 rounding (~1e-6 relative), not bit for bit.
# tests/test_kernels.py checks all of this.


def _torch_cpu() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
    except OSError:  # pragma: no cover - not a Linux wheel
        return None


_TORCH_CPU = _torch_cpu()


def _sgemm_address() -> int | None:
    """The Fortran sgemm that torch's CPU library exports (MKL in the x86 wheels: as fast as torch.mm, and
    on torch's threads, `torch.set_num_threads`), else scipy's (OpenBLAS, its own threads), else None."""
    if hasattr(_TORCH_CPU, "sgemm_"):
        return ctypes.cast(_TORCH_CPU.sgemm_, ctypes.c_void_p).value
    try:
        from numba.extending import get_cython_function_address

        return get_cython_function_address("scipy.linalg.cython_blas", "sgemm")
    except (ImportError, ValueError):  # pragma: no cover - scipy is a dependency
        return None


_SGEMM = _sgemm_address() if njit is not None else None
if njit is not None:
    # bound by name, not as a pointer constant, so the kernels calling it stay cacheable on disk
    binding.add_symbol("gru_bench_sgemm", _SGEMM or 0)
    _sgemm = types.ExternalFunction("gru_bench_sgemm", types.void(*[types.voidptr] * 13))


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """This thread's sgemm calls use n threads inside the block (MKL's thread-local setting; other BLAS
    libraries keep theirs): for callers that already run in parallel, like FastUpdate's model groups."""
    set_local = getattr(_TORCH_CPU, "mkl_set_num_threads_local_", None)  # Fortran: by reference
    old = set_local(ctypes.byref(ctypes.c_int(n))) if set_local is not None else 0
    try:
        yield
    finally:
        if set_local is not None:
            set_local(ctypes.byref(ctypes.c_int(old)))


def blas_available() -> bool:
    """True when the kernels compile and an sgemm was found."""
    return njit is not None and _SGEMM is not None


BLAS_MIN_BATCH = 8
BLAS_MIN_HIDDEN = 101  # wider than every paper model (tanh 100): the reproduction keeps its exact numbers


def use_blas(batch: int, hidden: int) -> bool:
    """Whether a call on `batch` sequences of a `hidden`-unit model takes the BLAS path.

    GRU_BENCH_BLAS=0 / 1 forces it off / on; by default batch >= BLAS_MIN_BATCH and hidden >=
    BLAS_MIN_HIDDEN. Speed alone would take it everywhere: it was 1.25-3.5x faster per update at every size
    measured, batch 1-32 and 46-512 units (docs/models-and-speed.md, "BLAS path"). The limits keep the
    paper's models, trained at batch 1 and evaluated at batch 64, on the element kernels' exact numbers,
    and batches below 8 off the sizes where MKL's rows depend on the batch size."""
    mode = os.environ.get("GRU_BENCH_BLAS", "auto")
    if mode in ("0", "1"):
        return mode == "1" and blas_available()
    return blas_available() and batch >= BLAS_MIN_BATCH and hidden >= BLAS_MIN_HIDDEN


@_jit
def _ld(a):
    return max(a.strides[0] // 4, a.shape[1], 1)


@_jit
def _gemm(a, b, c, ta, tb, beta):
    """c = op(a) @ op(b) + beta c; row-major 2-D float32 views with unit inner stride, whose row stride is
    the leading dimension (column blocks and time slices need no copies); op(x) = x.T where asked.
    sgemm is column-major: it computes c.T = op(b).T @ op(a).T."""
    m, n = c.shape
    kk = a.shape[0] if ta else a.shape[1]
    if m == 0 or n == 0:
        return
    if kk == 0:
        c *= beta
        return
    p = np.array([n, m, kk, _ld(b), _ld(a), _ld(c)], np.int32)
    f = np.array([1.0, beta], np.float32)
    tr = np.array([84 if tb else 78, 84 if ta else 78], np.uint8)  # 'T', 'N'
    _sgemm(tr[:1].ctypes, tr[1:].ctypes, p[:1].ctypes, p[1:].ctypes, p[2:].ctypes, f[:1].ctypes, b.ctypes,
           p[3:].ctypes, a.ctypes, p[4:].ctypes, f[1:].ctypes, c.ctypes, p[5:].ctypes)  # fmt: skip


@_jit
def _acc_dU(hs, g, dU, steps):
    """dU += sum over sequences s and steps t >= 1 of outer(hs[s, t - 1], g[s, t]): one product per
    sequence over its steps (h0 = 0 adds nothing)."""
    for s in range(steps.shape[0]):
        m = steps[s]
        if m > 1:
            _gemm(hs[s, : m - 1], g[s, 1:m], dU, True, False, ONE)


@_jit
def _tanh_fwd_blas(xp, U, hs, steps):
    K, B, T, H = hs.shape
    for k in range(K):
        for t in range(steps[k].max()):
            if t > 0:
                _gemm(hs[k, :, t - 1], U[k], xp[k, :, t], False, False, ONE)
            for s in range(B):  # rows of C arrays, not of the 2-D views above: those do not vectorise
                if t >= steps[k, s]:
                    hs[k, s, t] = 0
                    continue
                _tanh_step(xp[k, s, t], hs[k, s, t])


@_jit
def _tanh_bwd_blas(dhs, U, hs, dxp, dU, steps):
    K, B, T, H = hs.shape
    dh = np.zeros((B, H), F32)
    for k in range(K):
        dh[:] = 0
        for t in range(steps[k].max() - 1, -1, -1):
            for s in range(B):
                if t >= steps[k, s]:
                    dxp[k, s, t] = 0
                    continue
                _tanh_step_bwd(dhs[k, s, t], dh[s], hs[k, s, t], dxp[k, s, t])
            if t > 0:
                _gemm(dxp[k, :, t], U[k], dh, False, True, F32(0.0))
        _acc_dU(hs[k], dxp[k], dU[k], steps[k])


@_jit
def _gru_fwd_blas(xp, U, hs, r, z, n, steps):
    K, B, T, H = hs.shape
    zero = np.zeros(H, F32)
    rh = np.zeros((B, H), F32)
    for k in range(K):
        for t in range(steps[k].max()):
            if t > 0:
                _gemm(hs[k, :, t - 1], U[k, :, : 2 * H], xp[k, :, t, : 2 * H], False, False, ONE)
            for s in range(B):  # rows of C arrays, not of the 2-D views above: those do not vectorise
                if t >= steps[k, s]:
                    rh[s] = 0
                    continue
                hp = hs[k, s, t - 1] if t > 0 else zero
                _gru_rz(xp[k, s, t], hp, r[k, s, t], z[k, s, t], rh[s])
            if t > 0:
                _gemm(rh, U[k, :, 2 * H :], xp[k, :, t, 2 * H :], False, False, ONE)
            for s in range(B):
                if t >= steps[k, s]:
                    hs[k, s, t] = r[k, s, t] = z[k, s, t] = n[k, s, t] = 0
                    continue
                hp = hs[k, s, t - 1] if t > 0 else zero
                _gru_new(xp[k, s, t, 2 * H :], hp, z[k, s, t], n[k, s, t], hs[k, s, t])


@_jit
def _gru_bwd_blas(dhs, U, hs, r, z, n, dxp, dU, steps):
    K, B, T, H = hs.shape
    zero = np.zeros(H, F32)
    dh = np.zeros((B, H), F32)
    drh = np.zeros((B, H), F32)
    rh = np.zeros((T, H), F32)
    for k in range(K):
        dh[:] = 0
        for t in range(steps[k].max() - 1, -1, -1):
            for s in range(B):
                g = dxp[k, s, t]
                if t >= steps[k, s]:
                    g[:] = 0
                    dh[s] = 0
                    continue
                hp = hs[k, s, t - 1] if t > 0 else zero
                _gru_new_bwd(dhs[k, s, t], dh[s], hp, z[k, s, t], n[k, s, t], g)
                g[:H] = 0  # h0 = 0: no reset-gate gradient at t = 0 (later steps overwrite it)
            if t == 0:
                continue
            _gemm(dxp[k, :, t, 2 * H :], U[k, :, 2 * H :], drh, False, True, F32(0.0))
            for s in range(B):
                if t < steps[k, s]:
                    _gru_rz_bwd(drh[s], hs[k, s, t - 1], r[k, s, t], dxp[k, s, t], dh[s])
            _gemm(dxp[k, :, t, : 2 * H], U[k, :, : 2 * H], dh, False, True, ONE)
        _acc_dU(hs[k], dxp[k, :, :, : 2 * H], dU[k, :, : 2 * H], steps[k])
        for s in range(B):  # dU_n: (r h) of each step against its n-gate gradient
            m = steps[k, s]
            for t in range(1, m):
                for j in range(H):
                    rh[t, j] = r[k, s, t, j] * hs[k, s, t - 1, j]
            if m > 1:
                _gemm(rh[1:m], dxp[k, s, 1:m, 2 * H :], dU[k, :, 2 * H :], True, False, ONE)


@_jit
def _gru_cudnn_fwd_blas(xp, U, bhn, hs, r, z, n, hn, steps):
    K, B, T, H = hs.shape
    zero = np.zeros(H, F32)
    hu = np.zeros((B, 3 * H), F32)
    for k in range(K):
        hu[:] = 0
        for t in range(steps[k].max()):
            if t > 0:
                _gemm(hs[k, :, t - 1], U[k], hu, False, False, F32(0.0))
            for s in range(B):
                if t >= steps[k, s]:
                    hs[k, s, t] = 0
                    continue
                hp = hs[k, s, t - 1] if t > 0 else zero
                _gru_cudnn_step(
                    xp[k, s, t], hu[s], bhn[k], hp, r[k, s, t], z[k, s, t], n[k, s, t], hn[k, s, t],
                    hs[k, s, t],
                )  # fmt: skip


@_jit
def _gru_cudnn_bwd_blas(dhs, U, hs, r, z, n, hn, dxp, dU, dbhn, steps):
    K, B, T, H = hs.shape
    zero = np.zeros(H, F32)
    dh = np.zeros((B, H), F32)
    gh = np.zeros((B, T, 3 * H), F32)  # gradients of h U (the n block is r times dxp's)
    for k in range(K):
        dh[:] = 0
        for t in range(steps[k].max() - 1, -1, -1):
            for s in range(B):
                if t >= steps[k, s]:
                    dxp[k, s, t] = 0
                    gh[s, t] = 0
                    dh[s] = 0
                    continue
                hp = hs[k, s, t - 1] if t > 0 else zero
                _gru_cudnn_step_bwd(
                    dhs[k, s, t], dh[s], hp, r[k, s, t], z[k, s, t], n[k, s, t], hn[k, s, t], dxp[k, s, t],
                    gh[s, t], dbhn[k],
                )  # fmt: skip
            if t > 0:
                _gemm(gh[:, t], U[k], dh, False, True, ONE)
        _acc_dU(hs[k], gh, dU[k], steps[k])


@_jit
def _lstm_fwd_blas(xp, U, peep, hs, cs, gates, tc, steps):
    K, B, T, H = hs.shape
    zero = np.zeros(H, F32)
    for k in range(K):
        for t in range(steps[k].max()):
            if t > 0:
                _gemm(hs[k, :, t - 1], U[k], xp[k, :, t], False, False, ONE)
            for s in range(B):  # rows of C arrays, not of the 2-D views above: those do not vectorise
                if t >= steps[k, s]:
                    hs[k, s, t] = cs[k, s, t] = 0
                    continue
                cp = cs[k, s, t - 1] if t > 0 else zero
                _lstm_step(xp[k, s, t], peep[k], cp, gates[k, s, t], cs[k, s, t], tc[k, s, t], hs[k, s, t])


@_jit
def _lstm_bwd_blas(dhs, U, peep, hs, cs, gates, tc, dxp, dU, dpeep, steps):
    K, B, T, H = hs.shape
    zero = np.zeros(H, F32)
    dh = np.zeros((B, H), F32)
    dc = np.zeros((B, H), F32)
    for k in range(K):
        dh[:] = 0
        dc[:] = 0
        for t in range(steps[k].max() - 1, -1, -1):
            for s in range(B):
                if t >= steps[k, s]:
                    dxp[k, s, t] = 0
                    dc[s] = 0
                    continue
                cp = cs[k, s, t - 1] if t > 0 else zero
                _lstm_step_bwd(
                    dhs[k, s, t], dh[s], dc[s], peep[k], cp, gates[k, s, t], tc[k, s, t], cs[k, s, t],
                    dxp[k, s, t], dpeep[k],
                )  # fmt: skip
            if t > 0:
                _gemm(dxp[k, :, t], U[k], dh, False, True, F32(0.0))
        _acc_dU(hs[k], dxp[k], dU[k], steps[k])


@_jit
def _readout_blas(hs, V, c, out, steps):
    K, B = steps.shape
    for k in range(K):
        for s in range(B):
            o = out[k, s, : steps[k, s]]
            for t in range(o.shape[0]):
                o[t] = c[k]
            _gemm(hs[k, s, : steps[k, s]], V[k], o, False, False, ONE)


@_jit
def _readout_grad_blas(dout, hs, V, dhs, dV, dc, steps):
    K, B = steps.shape
    for k in range(K):
        for s in range(B):
            m = steps[k, s]
            g = dout[k, s, :m]
            for t in range(m):
                for j in range(g.shape[1]):
                    dc[k, j] += g[t, j]
            _gemm(hs[k, s, :m], g, dV[k], True, False, ONE)
            _gemm(g, V[k], dhs[k, s, :m], False, True, F32(0.0))


# --- autograd glue -------------------------------------------------------------------------------------


def _buffers(kind: str, hs: np.ndarray, n_gates: int) -> list[np.ndarray]:
    """s0..s3: what each forward keeps for its backward besides hs (empty where a kind keeps less)."""
    none = np.empty((0, 0, 0, 0), np.float32)
    if kind == "lstm":  # cells, gate activations, tanh(cells)
        return [np.empty_like(hs), np.empty((*hs.shape[:3], n_gates), np.float32), np.empty_like(hs), none]
    n = {"tanh": 0, "gru": 3, "gru_cudnn": 4}[kind]  # r, z, n, hn
    return [np.empty_like(hs) if i < n else none for i in range(4)]


KINDS = ("tanh", "gru", "gru_cudnn", "lstm")  # the dispatchers' kind codes: an index into KINDS


@_jit
def _forward(kind, blas, xp, U, peep, bhn, hs, s0, s1, s2, s3, V, c, logits, steps):
    """hs and the logits from the projected inputs xp: KINDS[kind]'s recurrence and the readout, on the
    BLAS path or the element one. s0..s3: what the backward needs (_buffers); peep: the LSTM's peepholes,
    bhn: the cuDNN GRU's b_hn (other kinds ignore them)."""
    if kind == 0:
        if blas:
            _tanh_fwd_blas(xp, U, hs, steps)
        else:
            _tanh_fwd(xp, U, hs, steps)
    elif kind == 1:
        if blas:
            _gru_fwd_blas(xp, U, hs, s0, s1, s2, steps)
        else:
            _gru_fwd(xp, U, hs, s0, s1, s2, steps)
    elif kind == 2:
        if blas:
            _gru_cudnn_fwd_blas(xp, U, bhn, hs, s0, s1, s2, s3, steps)
        else:
            _gru_cudnn_fwd(xp, U, bhn, hs, s0, s1, s2, s3, steps)
    else:
        if blas:
            _lstm_fwd_blas(xp, U, peep, hs, s0, s1, s2, steps)
        else:
            _lstm_fwd(xp, U, peep, hs, s0, s1, s2, steps)
    if blas:
        _readout_blas(hs, V, c, logits, steps)
    else:
        _readout(hs, V, c, logits, steps)


@_jit
def _backward(kind, blas, dlog, U, V, peep, hs, s0, s1, s2, s3, dhs, dxp, dU, dV, dc, dpeep, dbhn, steps):
    """_forward's gradients from dlog = dL/dlogits: dU, dV, dc, dpeep, dbhn accumulate; dxp (dL/dxp) and dhs
    are overwritten."""
    if blas:
        _readout_grad_blas(dlog, hs, V, dhs, dV, dc, steps)
    else:
        _readout_grad(dlog, hs, V, dhs, dV, dc, steps)
    if kind == 0:
        if blas:
            _tanh_bwd_blas(dhs, U, hs, dxp, dU, steps)
        else:
            _tanh_bwd(dhs, U, hs, dxp, dU, steps)
    elif kind == 1:
        if blas:
            _gru_bwd_blas(dhs, U, hs, s0, s1, s2, dxp, dU, steps)
        else:
            _gru_bwd(dhs, U, hs, s0, s1, s2, dxp, dU, steps)
    elif kind == 2:
        if blas:
            _gru_cudnn_bwd_blas(dhs, U, hs, s0, s1, s2, s3, dxp, dU, dbhn, steps)
        else:
            _gru_cudnn_bwd(dhs, U, hs, s0, s1, s2, s3, dxp, dU, dbhn, steps)
    else:
        if blas:
            _lstm_bwd_blas(dhs, U, peep, hs, s0, s1, s2, dxp, dU, dpeep, steps)
        else:
            _lstm_bwd(dhs, U, peep, hs, s0, s1, s2, dxp, dU, dpeep, steps)


def _np(t: Tensor) -> np.ndarray:
    """A private contiguous copy: in-place edits of a parameter (weight noise) cannot reach the backward."""
    return np.array(t.detach().numpy(), order="C", copy=True)


@_jit
def _nll(logits, x, steps, sums, dlog):
    """sums[k, s]: frame NLL of the targets x[k, s, t + 1] summed over sequence s's steps, in float64 per note
    and then over notes (a fixed order that vectorises); dlog = d sums / d logits = sigmoid(logits) - y
    (within each sequence's steps only)."""
    K, B = steps.shape
    zero = F32(0.0)
    acc = np.empty(logits.shape[3], np.float64)
    term = np.empty(logits.shape[3], F32)
    for k in range(K):
        for s in range(B):
            acc[:] = 0.0
            for t in range(steps[k, s]):
                a, y, d = logits[k, s, t], x[k, s, t + 1], dlog[k, s, t]
                for j in range(acc.shape[0]):  # float32 only: 8 lanes wide
                    e = _exp(-abs(a[j]))  # stable: log(1 + exp(-|a|)) never overflows
                    term[j] = max(a[j], zero) - a[j] * y[j] + _log1p01(e)
                    d[j] = (ONE if a[j] >= zero else e) / (ONE + e) - y[j]
                for j in range(acc.shape[0]):  # apart: float64 would make the loop above 4 lanes wide
                    acc[j] += term[j]
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
        peep = _np(extra) if kind == "lstm" else np.empty((0, 0, 0), np.float32)
        bhn = _np(extra) if kind == "gru_cudnn" else np.empty((0, 0), np.float32)
        blas = use_blas(B, Un.shape[1])
        logits = np.zeros((K, B, T, Vn.shape[2]), np.float32)  # stays 0 after each sequence's end
        _forward(KINDS.index(kind), blas, xp, Un, peep, bhn, hs, *saved, Vn, _np(c), logits, steps)
        ctx.kind, ctx.blas, ctx.arrays, ctx.dlog = kind, blas, (xn, Un, Vn, peep, bhn, hs, saved, steps), None
        if not nll:
            return torch.from_numpy(logits)
        sums = np.zeros((K, B), np.float64)
        dlog = np.empty_like(logits)
        _nll(logits, xn, steps, sums, dlog)
        ctx.dlog = dlog
        return torch.from_numpy(sums)

    @staticmethod
    def backward(ctx, dout):
        xn, Un, Vn, peep, bhn, hs, saved, steps = ctx.arrays
        del ctx.arrays
        if ctx.dlog is None:
            dlogits = _np(dout)
        else:  # dout (K, B): each sequence's weight in the loss (e.g. 1 / frames); inf/NaN pass on
            with np.errstate(invalid="ignore", over="ignore"):
                dlogits = ctx.dlog * dout.numpy().astype(np.float32)[:, :, None, None]
        dV, dc, dhs = np.zeros_like(Vn), np.zeros((Vn.shape[0], Vn.shape[2]), np.float32), np.empty_like(hs)
        dxp = np.empty((*hs.shape[:3], Un.shape[2]), np.float32)
        dU, dpeep, dbhn = np.zeros_like(Un), np.zeros_like(peep), np.zeros_like(bhn)
        kind = KINDS.index(ctx.kind)
        _backward(kind, ctx.blas, dlogits, Un, Vn, peep, hs, *saved, dhs, dxp, dU, dV, dc, dpeep, dbhn, steps)
        dW = np.zeros((Un.shape[0], xn.shape[3], Un.shape[2]), np.float32)
        db = np.zeros((Un.shape[0], Un.shape[2]), np.float32)
        _project_grad(xn, dxp, dW, db, steps)
        grads = [torch.from_numpy(a) for a in (dW, db, dU, dV, dc)]
        dextra = {"lstm": dpeep, "gru_cudnn": dbhn}.get(ctx.kind)
        return None, None, *grads, None if dextra is None else torch.from_numpy(dextra), None, None


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
