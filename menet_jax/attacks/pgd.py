"""Projected gradient descent under an l-infinity bound (Madry et al., 2018).

    x_0     = clip(x + U(-eps, eps), 0, 1)                       (random start)
    x_{t+1} = clip(Pi_eps(x_t + alpha sign(grad_x L(x_t, t))), 0, 1)

where Pi_eps projects onto the l-inf ball of radius eps around the clean x.
The loss receives the step index t so that a randomized defense inside it can
draw fresh randomness at every step (as ME-Net's training does).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from menet_jax import validation


def pgd(loss_fn: Callable[[jax.Array, jax.Array], jax.Array], key: jax.Array, x: jax.Array, *,
        eps: float, step_size: float, steps: int, random_start: bool = True) -> jax.Array:
  """l-inf PGD that ascends `loss_fn`.

  Args:
    loss_fn: (x_adv (B, ...), t int32 scalar) -> (B,) per-example loss to maximise.
    key: PRNG key for the random start.
    x: (B, ...) float clean inputs in [0, 1].
    eps: l-inf radius, >= 0.
    step_size: alpha > 0.
    steps: number of gradient steps, >= 1.
    random_start: start from a uniform point of the eps-ball (Madry et al.).

  Returns:
    (B, ...) adversarial inputs with |x_adv - x|_inf <= eps, in [0, 1].
  """
  validation.number_in("eps", eps, 0.0, 1.0)
  validation.number_in("step_size", step_size, 0.0, 1.0, lo_open=True)
  validation.integer_in("steps", steps, 1)
  validation.floating_array("x", x, min_ndim=1)
  validation.values_in("x", x, 0.0, 1.0)
  grad_fn = jax.grad(lambda xa, t: jnp.sum(loss_fn(xa, t)))
  lo, hi = jnp.clip(x - eps, 0.0, 1.0), jnp.clip(x + eps, 0.0, 1.0)
  start = x
  if random_start:
    start = jnp.clip(x + jax.random.uniform(key, x.shape, x.dtype, -eps, eps), lo, hi)

  def step(t, xa):
    g = grad_fn(xa, t)
    return jnp.clip(xa + step_size * jnp.sign(g), lo, hi)

  return jax.lax.fori_loop(0, steps, step, jax.lax.stop_gradient(start))
