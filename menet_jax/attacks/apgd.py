"""Auto-PGD under an l-inf or l2 bound (Croce & Hein, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks", ICML 2020, Algorithm 1).

    eta_0 = 2 eps,  x_1 = P(x_0 + eta_0 s(grad f(x_0)))
    z_{k+1} = P(x_k + eta_k s(grad f(x_k)))
    x_{k+1} = P(x_k + a (z_{k+1} - x_k) + (1 - a)(x_k - x_{k-1})),   a = 0.75 (momentum)

P projects onto the eps-ball and [0, 1]; the direction s is sign(g) under l-inf and g / |g|_2
under l2 (as PGD's steps, `attacks.pgd`). At the checkpoints w_j = ceil(p_j N)
(p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)) the step
size of an example is halved, and its iterate reset to its best point, if
  (1) at most a fraction rho = 0.75 of the steps since the last checkpoint raised f, or
  (2) neither its step size nor its best loss changed since the last checkpoint.
The attack returns each example's highest-loss point. Nothing is to be tuned but
the number of steps; with the CE loss this is APGD-CE, with DLR APGD-DLR.

APGD-T (`apgd_targeted`, the same paper, section 4) runs APGD on the targeted DLR loss once per
target class: the classes of the 2nd, 3rd, ... largest clean logits, as AutoAttack picks them
(9 targets on 10 classes), and keeps per example the point with the largest margin
max_{j != y} z_j - z_y over all targets (an example is broken once that is positive).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax.attacks.losses import dlr_targeted, margin
from menet_jax.attacks.pgd import check_inputs, geometry, loss_and_grad, uniform_in_ball
from menet_jax.utils import validation

MOMENTUM = 0.75
RHO = 0.75


def checkpoints(steps: int) -> np.ndarray:
  """The iterations w_j at which step sizes are reconsidered (w_0 = 0 excluded).

  In integers, as the authors' implementation counts them (the real-valued
  p_j of the paper would round 0.57 N up to 58 for N = 100): the first window
  is 0.22 N steps, each next one 0.03 N shorter, and none shorter than 0.06 N.
  """
  window = max(int(0.22 * steps), 1)
  shrink, shortest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
  w, out = window, []
  while w <= steps:
    out.append(w)
    window = max(window - shrink, shortest)
    w += window
  return np.asarray(out, np.int32)


def apgd(loss_fn: Callable[[jax.Array, jax.Array], jax.Array], key: jax.Array, x: jax.Array, *,
         eps: float, steps: int, random_start: bool = True, norm: str = "linf") -> jax.Array:
  """APGD ascending `loss_fn` (per example; every example keeps its own step size).

  Args:
    loss_fn: (x_adv (B, ...), t int32 scalar) -> (B,) per-example loss to maximise.
    key: PRNG key for the random start.
    x: (B, ...) float clean inputs in [0, 1].
    eps: radius, in [0, 1] (l-inf) or [0, sqrt(pixels)] (l2; pixels in [0, 1]).
    steps: iterations N >= 1 (Croce & Hein use 100).
    random_start: start from a uniform point of the eps-ball.
    norm: "linf" or "l2".

  Returns:
    (B, ...) the highest-loss point found per example, in the eps-ball and [0, 1].
  """
  eps = check_inputs(x, eps, norm)
  steps = validation.integer_in("steps", steps, 1)
  project, direction = geometry(x, eps, norm)
  b = x.shape[0]
  expand = lambda v: v.reshape((b,) + (1,) * (x.ndim - 1))
  x0 = project(x + uniform_in_ball(key, x, eps, norm)) if random_start else x
  x0 = jax.lax.stop_gradient(x0)
  f0, g0 = loss_and_grad(loss_fn, x0, jnp.int32(0))
  eta = jnp.full((b,), 2.0 * eps, x.dtype)
  x1 = project(x0 + expand(eta) * direction(g0))

  ck = checkpoints(steps)
  is_checkpoint = np.zeros(steps + 1, bool)
  is_checkpoint[ck] = True
  window = np.diff(np.concatenate([[0], ck]))  # steps since the previous checkpoint
  window_at = np.ones(steps + 1, np.int32)
  window_at[ck] = window
  is_checkpoint, window_at = jnp.asarray(is_checkpoint), jnp.asarray(window_at)

  # Iteration k evaluates x_k, updates the best point, reconsiders the step size at a
  # checkpoint, and moves to x_{k+1}. Carry: x_k, x_{k-1}, f(x_{k-1}), best point,
  # its loss and gradient, step size, loss increases since the last checkpoint,
  # whether the last checkpoint halved the step, the best loss at that checkpoint.
  def step(k, c):
    xk, xprev, fprev, best_x, best_f, best_g, eta, ups, halved, best_ck = c
    fk, gk = loss_and_grad(loss_fn, xk, k)
    ups = ups + (fk > fprev).astype(jnp.int32)
    take = fk > best_f
    best_x = jnp.where(expand(take), xk, best_x)
    best_g = jnp.where(expand(take), gk, best_g)
    best_f = jnp.where(take, fk, best_f)
    at = is_checkpoint[k]
    too_few_ups = ups <= RHO * window_at[k]
    stalled = ~halved & (best_f <= best_ck)
    halve = at & (too_few_ups | stalled)
    eta = jnp.where(halve, eta / 2.0, eta)
    xk = jnp.where(expand(halve), best_x, xk)
    gk = jnp.where(expand(halve), best_g, gk)
    ups = jnp.where(at, 0, ups)
    halved = jnp.where(at, halve, halved)
    best_ck = jnp.where(at, best_f, best_ck)
    z = project(xk + expand(eta) * direction(gk))
    xnext = project(xk + MOMENTUM * (z - xk) + (1 - MOMENTUM) * (xk - xprev))
    return xnext, xk, fk, best_x, best_f, best_g, eta, ups, halved, best_ck

  init = (x1, x0, f0, x0, f0, g0, eta, jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool), f0)
  last, _, _, best_x, best_f = jax.lax.fori_loop(1, steps, step, init)[:5]
  f_last = loss_fn(last, jnp.int32(steps))
  return jnp.where(expand(f_last > best_f), last, best_x)


def apgd_targeted(logits_fn: Callable[[jax.Array, jax.Array], jax.Array], key: jax.Array,
                  x: jax.Array, y: jax.Array, *, eps: float, steps: int, targets: int = 9,
                  norm: str = "linf") -> jax.Array:
  """APGD-T: APGD on the targeted DLR loss towards each of `targets` classes in turn.

  Args:
    logits_fn: (x_adv (B, ...), t int32 scalar) -> (B, C >= 4) logits; t numbers the calls (a
      randomized defense draws afresh for each t).
    key: PRNG key of the random starts (one per target).
    x: (B, ...) float clean inputs in [0, 1]; y: (B,) int labels.
    eps: radius in `norm` ("linf" or "l2"), as `apgd` takes it.
    steps: iterations per target, >= 1 (AutoAttack: 100).
    targets: target classes, >= 1 (AutoAttack: 9), capped at C - 1 (every other class): the
      classes of the 2nd to (targets + 1)-th largest logit at the clean input.

  Returns:
    (B, ...) per example the point of largest margin over all targets (adversarial where any
    target's run was), in the eps-ball and [0, 1].
  """
  steps = validation.integer_in("steps", steps, 1)
  targets = validation.integer_in("targets", targets, 1)
  clean = logits_fn(x, jnp.int32(0))
  classes = clean.shape[-1]
  targets = min(targets, classes - 1)
  order = jnp.argsort(clean, -1)  # ascending: the k-th target is column classes - 2 - k
  calls = steps + 2  # the calls of one target's run: t = 0 .. steps, and its margin

  def one_target(k, carry):
    best_x, best_m = carry
    target = jnp.take_along_axis(order, jnp.full((x.shape[0], 1), classes - 2 - k), -1)[:, 0]
    offset = 1 + k * calls
    loss = lambda xa, t: dlr_targeted(logits_fn(xa, offset + t), y, target)
    xk = apgd(loss, jax.random.fold_in(key, k), x, eps=eps, steps=steps, norm=norm)
    m = margin(logits_fn(xk, offset + steps + 1), y)
    take = m > best_m
    return (jnp.where(take.reshape((-1,) + (1,) * (x.ndim - 1)), xk, best_x),
            jnp.where(take, m, best_m))

  start = (x, margin(clean, y))
  return jax.lax.fori_loop(0, targets, one_target, start)[0]
