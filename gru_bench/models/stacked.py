"""K independent next-frame models stored as one module: every parameter has a leading K dim.

Training K seeds / learning rates in lockstep then costs one set of batched ops instead of K. Model i is
initialised only from generators[i] and its arithmetic never mixes with the other models, so model i of a
stack behaves like the same model trained alone (bit for bit on the CPU kernels).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gru_bench.config import FAST_MODES, IMPLS
from gru_bench.data.registry import N_NOTES
from gru_bench.errors import UserError
from gru_bench.models import cells, fused, kernels
from gru_bench.paper import CELLS, HIDDEN_SIZES

_PAPER = {"tanh": cells.tanh_rnn, "gru": cells.gru, "lstm": cells.lstm}


def count_params(cell: str, impl: str, hidden: int, n_in: int = N_NOTES) -> int:
    """Parameters of ONE model: recurrent layer + linear readout to n_in logits.

    `fused` counts torch.nn's two bias vectors (b_ih and b_hh), `paper` one bias plus LSTM peepholes.
    """
    g = cells.GATES[cell]
    n_bias = 2 if impl == "fused" else 1
    peep = 3 * hidden if (cell == "lstm" and impl == "paper") else 0
    return g * hidden * (n_in + hidden + n_bias) + peep + hidden * n_in + n_in


def hidden_for_budget(cell: str, impl: str, budget: int, n_in: int = N_NOTES) -> int:
    """Hidden size whose parameter count is closest to `budget` (ties -> the smaller model)."""
    if budget < count_params(cell, impl, 1, n_in):
        raise UserError(
            f"parameter budget {budget} is below the smallest {cell} model "
            f"({count_params(cell, impl, 1, n_in)} params); use a larger budget"
        )
    h = 1
    while count_params(cell, impl, h + 1, n_in) <= budget:
        h += 1
    below, above = count_params(cell, impl, h, n_in), count_params(cell, impl, h + 1, n_in)
    return h if budget - below <= above - budget else h + 1


def masked_nll(logits: Tensor, targets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per sequence: (sum over its unmasked frames of the frame NLL, number of unmasked frames), each (K, B).

    Frame NLL = -sum over the notes of [y log p + (1 - y) log(1 - p)], p = sigmoid(logit), in nats.
    logits, targets (K, B, T, n); mask (K, B, T) bool. Model k is scored on its own slice, cut to its last
    unmasked step, so padding added for the other models of a stack never touches its arithmetic.
    """
    # model k's last unmasked step + 1 (the mask of a sequence is a prefix), for all models in one op
    ends = (mask.any(1) * torch.arange(1, mask.shape[2] + 1, device=mask.device)).amax(1).tolist()
    sums = []
    for k, t in enumerate(ends):
        # contiguous copies: torch's vectorised log/exp round differently from its scalar tail loop, so the
        # same frame must sit at the same place in memory as when model k trains alone
        lg, y, m = (a[k, :, :t].contiguous() for a in (logits, targets, mask))
        nll = F.binary_cross_entropy_with_logits(lg, y, reduction="none").sum(-1)
        sums.append(torch.where(m, nll, 0.0).sum(-1))
    return torch.stack(sums), mask.sum(2)


def _orthogonal(n: int, gen: torch.Generator) -> Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


class StackedModel(nn.Module):
    """Recurrent layer over n_in note columns (88 keys by default) + linear readout to n_in logits (sigmoid
    applied in the loss)."""

    def __init__(self, cell: str, impl: str, hidden: int, k: int, fast: str = "auto", n_in: int = N_NOTES):
        super().__init__()
        self.cell, self.impl, self.hidden, self.k, self.fast, self.n_in = cell, impl, hidden, k, fast, n_in
        gh = cells.GATES[cell] * hidden

        def p(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.zeros(k, *shape))

        if impl == "paper":  # right-multiplied: x @ W, h @ U
            self.W, self.U, self.b = p(n_in, gh), p(hidden, gh), p(gh)
            if cell == "lstm":
                self.peep = p(3, hidden)
        else:  # torch.nn layout, copies 1:1 to torch.nn.GRU/LSTM/RNN
            self.w_ih, self.w_hh, self.b_ih, self.b_hh = p(gh, n_in), p(gh, hidden), p(gh), p(gh)
        self.V, self.c = p(hidden, n_in), p(n_in)

    def recurrent_weights(self) -> list[nn.Parameter]:
        """The hidden-to-hidden matrices (weight-noise targets), each (K, ...)."""
        return [self.U if self.impl == "paper" else self.w_hh]

    def layer_weights(self) -> list[nn.Parameter]:
        """The recurrent layer's input-to-hidden matrices (W: weight noise with noise_on=input_recurrent)."""
        return [self.W if self.impl == "paper" else self.w_ih]

    def num_params(self) -> int:
        return sum(p[0].numel() for p in self.parameters())

    @torch.no_grad()
    def init_weights(self, generators: list[torch.Generator], scale: float = 0.1, orthogonal: bool = True):
        """Uniform(-scale, scale) weights, an orthogonal H x H block per gate of U, zero biases.

        Model i draws only from generators[i] (CPU generators), parameter by parameter in registration
        order, so its weights do not depend on K or on the other models. The LSTM forget-gate bias is 0
        like every bias (the paper states no special forget bias).
        """
        if len(generators) != self.k:
            raise ValueError(f"need {self.k} generators, got {len(generators)}")
        recurrent = self.recurrent_weights()[0]
        for i, gen in enumerate(generators):
            for name, prm in self.named_parameters():
                shape = prm.shape[1:]
                if name in ("b", "b_ih", "b_hh", "c"):
                    val = torch.zeros(shape)
                elif prm is recurrent and orthogonal:
                    blocks = [_orthogonal(self.hidden, gen) for _ in range(cells.GATES[self.cell])]
                    val = torch.cat(blocks, dim=1 if self.impl == "paper" else 0)
                else:
                    val = (torch.rand(shape, generator=gen) * 2 - 1) * scale
                prm[i].copy_(val)

    def use_kernels(self, x: Tensor) -> bool:
        """Whether this forward runs the numba kernels (CPU float32 only)."""
        if self.fast == "off" or (self.fast == "auto" and os.environ.get("GRU_BENCH_FAST", "1") == "0"):
            return False
        eligible = x.device.type == "cpu" and x.dtype == self.V.dtype == torch.float32
        if self.fast == "on" and not (kernels.available() and eligible):
            raise UserError(
                f"fast='on' needs numba and CPU float32 tensors (got {x.device}, {x.dtype}, "
                f"numba {'ok' if kernels.available() else 'missing'}); use fast='auto'"
            )
        return eligible and kernels.available()

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """x (K, B, T, n_in) float -> logits (K, B, T, n_in); frame t's logits predict frame t+1.

        lengths (K, B), optional: input steps of each sequence. Logits at t >= length are unspecified
        (the numba kernels skip those steps and return 0 there, pure torch computes them anyway).
        """
        if x.dim() != 4 or x.shape[0] != self.k or x.shape[-1] != self.n_in:
            raise ValueError(f"expected x of shape ({self.k}, B, T, {self.n_in}), got {tuple(x.shape)}")
        if self.use_kernels(x):
            return self._kernel_forward(x, lengths)
        K, B, T, n_in = x.shape
        hs = self.hidden_states(x).reshape(K, B * T, self.hidden)
        return torch.baddbmm(self.c.unsqueeze(1), hs, self.V).reshape(K, B, T, n_in)

    def nll(self, x: Tensor, lengths: Tensor) -> Tensor:
        """(K, B): each sequence's frame NLL of predicting x[:, :, 1:] from x[:, :, :-1], summed over its
        first lengths[k, s] predictions; x (K, B, T + 1, n_in). The CPU kernels compute loss and gradient
        inside numba (float64 sums); pure torch uses `masked_nll`."""
        if self.use_kernels(x):
            return self._kernel_forward(x, lengths, nll=True)
        mask = torch.arange(x.shape[2] - 1, device=x.device) < lengths.unsqueeze(-1)
        return masked_nll(self(x[:, :, :-1], lengths), x[:, :, 1:], mask)[0]

    @torch.no_grad()
    def step(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One time step for generation: x (K, B, n_in) -> (logits (K, B, n_in), state). `state` None is the
        zero start; feed the returned state back in. Pure torch; the same function as `forward`."""
        K, B, _ = x.shape
        width = cells.STATE_SIZE[self.cell] * self.hidden
        state = x.new_zeros(K, B, width) if state is None else state
        if self.impl == "fused":
            h, state = fused.step(self.cell, x, state, self.w_ih, self.w_hh, self.b_ih, self.b_hh)
        else:
            xp = torch.baddbmm(self.b.unsqueeze(1), x, self.W)
            peep = (self.peep,) if self.cell == "lstm" else ()
            h, state = cells.STEPS[self.cell](xp, state, self.U, *peep)
        return torch.baddbmm(self.c.unsqueeze(1), h, self.V), state

    def hidden_states(self, x: Tensor) -> Tensor:
        """Pure torch: x (K, B, T, n_in) -> hidden states (K, B, T, H)."""
        K, B, T, n_in = x.shape
        if self.impl == "fused":
            return fused.run(self.cell, x, self.w_ih, self.w_hh, self.b_ih, self.b_hh)
        xp = torch.baddbmm(self.b.unsqueeze(1), x.reshape(K, B * T, n_in), self.W)
        peep = (self.peep,) if self.cell == "lstm" else ()
        return _PAPER[self.cell](xp.reshape(K, B, T, -1), self.U, *peep)

    def _kernel_forward(self, x: Tensor, lengths: Tensor | None, nll: bool = False) -> Tensor:
        """The same function through one numba autograd op (the fused form re-laid out for it)."""
        if self.impl == "paper":
            peep = self.peep if self.cell == "lstm" else None
            return kernels.run(self.cell, x, self.W, self.b, self.U, self.V, self.c, peep, lengths, nll)
        W, U = self.w_ih.transpose(1, 2), self.w_hh.transpose(1, 2)
        if self.cell == "gru":  # b_hn stays inside r * (U_n h + b_hn); the other hidden biases fold into b
            H = self.hidden
            b_hh_rz = torch.cat([self.b_hh[:, : 2 * H], torch.zeros_like(self.b_hh[:, 2 * H :])], dim=1)
            b_hn = self.b_hh[:, 2 * H :]
            return kernels.run("gru_cudnn", x, W, self.b_ih + b_hh_rz, U, self.V, self.c, b_hn, lengths, nll)
        no_peep = x.new_zeros(self.k, 3, self.hidden) if self.cell == "lstm" else None
        return kernels.run(self.cell, x, W, self.b_ih + self.b_hh, U, self.V, self.c, no_peep, lengths, nll)

    def extra_repr(self) -> str:
        return f"cell={self.cell}, impl={self.impl}, hidden={self.hidden}, k={self.k}, fast={self.fast}"


def build_model(
    cell: str,
    impl: str = "paper",
    hidden: int | None = None,
    k: int = 1,
    fast: str = "auto",
    n_in: int = N_NOTES,
) -> StackedModel:
    """A stack of k models with zero weights over n_in note columns; call `init_weights` before training."""
    for what, value, allowed in (("cell", cell, CELLS), ("impl", impl, IMPLS), ("fast", fast, FAST_MODES)):
        if value not in allowed:
            raise UserError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
    hidden = HIDDEN_SIZES[cell] if hidden is None else hidden
    if hidden < 1 or k < 1:
        raise UserError(f"hidden ({hidden}) and k ({k}) must be >= 1")
    return StackedModel(cell, impl, hidden, k, fast, n_in)
