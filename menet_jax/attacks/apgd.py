"""Auto-PGD under an l-inf bound (Croce & Hein, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks", ICML 2020, Algorithm 1).

    eta_0 = 2 eps,  x_1 = P(x_0 + eta_0 sign(grad f(x_0)))
    z_{k+1} = P(x_k + eta_k sign(grad f(x_k)))
    x_{k+1} = P(x_k + a (z_{k+1} - x_k) + (1 - a)(x_k - x_{k-1})),   a = 0.75 (momentum)

P projects onto the eps-ball and [0, 1]. At the checkpoints w_j = ceil(p_j N)
(p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)) the step
size of an example is halved, and its iterate reset to its best point, if
  (1) at most a fraction rho = 0.75 of the steps since the last checkpoint raised f, or
  (2) neither its step size nor its best loss changed since the last checkpoint.
The attack returns each example's highest-loss point. Nothing is to be tuned but
the number of steps; with the CE loss this is APGD-CE, with DLR APGD-DLR.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax.attacks.pgd import ball, check_inputs, loss_and_grad
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
         eps: float, steps: int, random_start: bool = True) -> jax.Array:
  """APGD ascending `loss_fn` (per example; every example keeps its own step size).

  Args:
    loss_fn: (x_adv (B, ...), t int32 scalar) -> (B,) per-example loss to maximise.
    key: PRNG key for the random start.
    x: (B, ...) float clean inputs in [0, 1].
    eps: l-inf radius in [0, 1].
    steps: iterations N >= 1 (Croce & Hein use 100).
    random_start: start from a uniform point of the eps-ball.

  Returns:
    (B, ...) the highest-loss point found per example, in the eps-ball and [0, 1].
  """
  eps = check_inputs(x, eps)
  steps = validation.integer_in("steps", steps, 1)
  lo, hi = ball(x, eps)
  b = x.shape[0]
  expand = lambda v: v.reshape((b,) + (1,) * (x.ndim - 1))
  x0 = x
  if random_start:
    x0 = jnp.clip(x + jax.random.uniform(key, x.shape, x.dtype, -eps, eps), lo, hi)
  x0 = jax.lax.stop_gradient(x0)
  f0, g0 = loss_and_grad(loss_fn, x0, jnp.int32(0))
  eta = jnp.full((b,), 2.0 * eps, x.dtype)
  x1 = jnp.clip(x0 + expand(eta) * jnp.sign(g0), lo, hi)

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
    z = jnp.clip(xk + expand(eta) * jnp.sign(gk), lo, hi)
    xnext = jnp.clip(xk + MOMENTUM * (z - xk) + (1 - MOMENTUM) * (xk - xprev), lo, hi)
    return xnext, xk, fk, best_x, best_f, best_g, eta, ups, halved, best_ck

  init = (x1, x0, f0, x0, f0, g0, eta, jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool), f0)
  last, _, _, best_x, best_f = jax.lax.fori_loop(1, steps, step, init)[:5]
  f_last = loss_fn(last, jnp.int32(steps))
  return jnp.where(expand(f_last > best_f), last, best_x)
