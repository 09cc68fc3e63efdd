"""Nuclear-norm regularised completion, the objective the ME-Net release hands to cvxpy/SCS."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from menet_jax.reconstruct import iterate, spectral
from menet_jax.utils import validation


def check_params(shape: tuple[int, ...], *, mu: float, max_iters: int, tol: float) -> None:
  """Raises ValueError for parameters `nuclear_norm` cannot use."""
  del shape
  validation.number_in("mu", mu, 0.0, math.inf, lo_open=True)
  validation.integer_in("max_iters", max_iters, 1)
  validation.number_in("tol", tol, 0.0, math.inf)


def nuclear_norm(x: jax.Array, mask: jax.Array, *, mu: float = 1.0, max_iters: int = 500,
                 tol: float = 1e-3) -> jax.Array:
  """Solves  min_X  mu ||X||_* + ||mask * (X - x)||_F^2  by accelerated proximal gradient.

  The smooth part f(X) = ||mask * (X - x)||_F^2 has gradient 2 mask * (X - x),
  which is 2-Lipschitz, so with step 1/2 the proximal-gradient map is

      X+ = SVT_{mu/2}(mask * x + (1 - mask) * Y),

  singular value soft-thresholding at mu / 2. Y is Nesterov's extrapolation of
  the last two iterates (FISTA, Beck & Teboulle 2009), with the adaptive restart
  of O'Donoghue & Candes (2015): momentum is reset whenever it points against
  the last proximal step, which keeps the iteration monotone in practice. The
  iteration starts from mask * x with continuation (`accelerated_svt`): the k-th step
  thresholds at max(mu / 2, sigma_max(mask * x) / 2 * 0.7^k).
  A matrix stops when ||X+ - X||_F <= tol ||X||_F after a step at mu / 2; each matrix
  runs exactly its own iterations (`iterate.solve`), whatever else is in the batch.

  At the default tol, on 200 CIFAR-10 test matrices (32 x 96, p = 0.5, float32),
  the objective ended within 2.8e-6 (mean; 1.1e-5 at most) of the optimum (a float64
  run to tol 1e-9), with 23 % less arithmetic than without continuation (whose
  gap was 3.6e-6 and 3.9e-5); see docs/benchmarks.md.

  Args:
    x: (..., m, n) float32/float64.
    mask: (..., m, n) bool or 0/1, True where x is observed.
    mu: weight of the nuclear norm, > 0.
    max_iters: static iteration cap, >= 1.
    tol: relative change between iterates below which a matrix stops, >= 0.

  Returns:
    (..., m, n) the minimiser (all entries re-estimated).
  """
  validation.matrices_and_mask(x, mask)
  check_params(x.shape, mu=mu, max_iters=max_iters, tol=tol)
  return _nuclear_norm(x, mask, mu=float(mu), max_iters=int(max_iters), tol=float(tol))


@functools.partial(jax.jit, static_argnames=("mu", "max_iters", "tol"))
def _nuclear_norm(x, mask, *, mu, max_iters, tol):
  batch, shape = x.shape[:-2], x.shape[-2:]
  x = x.reshape((-1,) + shape)
  observed = mask.astype(bool).reshape(x.shape)
  threshold = jnp.full(x.shape[:1], mu / 2, x.dtype)
  # sigma_max by a decomposition of its own, so that the whole schedule is differentiable.
  sigma_max = spectral.largest_singular_value(jnp.where(observed, x, 0))
  estimate = accelerated_svt(x, observed, threshold, max_iters=max_iters, tol=tol,
                             start=CONTINUATION_START * sigma_max, factor=CONTINUATION_FACTOR)
  return estimate.reshape(batch + shape)


STOPS = ("step", "objective")
# Continuation (`accelerated_svt`'s start and factor), for both solvers that use it: thresholds
# from sigma_max / 2 down by 0.7 per step to the final one. Chosen on 200 CIFAR-10 matrices at
# Soft-Impute's threshold sigma_max / 50 among starts sigma_max x (1, 1/2, 1/4) and ratios 0.5
# to 0.8. At the nuclear norm's mu / 2 = 0.5, among starts sigma_max x (1, 1/2, 1/4, 1/8) and
# ratios 0.5 to 0.85, the same pair did 23 % less arithmetic than no continuation, within 2 %
# of the least (1/4, 0.85) at a quarter of that one's largest objective gap
# (`python -m benchmarks.continuation`, docs/benchmarks.md).
CONTINUATION_START = 0.5
CONTINUATION_FACTOR = 0.7


def accelerated_svt(x: jax.Array, observed: jax.Array, threshold: jax.Array, *, max_iters: int,
                    tol: float, stop: str = "step", start: jax.Array | None = None,
                    factor: float = 0.7, first_step: jax.Array | None = None) -> jax.Array:
  """min_X  F(X) = threshold ||X||_* + 0.5 ||observed * (X - x)||_F^2  for each matrix, by the
  accelerated proximal gradient iteration of `nuclear_norm` (step 1, restarts, per-matrix
  stops), traceable.

  Continuation (when `start` is given): the k-th step thresholds at
  max(threshold, start * factor^k) instead of at `threshold`, so the first steps solve
  strongly regularised problems, whose minimisers have few singular values and are reached
  quickly, and each warm-starts the next (Toh & Yun, 2010). Only steps at the final
  threshold can stop a matrix. On CIFAR-10 at Soft-Impute's threshold sigma_max / 50,
  start = sigma_max / 2 and factor 0.7 cut the iterations to a given objective by about
  a third (docs/benchmarks.md).

  Stopping rules, checked after each step at the final threshold:
    "step":       ||X_k+1 - X_k||_F <= tol ||X_k||_F;
    "objective":  F(X_k) - F(X_k+1) <= tol F(X_k+1), i.e. the objective has stopped
                  falling (it needs two steps at the final threshold). F's nuclear norm
                  comes from the step's decomposition: ||SVT_t(Z)||_* = sum (sigma_i - t)_+.

  Args:
    x: (B, m, n); observed: (B, m, n) bool; threshold: (B,) > 0, one weight per matrix.
    max_iters, tol: as `nuclear_norm`'s; stop: one of STOPS.
    start: (B,) thresholds to start the continuation from, or None for none.
    factor: static, in (0, 1): the continuation's threshold ratio between steps.
    first_step: (B, m, n) the first step's output, SVT at max(start, threshold) of
      observed * x, when the caller has it from a decomposition of observed * x that it
      needed anyway (Soft-Impute's sigma_max); it counts as one of the max_iters steps.

  Returns:
    (B, m, n) the minimisers.
  """
  validation.choice("stop", stop, STOPS)
  validation.number_in("factor", factor, 0.0, 1.0, lo_open=True, hi_open=True)
  start = threshold if start is None else jnp.maximum(start, threshold)
  if first_step is not None and max_iters == 1:
    return first_step

  def init(inputs):
    x, observed, _, start, first = inputs
    ones = jnp.ones(x.shape[:1], x.dtype)
    if first is None:
      x0 = jnp.where(observed, x, 0)
      return x0, x0, ones, start, jnp.full_like(ones, jnp.inf)
    # The state after step 1 from X_0 = Y_0 = observed * x, t = 1: momentum 0.
    return first, first, ones * (1 + 5**0.5) / 2, start * factor, jnp.full_like(ones, jnp.inf)

  def step(inputs, state):
    x, observed, threshold, _, _ = inputs
    xk, y, t, level, f_prev = state
    final = level <= threshold
    level = jnp.maximum(level, threshold)
    z = jnp.where(observed, x, y)
    lam, (x_new,) = spectral.filter_matrices_and_spectrum(z, [spectral.soft_threshold], level)
    delta = x_new - xk
    t = jnp.where(jnp.sum((y - x_new) * delta, axis=(-2, -1)) > 0, 1, t)  # restart
    t_new = (1 + jnp.sqrt(1 + 4 * t * t)) / 2
    y_new = x_new + ((t - 1) / t_new)[..., None, None] * delta
    if stop == "step":
      f = f_prev
      converged = jnp.sum(delta * delta, axis=(-2, -1)) <= tol**2 * jnp.sum(xk * xk, axis=(-2, -1))
    else:
      shrunk = jnp.maximum(spectral.safe_sqrt(lam) - level[..., None], 0)
      f = (level * jnp.sum(shrunk, axis=-1)
           + 0.5 * jnp.sum(jnp.where(observed, x_new - x, 0) ** 2, axis=(-2, -1)))
      converged = f_prev - f <= tol * f
      f = jnp.where(final, f, jnp.inf)
    return (x_new, y_new, t_new, level * factor, f), final & converged

  return iterate.solve(init, step, (x, observed, threshold, start, first_step),
                       max_iters=max_iters - (first_step is not None),
                       output=lambda state: state[0])

