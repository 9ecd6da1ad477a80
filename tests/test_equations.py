"""The relations docs/equations.md states between the GRU and LSTM forms people meet, checked numerically.

Already in tests/test_models.py: our cells follow the paper's equations by hand; the torch/cuDNN GRU (reset
after U) follows its equations and is NOT the paper's GRU. Here: Cho et al.'s (and the lecture) form is the
paper's GRU with z relabeled as 1 - z, and our peephole LSTM with zero peepholes is torch's LSTM."""

from __future__ import annotations

import torch

from gru_bench.models import build_model

N_IN, H = 88, 5


def _paper_model(cell: str) -> torch.nn.Module:
    m = build_model(cell, "paper", hidden=H, k=1, fast="off").double()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.rand(p.shape, generator=gen, dtype=torch.float64) - 0.5)
    return m


def _rolls(t: int = 7) -> torch.Tensor:
    return (torch.rand(1, 2, t, N_IN, generator=torch.Generator().manual_seed(1)) < 0.2).double()


def test_cho_and_lecture_gru_is_the_paper_gru_with_z_relabeled() -> None:
    """h' = z h + (1 - z) h~ (z keeps the old state), z's weights negated: sigmoid(-a) = 1 - sigmoid(a)."""
    m = _paper_model("gru")
    x = _rolls()
    W, U, b = m.W[0], m.U[0], m.b[0]
    Wr, Wz, Wn = W.split(H, dim=1)
    Ur, Uz, Un = U.split(H, dim=1)
    br, bz, bn = b.split(H)
    Wz, Uz, bz = -Wz, -Uz, -bz  # the relabeling: Cho's keep gate is the paper's 1 - z
    h = torch.zeros(x.shape[1], H, dtype=torch.float64)
    out = []
    for t in range(x.shape[2]):
        xt = x[0, :, t]
        r = torch.sigmoid(xt @ Wr + h @ Ur + br)
        z = torch.sigmoid(xt @ Wz + h @ Uz + bz)
        g = torch.tanh(xt @ Wn + (r * h) @ Un + bn)  # reset BEFORE U, as in the paper
        h = z * h + (1 - z) * g
        out.append(h)
    torch.testing.assert_close(torch.stack(out, 1), m.hidden_states(x)[0], rtol=0, atol=1e-12)


def test_our_lstm_without_peepholes_is_torch_lstm() -> None:
    m = _paper_model("lstm")
    with torch.no_grad():
        m.peep.zero_()
    x = _rolls()
    lstm = torch.nn.LSTM(N_IN, H, batch_first=True).double()
    with torch.no_grad():  # same gate order (i, f, g, o); one bias is enough
        lstm.weight_ih_l0.copy_(m.W[0].T)
        lstm.weight_hh_l0.copy_(m.U[0].T)
        lstm.bias_ih_l0.copy_(m.b[0])
        lstm.bias_hh_l0.zero_()
    torch.testing.assert_close(m.hidden_states(x)[0], lstm(x[0])[0], rtol=0, atol=1e-12)
    with torch.no_grad():
        m.peep.fill_(0.5)
    assert not torch.allclose(m.hidden_states(x)[0], lstm(x[0])[0], atol=1e-4)  # peepholes do change it
