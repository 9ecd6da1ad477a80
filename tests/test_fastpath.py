"""The compiled update (models/fastpath.py) against the autograd path it replaces: bit for bit.

A reproduction trained with the autograd path resumes with the compiled one, so weights, optimizer state,
losses, gradient norms and the noise streams must be equal (torch.equal), not merely close."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rich.console import Console

from gru_bench.config import CONFIGS_DIR, load_config
from gru_bench.models import StackedModel, build_model
from gru_bench.models.fastpath import FastUpdate
from gru_bench.models.optim import StackedRMSProp
from gru_bench.training import trainer as training

pytest.importorskip("numba")

# per model of a K=3 stack: seed, lr, weight noise, loss (all PER_MODEL settings)
STACK = [(1, 1e-3, 0.075, "sum"), (2, 3e-3, 0.0, "mean"), (3, 5e-4, 0.02, "sum")]


def _trainer(tmp_path: Path, name: str, fast: bool, k: int, cell: str, impl: str, extra: list[str]):
    cfgs = [
        load_config(
            CONFIGS_DIR / "jsb" / f"{cell}.yaml",
            [
                f"model.impl={impl}",
                f"run.out_dir={tmp_path / name}",
                f"training.seed={seed}",
                f"training.lr={lr}",
                f"training.weight_noise={noise}",
                f"training.loss={loss}",
                *extra,
            ],
        )
        for seed, lr, noise, loss in STACK[:k]
    ]
    dirs = [tmp_path / name / f"m{i}" for i in range(k)]
    trainer = training.Trainer(cfgs, dirs, False, Console(quiet=True), None)
    assert (trainer.fast is not None) is fast
    return trainer


@pytest.mark.parametrize(
    "cell,impl,k,extra",
    [
        ("gru", "paper", 1, []),
        ("gru", "paper", 3, []),
        ("lstm", "paper", 3, []),
        ("tanh", "paper", 3, ["training.noise_on=recurrent"]),
        ("gru", "fused", 3, []),
        ("lstm", "fused", 1, ["training.clip=grad"]),
        ("tanh", "fused", 3, ["training.clip_velocity=true", "training.rms_eps=1e-6"]),
        ("gru", "paper", 3, ["training.clip=none", "training.batch_size=3"]),
        ("gru", "paper", 3, ["training.threads=2"]),  # models 0-1 and 2 in two threads at once
        ("lstm", "fused", 3, ["training.threads=3"]),
        # the kernels' BLAS path (kernels.use_blas): batch 8, wider than the paper's models
        ("gru", "paper", 3, ["training.batch_size=8", "model.hidden=128"]),
        ("tanh", "paper", 1, ["training.batch_size=8", "model.hidden=128"]),
        ("lstm", "paper", 3, ["training.batch_size=8", "model.hidden=128", "training.threads=2"]),
        ("gru", "fused", 3, ["training.batch_size=8", "model.hidden=128"]),
    ],
)
def test_compiled_update_equals_the_autograd_path(
    tmp_path: Path, jsb_data: Path, monkeypatch: pytest.MonkeyPatch, cell: str, impl: str, k: int, extra
):
    """N updates on real JSB sequences (each model its own order, one stopping half-way): equal weights,
    optimizer state, losses, gradient norms and generator states; with training.threads > 1 the stack's
    models are updated by several threads at once."""
    fast = _trainer(tmp_path, "fast", True, k, cell, impl, extra)
    monkeypatch.setattr(training, "FAST_UPDATE", False)
    slow = _trainer(tmp_path, "slow", False, k, cell, impl, extra)
    losses = []
    real_nll = StackedModel.nll

    def record(model, x, lengths):
        out = real_nll(model, x, lengths)
        losses.append(out.detach().clone())
        return out

    monkeypatch.setattr(StackedModel, "nll", record)
    bs = fast.cfg.training.batch_size
    orders = [training._start_epoch(r, len(fast.train_seqs)) for r in fast.runs]
    assert orders == [training._start_epoch(r, len(slow.train_seqs)) for r in slow.runs]
    for u in range(6):
        if u == 3 and k > 1:
            for t in (fast, slow):
                t.runs[1].status = "complete"  # a stopped model: no compute, no step, no noise
        runs = zip(orders, fast.runs, strict=True)
        batch = [[fast.train_seqs[j] for j in o[u]] if r.active else None for o, r in runs]
        fast.update(batch)
        slow.update(batch)
        nll = fast.fast.losses()
        assert torch.equal(nll[:, : losses[-1].shape[1]], losses[-1]), f"update {u}: losses differ"
        assert nll.shape[1] >= bs
        for a, b in zip(fast.model.parameters(), slow.model.parameters(), strict=True):
            assert torch.equal(a, b), f"update {u}: weights differ by {(a - b).abs().max()}"
        assert torch.equal(fast.opt._n, slow.opt._n) and torch.equal(fast.opt._v, slow.opt._v)
        for a, b in zip(fast.runs, slow.runs, strict=True):
            assert (a.updates, a.grad_sum, a.skipped, a.status) == (
                b.updates,
                b.grad_sum,
                b.skipped,
                b.status,
            )
        if u in (2, 5):  # the noise drawn ahead put back (as before a checkpoint): the streams agree
            fast.fast.settle()
            for a, b in zip(fast.runs, slow.runs, strict=True):
                assert torch.equal(a.gens["noise"].get_state(), b.gens["noise"].get_state())
    assert fast.runs[0].updates == 6


def _two_grus() -> tuple[StackedModel, StackedRMSProp]:
    """A stack of two 5-unit paper GRUs and the authors' optimizer settings for it."""
    model = build_model("gru", hidden=5, k=2)
    model.init_weights([torch.Generator().manual_seed(s) for s in (1, 2)])
    opt = StackedRMSProp(
        list(model.parameters()), [0.9] * 2, [0.95] * 2, [0.0] * 2, "update", [1.0] * 2, floor=[0.01] * 2
    )
    return model, opt


@pytest.mark.parametrize("threads", [1, 2])
def test_noise_drawn_ahead_is_the_noise_each_update_would_draw(threads: int):
    """With the next update's noise drawn during this one, every update still gets the noise it would draw
    itself, also after a model stops or its std changes (the generators put back and drawn again), and
    `settle` leaves the generators where updates without drawing ahead leave them."""
    # updates long enough to draw ahead after (fastpath.AHEAD_STEPS), and one too short
    rolls = [torch.rand(n, 88, generator=torch.Generator().manual_seed(n)) for n in (40, 4, 70)]
    seqs = [(r < 0.1).float() for r in rolls]
    calls = [([0.075, 0.02], [True, True])] * 3 + [([0.075, 0.0], [True, True])] * 2
    calls += [([0.075, 0.02], [True, False]), ([0.075, 0.02], [True, True]), ([0.0, 0.0], [True, True])]
    calls += [([0.05, 0.02], [True, True])] * 2
    runs = []
    for ahead in (False, True):
        model, opt = _two_grus()
        noisy = model.recurrent_weights() + model.layer_weights()
        upd = FastUpdate(model, opt, noisy, [False, False], 1e18, threads=threads, draw_ahead=ahead)
        assert (upd._drawer is not None) is ahead
        gens = [torch.Generator().manual_seed(s) for s in (7, 8)]
        weights, drawn_ahead = [], 0
        for i, (std, active) in enumerate(calls):
            upd([[seqs[i % 3]], [seqs[i % 3]]], [1e-2, 1e-2], active, std, gens)
            drawn_ahead += upd._ahead is not None
            weights.append([p.detach().clone() for p in model.parameters()])
        assert 0 < drawn_ahead < len(calls) if ahead else drawn_ahead == 0
        upd.settle()
        runs.append((weights, [g.get_state() for g in gens]))
    (plain, plain_states), (ahead, ahead_states) = runs
    for u, (a, b) in enumerate(zip(plain, ahead, strict=True)):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), f"update {u}: weights differ"
    assert all(torch.equal(a, b) for a, b in zip(plain_states, ahead_states, strict=True))
    assert all(p.isfinite().all() for p in plain[-1]) and not torch.equal(plain[0][1], plain[-1][1])


def test_non_finite_loss_and_gradient_are_reported_and_not_stepped():
    model = build_model("gru", hidden=5, k=2)
    model.init_weights([torch.Generator().manual_seed(s) for s in (1, 2)])
    opt = StackedRMSProp(list(model.parameters()), [0.9] * 2, [0.95] * 2, [0.0] * 2, "update", [1.0] * 2)
    upd = FastUpdate(model, opt, model.recurrent_weights(), [False, False], 1e18)
    with torch.no_grad():
        model.V[1, 0, 0] = float("inf")  # model 1: an infinite logit, an infinite loss
    before = [p.detach().clone() for p in model.parameters()]
    seq = (torch.rand(7, 88, generator=torch.Generator().manual_seed(0)) < 0.2).float()
    loss_ok, grad_ok, gnorm = upd([[seq], [seq]], [1e-3, 1e-3], [True, True])
    assert loss_ok == [True, False] and grad_ok[0] and gnorm[0] > 0
    for p, b in zip(model.parameters(), before, strict=True):
        assert not torch.equal(p[0], b[0]) and torch.equal(p[1], b[1])  # model 1 did not step
    assert model.V.grad.abs().sum() > 0  # p.grad: the gradients of the update


def test_sequences_are_read_where_they_are_whatever_their_layout():
    """The driver copies each sequence in from its own memory: views into a larger tensor, non-contiguous
    and float64 sequences (copied first) give the update that contiguous float32 copies give, sequences
    of different lengths in one batch and a shorter batch after a longer one included; a sequence of the
    wrong width is refused before anything is read."""
    rng = torch.Generator().manual_seed(3)
    roll = (torch.rand(2, 30, 88, generator=rng) < 0.1).float()
    wide = torch.zeros(30, 2 * 88)
    wide[:, ::2] = roll[1]
    batches = [
        [[roll[0, :25], roll[1]], [roll[1, 3:20]]],  # views at offsets
        [[wide[:, ::2]], [roll[0].double()]],  # non-contiguous, float64
        [[roll[0, :4]], None],  # model 1 stopped
    ]
    runs = []
    for plain in (True, False):
        model, opt = _two_grus()
        upd = FastUpdate(model, opt, model.recurrent_weights(), [False, True], 1e18)
        out = []
        for batch in batches:
            if plain:
                batch = [ss and [s.float().contiguous().clone() for s in ss] for ss in batch]
            active = [True, batch[1] is not None]
            out.append(upd(batch, [1e-2, 1e-2], active) + (upd.losses(),))
        runs.append((out, [p.detach().clone() for p in model.parameters()]))
        with pytest.raises(ValueError, match=r"model 1's sequence 0 has shape \(30, 87\), not \(T, 88\)"):
            upd([[roll[0]], [roll[1, :, :87]]], [1e-2, 1e-2], [True, True])
    (plain_out, plain_w), (out, w) = runs
    assert all(torch.equal(a, b) and a.isfinite().all() for a, b in zip(plain_w, w, strict=True))
    for a, b in zip(plain_out, out, strict=True):
        assert a[:3] == b[:3] and torch.equal(a[3], b[3])
    assert plain_out[0][3][0, 1] != 0 and plain_out[2][3][1].eq(0).all()


def test_possible_only_on_the_cpu_kernels():
    model = build_model("gru", hidden=5, k=1, fast="off")
    opt = StackedRMSProp(list(model.parameters()), [0.9], [0.95], [0.0], "update", [1.0])
    assert not FastUpdate.possible(model, opt)
    with pytest.raises(ValueError, match="numba"):
        FastUpdate(model, opt, model.recurrent_weights(), [False], 1e18)
    model = build_model("gru", hidden=5, k=1).double()
    opt = StackedRMSProp(list(model.parameters()), [0.9], [0.95], [0.0], "update", [1.0])
    assert not FastUpdate.possible(model, opt)
