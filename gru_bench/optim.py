"""RMSProp with momentum for a stack of K models, each with its own hyper-parameters and clipping.

The update of model k, elementwise over all of its parameters (g: the gradient at the noisy weights):

    n <- rho n + (1 - rho) g^2                      running mean of squared gradients (rms_decay rho)
    s  = mu v - lr g / sqrt(n + eps)                 momentum step (momentum mu)
    s <- s * min(1, c / ||s||)                       clip="update": ||s|| is the norm of model k's whole step
    v <- s;  w <- w + s                              the velocity is the clipped step

This is Tieleman & Hinton's (2012) RMSProp (eps inside the root) followed by classical momentum, the
Theano-era form of "RMSProp, momentum 0.9, averaging 0.95"; we chose it over Graves' (2013) centred variant
(which also subtracts the running mean of g, sqrt(n - gbar^2 + eps)) because it has one state tensor less,
cannot take the root of a negative rounding error, and the two differ only where a gradient keeps its sign.
Clipping the *step* rather than the gradient bounds how far the weights move in one update whatever the RMS
normaliser does (a tiny n can turn a small gradient into a large step); clip="grad" rescales g before
everything instead (the paper's wording).
Storing the clipped step as the velocity keeps momentum from accumulating what clipping removed.

Every operation is elementwise with per-model scalars broadcast over the leading K dim, and per-model norms
are computed on each model's own slice, so model k's arithmetic is bit-identical to training it alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

CLIPS = ("update", "grad", "none")


def per_model_norm(tensors: Sequence[Tensor]) -> Tensor:
    """(K,) L2 norm of each model's slice across all tensors (each (K, ...)), computed slice by slice."""
    k = tensors[0].shape[0]
    return torch.stack(
        [
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t[i]) for t in tensors]))
            for i in range(k)
        ]
    )


def _scale(norms: Tensor, limit: Tensor) -> Tensor:
    """Per-model factor min(1, limit / norm) (1 where the norm is within the limit)."""
    return torch.where(norms > limit, limit / norms, torch.ones_like(norms))


class StackedRMSProp:
    """RMSProp + momentum over parameters with a leading K dim; hyper-parameters are (K,) sequences."""

    def __init__(
        self,
        params: Sequence[nn.Parameter],
        momentum: Sequence[float],
        rms_decay: Sequence[float],
        eps: Sequence[float],
        clip: str,
        clip_norm: Sequence[float],
    ):
        if clip not in CLIPS:
            raise ValueError(f"clip must be one of {CLIPS}, got {clip!r}")
        self.params = list(params)
        self.k = self.params[0].shape[0]
        dev = self.params[0].device

        def vec(values: Sequence[float]) -> Tensor:
            return torch.tensor(list(values), dtype=torch.float32, device=dev)

        self.mu, self.rho, self.eps, self.limit = vec(momentum), vec(rms_decay), vec(eps), vec(clip_norm)
        self.clip = clip
        self.n = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    def _b(self, x: Tensor, like: Tensor) -> Tensor:
        """(K,) -> (K, 1, ..., 1) to broadcast over one parameter."""
        return x.view(-1, *([1] * (like.dim() - 1)))

    def grad_norms(self) -> Tensor:
        """(K,) norm of each model's whole gradient (before clipping)."""
        return per_model_norm([p.grad for p in self.params])

    @torch.no_grad()
    def step(self, lr: Sequence[float], active: Sequence[bool], grad_norms: Tensor | None = None) -> None:
        """Update the models where `active` (the others, stopped or diverged, keep weights and state)."""
        dev = self.params[0].device
        lr_t = torch.tensor(list(lr), dtype=torch.float32, device=dev)
        on = torch.tensor(list(active), dtype=torch.bool, device=dev)
        grads = [p.grad for p in self.params]
        if self.clip == "grad":
            f = _scale(self.grad_norms() if grad_norms is None else grad_norms, self.limit)
            grads = [g * self._b(f, g) for g in grads]
        new_n, steps = [], []
        for g, n, v in zip(grads, self.n, self.v, strict=True):
            rho = self._b(self.rho, g)
            n2 = rho * n + (1 - rho) * (g * g)
            steps.append(
                self._b(self.mu, g) * v - self._b(lr_t, g) * g / torch.sqrt(n2 + self._b(self.eps, g))
            )
            new_n.append(n2)
        if self.clip == "update":
            f = _scale(per_model_norm(steps), self.limit)
            steps = [s * self._b(f, s) for s in steps]
        for p, n, v, n2, s in zip(self.params, self.n, self.v, new_n, steps, strict=True):
            m = self._b(on, p)
            n.copy_(torch.where(m, n2, n))
            v.copy_(torch.where(m, s, v))
            p.copy_(torch.where(m, p + s, p))

    def state_of(self, i: int) -> dict[str, list[Tensor]]:
        """Model i's optimizer state (for its own checkpoint)."""
        return {
            "n": [n[i].detach().cpu().clone() for n in self.n],
            "v": [v[i].detach().cpu().clone() for v in self.v],
        }

    @torch.no_grad()
    def load_state_of(self, i: int, state: dict[str, list[Tensor]]) -> None:
        for dst, src in zip(self.n, state["n"], strict=True):
            dst[i].copy_(src)
        for dst, src in zip(self.v, state["v"], strict=True):
            dst[i].copy_(src)
