"""numba kernels: equal to the pure-torch reference, bit-identical across stack sizes, clean fallbacks."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from gru_bench.errors import UserError
from gru_bench.models import CELLS, IMPLS, build_model, kernels
from gru_bench.paper import HIDDEN_SIZES

pytestmark = pytest.mark.skipif(not kernels.available(), reason="numba not importable")
if kernels.available():
    import numba

    from gru_bench.models import simd
N_IN = 88


def make(cell: str, impl: str, seeds: tuple[int, ...], fast: str = "on", hidden: int = 6, scale: float = 0.5):
    m = build_model(cell, impl, hidden=hidden, k=len(seeds), fast=fast)
    m.init_weights([torch.Generator().manual_seed(s) for s in seeds], scale=scale)
    with torch.no_grad():  # non-zero biases / peepholes, same perturbation for every model
        for p in m.parameters():
            noise = torch.randn(p.shape[1:], generator=torch.Generator().manual_seed(7))
            p.add_(0.4 * scale * noise)
    return m


def inputs(k: int, b: int = 2, t: int = 9, seed: int = 0) -> torch.Tensor:
    """Sparse and not only 0/1, so the zero-skipping projection is exercised with real values."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(1, b, t, N_IN, generator=g) < 0.3) * torch.rand(1, b, t, N_IN, generator=g) * 2
    return x.expand(k, -1, -1, -1).contiguous()


def loss_and_grads(m, x: torch.Tensor, mask: torch.Tensor | None = None):
    m.zero_grad()
    logits = m(x)
    g = torch.Generator().manual_seed(3)
    weights = torch.randn(logits.shape[1:], generator=g)  # same for every model of the stack
    if mask is not None:
        weights = weights * mask
    (logits * weights).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", CELLS)
def test_kernels_match_pure_torch(cell, impl):
    m = make(cell, impl, (0, 1))
    x = inputs(2)
    out_fast, grads_fast = loss_and_grads(m, x)
    m.fast = "off"
    out_ref, grads_ref = loss_and_grads(m, x)
    torch.testing.assert_close(out_fast, out_ref, rtol=0, atol=1e-5)
    for name, g in grads_ref.items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(grads_fast[name], g, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", CELLS)
def test_model_in_stack_of_8_is_bit_identical_to_model_alone(cell, impl):
    seeds = tuple(range(20, 28))
    stack, alone = make(cell, impl, seeds), make(cell, impl, (seeds[5],))
    out_s, grads_s = loss_and_grads(stack, inputs(8))
    out_a, grads_a = loss_and_grads(alone, inputs(1))
    assert torch.equal(out_s[5], out_a[0])
    for name in grads_a:
        assert torch.equal(grads_s[name][5], grads_a[name][0]), name


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("with_lengths", [False, True])
def test_model_in_a_longer_padded_stack_is_bit_identical_to_model_alone(cell, impl, with_lengths):
    """Lockstep batches are padded to the longest sequence (and largest batch) of all K models: with a
    masked loss, model k's outputs and gradients must not change by a single bit, whether the kernels
    run the padding (no lengths) or skip it (lengths)."""
    alone, stack = make(cell, impl, (4,)), make(cell, impl, (3, 4, 5))
    x_alone = inputs(1, b=2, t=6)
    w_alone = torch.randn(1, 2, 6, N_IN, generator=torch.Generator().manual_seed(1))
    x, w = inputs(3, b=3, t=9, seed=2), torch.randn(3, 3, 9, N_IN)
    x[1], w[1] = 0, 0
    x[1, :2, :6], w[1, :2, :6] = x_alone[0], w_alone[0]
    lengths = torch.tensor([[9, 9, 9], [6, 6, 0], [9, 2, 5]]) if with_lengths else None
    results = []
    for m, xs, ws, ls in ((alone, x_alone, w_alone, None), (stack, x, w, lengths)):
        logits = m(xs, ls)
        (logits * ws).sum().backward()
        results.append((logits.detach(), {n: p.grad for n, p in m.named_parameters()}))
    (out_a, grads_a), (out_s, grads_s) = results
    assert torch.equal(out_s[1, :2, :6], out_a[0])
    for name in grads_a:
        assert torch.equal(grads_s[name][1], grads_a[name][0]), name


def nll_and_grads(m, x: torch.Tensor, lengths: torch.Tensor):
    m.zero_grad()
    sums = m.nll(x, lengths)
    (sums * torch.tensor([[0.5], [2.0]])).sum().backward()  # per-model loss weights reach the gradients
    return sums.detach().double(), {n: p.grad.clone() for n, p in m.named_parameters()}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", CELLS)
def test_fused_nll_matches_the_torch_loss(cell, impl):
    """The loss computed inside numba (float64 sums) equals masked BCE-with-logits on the torch path."""
    m = make(cell, impl, (0, 1))
    x = (inputs(2, b=3, t=8) > 0).float()  # 0/1 targets, as piano rolls
    lengths = torch.tensor([[7, 3, 0], [5, 7, 1]])
    sums_fast, grads_fast = nll_and_grads(m, x, lengths)
    m.fast = "off"
    sums_ref, grads_ref = nll_and_grads(m, x, lengths)
    torch.testing.assert_close(sums_fast, sums_ref, rtol=1e-6, atol=0)
    for name, g in grads_ref.items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(grads_fast[name], g, rtol=1e-5, atol=1e-5, msg=name)


def test_fused_nll_is_bit_identical_in_a_padded_stack():
    alone, stack = make("gru", "paper", (4,)), make("gru", "paper", (3, 4))
    x_alone = (inputs(1, b=1, t=6) > 0).float()
    x = (inputs(2, b=2, t=9, seed=5) > 0).float()
    x[1] = 0
    x[1, 0, :6] = x_alone[0, 0]
    s_alone = alone.nll(x_alone, torch.tensor([[5]]))
    s_stack = stack.nll(x, torch.tensor([[8, 8], [5, 0]]))
    s_alone.sum().backward()
    s_stack.sum().backward()
    assert torch.equal(s_stack[1, :1], s_alone[0]) and s_stack[1, 1] == 0  # padding costs nothing
    for (name, p), q in zip(stack.named_parameters(), alone.parameters(), strict=True):
        assert torch.equal(p.grad[1], q.grad[0]), name


def test_lengths_skip_the_steps_after_each_end():
    m = make("gru", "paper", (0, 1))
    x, lengths = inputs(2, b=2, t=7), torch.tensor([[7, 3], [0, 5]])
    full, cut = m(x), m(x, lengths)
    for k in range(2):
        for s in range(2):
            n = int(lengths[k, s])
            assert torch.equal(cut[k, s, :n], full[k, s, :n]) and not cut[k, s, n:].any()


@pytest.mark.parametrize("cell", CELLS)
def test_padding_is_invisible_to_outputs_and_gradients(cell):
    """Garbage after a sequence's end changes neither its real outputs nor any gradient (masked loss)."""
    m = make(cell, "paper", (0,))
    x = inputs(1, b=2, t=10)
    mask = torch.ones(2, 10, 1)
    mask[0, 6:] = 0
    padded = x.clone()
    padded[:, 0, 6:] = 0
    garbage = x.clone()
    garbage[:, 0, 6:] = torch.rand(4, N_IN)
    out_p, grads_p = loss_and_grads(m, padded, mask)
    out_g, grads_g = loss_and_grads(m, garbage, mask)
    assert torch.equal(out_p[:, 0, :6], out_g[:, 0, :6]) and torch.equal(out_p[:, 1], out_g[:, 1])
    for name in grads_p:
        assert torch.equal(grads_p[name], grads_g[name]), name


def test_fast_mode_selection(monkeypatch):
    m = make("gru", "paper", (0,), fast="auto")
    x = inputs(1)
    assert m.use_kernels(x)
    assert not m.use_kernels(x.double())  # float64 runs the pure-torch path
    monkeypatch.setenv("GRU_BENCH_FAST", "0")
    assert not m.use_kernels(x)
    monkeypatch.delenv("GRU_BENCH_FAST")
    m.fast = "off"
    assert not m.use_kernels(x)
    m.fast = "on"
    with pytest.raises(UserError):
        m.use_kernels(x.double())


def test_falls_back_to_pure_torch_without_numba(monkeypatch):
    m = make("gru", "fused", (0,), fast="auto")
    x = inputs(1)
    expected = m(x)
    monkeypatch.setattr(kernels, "njit", None)
    assert not m.use_kernels(x)
    torch.testing.assert_close(m(x), expected, rtol=0, atol=1e-5)
    m.fast = "on"
    with pytest.raises(UserError):
        m(x)


def test_kernels_refuse_gradients_for_inputs():
    m = make("tanh", "paper", (0,))
    with pytest.raises(ValueError):
        m(inputs(1).requires_grad_())


def test_zero_skipping_projection_equals_the_dense_sum_bit_for_bit():
    """The projection skips zero inputs (~4 of 88 notes are on): the dense sum only adds exact zeros."""
    rng = np.random.default_rng(0)
    x = ((rng.random((2, 3, 7, N_IN)) < 0.05) * rng.normal(size=(2, 3, 7, N_IN))).astype(np.float32)
    x[0, 0, 0] = 0  # a silent frame
    x[1, 2, 1, :10] = rng.normal(size=10)  # a ten-note chord: two passes of four rows and two single rows
    W, b = rng.normal(size=(2, N_IN, 12)).astype(np.float32), rng.normal(size=(2, 12)).astype(np.float32)
    steps = np.array([[7, 3, 0], [7, 7, 5]])
    xp = np.zeros((2, 3, 7, 12), np.float32)
    kernels._project(x, W, b, xp, steps, np.empty(N_IN, np.int64))
    dense = np.broadcast_to(b[:, None, None], xp.shape).copy()
    for i in range(N_IN):  # float32 products and sums in index order, zeros included
        dense = dense + x[..., i : i + 1] * W[:, None, None, i]
    for k in range(2):
        for s in range(3):
            n = steps[k, s]
            assert np.array_equal(xp[k, s, :n], dense[k, s, :n]) and not xp[k, s, n:].any()


@pytest.mark.parametrize("n", [1, 5, 16, 17, 46, 88, 96, 100, 144, 161])
def test_register_blocked_products_are_the_plain_loops_sums(n):
    """_vec_mat and _mat_mat (output rows in 16-float registers, ragged ends masked, two rows at a time) give
    the row-by-row float32 sum bit for bit, and write nothing beyond their n columns; also where M has
    columns past n, which they read a whole vector wide (here NaN: those lanes must never be stored)."""
    rng = np.random.default_rng(n)
    for m in (0, 1, 3, 46):
        A = rng.normal(size=(5, m)).astype(np.float32)
        A[:, ::3] = 0  # zero terms: -0.0 + 0 * x is +0.0, which a skipped term would not give
        M = rng.normal(size=(m, n + 7)).astype(np.float32)[:, 2 : n + 2]  # rows inside wider ones
        wide = np.full((m, n + 16), np.nan, np.float32)
        wide[:, :n] = M
        start = rng.normal(size=(5, n + 1)).astype(np.float32)
        start[:, ::2] = -0.0
        start[0, -2] = np.inf
        want = start[:, :n].copy()
        for i in range(m):
            want = want + A[:, i : i + 1] * M[i]
        for B in (M, wide):
            rows, one = start.copy(), start.copy()
            kernels._mat_mat(A, B, rows[:, :n])
            kernels._vec_mat(A[0], B, one[0, :n])
            for got, k in ((rows, 5), (one, 1)):
                assert got[:k, :n].tobytes() == want[:k].tobytes()
                assert got[:, n:].tobytes() == start[:, n:].tobytes()  # the column past the output untouched


@pytest.mark.parametrize("name", ["_exp", "_sig", "_tanh", "_log1p01"])
def test_gate_formulas_on_16_lanes_are_the_scalar_ones_bit_for_bit(name):
    """The gate loops run the one-unit formulas on simd vectors (operators, where, floor, pow2, fabs):
    each lane must equal the scalar call, clamps, signed zeros, infinities and NaN included."""
    from numba import njit

    from gru_bench.models import simd

    f = getattr(kernels, name)

    @njit
    def lanes(x, out):
        for j in range(0, x.shape[0], simd.LANES):
            m = x.shape[0] - j
            simd.store_n(out, j, f(simd.load_n(x, j, m)), m)

    @njit
    def scalars(x, out):
        for j in range(x.shape[0]):
            out[j] = f(x[j])

    special = [-100.0, -87.5, -87.0, -20.0, -1e-30, -0.0, 0.0, 1e-30, 0.5, 20.0, 88.0, 88.5, 100.0]
    special += [np.inf, -np.inf, np.nan]
    rng = np.random.default_rng(0)
    x = np.concatenate([special, rng.normal(scale=10.0, size=170)]).astype(np.float32)  # 186: a ragged end
    if name == "_log1p01":  # its domain
        x = np.abs(x) / np.float32(100.0)
    a, b = np.empty_like(x), np.empty_like(x)
    lanes(x, a)
    scalars(x, b)
    assert a.tobytes() == b.tobytes()


def _tiled_transpose(tile: int):
    """kernels._transpose_sum with tiles of `tile` (the host's is kernels._TILE): both kinds on any CPU."""
    if tile == kernels._TILE:
        return kernels._transpose_sum
    intrinsic = simd.transpose16 if tile == 16 else simd.transpose8

    @numba.njit
    def transpose(a, z, s, out):
        for i in range(0, a.shape[0], tile):
            for j in range(0, a.shape[1], tile):
                intrinsic(a, z, s, out, i, j)

    return transpose


@pytest.mark.parametrize("tile", [16, 8])
def test_tiled_transposes_are_exact_and_stay_inside_the_output(tile):
    """_transpose_sum (tile x tile blocks transposed in registers): out = (a + z * s).T bit for bit, a.T
    where s == 0 or z is None (z not used), ragged tiles at every edge; outside out[: n, : m] nothing is
    written but zeros in the columns the last tile spans, where out has room for them (a padded
    transpose)."""
    rng = np.random.default_rng(5)
    transpose = _tiled_transpose(tile)
    # (300, 20): kernels._WIDE rows or more, where the kernel takes 16 x 16 tiles on any CPU
    for m, n in [(1, 1), (3, 5), (16, 16), (17, 33), (46, 138), (88, 46), (300, 20)]:
        a = rng.normal(size=(m, n + 2)).astype(np.float32)[:, 1 : n + 1]  # rows inside wider ones
        z = rng.normal(size=(m, n)).astype(np.float32)
        z[0, 0] = np.inf  # inf * 0 would be NaN: s == 0 must not use z
        end = -(-m // tile) * tile  # the last tile's end
        for s, zs, width in [
            (np.float32(0.0), z, m + 3),
            (np.float32(0.075), z, m),
            (np.float32(0.0), z, end + 5),
            (np.float32(0.0), None, end + 5),  # z None: a.T, z never read
            (np.float32(0.075), None, m + 3),
        ]:
            out = np.full((n + 1, width), 7.0, np.float32)
            transpose(a, zs, s, out)
            want = (a + z * s).T if s and zs is not None else a.T
            assert out[:n, :m].tobytes() == np.ascontiguousarray(want).tobytes()
            assert (out[n:] == 7).all() and (out[:, end:] == 7).all()
            assert (out[:n, m:end] == (0 if end <= width else 7)).all()


def test_padded_and_transposed_copies_overwrite_all_of_their_output():
    """kernels._padded and _transposed (the forward's and backward's copies of U and V, made in scratch
    that other kernels used before): out is the copy with zeros in its padding, whatever out held."""
    rng = np.random.default_rng(6)
    for m, n in [(1, 1), (17, 33), (46, 138), (46, 88), (100, 300), (300, 20)]:
        M = rng.normal(size=(m, n)).astype(np.float32)
        for c0, c1 in [(0, n), (n // 3, n)]:
            for width in (kernels._lanes(c1 - c0), kernels._lanes(c1 - c0) + 21):
                out = np.full((m, width), np.nan, np.float32)
                kernels._padded(M, c0, c1, out)
                want = np.zeros((m, width), np.float32)
                want[:, : c1 - c0] = M[:, c0:c1]
                assert out.tobytes() == want.tobytes()
        # widths: the backward's (whole vectors), one past m (the last tile has no room), wider
        for width in (kernels._lanes(m), m + 1, kernels._lanes(m) + 21):
            out = np.full((n, width), np.nan, np.float32)
            kernels._transposed(M, out)
            want = np.zeros((n, width), np.float32)
            want[:, :m] = M.T
            assert out.tobytes() == want.tobytes()


@pytest.mark.parametrize("rev", [False, True])
def test_blocked_outer_products_add_in_the_order_of_one_step_at_a_time(rev):
    """dU and dV sum their per-step outer products in chunks of steps, two rows of dU at a time: bit for
    bit the per-step sums."""
    rng = np.random.default_rng(1)
    c = kernels._STEPS  # steps per chunk
    for n in [*range(10), c - 1, c, c + 1, 2 * c + 6]:
        vs, gs = rng.normal(size=(n, 5)).astype(np.float32), rng.normal(size=(n, 13)).astype(np.float32)
        start = rng.normal(size=(5, 9)).astype(np.float32)
        blocked, stepwise = start.copy(), start.copy()
        kernels._outer_acc_steps(vs, gs, 2, 11, blocked, rev)
        for t in range(n - 1, -1, -1) if rev else range(n):
            stepwise += np.outer(vs[t], gs[t, 2:11])  # each product rounded, then each sum
        assert np.array_equal(blocked, stepwise)


def test_numba_cache_goes_when_a_compiled_source_changes(tmp_path):
    """numba checks a cached function against its own file only; a change to any file of the compiled
    update must drop the cache of all of them."""
    for name in kernels.COMPILED:
        (tmp_path / name).write_text("x = 1\n")
    assert not kernels.drop_stale_cache(tmp_path)  # nothing cached yet: the sources' hash is stored
    cache = tmp_path / "__pycache__"
    files = [cache / "fastpath._update-140.py311.nbi", cache / "kernels._gru_fwd-9.py311.1.nbc"]
    other = cache / "training.f-3.py311.nbi"
    for f in [*files, other]:
        f.write_bytes(b"")
    assert not kernels.drop_stale_cache(tmp_path) and all(f.exists() for f in files)
    (tmp_path / "kernels.py").write_text("x = 2\n")
    assert kernels.drop_stale_cache(tmp_path)
    assert not any(f.exists() for f in files) and other.exists()
    assert not kernels.drop_stale_cache(tmp_path)


@pytest.mark.parametrize("b,hidden", [(8, 128), (32, 256), (3, 6)])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", CELLS)
def test_blas_path_matches_pure_torch(monkeypatch, cell, impl, b, hidden):
    """The BLAS path (forced, also below its batch and width limits): logits of all steps, and NLL and
    gradients of sequences of different lengths (some empty), equal the pure-torch reference; gradients
    to 1e-5 of the largest (float32 sums over B x T frames of size ~50: the element kernels are no closer)."""
    monkeypatch.setenv("GRU_BENCH_BLAS", "1")
    m = make(cell, impl, (0, 1), hidden=hidden, scale=0.1)
    x = (inputs(2, b=b, t=9) > 0).float()
    lengths = torch.randint(0, 9, (2, b), generator=torch.Generator().manual_seed(1))
    lengths[:, 0] = 8
    fast = loss_and_grads(m, x[:, :, :-1]), nll_and_grads(m, x, lengths)
    m.fast = "off"
    ref = loss_and_grads(m, x[:, :, :-1]), nll_and_grads(m, x, lengths)
    torch.testing.assert_close(fast[0][0], ref[0][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(fast[1][0], ref[1][0], rtol=1e-6, atol=0)
    for (_, grads_fast), (_, grads_ref) in zip(fast, ref, strict=True):
        for name, g in grads_ref.items():
            top = g.abs().max()
            assert top > 0, name
            torch.testing.assert_close(grads_fast[name] / top, g / top, rtol=0, atol=1e-5, msg=name)


@pytest.mark.skipif(not hasattr(kernels._TORCH_CPU, "sgemm_"), reason="the batch invariance is MKL's")
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", CELLS)
def test_blas_path_is_bit_identical_across_stack_size_and_padding(cell, impl):
    """Model 1 of a stack of 3, its 8 sequences padded to 11 and its 7 frames to 10, equals the model
    alone bit for bit: every product is per model, and MKL's rows do not depend on the rows from 8 on."""
    assert kernels.use_blas(8, 128)
    alone, stack = (
        make(cell, impl, (4,), hidden=128, scale=0.1),
        make(cell, impl, (3, 4, 5), hidden=128, scale=0.1),
    )
    x_alone = (inputs(1, b=8, t=7) > 0).float()
    lengths_alone = torch.randint(1, 7, (1, 8), generator=torch.Generator().manual_seed(2))
    x = (inputs(3, b=11, t=10, seed=2) > 0).float()
    lengths = torch.randint(1, 10, (3, 11), generator=torch.Generator().manual_seed(3))
    x[1], lengths[1] = 0, 0
    x[1, :8, :7], lengths[1, :8] = x_alone[0], lengths_alone[0]
    s_alone, s_stack = alone.nll(x_alone, lengths_alone), stack.nll(x, lengths)
    s_alone.sum().backward()
    s_stack.sum().backward()
    assert torch.equal(s_stack[1, :8], s_alone[0]) and not s_stack[1, 8:].any()
    for (name, p), q in zip(stack.named_parameters(), alone.parameters(), strict=True):
        assert torch.equal(p.grad[1], q.grad[0]), name


@pytest.mark.skipif(not hasattr(kernels._TORCH_CPU, "sgemm_"), reason="the batch invariance is MKL's")
@pytest.mark.parametrize("transposed", [False, True])
def test_mkl_rounds_a_row_the_same_whatever_the_rows_and_offset(transposed):
    """What the invariance above rests on, at the BLAS path's widths up to 512 units (sums of up to 1536
    terms): in the mode the CLI sets, the first 8 rows of A @ B do not change with more rows in A or with
    A's offset in memory. (MKL's default AVX-512 branch fails this on Intel CPUs.)"""
    g = torch.Generator().manual_seed(0)
    for k, n in [(128, 384), (384, 128), (512, 1536), (1536, 512)]:
        b = torch.randn(n, k, generator=g).t() if transposed else torch.randn(k, n, generator=g)
        a = torch.randn(40, k, generator=g)
        first = a[:8] @ b
        for m, offset in [(9, 0), (11, 1), (32, 3), (40, 5)]:
            moved = torch.empty(m * k + offset)[offset:].view(m, k)
            moved.copy_(a[:m])
            assert torch.equal((moved @ b)[:8], first), (k, n, m, offset)


def test_the_cli_asks_mkl_for_its_reproducible_mode_unless_told_otherwise(monkeypatch):
    """The invariance above needs MKL's strict reproducible mode (MKL_CBWR=AUTO,STRICT) on Intel CPUs:
    every command sets it before MKL's first call (sweep workers inherit it), and a branch the user chose
    is kept."""
    from typer.testing import CliRunner

    from gru_bench.cli import app

    monkeypatch.delenv("MKL_CBWR", raising=False)
    assert CliRunner().invoke(app, ["--paths"]).exit_code == 0
    assert os.environ["MKL_CBWR"] == "AUTO,STRICT"
    monkeypatch.setenv("MKL_CBWR", "AUTO")
    assert CliRunner().invoke(app, ["--paths"]).exit_code == 0
    assert os.environ["MKL_CBWR"] == "AUTO"


def test_blas_path_selection(monkeypatch):
    """From batch 8 on and wider than the paper's models; the paper's sizes keep the element kernels."""
    monkeypatch.delenv("GRU_BENCH_BLAS", raising=False)
    assert kernels.use_blas(8, 128) and kernels.use_blas(64, 101)
    assert not any(kernels.use_blas(b, h) for b, h in ((1, 512), (7, 512), (64, 100)))
    assert not any(kernels.use_blas(64, h) for h in HIDDEN_SIZES.values())
    monkeypatch.setenv("GRU_BENCH_BLAS", "1")
    assert kernels.use_blas(1, 6)
    monkeypatch.setenv("GRU_BENCH_BLAS", "0")
    assert not kernels.use_blas(64, 512)
