"""FGSM and projected gradient descent under an l-infinity bound.

    FGSM (Goodfellow et al., 2015):  x_adv = clip(x + eps sign(grad_x L(x)), 0, 1)
    PGD (Madry et al., 2018):
      x_0     = clip(x + U(-eps, eps), 0, 1)                         (random start)
      x_{t+1} = clip(Pi_eps(x_t + alpha sign(grad_x L(x_t, t))), 0, 1)

where Pi_eps projects onto the l-inf ball of radius eps around the clean x.
The loss receives the step index t so that a randomized defense inside it can
draw fresh randomness at every step (ME-Net's training, BPDA and EOT attacks).

With `keep_best`, PGD returns for each example the iterate x_0 .. x_T with the
highest loss rather than the last one (Athalye et al.'s EOT evaluation: with an
averaged loss, the highest *average* loss). Random restarts, where an image is
robust only if every restart fails, are run by the evaluation runner
(`menet_jax.evaluation.run_attack(restarts=r)`), which judges each restart's
final example under the defense.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from menet_jax.utils import validation

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def check_inputs(x: jax.Array, eps: float) -> float:
  """Validates the clean batch and the radius shared by every l-inf attack."""
  eps = validation.number_in("eps", eps, 0.0, 1.0)
  validation.floating_array("x", x, min_ndim=1)
  validation.values_in("x", x, 0.0, 1.0)
  return eps


def ball(x: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
  """(lo, hi): the intersection of the l-inf eps-ball around x with [0, 1]."""
  return jnp.clip(x - eps, 0.0, 1.0), jnp.clip(x + eps, 0.0, 1.0)


def loss_and_grad(loss_fn: LossFn, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-example loss (B,) and its gradient with respect to x (B, ...)."""
  loss, vjp = jax.vjp(lambda xa: loss_fn(xa, t), x)
  return loss, vjp(jnp.ones_like(loss))[0]


def fgsm(loss_fn: LossFn, x: jax.Array, *, eps: float) -> jax.Array:
  """One signed-gradient step of size eps (the loss is called with t = 0).

  Args:
    loss_fn: (x_adv (B, ...), t int32 scalar) -> (B,) per-example loss to maximise.
    x: (B, ...) float clean inputs in [0, 1].
    eps: l-inf radius in [0, 1].

  Returns:
    (B, ...) adversarial inputs in the eps-ball and in [0, 1].
  """
  eps = check_inputs(x, eps)
  _, g = loss_and_grad(loss_fn, x, jnp.int32(0))
  return jnp.clip(x + eps * jnp.sign(g), 0.0, 1.0)


def pgd(loss_fn: LossFn, key: jax.Array, x: jax.Array, *, eps: float, step_size: float,
        steps: int, random_start: bool = True, keep_best: bool = False,
        start: jax.Array | None = None) -> jax.Array:
  """l-inf PGD that ascends `loss_fn`.

  Args:
    loss_fn: (x_adv (B, ...), t int32 scalar) -> (B,) per-example loss to maximise;
      t = 0 .. steps - 1 for the gradient steps, t = steps for the final
      iterate's loss when keep_best.
    key: PRNG key for the random start.
    x: (B, ...) float clean inputs in [0, 1].
    eps: l-inf radius, >= 0.
    step_size: alpha > 0.
    steps: number of gradient steps, >= 1.
    random_start: start from a uniform point of the eps-ball (Madry et al.).
    keep_best: return each example's highest-loss iterate instead of the last.
    start: (B, ...) a starting point of the attacker's choice (projected onto
      the eps-ball and [0, 1]); replaces the random start.

  Returns:
    (B, ...) adversarial inputs with |x_adv - x|_inf <= eps, in [0, 1].
  """
  eps = check_inputs(x, eps)
  validation.number_in("step_size", step_size, 0.0, 1.0, lo_open=True)
  validation.integer_in("steps", steps, 1)
  lo, hi = ball(x, eps)
  if start is not None:
    if start.shape != x.shape:
      raise ValueError(f"start must have the shape of x {x.shape}, got {start.shape}")
    start = jnp.clip(start, lo, hi)
  elif random_start:
    start = jnp.clip(x + jax.random.uniform(key, x.shape, x.dtype, -eps, eps), lo, hi)
  else:
    start = x
  start = jax.lax.stop_gradient(start)

  def ascend(xa, g):
    return jnp.clip(xa + step_size * jnp.sign(g), lo, hi)

  if not keep_best:
    return jax.lax.fori_loop(
        0, steps, lambda t, xa: ascend(xa, loss_and_grad(loss_fn, xa, t)[1]), start)

  def better(best, candidate):
    (bx, bl), (cx, cl) = best, candidate
    take = cl > bl
    return jnp.where(take.reshape(take.shape + (1,) * (x.ndim - 1)), cx, bx), jnp.maximum(bl, cl)

  def step(t, carry):
    xa, best = carry
    loss, g = loss_and_grad(loss_fn, xa, t)
    return ascend(xa, g), better(best, (xa, loss))

  init = (start, (start, jnp.full(x.shape[:1], -jnp.inf, x.dtype)))
  last, best = jax.lax.fori_loop(0, steps, step, init)
  return better(best, (last, loss_fn(last, jnp.int32(steps))))[0]
