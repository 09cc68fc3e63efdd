"""Soft-Impute (Mazumder, Hastie & Tibshirani, 2010) with the stopping rule ME-Net relied on.

The ME-Net release calls fancyimpute's `SoftImpute` with its defaults; solver
"fixed_point" is that algorithm, batched: a zero-filled start, shrinkage =
sigma_max / 50, up to 100 iterations, and a per-matrix stop once the missing
entries change by less than `tol` relative to their previous values. Its fixed
point minimises 0.5 ||P(Z - x)||_F^2 + shrinkage ||Z||_*, the nuclear-norm problem
with mu = 2 shrinkage; solver "accelerated" minimises that objective with
`nuclear_norm`'s accelerated proximal gradient iteration (per-matrix shrinkage), with
continuation and a stop on the objective, which reaches a lower objective than the
fixed point's in about a quarter of its iterations (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax.reconstruct import iterate, spectral
from menet_jax.reconstruct.nuclear_norm import (CONTINUATION_FACTOR, CONTINUATION_START,
                                                 accelerated_svt)
from menet_jax.utils import validation

# fancyimpute compares against float32 epsilon whatever the dtype.
_F32_EPS = float(np.finfo(np.float32).eps)


SOLVERS = ("fixed_point", "accelerated")
# The default shrinkage is sigma_max / _DEFAULT_DIVISOR (fancyimpute's default).
_DEFAULT_DIVISOR = 50
# Each solver's stopping rule measures something else (see `soft_impute`), so each has
# its own default tolerance. 1e-5 on the objective's relative decrease stopped every one
# of 600 CIFAR-10 and MNIST matrices (p 0.3 / 0.5 / 0.8) below the fixed point's objective
# in float64, where the iterate-change rule at 1e-3 left some above it at p = 0.8.
DEFAULT_TOL = {"fixed_point": 1e-3, "accelerated": 1e-5}


def check_params(shape: tuple[int, ...], *, shrinkage: float | None, max_iters: int,
                 tol: float | None, solver: str = "fixed_point") -> None:
  """Raises ValueError for parameters `soft_impute` cannot use."""
  del shape
  validation.choice("solver", solver, SOLVERS)
  if shrinkage is not None:
    validation.number_in("shrinkage", shrinkage, 0.0, math.inf, lo_open=True)
  validation.integer_in("max_iters", max_iters, 1)
  if tol is not None:
    validation.number_in("tol", tol, 0.0, math.inf)


def soft_impute(x: jax.Array, mask: jax.Array, *, shrinkage: float | None = None,
                max_iters: int = 100, tol: float | None = None, solver: str = "fixed_point"
                ) -> jax.Array:
  """Fills the missing entries of x by iterated singular value soft-thresholding.

  solver "fixed_point": starting from Z_0 = mask * x, each iteration computes

      R_k = U max(Sigma - shrinkage, 0) V^T   where Z_k = U Sigma V^T,
      Z_{k+1} = mask * x + (1 - mask) * R_k,

  and a matrix stops once ||(Z_k - R_k)_missing||_F < tol ||(Z_k)_missing||_F
  (its last R_k is still written); each matrix runs exactly its own iterations
  (`iterate.solve`), whatever else is in the batch. Observed entries are
  returned unchanged. The fixed point minimises
  0.5 ||mask * (Z - x)||_F^2 + shrinkage ||Z||_*.

  solver "accelerated": the minimiser R of that objective F by `accelerated_svt` of
  reconstruct.nuclear_norm, thresholding at max(shrinkage, sigma_max / 2 * 0.7^k) in step k
  (continuation, nuclear_norm.CONTINUATION_START and _FACTOR) and stopping once
  F(R_k) - F(R_k+1) <= tol F(R_k+1) at the final shrinkage; returned as fixed_point's is:
  mask * x + (1 - mask) * R.

  Args:
    x: (..., m, n) float32/float64.
    mask: (..., m, n) bool or 0/1, True where x is observed.
    shrinkage: the soft threshold; default: sigma_max(mask * x) / 50 per matrix.
    max_iters: static iteration cap, >= 1.
    tol: >= 0; fixed_point: the relative change of the missing entries below which a
      matrix stops; accelerated: the objective's relative decrease per step. Default
      `DEFAULT_TOL[solver]`.
    solver: "fixed_point" (fancyimpute's iterates) or "accelerated".

  Returns:
    (..., m, n): x on observed entries, the estimate on missing ones.
  """
  validation.matrices_and_mask(x, mask)
  check_params(x.shape, shrinkage=shrinkage, max_iters=max_iters, tol=tol, solver=solver)
  tol = DEFAULT_TOL[solver] if tol is None else tol
  return _soft_impute(x, mask, shrinkage=None if shrinkage is None else float(shrinkage),
                      max_iters=int(max_iters), tol=float(tol), solver=solver)


@functools.partial(jax.jit, static_argnames=("shrinkage", "max_iters", "tol", "solver"))
def _soft_impute(x, mask, *, shrinkage, max_iters, tol, solver):
  batch, shape = x.shape[:-2], x.shape[-2:]
  x = x.reshape((-1,) + shape)
  observed = mask.astype(bool).reshape(x.shape)
  x0 = jnp.where(observed, x, 0)
  given = None if shrinkage is None else jnp.full(x.shape[:1], shrinkage, x.dtype)
  if solver == "accelerated":
    # sigma_max and the continuation's first step from one decomposition of x0.
    lam, (first,) = spectral.filter_matrices_and_spectrum(x0, [_first_step], given)
    sigma_max = spectral.safe_sqrt(lam[..., -1])
    tau = sigma_max / _DEFAULT_DIVISOR if given is None else given
    estimate = accelerated_svt(x, observed, tau, max_iters=max_iters, tol=tol, stop="objective",
                               start=CONTINUATION_START * sigma_max, factor=CONTINUATION_FACTOR,
                               first_step=first)
    return jnp.where(observed, x, estimate).reshape(batch + shape)
  # sigma_max only for the default shrinkage.
  tau = spectral.largest_singular_value(x0) / _DEFAULT_DIVISOR if given is None else given

  def init(inputs):
    x, observed, _ = inputs
    return jnp.where(observed, x, 0)

  def step(inputs, z):
    _, observed, tau = inputs
    missing = ~observed
    (rec,) = spectral.filter_matrices(z, [spectral.soft_threshold], tau)
    old_sq = jnp.sum(jnp.where(missing, z, 0) ** 2, axis=(-2, -1))
    change_sq = jnp.sum(jnp.where(missing, z - rec, 0) ** 2, axis=(-2, -1))
    # fancyimpute's rule, in squares: never converged on a zero start, nor when
    # the previous values are below float32 eps while the change is not.
    tiny_start = (old_sq < _F32_EPS**2) & (change_sq > _F32_EPS**2)
    converged = (old_sq > 0) & ~tiny_start & (change_sq < tol**2 * old_sq)
    # A fully observed matrix has nothing to impute: done after this no-op step.
    converged |= ~jnp.any(missing, axis=(-2, -1))
    return jnp.where(missing, rec, z), converged

  z = iterate.solve(init, step, (x, observed, tau), max_iters=max_iters)
  return z.reshape(batch + shape)


def _first_step(lam: jax.Array, shrinkage: jax.Array | None) -> jax.Array:
  """Filter for the continuation's first step: soft-thresholding at
  max(CONTINUATION_START * sigma_max, shrinkage), sigma_max read off lam itself. The level
  is held constant in derivatives (stop_gradient): it is the solver's schedule, not the
  problem, and the filters' JVP needs a filter that acts elementwise on lam."""
  sigma_max = jax.lax.stop_gradient(spectral.safe_sqrt(lam[..., -1]))
  shrinkage = sigma_max / _DEFAULT_DIVISOR if shrinkage is None else shrinkage
  level = jnp.maximum(CONTINUATION_START * sigma_max, jax.lax.stop_gradient(shrinkage))
  return spectral.soft_threshold(lam, level)
