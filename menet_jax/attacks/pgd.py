"""FGSM and projected gradient descent under an l-infinity or l2 bound.

    FGSM (Goodfellow et al., 2015):  x_adv = clip(x + eps sign(grad_x L(x)), 0, 1)
    PGD (Madry et al., 2018):
      x_0     = clip(x + d_0, 0, 1)                                  (random start)
      x_{t+1} = clip(Pi_eps(x_t + alpha s(grad_x L(x_t, t))), 0, 1)

where Pi_eps projects onto the ball of radius eps around the clean x. Under
l-inf, s(g) = sign(g) and d_0 ~ U(-eps, eps)^d; under l2, s(g) = g / |g|_2,
Pi_eps(x + d) = x + d min(1, eps / |d|_2) and d_0 is uniform in the l2 ball
(a Gaussian direction, radius eps u^(1/d), u ~ U(0, 1)). Clipping to [0, 1]
after the projection keeps the iterate in either ball: each coordinate moves
towards the clean pixel, which lies in [0, 1].
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

import math
from typing import Callable

import jax
import jax.numpy as jnp

from menet_jax.utils import validation

LossFn = Callable[[jax.Array, jax.Array], jax.Array]
NORMS = ("linf", "l2")


def max_radius(norm: str, shape: tuple[int, ...]) -> float:
  """The largest distance between two images of `shape` (one example, no batch axis) in
  [0, 1]: 1 under l-inf, sqrt(pixels) under l2; radii are validated against it."""
  validation.choice("norm", norm, NORMS)
  return 1.0 if norm == "linf" else math.sqrt(math.prod(shape))


def check_inputs(x: jax.Array, eps: float, norm: str = "linf") -> float:
  """Validates the clean batch and the radius of a `norm` attack."""
  validation.floating_array("x", x, min_ndim=1)
  eps = validation.number_in("eps", eps, 0.0, max_radius(norm, x.shape[1:]))
  validation.values_in("x", x, 0.0, 1.0)
  return eps


def l2_norms(v: jax.Array) -> jax.Array:
  """(B, ...) -> (B, 1, ..., 1) the l2 norm of each example, broadcastable against v."""
  return jnp.sqrt(jnp.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))


def project_l2(x_adv: jax.Array, x: jax.Array, eps: float) -> jax.Array:
  """x_adv moved onto the l2 ball of radius eps around x (radially), then clipped to [0, 1]."""
  d = x_adv - x
  return jnp.clip(x + d * jnp.minimum(1.0, eps / jnp.maximum(l2_norms(d), 1e-12)), 0.0, 1.0)


def ball(x: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
  """(lo, hi): the intersection of the l-inf eps-ball around x with [0, 1]."""
  return jnp.clip(x - eps, 0.0, 1.0), jnp.clip(x + eps, 0.0, 1.0)


def project_linf(x_adv: jax.Array, x: jax.Array, eps: float) -> jax.Array:
  """x_adv clipped into the l-inf eps-ball around x (and [0, 1])."""
  return jnp.clip(x_adv, *ball(x, validation.number_in("eps", eps, 0.0, 1.0)))


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
        start: jax.Array | None = None, norm: str = "linf") -> jax.Array:
  """PGD that ascends `loss_fn` in the `norm` ball.

  Args:
    loss_fn: (x_adv (B, ...), t int32 scalar) -> (B,) per-example loss to maximise;
      t = 0 .. steps - 1 for the gradient steps, t = steps for the final
      iterate's loss when keep_best.
    key: PRNG key for the random start.
    x: (B, ...) float clean inputs in [0, 1].
    eps: radius, in [0, 1] (l-inf) or [0, sqrt(pixels)] (l2; pixels in [0, 1]).
    step_size: alpha > 0, at most the largest radius.
    steps: number of gradient steps, >= 1.
    random_start: start from a uniform point of the eps-ball (Madry et al.).
    keep_best: return each example's highest-loss iterate instead of the last.
    start: (B, ...) a starting point of the attacker's choice (projected onto
      the eps-ball and [0, 1]); replaces the random start.
    norm: "linf" or "l2".

  Returns:
    (B, ...) adversarial inputs with |x_adv - x| <= eps in `norm`, in [0, 1].
  """
  eps = check_inputs(x, eps, norm)
  validation.number_in("step_size", step_size, 0.0, max_radius(norm, x.shape[1:]), lo_open=True)
  validation.integer_in("steps", steps, 1)
  project, direction = geometry(x, eps, norm)
  if start is not None:
    if start.shape != x.shape:
      raise ValueError(f"start must have the shape of x {x.shape}, got {start.shape}")
    start = project(start)
  elif random_start:
    start = project(x + uniform_in_ball(key, x, eps, norm))
  else:
    start = x
  start = jax.lax.stop_gradient(start)

  def ascend(xa, g):
    return project(xa + step_size * direction(g))

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


def geometry(x: jax.Array, eps: float, norm: str
             ) -> tuple[Callable[[jax.Array], jax.Array], Callable[[jax.Array], jax.Array]]:
  """(project, direction) of a `norm` ball of radius eps around x: the projection onto the ball
  and [0, 1], and the steepest-ascent direction of a gradient (sign(g) under l-inf, g / |g|_2
  under l2)."""
  if norm == "linf":
    return (lambda xa: project_linf(xa, x, eps)), jnp.sign
  return (lambda xa: project_l2(xa, x, eps)), (lambda g: g / jnp.maximum(l2_norms(g), 1e-12))


def uniform_in_ball(key: jax.Array, x: jax.Array, eps: float, norm: str) -> jax.Array:
  """(B, ...) offsets uniform in the `norm` ball of radius eps (before clipping to [0, 1])."""
  if norm == "linf":
    return jax.random.uniform(key, x.shape, x.dtype, -eps, eps)
  k_dir, k_radius = jax.random.split(key)
  u = jax.random.normal(k_dir, x.shape, x.dtype)
  dims = math.prod(x.shape[1:])
  radius = eps * jax.random.uniform(k_radius, (x.shape[0],) + (1,) * (x.ndim - 1)) ** (1 / dims)
  return radius * u / jnp.maximum(l2_norms(u), 1e-12)
