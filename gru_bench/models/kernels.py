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
the products hold their output rows in registers as explicit 16-float vectors (simd.py) over all the
rows of the matrix (_vec_mat; two output rows at a time where they do not depend on each other, _mat_mat:
the readout, its gradient and the outer products), the forward adds h U into the projected inputs in
place, the backward's outer products are summed after each sequence's recurrence (_outer_acc_steps), the
gate formulas and the loss's float32 part run on the same 16-float vectors, and the input projection
visits a branch-free list of the notes on (_nonzero). The matrices the products stream (U, V and their
transposes) are copied once per call with zero columns up to whole vectors, from a 64-byte boundary
of the caller's scratch (_take, _padded, _transposed): every row is then read in whole, unsplit vector
loads, ~10% faster than masked loads that straddle cache lines. The per-step loops run without numba's
reference counting (_raw).

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
    from numba import config as numba_config
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic

    from gru_bench.models import simd
    from gru_bench.models.simd import LANES
    from gru_bench.models.simd import get as _get
    from gru_bench.models.simd import load_part as _load
    from gru_bench.models.simd import put as _put
    from gru_bench.models.simd import store_part as _store
except ImportError:  # pragma: no cover - the pure-torch path takes over
    njit = None

# error_model="numpy": x / 0 is IEEE inf/NaN, not a Python exception, whose check per division keeps LLVM
# from vectorising the gate loops
_OPTIONS = {"cache": True, "fastmath": False, "nogil": True, "error_model": "numpy"}
_jit = njit(**_OPTIONS) if njit is not None else (lambda f: f)
# Without numba's reference counting (NRT): each view an NRT function makes (a row, a slice) costs an
# atomic increment and decrement, two calls, and a recurrence makes ~10 per step: a tenth of a batch-1
# update. So the per-step loops (one sequence's recurrence, `*_seq`) and the products run without it;
# they may not allocate, nor may anything they call (numba compiles the callees the same way), nor return a
# view they made (unless inlined). No kernel allocates: each takes its scratch from a `work` array the
# caller hands in, so FastUpdate's driver runs without NRT too.
_raw = njit(_nrt=False, **_OPTIONS) if njit is not None else (lambda f: f)
ONE = np.float32(1.0)
TWO = np.float32(2.0)
F32 = np.float32
# the modules whose compiled functions call each other (fastpath's update runs these kernels and optim's
# passes)
COMPILED = ("kernels.py", "fastpath.py", "optim.py", "simd.py")


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


@_jit
def _exp(a):
    """expf from +, *, floor and a bit cast (Cephes' polynomial, ~1 ulp on [-87, 88], clamped outside, NaN
    kept), of a float32 or of each lane of a vector. libm's expf is an opaque call that stops LLVM from
    vectorising every gate loop; this is not."""
    a = simd.where(a < F32(-87.0), F32(-87.0), simd.where(a > F32(88.0), F32(88.0), a))
    n = simd.floor(a * F32(1.44269504) + F32(0.5))
    r = a - n * F32(0.693359375) - n * F32(-2.12194440e-4)
    p = F32(1.9875691500e-4) * r + F32(1.3981999507e-3)
    p = (((p * r + F32(8.3334519073e-3)) * r + F32(4.1665795894e-2)) * r + F32(1.6666665459e-1)) * r
    p = (p + F32(5.0000001201e-1)) * (r * r) + r + ONE
    n = simd.where(n == n, n, F32(0.0))  # NaN: the int conversion in pow2 would be undefined
    return p * simd.pow2(n)


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
def _project(x, W, b, xp, steps, on):
    """xp = x @ W + b per (k, sequence, step), skipping zero inputs (on: int64 scratch of x's width)."""
    K, B = steps.shape
    for k in range(K):
        for s in range(B):
            _project_seq(x[k, s], W[k], b[k], xp[k, s], steps[k, s], on)


@_raw
def _project_seq(x, W, b, xp, m, on):
    for t in range(m):
        out = xp[t]
        for j in range(out.shape[0]):  # not out[:] = b: without NRT an array copy cannot allocate a temporary
            out[j] = b[j]
        n_on = _nonzero(x[t], on)
        q = 0
        while q + 4 <= n_on:  # four rows per pass over out, each element's sum in the same order
            i0, i1, i2, i3 = on[q], on[q + 1], on[q + 2], on[q + 3]
            v0, v1, v2, v3 = x[t, i0], x[t, i1], x[t, i2], x[t, i3]
            w0, w1, w2, w3 = W[i0], W[i1], W[i2], W[i3]
            for j in range(out.shape[0]):
                out[j] = (((out[j] + v0 * w0[j]) + v1 * w1[j]) + v2 * w2[j]) + v3 * w3[j]
            q += 4
        for i in on[q:n_on]:
            v, w = x[t, i], W[i]
            for j in range(out.shape[0]):
                out[j] += v * w[j]


@_jit
def _project_grad(x, dxp, dW, db, steps, on):
    K, B = steps.shape
    for k in range(K):
        for s in range(B):
            _project_grad_seq(x[k, s], dxp[k, s], dW[k], db[k], steps[k, s], on)


@_raw
def _project_grad_seq(x, dxp, dW, db, m, on):
    for t in range(m):
        g = dxp[t]
        for j in range(g.shape[0]):
            db[j] += g[j]
        for q in range(_nonzero(x[t], on)):
            v, dw = x[t, on[q]], dW[on[q]]
            for j in range(g.shape[0]):
                dw[j] += v * g[j]


# --- products, register-blocked (simd.py says why): every output element adds its terms one at a time, in
# row order, each product rounded before its sum, so each is the plain loop's sum bit for bit. An output
# row goes in pieces of up to _PIECE 16-float vectors, two rows at once in pieces of up to _PIECE // 2,
# that stay in registers over all the rows of the matrix (the pieces change which columns run together,
# never a sum).


def _piece_size() -> int:
    """Vectors of one output row held at once: 6 where numba compiles for this CPU and it has AVX-512 (32
    registers, one vector each), else 4. Six are twelve of AVX2's 16 registers and spill: on an AMD EPYC
    (AVX2) 4 took forward + backward 0.89-0.97x the time of 6 at 250 steps and 0.93-1.00x at 60 (GRU,
    LSTM, tanh-RNN and cuDNN GRU at their paper sizes); on the AVX-512 Xeon 6 is the fastest."""
    if njit is None or numba_config.CPU_NAME is not None:  # a set NUMBA_CPU_NAME: maybe not this CPU's ISA
        return 4
    return 6 if binding.get_host_cpu_features().get("avx512f", False) else 4


_PIECE = _piece_size()  # two rows at once: _PIECE // 2 each
# the transposes' small tiles: 16 x 16 with AVX-512, 8 x 8 on AVX2, where a 16-float vector takes two of its
# 16 registers and a 16 x 16 tile spills (8 x 8: 0.85x the time of a padded 46 x 138 transpose on an AMD
# EPYC); see _transpose_sum
_TILE = LANES if _PIECE == 6 else 8
_WIDE = 256  # from this many rows of a, 16 x 16 tiles everywhere


@_jit
def _pieces(n, most):
    """(pieces, vectors) of an n-float row cut into pieces of at most `most` vectors, as even as they go
    (9 vectors as 5 + 4, not 6 + 3)."""
    nvec = (n + LANES - 1) // LANES
    return (nvec + most - 1) // most, nvec


@_jit
def _piece(n, j, q, pieces, nvec):
    """Piece q of _pieces, starting at column j: its vectors, and the lanes of its last one."""
    nv = nvec * (q + 1) // pieces - nvec * q // pieces
    return nv, min(LANES, n - j - LANES * (nv - 1))


@_raw
def _vec_mat(v, M, out):
    """out += v @ M[:, : len(out)] (M's rows contiguous)."""
    n = out.shape[0]
    pieces, nvec = _pieces(n, _PIECE)
    j = 0
    for q in range(pieces):
        nv, last = _piece(n, j, q, pieces, nvec)
        if nv == 1:  # nv as a constant: each block compiles to straight-line code
            _block(v, v, M, out, out, j, 1, last, False)
        elif nv == 2:
            _block(v, v, M, out, out, j, 2, last, False)
        elif nv == 3:
            _block(v, v, M, out, out, j, 3, last, False)
        elif nv == 4:
            _block(v, v, M, out, out, j, 4, last, False)
        elif nv == 5:
            _block(v, v, M, out, out, j, 5, last, False)
        else:
            _block(v, v, M, out, out, j, 6, last, False)
        j += LANES * nv


@_raw
def _mat_mat(A, M, out):
    """out[r] += A[r] @ M[:, : out.shape[1]] for every row r (M's rows contiguous): two rows at a time share
    each load of M and run twice the independent sums."""
    n = out.shape[1]
    pieces, nvec = _pieces(n, _PIECE // 2)
    r = 0
    while r + 2 <= A.shape[0]:
        v, w, o, p_ = A[r], A[r + 1], out[r], out[r + 1]
        j = 0
        for q in range(pieces):
            nv, last = _piece(n, j, q, pieces, nvec)
            if nv == 1:
                _block(v, w, M, o, p_, j, 1, last, True)
            elif nv == 2:
                _block(v, w, M, o, p_, j, 2, last, True)
            else:
                _block(v, w, M, o, p_, j, 3, last, True)
            j += LANES * nv
        r += 2
    if r < A.shape[0]:
        _vec_mat(A[r], M, out[r])


@njit(inline="always", **_OPTIONS)
def _block(v, w, M, o, p, j, nv, last, two):
    """o[j : e] += v @ M[:, j : e] (and p[j : e] += w @ M[:, j : e] if two), e = j + 16 (nv - 1) + last:
    nv vectors a row in registers (nv <= 6, or 3 if two), the last `last` lanes wide (masked where < 16)."""
    q = j + LANES * (nv - 1)  # the last vector's column
    full = last == LANES
    # M's rows are read a whole vector wide where they reach that far (a masked load costs an extra
    # instruction per row): lanes past `last` then sum columns that are never stored
    wide = q + LANES <= M.shape[1]
    a0 = simd.load(o, j)
    a1 = simd.load(o, j + 16) if nv > 2 else a0
    a2 = simd.load(o, j + 32) if nv > 3 else a0
    a3 = simd.load(o, j + 48) if nv > 4 else a0
    a4 = simd.load(o, j + 64) if nv > 5 else a0
    aq = _load(o, q, full, last)
    b0 = simd.load(p, j) if two and nv > 1 else a0
    b1 = simd.load(p, j + 16) if two and nv > 2 else a0
    bq = _load(p, q, full, last) if two else a0
    for i in range(v.shape[0]):
        r, s, t = M[i], simd.splat(v[i]), simd.splat(w[i])
        mq = _load(r, q, full or wide, last)
        if nv > 1:
            m0 = simd.load(r, j)
            a0 = simd.muladd(a0, s, m0)
            if two:
                b0 = simd.muladd(b0, t, m0)
        if nv > 2:
            m1 = simd.load(r, j + 16)
            a1 = simd.muladd(a1, s, m1)
            if two:
                b1 = simd.muladd(b1, t, m1)
        if nv > 3:
            a2 = simd.muladd(a2, s, simd.load(r, j + 32))
        if nv > 4:
            a3 = simd.muladd(a3, s, simd.load(r, j + 48))
        if nv > 5:
            a4 = simd.muladd(a4, s, simd.load(r, j + 64))
        aq = simd.muladd(aq, s, mq)
        if two:
            bq = simd.muladd(bq, t, mq)
    if nv > 1:
        simd.store(o, j, a0)
    if nv > 2:
        simd.store(o, j + 16, a1)
    if nv > 3:
        simd.store(o, j + 32, a2)
    if nv > 4:
        simd.store(o, j + 48, a3)
    if nv > 5:
        simd.store(o, j + 64, a4)
    _store(o, q, aq, full, last)
    if two:
        if nv > 1:
            simd.store(p, j, b0)
        if nv > 2:
            simd.store(p, j + 16, b1)
        _store(p, q, bq, full, last)


@_jit
def _lanes(n):
    """n rounded up to whole 16-float vectors: the width of the backward's private dh buffers and
    transposed weights, whose products then end on a full vector instead of a masked one (the same number
    of vectors; 46 units as 48: ~15% faster)."""
    return -(-n // LANES) * LANES


# --- scratch: the kernels take what they need (padded and transposed weights, per-step buffers) from a
# float32 array the caller owns, `work` (work_floats says how large), each kernel from its start; so an
# update allocates nothing (FastUpdate keeps one per thread) and its driver runs without NRT: a 1-step
# update of GRU 46 took 0.75x the time (malloc, zeroing and ~200 reference-count updates gone), a JSB
# epoch's updates 0.90x.


def work_floats(gates: int, hidden: int, n_out: int, batch: int, steps: int) -> int:
    """Floats of `work` enough for any kernel on these sizes (gates: G*H; n_out: the readout's width)."""
    lh, lg, lo = (-(-n // LANES) * LANES for n in (hidden, gates, n_out))
    weights = hidden * (lg + LANES + lh + lo) + (gates + n_out) * lh  # padded U and V, U.T and V.T
    return weights + batch * steps * gates + 8 * batch * max(lg, lh) + 32 * LANES


@njit(inline="always", **_OPTIONS)
def _take(work, off, rows, width):
    """A (rows, width) view of `work` from element off on, moved up to a 64-byte boundary (with a width of
    whole vectors no row's vector load then straddles two cache lines), and the offset after it."""
    start = off + (-(np.int64(work.ctypes.data) // 4 + off)) % LANES
    return work[start : start + rows * width].reshape((rows, width)), start + rows * width


@njit(inline="always", **_OPTIONS)
def _zeros(work, off, n):
    """n zeros from `work` (`_take`), and the offset after them."""
    v, off = _take(work, off, 1, n)
    v[0, :] = 0
    return v[0], off


@_jit
def _padded(M, c0, c1, out):
    """out = columns c0:c1 of the C-ordered matrix M, zero columns appended up to out's width (>= c1 - c0):
    _block reads its rows a whole vector wide. Row by row over unit-stride slices, 16 floats at a time, the
    ragged end's load giving the first zeros: numba's 2-D slice assignment into a zero matrix took over
    twice as long (46 x 92 floats: 4.1 against 1.8 us a call from Python), an element loop 1.1-1.3x as
    long as this (U and V of GRU 46)."""
    n, width = c1 - c0, out.shape[1]
    for i in range(M.shape[0]):
        r, o = M[i, c0:c1], out[i]
        for j in range(0, n, LANES):
            _put(o, j, _get(r, j, n - j), width - j)
        for j in range(-(-n // LANES) * LANES, width):
            o[j] = 0


@_jit
def _transposed(M, out):
    """out = M transposed, zero columns appended up to out's width (zero rows below): the backward's
    g @ M.T as _vec_mat(g, out, ...). Only what _transpose_sum leaves is zeroed: a tile with room in out's
    rows stores whole vectors, its rows past M's as zeros, so for 46 units (48 wide) nothing is (zeroing
    all of out first: ~1 us of a 1-step GRU 46 update)."""
    _transpose_sum(M, None, F32(0.0), out)
    m, n = M.shape
    tile = LANES if _TILE == LANES or m >= _WIDE else _TILE
    covered = -(-m // tile) * tile  # the last tile's end, where its row has room
    start = covered if covered <= out.shape[1] else m
    for i in range(out.shape[0]):
        row = out[i]
        for j in range(start if i < n else 0, row.shape[0]):
            row[j] = 0


@_raw
def _transpose_sum(a, z, s, out):
    """out[: n, : m] = (a + z * s).T for a (m, n), a.T itself where s == 0 or z is None, one tile at a time
    transposed in registers (simd.transpose16: ~6x faster than a loop that writes every element a row apart
    on the AVX-512 Xeon; each element is the same a + z * s). Where out is wider than m, its columns from m
    to the end of the last tile may be zeroed. Tiles of _TILE, but 16 x 16 from _WIDE rows on: an 8 x 8
    tile writes half of a 64-byte line of each output row, and where those rows are long the line has left
    the cache before its other half comes (AMD EPYC, 512 x 1536: 1.7x the time of 16 x 16; 46 x 138:
    0.75x)."""
    m, n = a.shape
    if _TILE == LANES or m >= _WIDE:
        for i in range(0, m, LANES):
            for j in range(0, n, LANES):
                simd.transpose16(a, z, s, out, i, j)
    else:
        for i in range(0, m, 8):
            for j in range(0, n, 8):
                simd.transpose8(a, z, s, out, i, j)


_STEPS = 64  # steps per chunk of _outer_acc_steps: 64 rows of 96 floats, 24 KiB (32: ~4% slower, 128: ~5%)


@_raw
def _outer_acc_steps(vs, gs, c0, c1, dM, rev):
    """dM[:, : c1 - c0] += outer(vs[t], gs[t, c0:c1]) for every row t, in order (last to first if rev).

    Each element gets the additions of dM += outer(vs[t], gs[t, c0:c1]) one row t at a time, in the same
    order, so the sum is bit for bit the same. Row i of dM is the product vs[:, i] @ gs[:, c0:c1], so this
    is _mat_mat of vs.T, in chunks of steps whose rows of gs stay in the L1 cache while every row of dM
    passes over them. So the backward kernels keep each step's gradients and accumulate dU (and the
    readout dV) after a sequence's recurrence. gs goes in to the end of its rows, so that _block reads them
    a whole vector wide where they reach that far."""
    n, out = vs.shape[0], dM[:, : c1 - c0]
    for t0 in range(0, n, _STEPS):
        if rev:  # steps n - 1 - t0 down to n - t0 - _STEPS
            lo, hi = max(n - t0 - _STEPS, 0), n - t0
            _mat_mat(vs[lo:hi][::-1].T, gs[lo:hi, c0:][::-1], out)
        else:
            lo, hi = t0, min(t0 + _STEPS, n)
            _mat_mat(vs[lo:hi].T, gs[lo:hi, c0:], out)


@_jit
def _seq_dU(hs, gs, c0, c1, dU, n):
    """dU[:, : c1 - c0] += outer(h_{t-1}, gs[t, c0:c1]) for t = n - 1 down to 1: a sequence's
    recurrent-weight gradient, in the order of its backward pass. Step 0's term, outer(h_{-1} = 0, ...), is
    left out: its products are +-0, and a sum that starts at +0 is never -0, so adding them changes no bit
    (where gs[0] is finite; where it is not, the bias gradient and so the update's gradient norm are not
    either). It cost ~0.75 us a sequence (GRU 46)."""
    if n > 1:
        _outer_acc_steps(hs[: n - 1], gs[1:n], c0, c1, dU, True)


# --- the gate arithmetic of one step and sequence, shared by the element and the BLAS kernels ----------
#
# Each takes 1-D rows of C arrays (one step of one sequence: a = its pre-activations, hp/cp = the previous
# state, g = the pre-activations' gradients) and runs over the H units 16 at a time (simd vectors; _get and
# _put mask only a ragged last piece: 46 units are 16 + 16 + 14, not a scalar tail). The formulas are those of
# one unit, lane by lane. The kernels below differ only in how they form the products with U: element
# loops or sgemm.


@_jit
def _tanh_step(a, h):
    for j in range(0, h.shape[0], LANES):
        m = h.shape[0] - j
        _put(h, j, _tanh(_get(a, j, m)), m)


@_jit
def _tanh_step_bwd(dhs, dh, h, g):
    """g = (dhs + dh) tanh'(a); dh: dL/dh from the step after (through U)."""
    for j in range(0, h.shape[0], LANES):
        m = h.shape[0] - j
        hj = _get(h, j, m)
        _put(g, j, (_get(dhs, j, m) + _get(dh, j, m)) * (ONE - hj * hj), m)


@_jit
def _gru_rz(a, hp, r, z, rh):
    """The reset and update gates from a[: 2H]; rh = r * hp, the input of U_n."""
    H = hp.shape[0]
    for j in range(0, H, LANES):
        m = H - j
        rj = _sig(_get(a, j, m))
        _put(r, j, rj, m)
        _put(z, j, _sig(_get(a, H + j, m)), m)
        _put(rh, j, rj * _get(hp, j, m), m)


@_jit
def _gru_new(an, hp, z, n, h):
    """n = tanh(an) (an = xp_n + (r h) U_n); h = (1 - z) hp + z n."""
    for j in range(0, hp.shape[0], LANES):
        m = hp.shape[0] - j
        nj, zj = _tanh(_get(an, j, m)), _get(z, j, m)
        _put(n, j, nj, m)
        _put(h, j, (ONE - zj) * _get(hp, j, m) + zj * nj, m)


@_jit
def _gru_new_bwd(dhs, dh, hp, z, n, g):
    """g[H:] (z and n blocks) from d = dhs + dh; dh becomes d (1 - z), the direct part of dL/dhp."""
    H = hp.shape[0]
    for j in range(0, H, LANES):
        m = H - j
        d = _get(dhs, j, m) + _get(dh, j, m)
        zj, nj = _get(z, j, m), _get(n, j, m)
        _put(g, 2 * H + j, d * zj * (ONE - nj * nj), m)
        _put(g, H + j, d * (nj - _get(hp, j, m)) * zj * (ONE - zj), m)
        _put(dh, j, d * (ONE - zj), m)


@_jit
def _gru_rz_bwd(drh, hp, r, g, dh):
    """g[: H] (reset block) from drh = dL/d(r hp); dh += the part of dL/dhp through r hp."""
    for j in range(0, hp.shape[0], LANES):
        m = hp.shape[0] - j
        rj, drj = _get(r, j, m), _get(drh, j, m)
        _put(g, j, drj * _get(hp, j, m) * rj * (ONE - rj), m)
        _put(dh, j, _get(dh, j, m) + drj * rj, m)


@_jit
def _gru_cudnn_step(a, hu, bhn, hp, r, z, n, hn, h):
    """The torch/cuDNN GRU step from a = xp and hu = hp U; hn = hp U_n + b_hn is kept for the backward."""
    H = hp.shape[0]
    for j in range(0, H, LANES):
        m = H - j
        rj = _sig(_get(a, j, m) + _get(hu, j, m))
        zj = _sig(_get(a, H + j, m) + _get(hu, H + j, m))
        hnj = _get(hu, 2 * H + j, m) + _get(bhn, j, m)
        nj = _tanh(_get(a, 2 * H + j, m) + rj * hnj)
        _put(r, j, rj, m)
        _put(z, j, zj, m)
        _put(n, j, nj, m)
        _put(hn, j, hnj, m)
        _put(h, j, (ONE - zj) * nj + zj * _get(hp, j, m), m)


@_jit
def _gru_cudnn_step_bwd(dhs, dh, hp, r, z, n, hn, g, gh, dbhn):
    """g: gradients of the xp blocks; gh: of hp U (its n block is r times g's); dbhn += that n block; dh
    becomes the direct part d z of dL/dhp."""
    H = hp.shape[0]
    for j in range(0, H, LANES):
        m = H - j
        d = _get(dhs, j, m) + _get(dh, j, m)
        rj, zj, nj = _get(r, j, m), _get(z, j, m), _get(n, j, m)
        dan = d * (ONE - zj) * (ONE - nj * nj)
        gr = dan * _get(hn, j, m) * rj * (ONE - rj)
        gz = d * (_get(hp, j, m) - nj) * zj * (ONE - zj)
        for out in (g, gh):
            _put(out, j, gr, m)
            _put(out, H + j, gz, m)
        _put(g, 2 * H + j, dan, m)
        _put(gh, 2 * H + j, dan * rj, m)
        _put(dbhn, j, _get(dbhn, j, m) + dan * rj, m)
        _put(dh, j, d * zj, m)


@_jit
def _lstm_step(a, p, cp, gt, c, tc, h):
    """Gates i, f, g, o (into gt) from a = xp + hp U and the peepholes p (3, H); the cell c, tanh(c), h."""
    H = h.shape[0]
    for j in range(0, H, LANES):
        m = H - j
        cpj = _get(cp, j, m)
        i_ = _sig(_get(a, j, m) + _get(p[0], j, m) * cpj)
        f_ = _sig(_get(a, H + j, m) + _get(p[1], j, m) * cpj)
        g_ = _tanh(_get(a, 2 * H + j, m))
        c_ = f_ * cpj + i_ * g_
        o_ = _sig(_get(a, 3 * H + j, m) + _get(p[2], j, m) * c_)
        tc_ = _tanh(c_)
        _put(gt, j, i_, m)
        _put(gt, H + j, f_, m)
        _put(gt, 2 * H + j, g_, m)
        _put(gt, 3 * H + j, o_, m)
        _put(c, j, c_, m)
        _put(tc, j, tc_, m)
        _put(h, j, o_ * tc_, m)


@_jit
def _lstm_step_bwd(dhs, dh, dc, p, cp, gt, tc, c, g, dpeep):
    """g: the four gates' pre-activation gradients from d = dhs + dh and dc (the cell gradient from the
    step after, replaced by this step's); dpeep (3, H) += the peepholes' gradients."""
    H = c.shape[0]
    for j in range(0, H, LANES):
        m = H - j
        d = _get(dhs, j, m) + _get(dh, j, m)
        i_, f_, g_, o_ = _get(gt, j, m), _get(gt, H + j, m), _get(gt, 2 * H + j, m), _get(gt, 3 * H + j, m)
        tc_, cpj = _get(tc, j, m), _get(cp, j, m)
        dao = d * tc_ * o_ * (ONE - o_)
        dcj = _get(dc, j, m) + d * o_ * (ONE - tc_ * tc_) + dao * _get(p[2], j, m)
        dai = dcj * g_ * i_ * (ONE - i_)
        daf = dcj * cpj * f_ * (ONE - f_)
        _put(g, j, dai, m)
        _put(g, H + j, daf, m)
        _put(g, 2 * H + j, dcj * i_ * (ONE - g_ * g_), m)
        _put(g, 3 * H + j, dao, m)
        _put(dpeep[0], j, _get(dpeep[0], j, m) + dai * cpj, m)
        _put(dpeep[1], j, _get(dpeep[1], j, m) + daf * cpj, m)
        _put(dpeep[2], j, _get(dpeep[2], j, m) + dao * _get(c, j, m), m)
        _put(dc, j, dcj * f_ + dai * _get(p[0], j, m) + daf * _get(p[1], j, m), m)


# --- tanh-RNN: h' = tanh(xp + h U) ------------------------------------------------------------------


@_jit
def _tanh_fwd(xp, U, hs, steps, work):
    K, B, T, H = hs.shape
    zero, o = _zeros(work, 0, H)
    Uk = _take(work, o, H, _lanes(H))[0]
    for k in range(K):
        _padded(U[k], 0, H, Uk)
        for s in range(B):
            _tanh_fwd_seq(xp[k, s], Uk, hs[k, s], steps[k, s], zero)


@_raw
def _tanh_fwd_seq(xp, U, hs, m, zero):
    for t in range(m):
        hp = hs[t - 1] if t > 0 else zero
        _vec_mat(hp, U, xp[t])
        _tanh_step(xp[t], hs[t])


@_jit
def _tanh_bwd(dhs, U, hs, dxp, dU, steps, work):
    K, B, T, H = hs.shape
    dh, o = _zeros(work, 0, _lanes(H))
    UT = _take(work, o, H, _lanes(H))[0]
    for k in range(K):
        _transposed(U[k], UT)
        for s in range(B):
            _tanh_bwd_seq(dhs[k, s], UT, hs[k, s], dxp[k, s], steps[k, s], dh)
            _seq_dU(hs[k, s], dxp[k, s], 0, H, dU[k], steps[k, s])


@_raw
def _tanh_bwd_seq(dhs, UT, hs, dxp, m, dh):
    dh[:] = 0
    for t in range(m - 1, -1, -1):
        g = dxp[t]
        _tanh_step_bwd(dhs[t], dh, hs[t], g)
        dh[:] = 0
        _vec_mat(g, UT, dh)


# --- paper GRU: r, z = sig(xp_rz + h U_rz); n = tanh(xp_n + (r h) U_n); h' = (1 - z) h + z n ---------


@_jit
def _gru_fwd(xp, U, hs, r, z, n, steps, work):
    K, B, T, H = hs.shape
    zero, o = _zeros(work, 0, H)
    rh, o = _zeros(work, o, H)
    Urz, o = _take(work, o, H, _lanes(2 * H))
    Un = _take(work, o, H, _lanes(H))[0]
    for k in range(K):
        _padded(U[k], 0, 2 * H, Urz)
        _padded(U[k], 2 * H, 3 * H, Un)
        for s in range(B):
            _gru_fwd_seq(xp[k, s], Urz, Un, hs[k, s], r[k, s], z[k, s], n[k, s], steps[k, s], zero, rh)


@_raw
def _gru_fwd_seq(xp, Urz, Un, hs, r, z, n, m, zero, rh):
    H = hs.shape[1]
    for t in range(m):
        hp, a = hs[t - 1] if t > 0 else zero, xp[t]
        _vec_mat(hp, Urz, a[: 2 * H])
        _gru_rz(a, hp, r[t], z[t], rh)
        _vec_mat(rh, Un, a[2 * H :])
        _gru_new(a[2 * H :], hp, z[t], n[t], hs[t])


@_jit
def _gru_bwd(dhs, U, hs, r, z, n, dxp, dU, steps, work):
    K, B, T, H = hs.shape
    zero, o = _zeros(work, 0, H)
    dh, o = _zeros(work, o, _lanes(H))
    drh, o = _zeros(work, o, _lanes(H))
    rh, o = _take(work, o, T, H)  # r * hp per step: U_n's input (each row written before it is read)
    UT = _take(work, o, 3 * H, _lanes(H))[0]
    for k in range(K):
        _transposed(U[k], UT)
        for s in range(B):
            m = steps[k, s]
            _gru_bwd_seq(dhs[k, s], UT, hs[k, s], r[k, s], z[k, s], n[k, s], dxp[k, s], m, zero, dh, drh, rh)
            # U_n's part; step 0's input r * h_{-1} is zero (see _seq_dU)
            _outer_acc_steps(rh[1:m], dxp[k, s, 1:], 2 * H, 3 * H, dU[k, :, 2 * H :], True)
            _seq_dU(hs[k, s], dxp[k, s], 0, 2 * H, dU[k], m)


@_raw
def _gru_bwd_seq(dhs, UT, hs, r, z, n, dxp, m, zero, dh, drh, rh):
    H = hs.shape[1]
    dh[:] = 0
    for t in range(m - 1, -1, -1):
        hp = hs[t - 1] if t > 0 else zero
        g = dxp[t]
        _gru_new_bwd(dhs[t], dh, hp, z[t], n[t], g)
        for j in range(H):
            rh[t, j] = r[t, j] * hp[j]
        drh[:] = 0
        _vec_mat(g[2 * H :], UT[2 * H :], drh)
        _gru_rz_bwd(drh, hp, r[t], g, dh)
        _vec_mat(g[: 2 * H], UT[: 2 * H], dh)


# --- torch/cuDNN GRU: n = tanh(xp_n + r (h U_n + b_hn)); h' = (1 - z) n + z h ---------------------------


@_jit
def _gru_cudnn_fwd(xp, U, bhn, hs, r, z, n, hn, steps, work):
    K, B, T, H = hs.shape
    zero, o = _zeros(work, 0, H)
    hu, o = _zeros(work, o, 3 * H)
    Uk = _take(work, o, H, _lanes(3 * H))[0]
    for k in range(K):
        _padded(U[k], 0, 3 * H, Uk)
        for s in range(B):
            _gru_cudnn_fwd_seq(
                xp[k, s], Uk, bhn[k], hs[k, s], r[k, s], z[k, s], n[k, s], hn[k, s], steps[k, s], zero, hu
            )


@_raw
def _gru_cudnn_fwd_seq(xp, U, bhn, hs, r, z, n, hn, m, zero, hu):
    for t in range(m):
        hp = hs[t - 1] if t > 0 else zero
        hu[:] = 0
        _vec_mat(hp, U, hu)
        _gru_cudnn_step(xp[t], hu, bhn, hp, r[t], z[t], n[t], hn[t], hs[t])


@_jit
def _gru_cudnn_bwd(dhs, U, hs, r, z, n, hn, dxp, dU, dbhn, steps, work):
    K, B, T, H = hs.shape
    zero, o = _zeros(work, 0, H)
    dh, o = _zeros(work, o, _lanes(H))
    gh, o = _take(work, o, T, 3 * H)  # per step: the gradient of hp U (written before it is read)
    UT = _take(work, o, 3 * H, _lanes(H))[0]
    for k in range(K):
        _transposed(U[k], UT)
        for s in range(B):
            _gru_cudnn_bwd_seq(dhs[k, s], UT, hs[k, s], r[k, s], z[k, s], n[k, s], hn[k, s], dxp[k, s],
                dbhn[k], steps[k, s], zero, dh, gh)  # fmt: skip
            _seq_dU(hs[k, s], gh, 0, 3 * H, dU[k], steps[k, s])


@_raw
def _gru_cudnn_bwd_seq(dhs, UT, hs, r, z, n, hn, dxp, dbhn, m, zero, dh, gh):
    dh[:] = 0
    for t in range(m - 1, -1, -1):
        hp = hs[t - 1] if t > 0 else zero
        _gru_cudnn_step_bwd(dhs[t], dh, hp, r[t], z[t], n[t], hn[t], dxp[t], gh[t], dbhn)
        _vec_mat(gh[t], UT, dh)


# --- LSTM with peepholes (Graves 2013), gates i, f, g, o; o peeks at the new cell --------------------


@_jit
def _lstm_fwd(xp, U, peep, hs, cs, gates, tc, steps, work):
    K, B, T, H = hs.shape
    zero, o = _zeros(work, 0, H)
    Uk = _take(work, o, H, _lanes(4 * H))[0]
    for k in range(K):
        _padded(U[k], 0, 4 * H, Uk)
        for s in range(B):
            _lstm_fwd_seq(xp[k, s], Uk, peep[k], hs[k, s], cs[k, s], gates[k, s], tc[k, s], steps[k, s], zero)


@_raw
def _lstm_fwd_seq(xp, U, peep, hs, cs, gates, tc, m, zero):
    for t in range(m):
        hp = hs[t - 1] if t > 0 else zero
        cp = cs[t - 1] if t > 0 else zero
        _vec_mat(hp, U, xp[t])
        _lstm_step(xp[t], peep, cp, gates[t], cs[t], tc[t], hs[t])


@_jit
def _lstm_bwd(dhs, U, peep, hs, cs, gates, tc, dxp, dU, dpeep, steps, work):
    K, B, T, H = hs.shape
    zero, o = _zeros(work, 0, H)
    dh, o = _zeros(work, o, _lanes(H))
    dc, o = _zeros(work, o, H)
    UT = _take(work, o, 4 * H, _lanes(H))[0]
    for k in range(K):
        _transposed(U[k], UT)
        for s in range(B):
            _lstm_bwd_seq(dhs[k, s], UT, peep[k], cs[k, s], gates[k, s], tc[k, s], dxp[k, s], dpeep[k],
                steps[k, s], zero, dh, dc)  # fmt: skip
            _seq_dU(hs[k, s], dxp[k, s], 0, 4 * H, dU[k], steps[k, s])


@_raw
def _lstm_bwd_seq(dhs, UT, peep, cs, gates, tc, dxp, dpeep, m, zero, dh, dc):
    dh[:] = 0
    dc[:] = 0
    for t in range(m - 1, -1, -1):
        cp = cs[t - 1] if t > 0 else zero
        g = dxp[t]
        _lstm_step_bwd(dhs[t], dh, dc, peep, cp, gates[t], tc[t], cs[t], g, dpeep)
        dh[:] = 0
        _vec_mat(g, UT, dh)


# --- linear readout: logits = h @ V + c, summed over steps in sequence order -------------------------


@_jit
def _readout(hs, V, c, out, steps, work):
    K, B, T, _ = hs.shape
    Vk = _take(work, 0, V.shape[1], _lanes(V.shape[2]))[0]
    for k in range(K):
        _padded(V[k], 0, V.shape[2], Vk)
        for s in range(B):
            o = out[k, s, : steps[k, s]]
            for t in range(o.shape[0]):  # the bias in every row: ~3x faster than o[:] = c[k], a broadcast
                for j in range(o.shape[1]):
                    o[t, j] = c[k, j]
            _mat_mat(hs[k, s, : steps[k, s]], Vk, o)


@_jit
def _readout_grad(dout, hs, V, dhs, dV, dc, steps, work):
    """Sums over (sequence, step) run in a fixed order, so zero-gradient padding appended to a batch
    (longer T or more sequences) leaves every gradient bit-identical."""
    K, B, T, H = hs.shape
    VT = _take(work, 0, V.shape[2], _lanes(H))[0]
    for k in range(K):
        _transposed(V[k], VT)
        for s in range(B):
            n = steps[k, s]
            for t in range(n):
                g = dout[k, s, t]
                for j in range(g.shape[0]):
                    dc[k, j] += g[j]
            dhs[k, s, :n] = 0
            _mat_mat(dout[k, s, :n], VT, dhs[k, s, :n])
            _outer_acc_steps(hs[k, s, :n], dout[k, s], 0, dout.shape[3], dV[k], False)


# --- BLAS path: per-step (B, H) x (H, G*H) products, one product per sequence for dU and the readout -----
#
# The element loops above stream U through once per sequence and step; one (B, H) x (H, G*H) product per
# step shares it across the batch, with a BLAS's register blocking (use_blas says when). These
# kernels take the same buffers but hand every product to sgemm:
# forwards h @ U per step for all B rows, backwards g @ U.T per step, and per sequence over all its steps
# the readout, dV, dhs and dU (a sum over rows, so only steps within the sequence enter it). The gate
# arithmetic is the element kernels'. What stays exact, where MKL rounds a row the same for every M >= 8
# and wherever the data lie (in its strict reproducible mode, MKL_CBWR=AUTO,STRICT, which the CLI sets; see
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

    @intrinsic
    def _sgemm(typingctx, ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc):
        """Fortran sgemm(ta, tb, m, n, k, 1, a, lda, b, ldb, beta, c, ldc): the scalars it takes by reference
        on the stack (numpy arrays for them would need NRT), the matrices' data pointers."""

        def codegen(context, builder, sig, args):
            vp = ir.IntType(8).as_pointer()
            i8, i32 = ir.IntType(8), ir.IntType(32)

            def ref(v):
                return builder.bitcast(cgutils.alloca_once_value(builder, v), vp)

            def data(i):
                return builder.bitcast(context.make_array(sig.args[i])(context, builder, args[i]).data, vp)

            ints = {i: ref(builder.trunc(args[i], i32)) for i in (2, 3, 4, 6, 8, 11)}
            one = ref(ir.Constant(ir.FloatType(), 1.0))
            call = [ref(builder.trunc(args[i], i8)) for i in (0, 1)] + [ints[2], ints[3], ints[4], one]
            call += [data(5), ints[6], data(7), ints[8], ref(args[9]), data(10), ints[11]]
            fnty = ir.FunctionType(ir.VoidType(), [vp] * 13)
            builder.call(cgutils.get_or_insert_function(builder.module, fnty, "gru_bench_sgemm"), call)
            return context.get_dummy_value()

        sig = types.none(ta, tb, m, n, k, a, lda, b, ldb, types.float32, c, ldc)
        return sig, codegen


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
        for i in range(m):
            for j in range(n):
                c[i, j] *= beta
        return
    # 'T' / 'N'
    _sgemm(84 if tb else 78, 84 if ta else 78, n, m, kk, b, _ld(b), a, _ld(a), F32(beta), c, _ld(c))


@_jit
def _longest(steps):
    """max(steps) (numba's .max() allocates, which a function without NRT may not)."""
    m = 0
    for s in steps:
        m = max(m, s)
    return m


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
        for t in range(_longest(steps[k])):
            if t > 0:
                _gemm(hs[k, :, t - 1], U[k], xp[k, :, t], False, False, ONE)
            for s in range(B):  # rows of C arrays, not of the 2-D views above: those do not vectorise
                if t >= steps[k, s]:
                    hs[k, s, t] = 0
                    continue
                _tanh_step(xp[k, s, t], hs[k, s, t])


@_jit
def _tanh_bwd_blas(dhs, U, hs, dxp, dU, steps, work):
    K, B, T, H = hs.shape
    dh = _take(work, 0, B, H)[0]
    for k in range(K):
        dh[:] = 0
        for t in range(_longest(steps[k]) - 1, -1, -1):
            for s in range(B):
                if t >= steps[k, s]:
                    dxp[k, s, t] = 0
                    continue
                _tanh_step_bwd(dhs[k, s, t], dh[s], hs[k, s, t], dxp[k, s, t])
            if t > 0:
                _gemm(dxp[k, :, t], U[k], dh, False, True, F32(0.0))
        _acc_dU(hs[k], dxp[k], dU[k], steps[k])


@_jit
def _gru_fwd_blas(xp, U, hs, r, z, n, steps, work):
    K, B, T, H = hs.shape
    zero, o = _zeros(work, 0, H)
    rh = _take(work, o, B, H)[0]
    rh[:] = 0
    for k in range(K):
        for t in range(_longest(steps[k])):
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
def _gru_bwd_blas(dhs, U, hs, r, z, n, dxp, dU, steps, work):
    K, B, T, H = hs.shape
    zero, o = _zeros(work, 0, H)
    dh, o = _take(work, o, B, H)
    drh, o = _take(work, o, B, H)
    drh[:] = 0
    rh = _take(work, o, T, H)[0]  # rows 1..m-1 written before they are read
    for k in range(K):
        dh[:] = 0
        for t in range(_longest(steps[k]) - 1, -1, -1):
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
def _gru_cudnn_fwd_blas(xp, U, bhn, hs, r, z, n, hn, steps, work):
    K, B, T, H = hs.shape
    zero, o = _zeros(work, 0, H)
    hu = _take(work, o, B, 3 * H)[0]
    for k in range(K):
        hu[:] = 0
        for t in range(_longest(steps[k])):
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
def _gru_cudnn_bwd_blas(dhs, U, hs, r, z, n, hn, dxp, dU, dbhn, steps, work):
    K, B, T, H = hs.shape
    zero, o = _zeros(work, 0, H)
    dh, o = _take(work, o, B, H)
    gh = _take(work, o, B, T * 3 * H)[0].reshape((B, T, 3 * H))  # gradients of h U (the n block is r
    # times dxp's), written first
    for k in range(K):
        dh[:] = 0
        for t in range(_longest(steps[k]) - 1, -1, -1):
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
def _lstm_fwd_blas(xp, U, peep, hs, cs, gates, tc, steps, work):
    K, B, T, H = hs.shape
    zero = _zeros(work, 0, H)[0]
    for k in range(K):
        for t in range(_longest(steps[k])):
            if t > 0:
                _gemm(hs[k, :, t - 1], U[k], xp[k, :, t], False, False, ONE)
            for s in range(B):  # rows of C arrays, not of the 2-D views above: those do not vectorise
                if t >= steps[k, s]:
                    hs[k, s, t] = cs[k, s, t] = 0
                    continue
                cp = cs[k, s, t - 1] if t > 0 else zero
                _lstm_step(xp[k, s, t], peep[k], cp, gates[k, s, t], cs[k, s, t], tc[k, s, t], hs[k, s, t])


@_jit
def _lstm_bwd_blas(dhs, U, peep, hs, cs, gates, tc, dxp, dU, dpeep, steps, work):
    K, B, T, H = hs.shape
    zero, o = _zeros(work, 0, H)
    dh, o = _take(work, o, B, H)
    dc = _take(work, o, B, H)[0]
    for k in range(K):
        dh[:] = 0
        dc[:] = 0
        for t in range(_longest(steps[k]) - 1, -1, -1):
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
                for j in range(o.shape[1]):
                    o[t, j] = c[k, j]
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
def _forward(kind, blas, xp, U, peep, bhn, hs, s0, s1, s2, s3, V, c, logits, steps, work):
    """hs and the logits from the projected inputs xp: KINDS[kind]'s recurrence and the readout, on the
    BLAS path or the element one. s0..s3: what the backward needs (_buffers); peep: the LSTM's peepholes,
    bhn: the cuDNN GRU's b_hn (other kinds ignore them); work: scratch (work_floats)."""
    if kind == 0:
        if blas:
            _tanh_fwd_blas(xp, U, hs, steps)
        else:
            _tanh_fwd(xp, U, hs, steps, work)
    elif kind == 1:
        if blas:
            _gru_fwd_blas(xp, U, hs, s0, s1, s2, steps, work)
        else:
            _gru_fwd(xp, U, hs, s0, s1, s2, steps, work)
    elif kind == 2:
        if blas:
            _gru_cudnn_fwd_blas(xp, U, bhn, hs, s0, s1, s2, s3, steps, work)
        else:
            _gru_cudnn_fwd(xp, U, bhn, hs, s0, s1, s2, s3, steps, work)
    else:
        if blas:
            _lstm_fwd_blas(xp, U, peep, hs, s0, s1, s2, steps, work)
        else:
            _lstm_fwd(xp, U, peep, hs, s0, s1, s2, steps, work)
    if blas:
        _readout_blas(hs, V, c, logits, steps)
    else:
        _readout(hs, V, c, logits, steps, work)


@_jit
def _backward(
    kind, blas, dlog, U, V, peep, hs, s0, s1, s2, s3, dhs, dxp, dU, dV, dc, dpeep, dbhn, steps, work
):
    """_forward's gradients from dlog = dL/dlogits: dU, dV, dc, dpeep, dbhn accumulate; dxp (dL/dxp) and dhs
    are overwritten."""
    if blas:
        _readout_grad_blas(dlog, hs, V, dhs, dV, dc, steps)
    else:
        _readout_grad(dlog, hs, V, dhs, dV, dc, steps, work)
    if kind == 0:
        if blas:
            _tanh_bwd_blas(dhs, U, hs, dxp, dU, steps, work)
        else:
            _tanh_bwd(dhs, U, hs, dxp, dU, steps, work)
    elif kind == 1:
        if blas:
            _gru_bwd_blas(dhs, U, hs, s0, s1, s2, dxp, dU, steps, work)
        else:
            _gru_bwd(dhs, U, hs, s0, s1, s2, dxp, dU, steps, work)
    elif kind == 2:
        if blas:
            _gru_cudnn_bwd_blas(dhs, U, hs, s0, s1, s2, s3, dxp, dU, dbhn, steps, work)
        else:
            _gru_cudnn_bwd(dhs, U, hs, s0, s1, s2, s3, dxp, dU, dbhn, steps, work)
    else:
        if blas:
            _lstm_bwd_blas(dhs, U, peep, hs, s0, s1, s2, dxp, dU, dpeep, steps, work)
        else:
            _lstm_bwd(dhs, U, peep, hs, s0, s1, s2, dxp, dU, dpeep, steps, work)


def _np(t: Tensor) -> np.ndarray:
    """A private contiguous copy: in-place edits of a parameter (weight noise) cannot reach the backward."""
    return np.array(t.detach().numpy(), order="C", copy=True)


@_jit
def _nll(logits, x, steps, sums, dlog, acc, work):
    """sums[k, s]: frame NLL of the targets x[k, s, t + 1] summed over sequence s's steps, in float64 per note
    and then over notes (a fixed order that vectorises); dlog = d sums / d logits = sigmoid(logits) - y
    (within each sequence's steps only). acc: float64 scratch of the notes' width; work: float32 scratch."""
    K, B = steps.shape
    zero = F32(0.0)
    term = _take(work, 0, 1, logits.shape[3])[0][0]
    for k in range(K):
        for s in range(B):
            acc[:] = 0.0
            for t in range(steps[k, s]):
                a, y, d = logits[k, s, t], x[k, s, t + 1], dlog[k, s, t]
                for j in range(0, acc.shape[0], LANES):  # float32 only: 16 lanes wide
                    m = acc.shape[0] - j
                    aj, yj = _get(a, j, m), _get(y, j, m)
                    e = _exp(-simd.fabs(aj))  # stable: log(1 + exp(-|a|)) never overflows
                    _put(term, j, simd.where(zero > aj, zero, aj) - aj * yj + _log1p01(e), m)  # max(a, 0)
                    _put(d, j, simd.where(aj >= zero, ONE, e) / (ONE + e) - yj, m)
                for j in range(acc.shape[0]):  # the float64 sums apart (LLVM runs them 8 lanes wide)
                    acc[j] += term[j]
            total = 0.0
            for j in range(acc.shape[0]):  # in order, as numpy's sum of these few adds them
                total += acc[j]
            sums[k, s] = total


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
        _project(xn, Wn, _np(b), xp, steps, np.empty(xn.shape[3], np.int64))
        hs = np.empty((K, B, T, Un.shape[1]), np.float32)
        saved = _buffers(kind, hs, Wn.shape[2])
        peep = _np(extra) if kind == "lstm" else np.empty((0, 0, 0), np.float32)
        bhn = _np(extra) if kind == "gru_cudnn" else np.empty((0, 0), np.float32)
        blas = use_blas(B, Un.shape[1])
        logits = np.zeros((K, B, T, Vn.shape[2]), np.float32)  # stays 0 after each sequence's end
        work = np.empty(work_floats(Un.shape[2], Un.shape[1], Vn.shape[2], B, T), np.float32)
        _forward(KINDS.index(kind), blas, xp, Un, peep, bhn, hs, *saved, Vn, _np(c), logits, steps, work)
        ctx.kind, ctx.blas, ctx.arrays, ctx.dlog = kind, blas, (xn, Un, Vn, peep, bhn, hs, saved, steps), None
        if not nll:
            return torch.from_numpy(logits)
        sums = np.zeros((K, B), np.float64)
        dlog = np.empty_like(logits)
        _nll(logits, xn, steps, sums, dlog, np.empty(Vn.shape[2]), work)
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
        work = np.empty(work_floats(Un.shape[2], Un.shape[1], Vn.shape[2], *hs.shape[1:3]), np.float32)
        _backward(
            kind, ctx.blas, dlogits, Un, Vn, peep, hs, *saved, dhs, dxp, dU, dV, dc, dpeep, dbhn, steps, work
        )
        dW = np.zeros((Un.shape[0], xn.shape[3], Un.shape[2]), np.float32)
        db = np.zeros((Un.shape[0], Un.shape[2]), np.float32)
        _project_grad(xn, dxp, dW, db, steps, np.empty(xn.shape[3], np.int64))
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
