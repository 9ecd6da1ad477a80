"""Pure-torch recurrences with the paper's equations (Chung et al. 2014, Sec. 2-3), written step by step.

Every function takes the input projections `xp = x W + b` for all time steps at once, shape (K, B, T, G*H),
and the stacked recurrent matrices `U` (K, H, G*H) (right-multiplied: `h @ U`), and returns the hidden states
(K, B, T, H) for t = 1..T with h0 = 0 (and c0 = 0). Gate blocks along the last dim are in the order below.
This is the reference the numba kernels are tested against and the path used on GPU.
"""

from __future__ import annotations

import torch
from torch import Tensor

GATES: dict[str, int] = {"tanh": 1, "lstm": 4, "gru": 3}
"""Gate blocks per cell. tanh: [a]; lstm: [i, f, c~, o]; gru: [r, z, h~]."""


def tanh_step(xp_t: Tensor, state: Tensor, U: Tensor) -> tuple[Tensor, Tensor]:
    """One step of h' = tanh(W x + U h + b): (h', new state)."""
    h = torch.tanh(xp_t + torch.bmm(state, U))
    return h, h


def gru_step(xp_t: Tensor, state: Tensor, U: Tensor) -> tuple[Tensor, Tensor]:
    """One step of the paper GRU: the reset gate multiplies h BEFORE the recurrent matrix, U (r * h)."""
    H, h = U.shape[1], state
    r, z = torch.sigmoid(xp_t[..., : 2 * H] + torch.bmm(h, U[..., : 2 * H])).chunk(2, dim=-1)
    n = torch.tanh(xp_t[..., 2 * H :] + torch.bmm(r * h, U[..., 2 * H :]))
    h = (1 - z) * h + z * n
    return h, h


def lstm_step(xp_t: Tensor, state: Tensor, U: Tensor, peep: Tensor) -> tuple[Tensor, Tensor]:
    """One step of the Graves (2013) LSTM with diagonal peepholes `peep` (K, 3, H) = [p_i, p_f, p_o]; o
    peeks at the NEW c. The state is h and c concatenated (K, B, 2H)."""
    h, c = state.chunk(2, dim=-1)
    p_i, p_f, p_o = (p.unsqueeze(1) for p in peep.unbind(1))
    a_i, a_f, a_c, a_o = (xp_t + torch.bmm(h, U)).chunk(4, dim=-1)
    i = torch.sigmoid(a_i + p_i * c)
    f = torch.sigmoid(a_f + p_f * c)
    c = f * c + i * torch.tanh(a_c)
    o = torch.sigmoid(a_o + p_o * c)
    h = o * torch.tanh(c)
    return h, torch.cat([h, c], dim=-1)


STEPS = {"tanh": tanh_step, "gru": gru_step, "lstm": lstm_step}
STATE_SIZE = {"tanh": 1, "gru": 1, "lstm": 2}  # state width in units of H


def _run(cell: str, xp: Tensor, U: Tensor, *extra: Tensor) -> Tensor:
    state = xp.new_zeros(xp.shape[0], xp.shape[1], STATE_SIZE[cell] * U.shape[1])
    out = []
    for t in range(xp.shape[2]):
        h, state = STEPS[cell](xp[:, :, t], state, U, *extra)
        out.append(h)
    return torch.stack(out, dim=2)


def tanh_rnn(xp: Tensor, U: Tensor) -> Tensor:
    """h' = tanh(W x + U h + b) over all steps."""
    return _run("tanh", xp, U)


def gru(xp: Tensor, U: Tensor) -> Tensor:
    """Paper GRU over all steps (see `gru_step`)."""
    return _run("gru", xp, U)


def lstm(xp: Tensor, U: Tensor, peep: Tensor) -> Tensor:
    """Peephole LSTM over all steps (see `lstm_step`)."""
    return _run("lstm", xp, U, peep)
