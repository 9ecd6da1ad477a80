"""Training: the NLL against a hand computation, masking, the optimizer equations, run dirs, resume,
lockstep == alone, NaN handling. Tiny random data and models so the whole file runs in seconds."""

from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from gru_bench.config import CONFIGS_DIR, CPUS_VAR, NOT_HASHED, load_config
from gru_bench.data import PianoRolls
from gru_bench.errors import UserError
from gru_bench.models import StackedModel, build_model, fastpath, masked_nll
from gru_bench.models.optim import StackedRMSProp, per_model_norm
from gru_bench.training import rundir, trainer
from gru_bench.training.trainer import evaluate, lr_at, split_nll, train, train_lockstep

TINY = ["model.hidden=6", "training.eval_batch_size=5", "training.max_epochs=4", "training.patience=null"]


def _cfg(tmp_path: Path, *overrides: str, cell: str = "gru"):
    return load_config(
        CONFIGS_DIR / "jsb" / f"{cell}.yaml", [*TINY, f"run.out_dir={tmp_path / 'runs'}", *overrides]
    )


def _weights(run_dir: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return torch.load(run_dir / f"{which}.pt", weights_only=True)["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), f"{name} differs by {(wa[name] - wb[name]).abs().max()}"


# --- the loss ---------------------------------------------------------------------------------------------


def test_masked_nll_matches_hand_computation():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (2, 3, 5, 88)).astype(np.float32)
    targets = (rng.random((2, 3, 5, 88)) < 0.2).astype(np.float32)
    mask = np.zeros((2, 3, 5), bool)
    mask[0, 0, :5], mask[0, 1, :2], mask[1, 0, :3], mask[1, 2, :1] = True, True, True, True
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    frame = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).sum(-1)  # (K, B, T)
    want = (frame * mask).sum(2)  # per sequence
    s, n = masked_nll(torch.from_numpy(logits), torch.from_numpy(targets), torch.from_numpy(mask))
    np.testing.assert_allclose(s.double().numpy(), want, rtol=1e-5)
    assert n.tolist() == [[5, 2, 0], [3, 0, 1]]


@pytest.mark.parametrize("fast", ["auto", "off"])
def test_split_nll_both_metrics_match_a_hand_computation(fast: str):
    """Frame-weighted: all predicted frames pooled. Per sequence (the paper's, pylearn2's monitor at batch
    size 1): each sequence's mean frame NLL, averaged over sequences. Lengths differ a lot, so they differ."""
    rng = np.random.default_rng(3)
    seqs = [torch.from_numpy((rng.random((t, 88)) < 0.1).astype(np.float32)) for t in (2, 3, 40, 7, 1)]
    model = build_model("gru", hidden=5, k=1, fast=fast)
    model.init_weights([torch.Generator().manual_seed(4)], scale=1.0)
    per_seq, frames = [], []
    with torch.no_grad():
        for x in seqs[:4]:  # a 1-frame sequence predicts nothing and is left out
            logits = model.eval()(x[None, None, :-1]).double().numpy()[0, 0]
            p = 1 / (1 + np.exp(-logits))
            y = x[1:].double().numpy()
            nll = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(-1)  # per predicted frame
            per_seq.append(nll.mean())
            frames.append(nll)
    got = split_nll(model, seqs, 2, torch.device("cpu"))
    assert got.seq[0] == pytest.approx(np.mean(per_seq), rel=1e-5)
    assert got.frame[0] == pytest.approx(np.concatenate(frames).mean(), rel=1e-5)
    assert abs(got.seq[0] - got.frame[0]) > 1e-3


def test_split_nll_does_not_depend_on_padding():
    rng = np.random.default_rng(2)
    seqs = [
        torch.from_numpy((rng.random((int(t), 88)) < 0.1).astype(np.float32)) for t in rng.integers(1, 30, 20)
    ]
    model = build_model("lstm", hidden=7, k=2)
    model.init_weights([torch.Generator().manual_seed(s) for s in (1, 2)])
    one = split_nll(model, seqs, 1, torch.device("cpu"))
    padded = split_nll(model, seqs, 16, torch.device("cpu"))
    np.testing.assert_allclose(one, padded, rtol=1e-6)  # both metrics
    assert one.frame[0] != one.frame[1] and one.seq[0] != one.seq[1]  # two different models
    frozen = split_nll(model, seqs, 16, torch.device("cpu"), active=[False, True])
    assert np.isnan(frozen.seq[0]) and frozen.seq[1] == padded.seq[1]  # a stopped model is not evaluated
    assert np.isnan(frozen.frame[0]) and frozen.frame[1] == padded.frame[1]


# --- optimizer and schedule -------------------------------------------------------------------------------


# fast=True: the numba pass (skipped without numba); False: the pure-torch ops (CUDA's path, the reference)
FAST = [False, True]


def _fast(fast: bool) -> bool:
    if fast:
        pytest.importorskip("numba")
    return fast


@pytest.mark.parametrize("fast", FAST)
def test_rmsprop_update_equations(fast: bool):
    """Two steps of the documented update in numpy, with update-norm clipping and a frozen model."""
    rng = np.random.default_rng(3)
    w0 = rng.normal(size=(3, 4, 5)).astype(np.float32)
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    lr, mu, rho, eps, c = (
        [0.1, 0.5, 0.01],
        [0.9, 0.5, 0.9],
        [0.95, 0.9, 0.95],
        [1e-6, 1e-4, 1e-6],
        [1.0, 0.3, 1.0],
    )
    opt = StackedRMSProp([p], mu, rho, eps, "update", c, fast=_fast(fast))
    w, n, v = w0.astype(np.float64), np.zeros_like(w0, np.float64), np.zeros_like(w0, np.float64)
    for _ in range(2):
        g = rng.normal(size=w0.shape).astype(np.float32)
        p.grad = torch.from_numpy(g.copy())
        opt.step(lr, [True, True, False])
        for k in range(2):
            n[k] = rho[k] * n[k] + (1 - rho[k]) * g[k].astype(np.float64) ** 2
            s = mu[k] * v[k] - lr[k] * g[k] / np.sqrt(n[k] + eps[k])
            s *= min(1.0, c[k] / np.linalg.norm(s))
            v[k], w[k] = s, w[k] + s
    np.testing.assert_allclose(p.detach().numpy(), w, rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(v[1]) == pytest.approx(0.3)  # model 1's steps were clipped
    assert torch.equal(p[2].detach(), torch.from_numpy(w0[2]))  # frozen model untouched


@pytest.mark.parametrize("fast", FAST)
@pytest.mark.parametrize("clip", ["update", "grad", "none"])
def test_rmsprop_on_a_stack_is_bit_identical_to_each_model_alone(clip: str, fast: bool):
    """The flat in-place update of K models: model k's weights, state and norms equal a K=1 optimizer's."""
    rng = np.random.default_rng(4)
    shapes = [(3, 88, 21), (3, 7, 21), (3, 21), (3, 7, 88), (3, 88)]
    w0 = [rng.normal(size=s).astype(np.float32) for s in shapes]
    hp = {"momentum": [0.9, 0.5, 0.8], "rms_decay": [0.95, 0.9, 0.99], "eps": [1e-6, 1e-4, 1e-6]}
    hp |= {"clip_norm": [1.0, 0.05, 3.0]}
    lr = [1e-3, 0.3, 0.01]

    def optimizer(ks: list[int]) -> tuple[list[torch.nn.Parameter], StackedRMSProp]:
        ps = [torch.nn.Parameter(torch.from_numpy(w[ks].copy())) for w in w0]
        hps = {key: [v[k] for k in ks] for key, v in hp.items()}
        opt = StackedRMSProp(ps, clip=clip, fast=_fast(fast), **hps)
        assert opt.fast is fast  # the path under test runs
        return ps, opt

    stack, opt = optimizer([0, 1, 2])
    alone = [optimizer([k]) for k in range(3)]
    for _ in range(3):
        grads = [rng.normal(size=s).astype(np.float32) * 10 for s in shapes]
        for i, p in enumerate(stack):
            p.grad = torch.from_numpy(grads[i].copy())
        norms = opt.grad_norms()
        opt.step(lr, [True] * 3, norms)
        for k, (ps, o) in enumerate(alone):
            for i, p in enumerate(ps):
                p.grad = torch.from_numpy(grads[i][k : k + 1].copy())
            assert torch.equal(o.grad_norms(), norms[k : k + 1])
            o.step(lr[k : k + 1], [True])
    for k, (ps, o) in enumerate(alone):
        for a, b in zip(ps, stack, strict=True):
            assert torch.equal(a[0], b[k])
        for key in ("n", "v"):
            pairs = zip(o.state_of(0)[key], opt.state_of(k)[key], strict=True)
            assert all(torch.equal(a, b) for a, b in pairs)
    step_norm = np.linalg.norm(np.concatenate([v.numpy().ravel() for v in opt.state_of(1)["v"]]))
    if clip == "update":  # model 1's steps were clipped (the others' too, to their larger limits, or not)
        assert step_norm == pytest.approx(0.05)


@pytest.mark.parametrize("clip", ["update", "grad", "none"])
def test_rmsprop_numba_pass_matches_the_torch_ops(clip: str):
    """Same start (state loaded as a checkpoint would), same gradients, a frozen model: the numba pass and
    the torch ops agree to float32 rounding. n is exact (same ops, same order) unless clipping the gradient
    rescales g (its factor comes from a float64 rather than a float32 norm); w and v differ by torch's CPU
    sqrt, which is not correctly rounded (1 ulp on some elements)."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(6)
    shapes = [(3, 88, 21), (3, 7, 21), (3, 21), (3, 7, 88), (3, 88)]
    w0 = [rng.normal(size=s).astype(np.float32) for s in shapes]
    states = [
        {
            "n": [torch.from_numpy(rng.random(s[1:]).astype(np.float32)) for s in shapes],
            "v": [torch.from_numpy(rng.normal(size=s[1:]).astype(np.float32) * 0.01) for s in shapes],
        }
        for _ in range(3)
    ]
    # model 1 is clipped (both clip modes), models 0 and 2 are not
    hp = {"momentum": [0.9, 0.5, 0.8], "rms_decay": [0.95, 0.9, 0.99], "eps": [1e-6, 1e-4, 1e-8]}
    hp |= {"clip_norm": [1.0, 0.05, 1e4]}
    lr = [1e-3, 0.3, 0.01]
    runs = {}
    for fast in (True, False):
        ps = [torch.nn.Parameter(torch.from_numpy(w.copy())) for w in w0]
        opt = StackedRMSProp(ps, clip=clip, fast=fast, **hp)
        assert opt.fast is fast
        for k, state in enumerate(states):
            opt.load_state_of(k, state)
        grng = np.random.default_rng(7)
        norms = []
        for t in range(3):
            for p in ps:
                p.grad = torch.from_numpy(grng.normal(size=p.shape).astype(np.float32) * 10)
            norms.append(opt.grad_norms())
            opt.step(lr, [True, t != 1, True], norms[-1])
        runs[fast] = {"w": [p.detach() for p in ps], "n": opt.n, "v": opt.v, "norms": norms}
    fast, ref = runs[True], runs[False]
    for a, b in zip(fast["norms"], ref["norms"], strict=True):
        assert a.dtype == b.dtype == torch.float64 and a.shape == (3,)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    for key in ("w", "n", "v"):
        for a, b in zip(fast[key], ref[key], strict=True):
            if key == "n" and clip != "grad":
                assert torch.equal(a, b)
            else:
                torch.testing.assert_close(a, b, rtol=0, atol=1e-6 * b.abs().max().item())
    if clip == "update":  # model 1's step was clipped to its limit
        step = torch.cat([v[1].ravel() for v in fast["v"]])
        assert torch.linalg.vector_norm(step).item() == pytest.approx(0.05)


@pytest.mark.parametrize("eps, floor", [(1e-6, 0.0), (0.0, 0.01), (0.0, 0.0)])
def test_rmsprop_numba_pass_is_the_float32_expression_in_order(eps: float, floor: float):
    """Without clipping, the numba pass is bit for bit numpy's float32 evaluation of the documented formula
    (numpy's sqrt is correctly rounded, as numba's is; torch's CPU sqrt is not, hence the tolerance above),
    signed zeros and NaNs included: runs of +0 and -0 gradients (notes that did not sound) take the pass's
    shortcut past the root and division, which must give the same numbers, also where n + eps is 0 (floor
    0: NaN) or n was never touched."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(10)
    shapes = [(2, 30, 17), (2, 17)]
    w = [rng.normal(size=s).astype(np.float32) for s in shapes]
    ps = [torch.nn.Parameter(torch.from_numpy(x.copy())) for x in w]
    f32 = np.float32
    mu, rho, lr = f32([[0.9], [0.5]]), f32([[0.95], [0.9]]), f32([[1e-3], [0.3]])
    e, fl = f32([[eps], [eps]]), f32([[floor], [floor]])
    opt = StackedRMSProp(
        ps, mu.ravel(), rho.ravel(), e.ravel(), "none", [1.0] * 2, floor=fl.ravel(), fast=True
    )
    n, v = [np.zeros_like(x) for x in w], [np.zeros_like(x) for x in w]
    for step in range(4):
        grads = [rng.normal(size=s).astype(np.float32) for s in shapes]
        grads[0][:, 2:12] = 0.0  # never sounded: n stays 0
        grads[0][0, 14 + step : 22 + step] = -0.0
        grads[0][1, 20:] = 0.0 if step % 2 else -0.0
        if step == 2:
            grads[1][0] = 0.0
        for p, g in zip(ps, grads, strict=True):
            p.grad = torch.from_numpy(g.copy())
        opt.step(lr.ravel(), [True] * 2)
        for i, g in enumerate(grads):
            shape = (2,) + (1,) * (g.ndim - 1)
            r, m, ee, a, f = (x.reshape(shape) for x in (rho, mu, e, lr, fl))
            n[i] = n[i] * r + g * g * (f32(1) - r)
            d = np.sqrt(n[i] + ee)
            with np.errstate(invalid="ignore"):
                v[i] = v[i] * m - g * a / np.where(d < f, f, d)
            w[i] = w[i] + v[i]
    for i in range(len(shapes)):
        for got, want in ((ps[i].detach().numpy(), w[i]), (opt.n[i].numpy(), n[i]), (opt.v[i].numpy(), v[i])):
            assert np.array_equal(got, want, equal_nan=True)
            assert np.array_equal(np.signbit(got), np.signbit(want))  # the zeros' signs (and the NaNs')
    assert np.isnan(v[0]).any() == (floor == 0 and eps == 0)


@pytest.mark.parametrize("fast", FAST)
@pytest.mark.parametrize("clip", ["update", "grad", "none"])
def test_a_frozen_model_keeps_its_weights_and_optimizer_state(clip: str, fast: bool):
    torch.manual_seed(8)
    ps = [torch.nn.Parameter(torch.randn(3, 4, 70)), torch.nn.Parameter(torch.randn(3, 70))]
    opt = StackedRMSProp(ps, [0.9] * 3, [0.95] * 3, [1e-6] * 3, clip, [0.1] * 3, fast=_fast(fast))

    def model(k: int) -> list[torch.Tensor]:
        return [t[k].detach().clone() for t in (*ps, *opt.n, *opt.v)]

    for active in ([True] * 3, [True, False, True]):
        for p in ps:
            p.grad = torch.randn_like(p)
        before, version = [model(k) for k in range(3)], ps[0]._version
        opt.step([0.01] * 3, active, opt.grad_norms())
        for k in range(3):
            same = [torch.equal(a, b) for a, b in zip(before[k], model(k), strict=True)]
            assert all(same) if not active[k] else not any(same)
        assert ps[0]._version > version  # autograd sees the in-place update


@pytest.mark.parametrize("fast", FAST)
def test_grad_norms_are_float64_norms_that_do_not_overflow(fast: bool):
    """g^2 of a 1e30 gradient overflows float32: the norm is still the true one (training skips the update
    above MAX_GRAD_NORM); a NaN or inf gradient gives a non-finite norm, only for its own model."""
    p = torch.nn.Parameter(torch.zeros(3, 5, 300))
    opt = StackedRMSProp([p], [0.9] * 3, [0.95] * 3, [1e-6] * 3, "update", [1.0] * 3, fast=_fast(fast))
    g = torch.full((3, 5, 300), 1e30)
    g[1, 2, 7], g[2, 4, 299] = float("inf"), float("nan")
    p.grad = g
    norms = opt.grad_norms()
    assert norms.dtype == torch.float64 and norms.shape == (3,)
    assert norms[0].item() == pytest.approx(float(np.float32(1e30)) * np.sqrt(1500), rel=1e-12)
    assert norms[1].item() == float("inf") and np.isnan(norms[2].item())
    p.grad = torch.randn(3, 5, 300) * 1e-3  # and normal gradients are normed correctly after that
    want = torch.linalg.vector_norm(p.grad.reshape(3, -1).double(), dim=1)
    torch.testing.assert_close(opt.grad_norms(), want, rtol=1e-12, atol=0)


def test_grad_norms_sum_in_interleaved_lanes_bit_for_bit():
    """The compiled norm is the documented float64 sum, bit for bit: element j of a tensor row into lane
    j mod LANES in order, tensor after tensor, then the lanes in order (runs of zeros and a NaN
    included)."""
    pytest.importorskip("numba")
    from gru_bench.models.optim import LANES

    rng = np.random.default_rng(4)
    shapes = [(2, 40, 33), (2, 70)]
    grads = [(rng.normal(size=s) * 10.0 ** rng.integers(-3, 3, size=s)).astype(np.float32) for s in shapes]
    grads[0][:, 3:30] = 0.0  # 27 rows of 33: many runs of 32 zeros, starting anywhere in the lanes
    grads[0][0, 31, :] = -0.0
    grads[1][1, 40] = np.nan
    ps = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    for p, g in zip(ps, grads, strict=True):
        p.grad = torch.from_numpy(g)
    got = StackedRMSProp(ps, [0.9] * 2, [0.95] * 2, [0.0] * 2, "update", [1.0] * 2, fast=True).grad_norms()
    for k in range(2):
        lanes = [0.0] * LANES
        for g in grads:
            for j, x in enumerate(g[k].ravel().tolist()):
                lanes[j % LANES] += x * x
        total = 0.0
        for x in lanes:
            total += x
        assert np.isnan(got[k].item()) if k == 1 else got[k].item() == np.sqrt(total)


@pytest.mark.parametrize("fast", FAST)
def test_step_uses_the_gradients_as_they_are_when_it_runs(fast: bool):
    """Gradients replaced or changed in place between grad_norms() and step() are the ones stepped on."""
    torch.manual_seed(9)
    w0 = [torch.randn(2, 3, 40), torch.randn(2, 40)]
    grads = [torch.randn(2, 3, 40), torch.randn(2, 40)]
    later = [torch.randn(2, 3, 40), grads[1] * 2]

    def optimizer() -> tuple[list[torch.nn.Parameter], StackedRMSProp]:
        ps = [torch.nn.Parameter(w.clone()) for w in w0]
        hp = [0.9] * 2, [0.95] * 2, [1e-6] * 2, "update", [1.0] * 2
        return ps, StackedRMSProp(ps, *hp, fast=_fast(fast))

    ps, opt = optimizer()
    ps[0].grad, ps[1].grad = grads[0].clone(), grads[1].clone()
    opt.grad_norms()
    ps[0].grad = later[0].clone()  # a new tensor
    ps[1].grad.mul_(2)  # the same tensor, changed in place
    opt.step([0.01] * 2, [True] * 2)
    want, ref = optimizer()
    want[0].grad, want[1].grad = later[0].clone(), later[1].clone()
    ref.step([0.01] * 2, [True] * 2)
    assert all(torch.equal(a, b) for a, b in zip(ps, want, strict=True))
    with pytest.raises(ValueError, match="learning rates"):
        opt.step([0.01], [True] * 2)


def test_per_model_norm_equals_the_norm_of_each_slice():
    g = torch.Generator().manual_seed(5)
    ts = [torch.randn(4, *s, generator=g) * 3 for s in [(88, 138), (46, 138), (138,), (46, 88), (88,)]]
    norm = torch.linalg.vector_norm
    want = torch.stack([norm(torch.stack([norm(t[i]) for t in ts])) for i in range(4)])
    assert torch.equal(per_model_norm(ts), want)


@pytest.mark.parametrize("fast", FAST)
def test_grad_clipping_rescales_the_gradient(fast: bool):
    p = torch.nn.Parameter(torch.zeros(2, 3))
    opt = StackedRMSProp([p], [0.0, 0.0], [0.0, 0.0], [1e-30, 1e-30], "grad", [1.0, 1.0], fast=_fast(fast))
    p.grad = torch.tensor([[3.0, 4.0, 0.0], [0.3, 0.4, 0.0]])
    opt.step([1.0, 1.0], [True, True])
    # rho=0 -> n = g^2 and the step is -lr * sign(g) whatever the clipping; the state shows the clipped g
    np.testing.assert_allclose(opt.n[0][0].numpy(), [0.36, 0.64, 0.0], rtol=1e-6)
    np.testing.assert_allclose(opt.n[0][1].numpy(), [0.09, 0.16, 0.0], rtol=1e-6)
    np.testing.assert_allclose(p.detach().numpy(), [[-1.0, -1.0, 0.0], [-1.0, -1.0, 0.0]], rtol=1e-6)


def test_linear_lr_decay(tmp_path: Path, tiny_jsb: Path):
    cfg = _cfg(tmp_path, "training.max_epochs=5", "training.lr=0.01")
    assert [lr_at(cfg, e) for e in (1, 3, 5)] == pytest.approx([0.01, 0.00505, 0.0001])
    assert lr_at(cfg.replace(**{"training.lr_decay": "none"}), 5) == 0.01


# --- runs -------------------------------------------------------------------------------------------------


def test_train_writes_the_run_dir(tmp_path: Path, tiny_jsb: Path):
    cfg = _cfg(tmp_path, "training.max_epochs=3")
    summary = train(cfg, quiet=True)
    run = tmp_path / "runs" / "jsb" / "gru" / summary["run_name"]
    assert {p.name for p in run.iterdir() if not p.name.startswith("events.out.tfevents.")} == {
        "config.yaml",
        "metrics.csv",
        "summary.json",
        "best.pt",
        "last.pt",
    }
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert list(rows[0]) == list(rundir.METRICS) and [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [int(r["updates"]) for r in rows] == [10, 20, 30]
    saved = json.loads((run / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["status"] == "complete" and saved["epochs"] == 3 and saved["lockstep_k"] == 1
    assert saved["params"] == build_model("gru", hidden=6).num_params()
    assert set(saved["baseline_nll"]) == {"train", "valid", "test"}
    best = min(rows, key=lambda r: float(r["valid_nll_seq"]))  # the paper's metric selects by default
    assert saved["best_epoch"] == int(best["epoch"]) and saved["select_metric"] == "seq"
    for key in ("train_nll", "train_nll_seq", "valid_nll", "valid_nll_seq"):
        assert saved[key] == pytest.approx(float(best[key]))  # the train split is scored at every new best
    test = evaluate(run, "test", "best")
    assert (test.frame[0], test.seq[0]) == pytest.approx((saved["test_nll"], saved["test_nll_seq"]), rel=1e-6)
    assert evaluate(run, "valid", "best").seq[0] == pytest.approx(saved["best_valid_nll"], rel=1e-6)
    assert evaluate(run, "valid", "last").frame[0] == pytest.approx(float(rows[-1]["valid_nll"]), rel=1e-6)
    assert load_config(run / "config.yaml").to_dict() == cfg.to_dict()
    with pytest.raises(UserError, match="holds a finished run"):
        train(cfg, quiet=True)
    assert (
        train(cfg, run, resume=True, quiet=True)["test_nll"] == saved["test_nll"]
    )  # complete: nothing to do


def test_training_learns(tmp_path: Path, tiny_jsb: Path):
    """On i.i.d. notes the best possible model is the Bernoulli baseline; a few epochs get close to it."""
    summary = train(
        _cfg(tmp_path, "training.max_epochs=6", "training.lr=0.01", "training.eval_train_every=1"), quiet=True
    )
    rows = list(
        csv.DictReader((tmp_path / "runs" / "jsb" / "gru" / summary["run_name"] / "metrics.csv").open())
    )
    untrained = 88 * np.log(2)  # zero logits; uniform(-0.1, 0.1) weights stay near it
    assert float(rows[0]["train_nll"]) < untrained
    assert float(rows[-1]["train_nll"]) < 1.02 * summary["baseline_nll"]["train"]


def test_resume_continues_exactly(tmp_path: Path, tiny_jsb: Path, monkeypatch: pytest.MonkeyPatch):
    """Also with the weight noise drawn ahead (where the compiled update runs; its short sequences made long
    enough for it): a checkpoint holds the noise generators where the updates left them."""
    monkeypatch.setattr(fastpath, "AHEAD_STEPS", 1)
    monkeypatch.setenv(CPUS_VAR, "2")
    cfg = _cfg(tmp_path, "training.batch_size=3")
    train(cfg, tmp_path / "whole", quiet=True)

    real_end = trainer.Trainer.end_epoch

    def ctrl_c_after_epoch_2(self, *args, **kwargs):
        real_end(self, *args, **kwargs)
        if self.runs[0].epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer.Trainer, "end_epoch", ctrl_c_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", quiet=True)
    monkeypatch.setattr(trainer.Trainer, "end_epoch", real_end)
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["epochs"] == 2
    with pytest.raises(UserError, match="--resume"):
        train(cfg, tmp_path / "cut", quiet=True)
    train(cfg, tmp_path / "cut", resume=True, quiet=True)
    _assert_same_weights(tmp_path / "whole", tmp_path / "cut")
    metrics = [list(csv.DictReader((tmp_path / d / "metrics.csv").open())) for d in ("whole", "cut")]
    for a, b in zip(*metrics, strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {
            k: v for k, v in b.items() if k != "seconds"
        }


def test_lockstep_equals_training_alone(tmp_path: Path, tiny_jsb: Path):
    """Model 1 of a stack of 3 (other seeds, learning rates, weight noise, padded to their longer sequences)
    ends bit-identical to the same config trained alone."""
    pytest.importorskip("numba")  # bit-equality is promised by the CPU kernels; fast=auto uses them
    cfgs = [
        _cfg(
            tmp_path,
            "training.max_epochs=2",
            "training.batch_size=2",
            f"training.seed={s}",
            f"training.lr={lr}",
            f"training.weight_noise={wn}",
        )
        for s, lr, wn in [(1, 0.01, 0.075), (2, 0.003, 0.05), (3, 0.02, 0.0)]
    ]
    stack = [tmp_path / "stack" / str(i) for i in range(3)]
    summaries = train_lockstep(cfgs, stack, quiet=True)
    alone = train(cfgs[1], tmp_path / "alone", quiet=True)
    _assert_same_weights(stack[1], tmp_path / "alone")
    assert summaries[1]["lockstep_k"] == 3
    drop = {"lockstep_k", "total_seconds", "seconds_per_epoch", "run_name"}
    assert {k: v for k, v in summaries[1].items() if k not in drop} == {
        k: v for k, v in alone.items() if k not in drop
    }


def test_lockstep_rejects_different_models(tmp_path: Path, tiny_jsb: Path):
    cfgs = [_cfg(tmp_path), _cfg(tmp_path, "training.seed=2", "model.hidden=7")]
    with pytest.raises(UserError, match="model.hidden"):
        train_lockstep(cfgs, quiet=True)


def test_early_stopping_freezes_one_model_of_a_stack(tmp_path: Path, tiny_jsb: Path):
    cfgs = [
        _cfg(tmp_path, "training.max_epochs=2"),
        _cfg(tmp_path, "training.seed=2", "training.max_epochs=4"),
    ]
    short, long = train_lockstep(cfgs, [tmp_path / "a", tmp_path / "b"], quiet=True)
    assert (short["epochs"], long["epochs"]) == (2, 4) and short["status"] == long["status"] == "complete"
    assert len((tmp_path / "a" / "metrics.csv").read_text().splitlines()) == 3  # header + 2 epochs


def test_updates_pass_each_models_lengths_and_skip_stopped_models(
    tmp_path: Path, tiny_jsb: Path, monkeypatch: pytest.MonkeyPatch
):
    """Padding across the stack costs nothing: the kernels get every sequence's length, 0 once stopped."""
    real_nll = StackedModel.nll
    seen = []

    def record(self, x, lengths):
        if self.training:
            seen.append(lengths.clone())
        return real_nll(self, x, lengths)

    monkeypatch.setattr(trainer, "FAST_UPDATE", False)  # these watch the autograd path's StackedModel.nll
    monkeypatch.setattr(StackedModel, "nll", record)
    cfgs = [
        _cfg(tmp_path, "training.max_epochs=1"),
        _cfg(tmp_path, "training.seed=2", "training.max_epochs=2"),
    ]
    train_lockstep(cfgs, [tmp_path / "a", tmp_path / "b"], quiet=True)
    train_lens = sorted(len(x) - 1 for x in PianoRolls.load(tiny_jsb).splits["train"])
    assert len(seen) == 20 and all(s.shape == (2, 1) for s in seen)
    assert sorted(int(s[0, 0]) for s in seen[:10]) == train_lens  # epoch 1: both models, own lengths
    assert sorted(int(s[1, 0]) for s in seen[:10]) == train_lens
    assert [int(s[1, 0]) for s in seen[:10]] != [int(s[0, 0]) for s in seen[:10]]  # own data orders
    assert all(int(s[0, 0]) == 0 for s in seen[10:])  # model 0 stopped after epoch 1: no compute


def test_nan_stops_the_run_and_keeps_the_best_model(tmp_path: Path, tiny_jsb: Path, monkeypatch):
    real_nll = StackedModel.nll
    calls = {"train": 0}

    def diverge_in_epoch_2(self, x, lengths):
        out = real_nll(self, x, lengths)
        if self.training:
            calls["train"] += 1
            if calls["train"] > 13:  # epoch 1 has 10 updates
                return out * float("nan")
        return out

    monkeypatch.setattr(trainer, "FAST_UPDATE", False)  # these watch the autograd path's StackedModel.nll
    monkeypatch.setattr(StackedModel, "nll", diverge_in_epoch_2)
    summary = train(_cfg(tmp_path), tmp_path / "nan", quiet=True)
    assert summary["status"] == "stopped_nan" and "non-finite" in summary["message"]
    assert summary["best_epoch"] == 1 and np.isfinite(summary["test_nll"])
    assert all(torch.isfinite(w).all() for w in _weights(tmp_path / "nan").values())


def test_non_finite_gradient_skips_the_update_but_a_finite_loss_keeps_training(
    tmp_path: Path, tiny_jsb: Path, monkeypatch
):
    """An overflowing BPTT gradient (finite loss) costs one update of that model only, not the run."""
    real_nll = StackedModel.nll
    calls = {"train": 0}

    def blow_up_model_1_once(self, x, lengths):
        out = real_nll(self, x, lengths)
        if self.training:
            calls["train"] += 1
            if calls["train"] == 3:  # third update: model 1's gradient becomes inf, its loss stays finite
                scale = torch.ones(out.shape[0], 1, dtype=out.dtype)
                scale[1] = float("inf")
                out.register_hook(lambda g: g * scale)
        return out

    monkeypatch.setattr(trainer, "FAST_UPDATE", False)  # these watch the autograd path's StackedModel.nll
    monkeypatch.setattr(StackedModel, "nll", blow_up_model_1_once)
    cfgs = [
        _cfg(tmp_path, "training.max_epochs=1"),
        _cfg(tmp_path, "training.seed=2", "training.max_epochs=1"),
    ]
    a, b = train_lockstep(cfgs, [tmp_path / "a", tmp_path / "b"], quiet=True)
    assert a["status"] == b["status"] == "complete"
    assert (a["skipped_updates"], b["skipped_updates"]) == (0, 1)
    assert (a["updates"], b["updates"]) == (10, 9)
    assert all(torch.isfinite(w).all() for w in _weights(tmp_path / "b").values())


def test_load_run_rejects_what_is_not_a_run(tmp_path: Path, tiny_jsb: Path):
    with pytest.raises(UserError, match="not a run folder"):
        rundir.load_run(tmp_path)
    run = tmp_path / "run"
    train(_cfg(tmp_path, "training.max_epochs=1"), run, quiet=True)
    with pytest.raises(UserError, match="best or last"):
        rundir.load_run(run, "worst")
    torch.save({"model": _weights(run, "best") | {"V": torch.zeros(1, 3, 88)}}, run / "best.pt")
    with pytest.raises(
        UserError, match=r"best.pt does not match .*config.yaml \(gru, hidden 6\).* V of shape"
    ):
        rundir.load_run(run)
    model, cfg = rundir.load_run(run, "last")
    assert not model.training and model.hidden == 6
    assert cfg.to_dict() == load_config(run / "config.yaml").to_dict()
    (run / "best.pt").unlink()
    with pytest.raises(UserError, match="try --which last"):
        rundir.load_run(run)
    (run / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(
        UserError, match=r"last.pt is damaged or not a gru-bench checkpoint \(\w+: [^\n]{,120}\)"
    ):
        rundir.load_run(run, "last")
    (run / "last.pt").unlink()
    with pytest.raises(UserError, match=f"{run} is finished; rebuild .* 'gru-bench train --rebuild {run}'"):
        rundir.load_run(run, "last")


def test_a_damaged_summary_is_refused_then_repaired_by_resume(tmp_path: Path, tiny_jsb: Path):
    cfg = _cfg(tmp_path, "training.max_epochs=1")
    run = tmp_path / "run"
    good = train(cfg, run, quiet=True)
    weights = (run / "best.pt").read_bytes()
    (run / "summary.json").write_text('{"status": "comp')
    with pytest.raises(UserError, match=r"summary.json is damaged .*'gru-bench train --resume"):
        train(cfg, run, quiet=True)
    assert (run / "best.pt").read_bytes() == weights  # nothing was touched
    assert train(cfg, run, resume=True, quiet=True)["test_nll"] == good["test_nll"]
    assert json.loads((run / "summary.json").read_text()) == json.loads(json.dumps(good))


def test_resume_may_change_only_the_machine(tmp_path: Path, tiny_jsb: Path):
    run = tmp_path / "run"
    train(_cfg(tmp_path, "training.max_epochs=1"), run, quiet=True)
    assert set(trainer.RESUME_KEYS) < NOT_HASHED  # they never change what the run computes
    with pytest.raises(UserError, match=r"leave out training.lr \(only training.device"):
        trainer.train_command(None, ["training.lr=0.5"], resume=[run], quiet=True)
    with pytest.raises(UserError, match="is not a run folder"):
        trainer.train_command(None, resume=[tmp_path], quiet=True)
    trainer.train_command(None, ["training.eval_batch_size=2"], resume=[run], quiet=True)
    assert load_config(run / "config.yaml").training.eval_batch_size == 5  # a finished run is not rewritten


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_run_trained_on_a_gpu_evaluates_on_the_cpu(tmp_path: Path, tiny_jsb: Path):
    run = tmp_path / "run"
    nll = train(_cfg(tmp_path, "training.max_epochs=1"), run, quiet=True)["test_nll"]
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("device: auto", "device: cuda"))
    assert evaluate(run).frame[0] == pytest.approx(nll, rel=1e-6)
    with pytest.raises(UserError, match=f"training.device is cuda \\(from --device, --set or {config}\\)"):
        train(load_config(config), tmp_path / "again", quiet=True)


# --- one writer per run dir -------------------------------------------------------------------------------


def test_a_second_train_of_a_live_run_dir_is_refused(
    tmp_path: Path, tiny_jsb: Path, monkeypatch: pytest.MonkeyPatch
):
    """While a run trains, `train --resume` (or a plain train) of its folder is refused, naming the holder."""
    cfg, run = _cfg(tmp_path, "training.max_epochs=2"), tmp_path / "run"
    real_end, refused = trainer.Trainer.end_epoch, []

    def second_train_after_epoch_1(self, *args, **kwargs):
        real_end(self, *args, **kwargs)
        if self.runs[0].epoch == 1:
            for resume in (True, False):
                with pytest.raises(UserError) as e:
                    train(cfg, run, resume=resume, quiet=True)
                refused.append(str(e.value))

    monkeypatch.setattr(trainer.Trainer, "end_epoch", second_train_after_epoch_1)
    assert train(cfg, run, quiet=True)["epochs"] == 2  # the first run was not disturbed
    assert (
        refused
        == [
            f"{run} is being trained by PID {os.getpid()} on {socket.gethostname()}: wait for it "
            f"to finish, or stop it and then 'gru-bench train --resume {run}'"
        ]
        * 2
    )
    assert not (run / rundir.LOCK).exists()


def test_ctrl_c_releases_the_lock_and_a_stale_lock_is_taken_over(
    tmp_path: Path, tiny_jsb: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    cfg, run = _cfg(tmp_path, "training.max_epochs=2"), tmp_path / "run"
    real_end = trainer.Trainer.end_epoch

    def ctrl_c(*args, **kwargs):
        real_end(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.Trainer, "end_epoch", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run, quiet=True)
    assert not (run / rundir.LOCK).exists()
    monkeypatch.setattr(trainer.Trainer, "end_epoch", real_end)
    (run / rundir.LOCK).write_text("PID 999999999 on gone-host\n")  # left by a killed training
    capsys.readouterr()
    assert train(cfg, run, resume=True)["epochs"] == 2
    assert "taking over the lock of PID 999999999 on gone-host" in capsys.readouterr().out
    assert not (run / rundir.LOCK).exists()


def test_a_refused_start_leaves_no_empty_run_dir(tmp_path: Path, data_home: Path):
    with pytest.raises(UserError, match="not prepared"):
        train(_cfg(tmp_path), tmp_path / "runs" / "new", quiet=True)
    assert not (tmp_path / "runs" / "new").exists()


def test_weight_noise_restores_clean_weights():
    model = build_model("tanh", hidden=4, k=2)
    model.init_weights([torch.Generator().manual_seed(s) for s in (1, 2)])
    runs = [trainer._Run(None, Path("."), trainer._generators(s)) for s in (1, 2)]
    before = model.U.detach().clone()
    clean = trainer._add_noise(model.recurrent_weights(), runs, [0.1, 0.0], torch.device("cpu"))
    assert torch.equal(clean[0], before)
    assert not torch.equal(model.U[0], before[0]) and torch.equal(model.U[1], before[1])  # std 0: no noise
    assert (model.U[0] - before[0]).std().item() == pytest.approx(0.1, rel=0.5)
