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


def per_model_norm(tensors: Sequence[Tensor], dtype: torch.dtype | None = None) -> Tensor:
    """(K,) L2 norm of each model's slice across all tensors (each (K, ...)): the norm of per-tensor norms.

    Each row of a tensor is reduced on its own (same result as norming model k's slice alone, which the
    tests check bit for bit), so one call per tensor serves all K models. `dtype=torch.float64` gives the
    true norm of a float32 gradient whose sum of squares would overflow float32.
    """
    k = tensors[0].shape[0]
    parts = [torch.linalg.vector_norm(t.reshape(k, -1), dim=1, dtype=dtype) for t in tensors]
    return torch.linalg.vector_norm(torch.stack(parts, dim=1), dim=1)


def _scale(norms: Tensor, limit: Tensor) -> Tensor:
    """Per-model factor min(1, limit / norm) (1 where the norm is within the limit)."""
    return torch.where(norms > limit, limit / norms, torch.ones_like(norms))


class StackedRMSProp:
    """RMSProp + momentum over parameters with a leading K dim; hyper-parameters are (K,) sequences.

    The state lives in flat (K, P) buffers (P: parameters per model) updated in place: an update is ~12
    tensor ops whatever the number of parameter tensors, and allocates nothing (fresh 100 KB-1 MB results
    made each op several times slower). Every op is elementwise and computes the documented expression in
    the same order, so the numbers are the same as updating tensor by tensor with new tensors.
    """

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

        def col(values: Sequence[float]) -> Tensor:  # (K, 1): broadcasts over a flat (K, P) buffer
            return torch.tensor(list(values), dtype=torch.float32, device=dev).view(-1, 1)

        self.mu, self.rho, self.eps, self.limit = col(momentum), col(rms_decay), col(eps), col(clip_norm)
        self.clip = clip
        self.sizes = [p[0].numel() for p in self.params]
        self._n = torch.zeros(self.k, sum(self.sizes), device=dev)
        self._v, self._g, self._tmp = (torch.zeros_like(self._n) for _ in range(3))

    def _split(self, flat: Tensor) -> list[Tensor]:
        """Per-parameter views (K, ...) of a flat (K, P) buffer."""
        return [f.view(p.shape) for f, p in zip(flat.split(self.sizes, dim=1), self.params, strict=True)]

    @property
    def n(self) -> list[Tensor]:
        """Running mean of squared gradients, per parameter."""
        return self._split(self._n)

    @property
    def v(self) -> list[Tensor]:
        """Velocity (the last clipped step), per parameter."""
        return self._split(self._v)

    def _grads(self) -> Tensor:
        """The gradients copied into the (K, P) buffer `_g`."""
        return torch.cat([p.grad.reshape(self.k, -1) for p in self.params], dim=1, out=self._g)

    def _norms(self, flat: Tensor) -> Tensor:
        return per_model_norm(flat.split(self.sizes, dim=1))

    def grad_norms(self) -> Tensor:
        """(K,) float64 norm of each model's whole gradient (before clipping)."""
        return per_model_norm(self._grads().split(self.sizes, dim=1), dtype=torch.float64)

    @torch.no_grad()
    def step(self, lr: Sequence[float], active: Sequence[bool], grad_norms: Tensor | None = None) -> None:
        """Update the models where `active` (the others, stopped or diverged, keep weights and state)."""
        dev = self._n.device
        frozen = None if all(active) else ~torch.tensor(list(active), dtype=torch.bool, device=dev)
        if frozen is not None:  # the in-place update runs on all rows; put the frozen ones back afterwards
            kept = [t[frozen].clone() for t in (self._n, self._v, *self.params)]
        g, n, v, tmp = self._grads(), self._n, self._v, self._tmp
        if self.clip == "grad":
            norms = self.grad_norms() if grad_norms is None else grad_norms  # float64, as training passes
            g.mul_(_scale(norms.to(g.dtype).view(-1, 1), self.limit))
        n.mul_(self.rho).add_(torch.mul(g, g, out=tmp).mul_(1 - self.rho))  # n = rho n + (1 - rho) g^2
        g.mul_(torch.tensor(list(lr), dtype=torch.float32, device=dev).view(-1, 1))
        g.div_(torch.add(n, self.eps, out=tmp).sqrt_())
        v.mul_(self.mu).sub_(g)  # v = s = mu v - lr g / sqrt(n + eps)
        if self.clip == "update":
            v.mul_(_scale(self._norms(v).view(-1, 1), self.limit))
        torch._foreach_add_(self.params, self._split(v))
        if frozen is not None:
            for t, old in zip((self._n, self._v, *self.params), kept, strict=True):
                t[frozen] = old

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
