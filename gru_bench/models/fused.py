"""torch.nn.RNN/LSTM/GRU semantics (cuDNN on GPU) for stacked parameters: one fused library call per model.

Parameters use torch.nn's layout, so weights copy 1:1 from/to `torch.nn.GRU` etc.: w_ih (K, G*H, I),
w_hh (K, G*H, H), b_ih and b_hh (K, G*H). Differences from the paper's cells: the GRU applies its reset gate
AFTER the recurrent matrix, n = tanh(W_n x + b_in + r * (U_n h + b_hn)), and the gate order is torch's
(GRU: r, z, n with h' = (1 - z) * n + z * h; LSTM: i, f, g, o without peepholes).
"""

from __future__ import annotations

import torch
from torch import Tensor

_OPS = {"tanh": torch._VF.rnn_tanh, "gru": torch._VF.gru, "lstm": torch._VF.lstm}


def run(cell: str, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """x (K, B, T, I) -> hidden states (K, B, T, H), h0 = c0 = 0."""
    K, B = x.shape[:2]
    h0 = x.new_zeros(1, B, w_hh.shape[-1])
    hx = (h0, h0) if cell == "lstm" else h0
    out = []
    for k in range(K):
        params = [w_ih[k], w_hh[k], b_ih[k], b_hh[k]]
        # args: has_biases, num_layers, dropout, train, bidirectional, batch_first
        y, *_ = _OPS[cell](x[k], hx, params, True, 1, 0.0, True, False, True)
        out.append(y)
    return torch.stack(out)


def step(
    cell: str, x: Tensor, state: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
) -> tuple[Tensor, Tensor]:
    """One step: x (K, B, I), state (K, B, H) (LSTM: h and c concatenated, (K, B, 2H)) -> (h', state')."""
    H = w_hh.shape[-1]
    hs, states = [], []
    for k in range(x.shape[0]):
        params = [w_ih[k], w_hh[k], b_ih[k], b_hh[k]]
        s = state[k].unsqueeze(0)
        hx = (s[..., :H].contiguous(), s[..., H:].contiguous()) if cell == "lstm" else s
        y, *last = _OPS[cell](x[k].unsqueeze(1), hx, params, True, 1, 0.0, False, False, True)
        hs.append(y[:, 0])
        states.append(torch.cat(last, dim=-1)[0])
    return torch.stack(hs), torch.stack(states)
