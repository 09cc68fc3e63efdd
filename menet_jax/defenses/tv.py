"""Total-variation denoising as test-time defenses (baselines of RIDE, Tables 1, 5, 6).

Both follow scikit-image's definitions exactly, parameters included, so that a
weight means what it means there; each channel of each image is denoised on
its own (per-channel 2-D calls of scikit-image), and each stops on its own.

Chambolle (`denoise_tv_chambolle`): Chambolle's projection algorithm for the
    Rudin-Osher-Fatemi problem. With p the dual field and tau = 1 / (2 ndim),
    every iteration sets
        out = f - div* p,  g = grad out (forward differences, 0 at the far edge),
        p <- (p - tau g) / (1 + tau |g| / weight),
    and stops once the energy E = (sum (div p)^2 + weight sum |g|) / N changes by
    less than eps E_0. A larger weight smooths more.

Split Bregman (`denoise_tv_bregman`): min_u sum |grad u| + (lambda / 2) ||u - f||^2
    with weight = lambda / 2, so a smaller weight smooths more. Each iteration is one
    in-place Gauss-Seidel raster sweep over the pixels (each pixel reads its left
    and upper neighbours as already updated in this sweep, its right and lower
    ones as they were), then the shrinkage of (grad u + b) (scikit-image's own
    smooth one in the isotropic case, soft thresholding otherwise) and the Bregman
    update of b; the image is padded by one pixel (top and left mirrored, bottom
    and right replicated, never updated). It stops once the root-mean-square change
    of a sweep is at most eps. The raster order is reproduced exactly by a
    wavefront over the anti-diagonals: all pixels of one anti-diagonal depend only
    on the previous one, so they are updated together, H + W - 1 vectorised steps
    per sweep (on a skewed copy of the arrays where an anti-diagonal is a row).

    tv_chambolle(weight=0.1), tv_bregman(weight=5.0)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax.defenses.base import DEFENSES, Defense
from menet_jax.utils import validation


def _planes(fn, x: jax.Array) -> jax.Array:
  """fn applied to every (H, W) channel plane of x (..., H, W, C), each independently."""
  planes = jnp.moveaxis(x, -1, -3)
  flat = planes.reshape(-1, *planes.shape[-2:])
  out = jax.vmap(fn)(flat).reshape(planes.shape)
  return jnp.moveaxis(out, -3, -1)


def _forward_differences(u: jax.Array) -> jax.Array:
  """(ndim, *u.shape): u[i + 1] - u[i] along each axis, 0 at the last index."""
  return jnp.stack([jnp.concatenate([jnp.diff(u, axis=a),
                                     jnp.zeros_like(jax.lax.slice_in_dim(u, 0, 1, axis=a))], a)
                    for a in range(u.ndim)])


def _negative_divergence(p: jax.Array) -> jax.Array:
  """-div p (backward differences) as scikit-image forms it: -sum_a p_a, plus each p_a shifted
  one step along its axis."""
  d = -p.sum(0)
  for a in range(p.shape[0]):
    shifted = jax.lax.slice_in_dim(p[a], 0, p.shape[a + 1] - 1, axis=a)
    zeros = jnp.zeros_like(jax.lax.slice_in_dim(p[a], 0, 1, axis=a))
    d = d + jnp.concatenate([zeros, shifted], axis=a)
  return d


@functools.partial(jax.jit, static_argnames=("max_iters",))
def chambolle(f: jax.Array, weight: float, eps: float, max_iters: int) -> jax.Array:
  """scikit-image's `_denoise_tv_chambolle_nd` on one n-D array f (every axis a TV axis)."""
  ndim = f.ndim
  tau = 1.0 / (2.0 * ndim)

  def body(state):
    i, p, _, e_prev, e_init, _ = state
    d = _negative_divergence(p)  # 0 at the first iteration, where p = 0
    out = f + d
    g = _forward_differences(out)
    norm = jnp.sqrt(jnp.sum(g * g, axis=0))
    energy = (jnp.sum(d * d) + weight * jnp.sum(norm)) / f.size
    p = (p - tau * g) / (1.0 + norm * (tau / weight))
    e_init = jnp.where(i == 0, energy, e_init)
    converged = (i > 0) & (jnp.abs(e_prev - energy) < eps * e_init)
    return i + 1, p, out, energy, e_init, converged

  def cond(state):
    i, *_, converged = state
    return (i < max_iters) & ~converged

  zero = jnp.zeros((), f.dtype)
  state = (jnp.int32(0), jnp.zeros((ndim, *f.shape), f.dtype), f, zero, zero, jnp.bool_(False))
  return jax.lax.while_loop(cond, body, state)[2]


def _skew_indices(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Gather indices of the skewed layout S[d, r] = A[r, d - r] of a (rows, cols) array."""
  d, r = np.meshgrid(np.arange(rows + cols - 1), np.arange(rows), indexing="ij")
  c = d - r
  valid = (c >= 0) & (c < cols)
  return r, np.clip(c, 0, cols - 1), valid


@functools.partial(jax.jit, static_argnames=("max_iters", "isotropic"))
def bregman(f: jax.Array, weight: float, eps: float, max_iters: int, isotropic: bool
            ) -> jax.Array:
  """scikit-image's `_denoise_tv_bregman` on one (H, W) plane f, in the raster order."""
  h, w = f.shape
  rows, cols = h + 2, w + 2
  lam = 2 * weight
  norm = weight + 4 * lam
  padded = jnp.zeros((rows, cols), f.dtype).at[1:-1, 1:-1].set(f)
  padded = padded.at[0, 1:-1].set(f[1]).at[1:-1, 0].set(f[:, 1])
  padded = padded.at[-1, 1:-1].set(f[-1]).at[1:-1, -1].set(f[:, -1])
  ri, ci, valid = _skew_indices(rows, cols)
  skew = lambda a: jnp.where(valid, a[ri, ci], 0)
  source = skew(jnp.zeros((rows, cols), f.dtype).at[1:-1, 1:-1].set(f))
  # Rows r of diagonal d that are interior pixels (1 <= r <= H, 1 <= d - r <= W).
  r_idx = np.arange(rows)

  def diagonal(d, carry):
    u, dx, dy, bx, by, sq = carry
    row = lambda a, k: jax.lax.dynamic_index_in_dim(a, d + k, 0, keepdims=False)
    up = lambda v: jnp.concatenate([jnp.zeros((1,), v.dtype), v[:-1]])   # entry r - 1
    down = lambda v: jnp.concatenate([v[1:], jnp.zeros((1,), v.dtype)])  # entry r + 1
    interior = (r_idx >= 1) & (r_idx <= h) & (d - r_idx >= 1) & (d - r_idx <= w)
    prev, this, nxt = row(u, -1), row(u, 0), row(u, 1)
    dx_prev, dx_this = row(dx, -1), row(dx, 0)
    dy_prev, dy_this = row(dy, -1), row(dy, 0)
    bx_prev, bx_this = row(bx, -1), row(bx, 0)
    by_prev, by_this = row(by, -1), row(by, 0)
    right, below, left, above = nxt, down(nxt), prev, up(prev)
    ux, uy = right - this, below - this
    unew = (lam * (below + above + right + left
                   + dx_prev - dx_this + up(dy_prev) - dy_this
                   - bx_prev + bx_this - up(by_prev) + by_this)
            + weight * row(source, 0)) / norm
    tx_change = unew - this
    if isotropic:
      tx, ty = ux + bx_this, uy + by_this
      s = jnp.sqrt(tx * tx + ty * ty)
      dxx = s * lam * tx / (s * lam + 1)
      dyy = s * lam * ty / (s * lam + 1)
    else:
      shrink = lambda v: jnp.where(v > 1 / lam, v - 1 / lam, jnp.where(v < -1 / lam, v + 1 / lam, 0))
      dxx, dyy = shrink(ux + bx_this), shrink(uy + by_this)
    put = lambda a, v, old: jax.lax.dynamic_update_index_in_dim(a, jnp.where(interior, v, old), d,
                                                                0)
    sq = sq + jnp.sum(jnp.where(interior, tx_change * tx_change, 0))
    return (put(u, unew, this), put(dx, dxx, dx_this), put(dy, dyy, dy_this),
            put(bx, bx_this + ux - dxx, bx_this), put(by, by_this + uy - dyy, by_this), sq)

  def sweep(state):
    i, u, dx, dy, bx, by, _ = state
    zero = jnp.zeros((), f.dtype)
    u, dx, dy, bx, by, sq = jax.lax.fori_loop(2, h + w + 1, diagonal, (u, dx, dy, bx, by, zero))
    return i + 1, u, dx, dy, bx, by, jnp.sqrt(sq / f.size)

  def cond(state):
    i, *_, rmse = state
    return (i < max_iters) & (rmse > eps)

  zeros = jnp.zeros_like(source)
  state = (jnp.int32(0), skew(padded), zeros, zeros, zeros, zeros,
           jnp.asarray(jnp.finfo(f.dtype).max, f.dtype))
  u = jax.lax.while_loop(cond, sweep, state)[1]
  # Back from the skewed layout: A[r, c] = S[r + c, r].
  rr, cc = np.meshgrid(np.arange(1, h + 1), np.arange(1, w + 1), indexing="ij")
  return u[rr + cc, rr]


def _check_stopping(weight: float, eps: float, max_iters: int) -> None:
  """The parameters both TV defenses share, with scikit-image's ranges."""
  validation.number_in("weight", weight, 0.0, np.inf, lo_open=True)
  validation.number_in("eps", eps, 0.0, np.inf)
  validation.integer_in("max_iters", max_iters, 1)


@dataclasses.dataclass(frozen=True)
class TVChambolle(Defense):
  """Attributes as scikit-image's: weight (> 0; larger smooths more), eps, max_iters; joint
  treats an image as one (H, W, C) volume (scikit-image's channel_axis=None) instead of
  denoising its channels apart."""
  weight: float = 0.1
  eps: float = 2e-4
  max_iters: int = 200
  joint: bool = False

  def __post_init__(self):
    _check_stopping(self.weight, self.eps, self.max_iters)

  def transform(self, keys: jax.Array, x: jax.Array, level: jax.Array) -> jax.Array:
    run = functools.partial(chambolle, weight=self.weight, eps=self.eps,
                            max_iters=self.max_iters)
    return jax.vmap(run)(x) if self.joint else _planes(run, x)



@dataclasses.dataclass(frozen=True)
class TVBregman(Defense):
  """Attributes as scikit-image's: weight (> 0; smaller smooths more), eps, max_iters,
  isotropic (else anisotropic TV)."""
  weight: float = 5.0
  eps: float = 1e-3
  max_iters: int = 100
  isotropic: bool = True

  def __post_init__(self):
    _check_stopping(self.weight, self.eps, self.max_iters)

  def check(self, image_shape: tuple[int, int, int]) -> None:
    if min(image_shape[:2]) < 2:
      raise ValueError(f"tv_bregman needs images of at least 2 x 2 pixels, got {image_shape}")

  def transform(self, keys: jax.Array, x: jax.Array, level: jax.Array) -> jax.Array:
    return _planes(functools.partial(bregman, weight=self.weight, eps=self.eps,
                                     max_iters=self.max_iters, isotropic=self.isotropic), x)



DEFENSES.register("tv_chambolle", TVChambolle)
DEFENSES.register("tv_bregman", TVBregman)
