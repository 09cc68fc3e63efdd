"""The Carlini-Wagner l2 attack (Carlini & Wagner, 2017): the smallest perturbation found.

With the change of variables x' = (tanh(w) + 1) / 2, which keeps x' in [0, 1]
without clipping, each example minimises over w

    |x' - x|_2^2 + c f(x'),    f(x') = max(z_y(x') - max_{j != y} z_j(x'), -kappa)

by Adam from w at the clean image (reset before each round). The constant c is
set per example by `binary_steps` rounds of binary search: after a round that
found an adversarial example (f = -kappa, i.e. the best wrong logit leads by
kappa) c is bisected down, otherwise up (times 10 while no success bounds it).
The attack returns, per example, the adversarial iterate of smallest l2
distance seen in any round, or the clean image where none was found.

The loss receives the step index t (round r, step s: t = r steps + s), so that
a randomized defense inside it can draw fresh randomness at every step.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from menet_jax.attacks.losses import cw_margin
from menet_jax.attacks.pgd import check_inputs
from menet_jax.utils import validation

# The search's "no success yet" upper bound of c, as in Carlini's code.
_UNBOUNDED = 1e10


def cw_l2(logits_fn: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array, y: jax.Array, *,
          steps: int = 1000, binary_steps: int = 5, lr: float = 0.01,
          initial_const: float = 1.0, kappa: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Minimum-l2 adversarial examples.

  Args:
    logits_fn: (x' (B, ...), t int32 scalar) -> (B, classes) logits.
    x: (B, ...) float clean inputs in [0, 1]; y: (B,) int labels.
    steps: Adam steps per round, >= 1.
    binary_steps: rounds of the search over c, >= 1.
    lr: Adam's learning rate (in w, the tanh space), > 0.
    initial_const: c of the first round, > 0.
    kappa: the confidence, >= 0.

  Returns:
    (x_adv (B, ...) in [0, 1], found (B,) bool): the closest adversarial example found,
    or x where found is False.
  """
  check_inputs(x, 0.0)
  steps = validation.integer_in("steps", steps, 1)
  binary_steps = validation.integer_in("binary_steps", binary_steps, 1)
  validation.number_in("lr", lr, 0.0, float("inf"), lo_open=True)
  validation.number_in("initial_const", initial_const, 0.0, _UNBOUNDED, lo_open=True)
  validation.number_in("kappa", kappa, 0.0, float("inf"))
  batch, axes = x.shape[0], tuple(range(1, x.ndim))
  # arctanh(+-1) is infinite: pixels at 0 or 1 start a hair inside.
  w0 = jnp.arctanh((2 * x - 1) * (1 - 1e-6))
  opt = optax.adam(lr)

  def image(w):
    return (jnp.tanh(w) + 1) / 2

  def objective(w, const, t):
    xa = image(w)
    f = -cw_margin(logits_fn(xa, t), y, kappa)  # max(z_y - max_other, -kappa)
    dist = jnp.sum((xa - x) ** 2, axis=axes)
    return jnp.sum(dist + const * f), (xa, dist, f)

  def one_round(r, carry):
    const, lower, upper, best_dist, best_x = carry

    def step(s, inner):
      w, opt_state, success, best_dist, best_x = inner
      t = r * steps + s
      grads, (xa, dist, f) = jax.grad(objective, has_aux=True)(w, const, t)
      adversarial = f <= -kappa
      closer = adversarial & (dist < best_dist)
      best_x = jnp.where(closer.reshape((batch,) + (1,) * len(axes)), xa, best_x)
      best_dist = jnp.where(closer, dist, best_dist)
      updates, opt_state = opt.update(grads, opt_state, w)
      return optax.apply_updates(w, updates), opt_state, success | adversarial, best_dist, best_x

    init = (w0, opt.init(w0), jnp.zeros(batch, bool), best_dist, best_x)
    _, _, success, best_dist, best_x = jax.lax.fori_loop(0, steps, step, init)
    upper = jnp.where(success, jnp.minimum(upper, const), upper)
    lower = jnp.where(success, lower, jnp.maximum(lower, const))
    const = jnp.where(upper < _UNBOUNDED, (lower + upper) / 2, const * 10)
    return const, lower, upper, best_dist, best_x

  init = (jnp.full(batch, initial_const, x.dtype), jnp.zeros(batch, x.dtype),
          jnp.full(batch, _UNBOUNDED, x.dtype), jnp.full(batch, jnp.inf, x.dtype), x)
  *_, best_dist, best_x = jax.lax.fori_loop(0, binary_steps, one_round, init)
  return best_x, jnp.isfinite(best_dist)
