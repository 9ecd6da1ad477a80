"""RMSProp with momentum for a stack of K models, each with its own hyper-parameters and clipping.

The update of model k, elementwise over all of its parameters (g: the gradient at the noisy weights):

    n <- rho n + (1 - rho) g^2                      running mean of squared gradients (rms_decay rho)
    s  = mu v - lr g / max(sqrt(n + eps), floor)     momentum step (momentum mu; floor 0 by default)
    v <- s                                           clip_velocity=False (the authors' code) stops here
    s <- s * min(1, c / ||s||)                       clip="update": ||s|| is the norm of model k's whole step
    v <- s (clip_velocity=True, our default);  w <- w + s

The authors' code (jych/librnn RMSPropMomentum, momentum_clipping=1, bound_inc=False) is eps=0, floor=0.01,
clip_velocity=False: its normaliser is max(sqrt(n), 1e-2) and it clips only the step it applies, keeping the
unclipped velocity (tests/test_optim.py transcribes its update rule and checks ours against it).

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

On the CPU (float32 parameters, numba installed) compiled loops do the work (`_grad_norms`: one pass over the
gradients; `_rmsprop`: one pass over gradient, state and weights, plus one over step and weights for
clip="update"); ~12 torch ops over flat buffers cost 4-5x more, mostly in dispatch and in re-reading the
buffers. The elementwise chain is the same float32 expression in the same order (no fastmath, so no FMA
contraction): bit for bit numpy's float32 evaluation, and the torch path's numbers but for torch's CPU sqrt,
which is not correctly rounded (1 ulp off on ~1 element in 6). Norms are float64 there (the exact-ish norm:
no overflow of g^2, NaN/inf stay non-finite), summed in LANES interleaved running sums (element j of a tensor
row goes to lane j mod LANES, in order; the lanes are added up in order): a fixed order over model k's own
slice, independent of K, that still vectorises. The clipping factors computed from them may differ from the
torch path's (float32 norms) in the last bit. Elsewhere (CUDA, other dtypes, no numba) the torch ops run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from gru_bench.config import CLIPS

try:
    from numba import njit

    from gru_bench.models import simd
except ImportError:  # pragma: no cover - the pure-torch path takes over
    njit = None

_ZERO = np.float32(0.0)
LANES = 64  # interleaved float64 running sums per norm (fixed: it sets the summation order)

# error_model="numpy": x / 0 is IEEE inf/NaN, as in torch, instead of a ZeroDivisionError check per element;
# _nrt=False (as kernels._raw): no reference counting of the slices the passes take (an atomic increment
# and decrement each; 0.95x the time of the RMSProp step of GRU 46), so they may not allocate
_raw = (
    (lambda f: f)
    if njit is None
    else njit(_nrt=False, cache=True, fastmath=False, nogil=True, error_model="numpy")
)


@_raw
def _add_squares(x, acc):
    """acc[l] += x[j]^2 in float64 for j = l (mod len(acc)), j ascending (x: a unit-stride float32 row).
    len(acc) is a multiple of 32: 32 lanes at a time run over all blocks of len(acc) elements in two
    16-lane float64 vectors that stay in registers, each lane adding its elements in order (accumulating
    in acc itself, a loop over each block's lanes stored and reloaded them every block: 3x as long)."""
    lanes = acc.shape[0]
    blocks = x.shape[0] // lanes
    for o in range(0, lanes, 2 * simd.LANES):
        a, b = simd.load64(acc, o), simd.load64(acc, o + simd.LANES)
        for i in range(o, blocks * lanes, lanes):
            a = simd.add_squares(a, x, i)
            b = simd.add_squares(b, x, i + simd.LANES)
        simd.store64(acc, o, a)
        simd.store64(acc, o + simd.LANES, b)
    t = x[blocks * lanes :]
    for j in range(t.shape[0]):
        acc[j] += np.float64(t[j]) * np.float64(t[j])


@_raw
def _lane_norm(acc):
    """sqrt of the lanes' sum, added up in order."""
    total = 0.0
    for j in range(acc.shape[0]):
        total += acc[j]
    return np.sqrt(total)


@_raw
def _grad_norms(grads, acc, out):
    """out[k] = float64 norm of model k's gradient over all tensors (each (K, m_i), in order)."""
    for k in range(out.shape[0]):
        acc[:] = 0.0
        for i in range(len(grads)):
            _add_squares(grads[i][k], acc)
        out[k] = _lane_norm(acc)


@_raw
def _moments_squares(g, n, v, gs, rho, omr, lr, eps, floor, mu, acc):
    """`_moments`'s n and v without the step, and acc += v^2 exactly as `_add_squares(v, acc)` adds them:
    in blocks of 16 x len(acc) elements, each squared while in the L1 cache."""
    block = 16 * acc.shape[0]  # a multiple of len(acc): each element keeps its lane
    for o in range(0, g.shape[0], block):
        e = min(o + block, g.shape[0])
        _moments(g[o:e], n[o:e], v[o:e], v[:0], gs, rho, omr, lr, eps, floor, mu, False)
        _add_squares(v[o:e], acc)


@_raw
def _moments(g, n, v, w, gs, rho, omr, lr, eps, floor, mu, apply):
    """n = rho n + (1 - rho) g^2; v = mu v - lr g / max(sqrt(n + eps), floor), g scaled by gs (the torch
    path's float32 ops in its order), 16 elements at a time; w += v too if `apply` (no update clipping:
    the step is final). floor = 0 changes nothing (a root is never below 0).

    Where all 16 gradients are zero (input weights of notes that did not sound, all of U after one step)
    the root and the division are skipped: the quotient is lr g itself, a zero of g's sign, wherever the
    denominator is > 0: n + eps > 0, or >= 0 with floor > 0 (else it is 0 or NaN, and the division runs
    to make its NaN): the same numbers. The pass mostly waits on memory (g, n, v, w in; n, v, w out), so
    this saves less than the divisions' share: GRU 46's pass took 0.87-0.89x the time with the gradients
    of a 1-step update (U and ~96% of W zero), 0.95-0.97x with 70% of W's rows zero (as in a JSB update),
    1.01-1.02x with none zero."""
    m = g.shape[0]
    for j in range(0, m, simd.LANES):
        left = m - j
        gj = simd.get(g, j, left) * gs
        nj = simd.get(n, j, left) * rho + gj * gj * omr
        simd.put(n, j, nj, left)
        x = nj + eps
        positive = simd.all_lanes(x >= _ZERO) if floor > 0 else simd.all_lanes(x > _ZERO)
        if positive and not simd.any_lane(gj != _ZERO):
            s = simd.get(v, j, left) * mu - gj * lr
        else:
            d = simd.sqrt(x)
            s = simd.get(v, j, left) * mu - gj * lr / simd.where(d < floor, floor, d)
        simd.put(v, j, s, left)
        if apply:
            simd.put(w, j, simd.get(w, j, left) + s, left)


@_raw
def _apply(w, v, scale, scaled, keep_v):
    """w += v * scale if scaled, else w += v; v keeps the scaled step unless keep_v (unclipped velocity)."""
    if scaled and keep_v:
        for j in range(w.shape[0]):
            w[j] += v[j] * scale
    elif scaled:
        for j in range(w.shape[0]):
            s = v[j] * scale
            v[j] = s
            w[j] += s
    else:
        for j in range(w.shape[0]):
            w[j] += v[j]


@_raw
def _rmsprop(grads, weights, n, v, active, lr, mu, rho, omr, eps, floor, limit, gnorm, clip, keep_v, acc):
    """One update of every active model k (row k of each (K, m_i) gradient/weight, of the (K, P) state).

    clip: 0 "update" (a second pass scales the step once its norm is known, and applies it), 1 "grad"
    (gnorm: the (K,) gradient norms), 2 "none". lr, mu, rho, omr = 1 - rho, eps, floor, limit: (K,) float32;
    keep_v: the velocity stays unclipped (only the applied step is clipped).
    Inactive models are skipped: their weights and state are not touched."""
    for k in range(n.shape[0]):
        if not active[k]:
            continue
        gs = np.float32(1.0)
        if clip == 1 and gnorm[k] > limit[k]:
            gs = np.float32(limit[k] / gnorm[k])
        nk, vk = n[k], v[k]
        acc[:] = 0.0
        off = 0
        for i in range(len(grads)):
            g = grads[i][k]
            m = g.shape[0]
            ni, vi = nk[off : off + m], vk[off : off + m]
            if clip == 0:
                _moments_squares(g, ni, vi, gs, rho[k], omr[k], lr[k], eps[k], floor[k], mu[k], acc)
            else:
                _moments(g, ni, vi, weights[i][k], gs, rho[k], omr[k], lr[k], eps[k], floor[k], mu[k], True)
            off += m
        if clip == 0:
            norm = _lane_norm(acc)
            scaled = norm > limit[k]
            scale = np.float32(limit[k] / norm) if scaled else np.float32(1.0)
            off = 0
            for i in range(len(weights)):
                w = weights[i][k]
                m = w.shape[0]
                _apply(w, vk[off : off + m], scale, scaled, keep_v)
                off += m


def per_model_norm(tensors: Sequence[Tensor], dtype: torch.dtype | None = None) -> Tensor:
    """(K,) L2 norm of each model's slice across all tensors (each (K, ...)): the norm of per-tensor norms.

    Each row of a tensor is reduced on its own (same result as norming model k's slice alone, which the
    tests check bit for bit), so one call per tensor serves all K models. `dtype=torch.float64` gives the
    true norm of a float32 gradient whose sum of squares would overflow float32.
    """
    k = tensors[0].shape[0]
    parts = [torch.linalg.vector_norm(t.reshape(k, -1), dim=1, dtype=dtype) for t in tensors]
    return torch.linalg.vector_norm(torch.stack(parts, dim=1), dim=1)


def _mark_modified(tensors: Sequence[Tensor]) -> None:
    """Bump the autograd version counters of tensors written through numpy views, as an in-place torch op
    would (so that a graph that saved them still refuses to backpropagate through the old values)."""
    try:
        torch.autograd.graph.increment_version(tensors)
    except TypeError:  # older torch: one tensor at a time
        for t in tensors:
            torch.autograd.graph.increment_version(t)


def _scale(norms: Tensor, limit: Tensor) -> Tensor:
    """Per-model factor min(1, limit / norm) (1 where the norm is within the limit)."""
    return torch.where(norms > limit, limit / norms, torch.ones_like(norms))


class StackedRMSProp:
    """RMSProp + momentum over parameters with a leading K dim; hyper-parameters are (K,) sequences.

    The state lives in flat (K, P) buffers (P: parameters per model) updated in place. On the CPU with numba
    (`fast`, the default when possible) an update is one compiled pass over each model's gradient, state and
    weights (a second one over the step for clip="update"), reading the gradients and writing the weights in
    place through numpy views. Otherwise it is ~12 tensor ops whatever the number of parameter tensors, and
    allocates nothing (fresh 100 KB-1 MB results made each op several times slower). Every op is elementwise
    and computes the documented expression in the same order, so the numbers are the same as updating tensor
    by tensor with new tensors.
    """

    def __init__(
        self,
        params: Sequence[nn.Parameter],
        momentum: Sequence[float],
        rms_decay: Sequence[float],
        eps: Sequence[float],
        clip: str,
        clip_norm: Sequence[float],
        *,
        floor: Sequence[float] | None = None,
        clip_velocity: bool = True,
        fast: bool | None = None,
    ):
        """`floor`: (K,) lower bounds of the RMS normaliser (default 0: none); `clip_velocity`: False keeps
        the unclipped velocity (the authors' code). `fast`: None uses the numba pass where it can (CPU float32
        parameters, numba importable), False never, True insists (ValueError where it cannot)."""
        if clip not in CLIPS:
            raise ValueError(f"clip must be one of {CLIPS}, got {clip!r}")
        self.params = list(params)
        self.k = self.params[0].shape[0]
        dev = self.params[0].device

        def col(values: Sequence[float]) -> Tensor:  # (K, 1): broadcasts over a flat (K, P) buffer
            return torch.tensor(list(values), dtype=torch.float32, device=dev).view(-1, 1)

        self.mu, self.rho, self.eps, self.limit = col(momentum), col(rms_decay), col(eps), col(clip_norm)
        self.floor = col([0.0] * self.k if floor is None else floor)
        self.clip, self.clip_velocity = clip, clip_velocity
        self.sizes = [p[0].numel() for p in self.params]
        self._n = torch.zeros(self.k, sum(self.sizes), device=dev)
        self._v, self._g, self._tmp = (torch.zeros_like(self._n) for _ in range(3))
        dtypes = sorted({str(p.dtype) for p in self.params})
        possible = njit is not None and dev.type == "cpu" and dtypes == [str(torch.float32)]
        if fast and not possible:
            raise ValueError(
                f"fast=True needs numba and CPU float32 parameters (got {dev}, {dtypes}, "
                f"numba {'ok' if njit is not None else 'missing'})"
            )
        self.fast = possible if fast is None else bool(fast)
        if self.fast:
            self._g = self._tmp = None  # the numba pass reads the gradients where they are, needs no scratch
            # (K,) numpy views and copies for the compiled pass; float32 like the torch path's columns
            self._np_n, self._np_v = self._n.numpy(), self._v.numpy()
            self._np_mu, self._np_rho, self._np_eps, self._np_floor, self._np_limit = (
                t.view(-1).numpy() for t in (self.mu, self.rho, self.eps, self.floor, self.limit)
            )
            self._np_omr = (1 - self.rho).view(-1).numpy()  # the float32 1 - rho of the torch path
            self._acc = np.zeros(LANES)
        self._clip_code = CLIPS.index(clip)  # 0 update, 1 grad, 2 none: the numba pass's `clip`

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

    def _grad_arrays(self) -> tuple[np.ndarray, ...]:
        """(K, m_i) C-contiguous numpy views of the gradients (copies where one is not contiguous)."""
        return tuple(np.ascontiguousarray(p.grad.detach().numpy().reshape(self.k, -1)) for p in self.params)

    def _weight_arrays(self) -> tuple[np.ndarray, ...] | None:
        """(K, m_i) numpy views of the parameters, written in place; None if one is not contiguous."""
        if not all(p.is_contiguous() for p in self.params):
            return None
        return tuple(p.detach().numpy().reshape(self.k, -1) for p in self.params)

    def _norms(self, flat: Tensor) -> Tensor:
        return per_model_norm(flat.split(self.sizes, dim=1))

    def grad_norms(self) -> Tensor:
        """(K,) float64 norm of each model's whole gradient (before clipping)."""
        if self.fast:
            out = np.empty(self.k)
            _grad_norms(self._grad_arrays(), self._acc, out)
            return torch.from_numpy(out)
        return per_model_norm(self._grads().split(self.sizes, dim=1), dtype=torch.float64)

    @torch.no_grad()
    def step(self, lr: Sequence[float], active: Sequence[bool], grad_norms: Tensor | None = None) -> None:
        """Update the models where `active` (the others, stopped or diverged, keep weights and state)."""
        if len(lr) != self.k or len(active) != self.k:
            raise ValueError(f"need {self.k} learning rates and active flags, got {len(lr)}, {len(active)}")
        weights = self._weight_arrays() if self.fast else None
        if weights is not None:
            grads = self._grad_arrays()
            gnorm = self._acc[:0]  # unused unless clip="grad"
            if self.clip == "grad":
                gnorm = self.grad_norms() if grad_norms is None else grad_norms
                gnorm = np.ascontiguousarray(gnorm.detach().to("cpu", torch.float64).numpy())
                if gnorm.shape != (self.k,):
                    raise ValueError(f"grad_norms must have shape ({self.k},), got {tuple(gnorm.shape)}")
            _rmsprop(
                grads,
                weights,
                self._np_n,
                self._np_v,
                np.array(active, dtype=np.bool_),
                np.array(lr, dtype=np.float32),
                self._np_mu,
                self._np_rho,
                self._np_omr,
                self._np_eps,
                self._np_floor,
                self._np_limit,
                gnorm,
                self._clip_code,
                not self.clip_velocity,
                self._acc,
            )
            _mark_modified(self.params)
            return
        self._step_torch(lr, active, grad_norms)

    def _step_torch(self, lr: Sequence[float], active: Sequence[bool], grad_norms: Tensor | None) -> None:
        dev = self._n.device
        if self._g is None:  # a fast optimizer whose parameters stopped being contiguous
            self._g, self._tmp = torch.zeros_like(self._n), torch.zeros_like(self._n)
        frozen = None if all(active) else ~torch.tensor(list(active), dtype=torch.bool, device=dev)
        if frozen is not None:  # the in-place update runs on all rows; put the frozen ones back afterwards
            kept = [t[frozen].clone() for t in (self._n, self._v, *self.params)]
        g, n, v, tmp = self._grads(), self._n, self._v, self._tmp
        if self.clip == "grad":
            norms = self.grad_norms() if grad_norms is None else grad_norms  # float64, as training passes
            g.mul_(_scale(norms.to(g.dtype).view(-1, 1), self.limit))
        n.mul_(self.rho).add_(torch.mul(g, g, out=tmp).mul_(1 - self.rho))  # n = rho n + (1 - rho) g^2
        g.mul_(torch.tensor(list(lr), dtype=torch.float32, device=dev).view(-1, 1))
        g.div_(torch.maximum(torch.add(n, self.eps, out=tmp).sqrt_(), self.floor, out=tmp))
        v.mul_(self.mu).sub_(g)  # v = s = mu v - lr g / max(sqrt(n + eps), floor)
        step = v
        if self.clip == "update":
            scale = _scale(self._norms(v).view(-1, 1), self.limit)
            step = torch.mul(v, scale, out=tmp) if not self.clip_velocity else v.mul_(scale)
        torch._foreach_add_(self.params, self._split(step))
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
