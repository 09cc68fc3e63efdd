"""Total-variation minimization on the kept pixels (Guo, Rana, Cisse & van der Maaten, 2018).

The input-transformation defense of "Countering adversarial images using input
transformations", the preprocessing baseline of ME-Net's Tables 3 and 11: drop
pixels at random and reconstruct the "simplest" image consistent with the kept
ones. For each matrix x (one channel plane) with kept entries W,

    min_z  F(z) = 0.5 ||W * (z - x)||_F^2 + weight TV_norm(z),
    TV_norm(z) = sum_i ||z[i + 1, :] - z[i, :]||_norm + sum_j ||z[:, j + 1] - z[:, j]||_norm,

Guo et al.'s TV_p: the norm of each whole row difference and each whole column
difference (norm=2, their choice), or of each entry's (norm=1, anisotropic TV).
The data term is squared and halved as in their released objective (their
paper's text writes an unsquared norm). This is not the ROF denoising of
`defenses.tv`, which fits every pixel.

Solved by the primal-dual iteration of Chambolle & Pock (2011) with K z = (rows'
differences, columns' differences), ||K||^2 <= 8 and steps tau = sigma = 0.35
(tau sigma ||K||^2 < 1):

    q <- proj_weight(q + sigma K z_bar)      (each row/column group onto the norm's dual ball)
    z+ <- prox_tau f(z - tau K^T q)          (kept entries: (v + tau x) / (1 + tau); others: v)
    z_bar <- 2 z+ - z

from z = W * x, q = 0; a matrix stops once ||z+ - z||_F <= tol ||z||_F.

    tv_minimization(x, mask, weight=0.03)
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from menet_jax.reconstruct import iterate, spectral
from menet_jax.utils import validation

NORMS = (1, 2)
# Primal and dual steps: tau sigma ||K||^2 = 0.35^2 x 8 = 0.98 < 1, with ||K||^2 <= 8 for
# the forward differences of a 2-D grid.
_STEP = 0.35


def check_params(shape: tuple[int, ...], *, weight: float, norm: int, max_iters: int,
                 tol: float) -> None:
  """Raises ValueError for parameters `tv_minimization` cannot use on matrices of `shape`."""
  validation.number_in("weight", weight, 0.0, math.inf, lo_open=True)
  validation.choice("norm", norm, NORMS)
  validation.integer_in("max_iters", max_iters, 1)
  validation.number_in("tol", tol, 0.0, math.inf)
  if min(shape[-2:]) < 2:
    raise ValueError(f"tv_minimization needs matrices of at least 2 x 2, got {shape[-2:]}")


def tv_minimization(x: jax.Array, mask: jax.Array, *, weight: float = 0.03, norm: int = 2,
                    max_iters: int = 500, tol: float = 1e-4) -> jax.Array:
  """The minimiser of 0.5 ||mask * (z - x)||^2 + weight TV_norm(z), for each matrix.

  The ME-Net pipeline (`reconstruct.images`) hands reconstructors images scaled to
  [-1, 1], which doubles the data: weight 0.03 there is Guo et al.'s objective at
  weight 0.015 on [0, 1] images. The default 0.03 is near the best of 0.01 to 0.4 for
  the root-mean-square error of the dropped pixels on 200 CIFAR-10 training images at
  p = 0.5, at the default iteration cap (0.132 at 0.02, 0.133 at 0.04, 0.135 at 0.06,
  0.152 at 0.01 and at 0.2). Use it with the "separate" layout, one matrix per channel
  as Guo et al. solve it; under "concat" the differences would also cross the seams
  between channels.

  Args:
    x: (..., m, n) float matrices, m, n >= 2.
    mask: (..., m, n) bool or {0, 1}, True where an entry is kept.
    weight: lambda_TV > 0.
    norm: 2 (Guo et al.'s TV_2: the l2 norm of each row and column difference) or 1.
    max_iters: static iteration cap, >= 1.
    tol: relative change between iterates below which a matrix stops, >= 0.

  Returns:
    (..., m, n) estimates, dtype of x.
  """
  check_params(x.shape, weight=weight, norm=norm, max_iters=max_iters, tol=tol)
  return _tv_minimization(x, mask, weight=float(weight), norm=int(norm),
                          max_iters=int(max_iters), tol=float(tol))


def _project(q: jax.Array, radius: float, norm: int, axis: int) -> jax.Array:
  """q onto the dual ball of the norm: each entry into [-r, r] (norm 1), or each group along
  `axis` (a row or column difference) into the l2 ball of radius r (norm 2)."""
  if norm == 1:
    return jnp.clip(q, -radius, radius)
  size = spectral.safe_sqrt(jnp.sum(q * q, axis=axis, keepdims=True))  # q starts at 0
  return q / jnp.maximum(1, size / radius)


def _adjoint(rows: jax.Array, cols: jax.Array) -> jax.Array:
  """K^T (rows, cols) for K z = (diff(z, axis=-2), diff(z, axis=-1))."""
  pad_r = [(0, 0)] * (rows.ndim - 2)
  down = jnp.pad(rows, pad_r + [(1, 0), (0, 0)]) - jnp.pad(rows, pad_r + [(0, 1), (0, 0)])
  right = jnp.pad(cols, pad_r + [(0, 0), (1, 0)]) - jnp.pad(cols, pad_r + [(0, 0), (0, 1)])
  return down + right


@functools.partial(jax.jit, static_argnames=("weight", "norm", "max_iters", "tol"))
def _tv_minimization(x, mask, *, weight, norm, max_iters, tol):
  batch, shape = x.shape[:-2], x.shape[-2:]
  x = x.reshape((-1,) + shape)
  kept = jnp.asarray(mask).astype(bool).reshape(x.shape)

  def init(inputs):
    x, kept = inputs
    z = jnp.where(kept, x, 0)
    rows, cols = jnp.zeros_like(z[:, 1:, :]), jnp.zeros_like(z[:, :, 1:])
    return z, z, rows, cols

  def step(inputs, state):
    x, kept = inputs
    z, z_bar, rows, cols = state
    # The row differences group along their columns (axis -1), the column ones along rows.
    rows = _project(rows + _STEP * jnp.diff(z_bar, axis=-2), weight, norm, axis=-1)
    cols = _project(cols + _STEP * jnp.diff(z_bar, axis=-1), weight, norm, axis=-2)
    v = z - _STEP * _adjoint(rows, cols)
    z_new = jnp.where(kept, (v + _STEP * x) / (1 + _STEP), v)
    delta = z_new - z
    converged = (jnp.sum(delta * delta, axis=(-2, -1))
                 <= tol**2 * jnp.sum(z * z, axis=(-2, -1)))
    return (z_new, 2 * z_new - z, rows, cols), converged

  z = iterate.solve(init, step, (x, kept), max_iters=max_iters, output=lambda s: s[0])
  return z.reshape(batch + shape)
