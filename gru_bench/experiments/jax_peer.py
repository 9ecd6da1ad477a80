"""The JAX peer of `gru-bench bench`: the paper GRU, summed frame NLL and RMSProp + momentum with update
clipping, written the way a speed-minded JAX user would: one `jax.jit` per update, `jax.lax.scan` over time.

Only for comparison (optional extra `jax`); nothing else imports JAX. Same model (reset gate before U), same
loss (NLL summed over the unmasked frames), same optimizer as `train`'s defaults (floor, unclipped velocity),
weight noise on W and U from a JAX key. Sequences of different lengths are padded with a loss mask; each
padded length compiles once (the epoch bench rounds lengths up to multiples of 16 to bound that).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

UNROLL = 4  # lax.scan unrolling: the fastest of 1, 4 and 16 on a 60-step GRU 46 update here


def available() -> bool:
    """True when jax imports."""
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


def init(n_in: int, hidden: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Uniform(-0.1, 0.1) weights, zero biases (the speed does not depend on the values)."""
    rng = np.random.default_rng(seed)
    gh = 3 * hidden

    def u(*shape: int) -> np.ndarray:
        return rng.uniform(-0.1, 0.1, shape).astype(np.float32)

    zero = np.zeros
    return {
        "W": u(n_in, gh),
        "U": u(hidden, gh),
        "b": zero(gh, np.float32),
        "V": u(hidden, n_in),
        "c": zero(n_in, np.float32),
    }


def make_update(
    lr: float = 1e-3,
    momentum: float = 0.9,
    rho: float = 0.95,
    floor: float = 0.01,
    clip: float = 1.0,
    noise: float = 0.0,
) -> tuple[Callable, Callable]:
    """(update, nll): update(params, state, x, mask, key, i) -> (params, state, loss) is one jitted RMSProp
    step at noisy W and U (noise from fold_in(key, i)); nll(params, x, mask) the summed NLL.
    x (B, T + 1, n_in), mask (B, T) float32."""
    import jax
    import jax.numpy as jnp

    def nll(p, x, mask):
        H = p["U"].shape[0]
        xp = jnp.einsum("bti,ig->tbg", x[:, :-1], p["W"]) + p["b"]

        def cell(h, a):
            rz = jax.nn.sigmoid(a[:, : 2 * H] + h @ p["U"][:, : 2 * H])
            r, z = rz[:, :H], rz[:, H:]
            n = jnp.tanh(a[:, 2 * H :] + (r * h) @ p["U"][:, 2 * H :])
            h = (1 - z) * h + z * n
            return h, h

        _, hs = jax.lax.scan(cell, jnp.zeros((x.shape[0], H), x.dtype), xp, unroll=UNROLL)
        logits = jnp.einsum("tbh,ho->bto", hs, p["V"]) + p["c"]
        y = x[:, 1:]
        frame = (jnp.maximum(logits, 0) - logits * y + jnp.log1p(jnp.exp(-jnp.abs(logits)))).sum(-1)
        return (frame * mask).sum()

    def update(p, state, x, mask, key, i):
        noisy = dict(p)
        if noise > 0:
            ku, kw = jax.random.split(jax.random.fold_in(key, i))
            noisy["U"] = p["U"] + noise * jax.random.normal(ku, p["U"].shape, p["U"].dtype)
            noisy["W"] = p["W"] + noise * jax.random.normal(kw, p["W"].shape, p["W"].dtype)
        loss, g = jax.value_and_grad(nll)(noisy, x, mask)
        n = {k: rho * state["n"][k] + (1 - rho) * g[k] ** 2 for k in p}
        s = {k: momentum * state["v"][k] - lr * g[k] / jnp.maximum(jnp.sqrt(n[k]), floor) for k in p}
        norm = jnp.sqrt(sum((s[k] ** 2).sum() for k in p))
        scale = jnp.minimum(1.0, clip / norm)
        return {k: p[k] + s[k] * scale for k in p}, {"n": n, "v": s}, loss

    return jax.jit(update), jax.jit(nll)


def zeros_state(params: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    return {
        "n": {k: np.zeros_like(v) for k, v in params.items()},
        "v": {k: np.zeros_like(v) for k, v in params.items()},
    }
