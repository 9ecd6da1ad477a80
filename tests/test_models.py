"""Models: paper equations by hand, torch.nn equivalence, stacking, parameter counts, initialisation."""

from __future__ import annotations

import pytest
import torch

from gru_bench.errors import UserError
from gru_bench.models import CELLS, IMPLS, build_model, count_params, hidden_for_budget
from gru_bench.paper import HIDDEN_SIZES

N_IN = 88


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def model(cell: str, impl: str, hidden: int = 5, k: int = 2, seed: int = 0, **kw):
    m = build_model(cell, impl, hidden=hidden, k=k, fast="off", **kw)
    m.init_weights(gens(*range(seed, seed + k)), scale=0.5)
    with torch.no_grad():  # non-zero biases and peepholes so that every term is exercised
        for p in m.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(99)))
    return m


def rolls(k: int, b: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(k, b, t, N_IN, generator=g) < 0.2).float()


def by_hand(m, x: torch.Tensor) -> torch.Tensor:
    """The paper's equations, one model, one sequence, one step at a time (float64)."""
    sig, tanh = torch.sigmoid, torch.tanh
    H = m.hidden
    out = torch.zeros(*x.shape[:3], H, dtype=torch.float64)
    for k in range(x.shape[0]):
        W, U, b = m.W[k].double(), m.U[k].double(), m.b[k].double()
        blk = [
            (W[:, g * H : (g + 1) * H], U[:, g * H : (g + 1) * H], b[g * H : (g + 1) * H]) for g in range(4)
        ]
        for s in range(x.shape[1]):
            h = torch.zeros(H, dtype=torch.float64)
            c = torch.zeros(H, dtype=torch.float64)
            for t in range(x.shape[2]):
                xt = x[k, s, t].double()
                if m.cell == "tanh":
                    (Wa, Ua, ba), *_ = blk
                    h = tanh(xt @ Wa + h @ Ua + ba)
                elif m.cell == "gru":
                    (Wr, Ur, br), (Wz, Uz, bz), (Wn, Un, bn), _ = blk
                    r = sig(xt @ Wr + h @ Ur + br)
                    z = sig(xt @ Wz + h @ Uz + bz)
                    h_tilde = tanh(xt @ Wn + (r * h) @ Un + bn)
                    h = (1 - z) * h + z * h_tilde
                else:
                    (Wi, Ui, bi), (Wf, Uf, bf), (Wc, Uc, bc), (Wo, Uo, bo) = blk
                    p_i, p_f, p_o = m.peep[k].double()
                    i = sig(xt @ Wi + h @ Ui + p_i * c + bi)
                    f = sig(xt @ Wf + h @ Uf + p_f * c + bf)
                    c = f * c + i * tanh(xt @ Wc + h @ Uc + bc)
                    o = sig(xt @ Wo + h @ Uo + p_o * c + bo)
                    h = o * tanh(c)
                out[k, s, t] = h
    return out


@pytest.mark.parametrize("cell", CELLS)
def test_paper_cells_follow_the_equations(cell):
    m = model(cell, "paper")
    x = rolls(2, 3, 6)
    expected = by_hand(m, x)
    got = m.double().hidden_states(x.double())
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def cudnn_gru_by_hand(x, w_ih, w_hh, b_ih, b_hh):
    """torch/cuDNN GRU: the reset gate multiplies (U_n h + b_hn), AFTER the recurrent matrix."""
    H = w_hh.shape[1]
    h = torch.zeros(x.shape[0], H)
    out = []
    for t in range(x.shape[1]):
        gx, gh = x[:, t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh
        r = torch.sigmoid(gx[:, :H] + gh[:, :H])
        z = torch.sigmoid(gx[:, H : 2 * H] + gh[:, H : 2 * H])
        n = torch.tanh(gx[:, 2 * H :] + r * gh[:, 2 * H :])
        h = (1 - z) * n + z * h
        out.append(h)
    return torch.stack(out, 1)


def test_cudnn_form_gru_by_hand_matches_torch_gru():
    torch.manual_seed(0)
    gru = torch.nn.GRU(N_IN, 7, batch_first=True)
    x = rolls(1, 3, 9)[0]
    expected = gru(x)[0]
    got = cudnn_gru_by_hand(x, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_paper_and_torch_gru_differ():
    """Same weights, different reset-gate placement: the two GRU forms must not coincide."""
    f = model("gru", "fused", k=1)
    p = build_model("gru", "paper", hidden=5, k=1, fast="off")
    with torch.no_grad():
        p.W.copy_(f.w_ih.transpose(1, 2))
        p.U.copy_(f.w_hh.transpose(1, 2))
        p.b.copy_(f.b_ih + f.b_hh)
    x = rolls(1, 1, 5)
    assert not torch.allclose(p.hidden_states(x), f.hidden_states(x), atol=1e-4)


@pytest.mark.parametrize("cell", CELLS)
def test_fused_matches_torch_nn(cell):
    m = model(cell, "fused", hidden=6, k=2)
    x = rolls(2, 3, 8)
    logits = m(x)
    cls = {"tanh": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    for k in range(2):
        rnn, lin = cls(N_IN, 6, batch_first=True), torch.nn.Linear(6, N_IN)
        with torch.no_grad():
            for name, src in (
                ("weight_ih_l0", m.w_ih),
                ("weight_hh_l0", m.w_hh),
                ("bias_ih_l0", m.b_ih),
                ("bias_hh_l0", m.b_hh),
            ):
                getattr(rnn, name).copy_(src[k])
            lin.weight.copy_(m.V[k].T)
            lin.bias.copy_(m.c[k])
        torch.testing.assert_close(logits[k], lin(rnn(x[k])[0]), rtol=0, atol=1e-6)
        n_torch = sum(p.numel() for p in (*rnn.parameters(), *lin.parameters()))
        assert m.num_params() == n_torch == count_params(cell, "fused", 6)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", CELLS)
def test_model_in_a_stack_equals_model_alone(cell, impl):
    stack = build_model(cell, impl, hidden=4, k=3, fast="off")
    stack.init_weights(gens(10, 11, 12))
    alone = build_model(cell, impl, hidden=4, k=1, fast="off")
    alone.init_weights(gens(11))
    for (name, ps), pa in zip(stack.named_parameters(), alone.parameters(), strict=True):
        assert torch.equal(ps[1], pa[0]), name
    x = rolls(3, 2, 5)
    torch.testing.assert_close(stack(x)[1], alone(x[1:2])[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", CELLS)
def test_init_weights(cell, impl):
    m = build_model(cell, impl, k=2)
    m.init_weights(gens(0, 1), scale=0.1)
    H, g = m.hidden, {"tanh": 1, "gru": 3, "lstm": 4}[cell]
    (rec,) = m.recurrent_weights()
    assert rec.shape == ((2, H, g * H) if impl == "paper" else (2, g * H, H))
    for k in range(2):
        mat = rec[k] if impl == "paper" else rec[k].T
        for j in range(g):
            block = mat[:, j * H : (j + 1) * H]
            torch.testing.assert_close(block.T @ block, torch.eye(H), rtol=0, atol=1e-5)
    for name, p in m.named_parameters():
        if name in ("b", "b_ih", "b_hh", "c"):
            assert not p.any(), name
        elif p is not rec:
            assert p.abs().max() <= 0.1 and p.std() > 0.03, name
    assert not torch.equal(m.V[0], m.V[1])
    m.init_weights(gens(0, 1), orthogonal=False)
    assert rec.abs().max() <= 0.1


def test_paper_sizes_and_counts():
    for cell, h in HIDDEN_SIZES.items():
        m = build_model(cell)
        assert m.hidden == h and m.k == 1
        assert m.num_params() == count_params(cell, "paper", h)
    # Table 1's GRU by hand: 3 gates x 46 x (88 in + 46 rec + 1 bias) + readout 46 x 88 + 88
    assert count_params("gru", "paper", 46) == 3 * 46 * 135 + 46 * 88 + 88
    assert count_params("lstm", "paper", 36) == count_params("lstm", "fused", 36) - 4 * 36 + 3 * 36


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", CELLS)
def test_hidden_for_budget(cell, impl):
    for h in (3, 36, 46, 100):
        assert hidden_for_budget(cell, impl, count_params(cell, impl, h)) == h
    for budget in (5_000, 20_000, 20_001, 123_457):
        h = hidden_for_budget(cell, impl, budget)
        gap = abs(count_params(cell, impl, h) - budget)
        assert gap <= abs(count_params(cell, impl, h + 1) - budget)
        assert gap <= abs(count_params(cell, impl, h - 1) - budget)
    with pytest.raises(UserError):
        hidden_for_budget(cell, impl, 10)


def test_build_model_rejects_bad_input():
    for kw in (
        {"cell": "rnn"},
        {"cell": "gru", "impl": "cudnn"},
        {"cell": "gru", "fast": "yes"},
        {"cell": "gru", "hidden": 0},
        {"cell": "gru", "k": 0},
    ):
        with pytest.raises(UserError):
            build_model(**kw)
    with pytest.raises(ValueError):
        build_model("gru", k=2)(rolls(1, 1, 3))


@pytest.mark.parametrize("impl", IMPLS)
def test_padding_does_not_leak_backwards(impl):
    """Steps after a sequence's end never change outputs at its real steps."""
    m = model("lstm", impl, k=1)
    x = rolls(1, 2, 9)
    y = x.clone()
    y[:, 0, 4:] = torch.rand(9 - 4, N_IN)  # garbage after length 4 of sequence 0
    torch.testing.assert_close(m(y)[:, 0, :4], m(x)[:, 0, :4], rtol=0, atol=0)
    torch.testing.assert_close(m(y)[:, 1], m(x)[:, 1], rtol=0, atol=0)
    torch.testing.assert_close(m(y, torch.tensor([[4, 9]]))[:, 0, :4], m(x)[:, 0, :4], rtol=0, atol=0)
