"""Universal singular value thresholding (Chatterjee, 2015) as ME-Net applies it."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from menet_jax.reconstruct import spectral
from menet_jax.utils import validation

THRESHOLDS = ("keep", "universal")


def check_params(shape: tuple[int, ...], *, keep: float, threshold: str, eta: float) -> None:
  """Raises ValueError for parameters `usvt` cannot use on matrices of `shape`."""
  validation.choice("threshold", threshold, THRESHOLDS)
  k = min(shape[-2:])
  keep = validation.number_in("keep", keep, 0.0, 1.0, lo_open=True)
  if threshold == "keep" and math.floor(keep * k) < 1:
    raise ValueError(
        f"keep must retain at least one singular value: floor(keep * min(m, n)) = "
        f"floor({keep} * {k}) = 0; use keep >= {1 / k:.4g}")
  validation.number_in("eta", eta, 0.0, math.inf, lo_open=True)


def usvt(x: jax.Array, mask: jax.Array, *, keep: float = 0.8, threshold: str = "keep",
         eta: float = 0.01) -> jax.Array:
  """Low-rank estimate from the zero-filled observation, rescaled by the observed fraction.

  With p_hat the observed fraction of each matrix and z = mask * x = U diag(sigma) V^T,

      usvt(x, mask) = sum_{i in S} sigma_i u_i v_i^T / p_hat.

  threshold="keep" (the ME-Net release, its `--svdprob`): S holds the
  floor(keep * min(m, n)) largest singular values.
  threshold="universal" (Chatterjee's rule for entries in [-1, 1]): S holds the
  singular values >= (2 + eta) sqrt(max(m, n) p_hat).
  A matrix with no observed entry is estimated as 0.

  Args:
    x: (..., m, n) float32/float64. For "universal", entries in [-1, 1].
    mask: (..., m, n) bool or 0/1, True where x is observed.
    keep: fraction of singular values kept, in (0, 1].
    threshold: "keep" or "universal".
    eta: the margin of the universal threshold, > 0.

  Returns:
    (..., m, n) estimate, same dtype as x.
  """
  validation.matrices_and_mask(x, mask)
  check_params(x.shape, keep=keep, threshold=threshold, eta=eta)
  if threshold == "universal":
    validation.values_in("x", x, -1.0, 1.0)
  return _usvt(x, mask, keep=float(keep), threshold=threshold, eta=float(eta))


@functools.partial(jax.jit, static_argnames=("keep", "threshold", "eta"))
def _usvt(x, mask, *, keep, threshold, eta):
  m, n = x.shape[-2:]
  observed = mask.astype(bool)
  z = jnp.where(observed, x, 0)
  p_hat = jnp.mean(observed, axis=(-2, -1), dtype=x.dtype)
  if threshold == "keep":
    k = math.floor(keep * min(m, n))
    (est,) = spectral.filter_matrices(z, [lambda lam, _: spectral.top_k(lam, k)])
  else:
    cut = jax.lax.stop_gradient((2 + eta) ** 2 * max(m, n) * p_hat)
    (est,) = spectral.filter_matrices(
        z, [lambda lam, c: (lam >= c[..., None]).astype(lam.dtype)], cut)
  seen = p_hat > 0
  return jnp.where(seen[..., None, None], est / jnp.where(seen, p_hat, 1)[..., None, None], 0)
