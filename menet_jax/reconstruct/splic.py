"""SPLIC: smoothed-rank completion with a total-variation term (shared/papers/SPLIC.txt, sec. 3).

The smoothed rank of X with singular values sigma_1..sigma_l is (eq. 3)

    F_delta(X) = l - sum_k exp(-sigma_k^2 / (2 delta^2)),

which tends to rank(X) as delta -> 0, and the total-variation term is (eq. 6)

    C(X) = 1/2 sum (x_ij - x_i+1,j)^2 + 1/2 sum (x_ij - x_i,j+1)^2

over all vertical and horizontal neighbour pairs. SPLIC minimises
F_delta + lam C over the entries off the anchor set, with anchors fixed, by
projected gradient steps while delta shrinks geometrically (graduated
non-convexity). `lam = 0` is plain SRF (Ghasemi et al., 2011).

Two notes on the printed equations:
  * eq. 9, grad F_delta = U diag(sigma / delta^2 exp(-sigma^2 / (2 delta^2))) V^T,
    is exact (tested against `jax.grad`).
  * eq. 10 as printed, 2 x_ij - x_i+1,j - x_i,j+1, keeps only the differences to
    the lower and right neighbours and is not the gradient of eq. 6: each
    x_ij also appears in the pairs with its upper and left neighbours. The true
    gradient, used here, is the graph Laplacian
    sum over the 4-neighbours j of (x_i - x_j) (tested against `jax.grad`).
"""

from __future__ import annotations

import functools
import inspect
import math

import jax
import jax.numpy as jnp

from menet_jax.reconstruct import iterate, spectral
from menet_jax.utils import validation


def smoothed_rank(x: jax.Array, delta) -> jax.Array:
  """F_delta(x), eq. 3: (..., m, n) -> (...)."""
  lam = spectral.gram_eigvalsh(spectral.gram(x))
  delta = jnp.asarray(delta, x.dtype)[..., None]
  return lam.shape[-1] - jnp.sum(jnp.exp(-lam / (2 * delta * delta)), axis=-1)


def smoothed_rank_grad(x: jax.Array, delta) -> jax.Array:
  """grad F_delta(x), eq. 9: U diag(sigma / delta^2 exp(-sigma^2 / (2 delta^2))) V^T."""
  (g,) = spectral.filter_matrices(x, [_smoothed_rank_slope], jnp.asarray(delta, x.dtype))
  return g


def _smoothed_rank_slope(lam, delta):
  # d/dsigma of -exp(-sigma^2/(2 delta^2)) divided by sigma, written in log
  # space so that delta -> 0 gives exp(-inf) = 0 rather than inf * 0.
  delta = jnp.asarray(delta)[..., None]
  return jnp.exp(-2 * jnp.log(delta) - lam / (2 * delta * delta))


def total_variation(x: jax.Array) -> jax.Array:
  """C(x), eq. 6: half the sum of squared differences between 4-neighbours, (..., m, n) -> (...)."""
  dv = x[..., :-1, :] - x[..., 1:, :]
  dh = x[..., :, :-1] - x[..., :, 1:]
  return 0.5 * (jnp.sum(dv * dv, axis=(-2, -1)) + jnp.sum(dh * dh, axis=(-2, -1)))


def total_variation_grad(x: jax.Array) -> jax.Array:
  """grad C(x): for each entry, the sum of its differences to its (up to 4) neighbours."""
  dv = x[..., :-1, :] - x[..., 1:, :]
  dh = x[..., :, :-1] - x[..., :, 1:]
  pad_v = [(0, 0)] * (x.ndim - 2)
  grad = jnp.pad(dv, pad_v + [(0, 1), (0, 0)]) - jnp.pad(dv, pad_v + [(1, 0), (0, 0)])
  return grad + jnp.pad(dh, pad_v + [(0, 0), (0, 1)]) - jnp.pad(dh, pad_v + [(0, 0), (1, 0)])


SOLVERS = ("eigh", "subspace")
# solver "subspace": the tracked basis has rank + _OVERSAMPLE columns and takes
# _POWER_STEPS steps Y <- orth(G^2 Y) per gradient step. Householder QR keeps
# each column's direction to float32 precision whatever the column norms, so two
# products by G per QR lose nothing; four lost the lower columns in float32.
# Measured on 200 CIFAR-10 matrices (rank 8) against the float64 reference: mean
# relative deviation 3.9e-4, median 2.0e-6, with these values; the eigh route in
# float32 2.2e-4 and 1.2e-6; 3 steps 6.5e-5 and 1.0e-6 (about 10 % slower); one
# product per QR, 2 steps 1.1e-3 and 7e-5; four products per QR 8e-3.
_OVERSAMPLE = 8
_POWER_STEPS = 2


def check_params(shape: tuple[int, ...], *, rank: int, lam: float, rho: float, step: float,
                 inner: int, max_outer: int, tol: float, delta0: float | None,
                 solver: str = "eigh") -> None:
  """Raises ValueError for parameters `splic` cannot use on matrices of `shape`."""
  validation.choice("solver", solver, SOLVERS)
  validation.integer_in("rank", rank, 1, min(shape[-2:]))
  validation.number_in("lam", lam, 0.0, math.inf)
  validation.number_in("rho", rho, 0.0, 1.0, lo_open=True, hi_open=True)
  validation.number_in("step", step, 0.0, math.inf, lo_open=True)
  validation.integer_in("inner", inner, 1)
  validation.integer_in("max_outer", max_outer, 1)
  validation.number_in("tol", tol, 0.0, math.inf)
  if delta0 is not None:
    validation.number_in("delta0", delta0, 0.0, math.inf, lo_open=True)


def splic(x: jax.Array, mask: jax.Array, *, rank: int, lam: float = 0.02, rho: float = 0.45,
          step: float = 0.5, inner: int = 7, max_outer: int = 10, tol: float = 1e-3,
          delta0: float | None = None, solver: str = "eigh") -> jax.Array:
  """SPLIC Algorithm 1: re-estimates the non-anchor entries of x.

  From X_0 = mask * x and delta = sigma_max(X_0), each outer round runs `inner`
  steps of

      X_r   = best rank-`rank` approximation of X_t  (truncated SVD)
      X~    = X_r - step (grad F_delta(X_r) + lam grad C(X_r))
      X_t+1 = mask * x + (1 - mask) * X~              (anchors restored)

  then sets delta <- rho delta. A matrix stops after a round whose last step
  changed it by ||X_t+1 - X_t||_F <= tol ||X_t||_F, or after `max_outer` rounds.
  The paper gives lam = 0.02, rho = 0.45, step = 0.5, inner = 7 and rank = R/4
  for R x R images; it states no round limit, and 10 rounds take delta down to
  3e-4 sigma_max, past which grad F_delta vanishes on the kept singular values.

  Both steps need only the top-`rank` singular triplets of X_t (grad F_delta
  acts on X_r). solver "eigh" takes them from a full eigendecomposition of the
  k x k Gram matrix G_t = X_t X_t^T (k = min(m, n)) at every step and applies
  them as U U^T X_t and U diag(1 - step f) U^T X_t (no k x k filter matrices). solver
  "subspace" tracks the top b = rank + 8 dimensional invariant subspace of G_t
  from step to step: starting from the previous step's basis Y (at the first
  step, G_0's top-b eigenvectors), it takes 2 block power steps
  Y <- orth(G_t^2 Y) (QR) and reads the triplets off the b x b matrix
  Y^T G_t Y (Rayleigh-Ritz), so each step decomposes a b x b matrix instead of
  a k x k one. Its output approximates the eigh route's (on CIFAR-10 within
  2e-6 relative of a float64 reference for the median image, as the eigh route
  in float32; docs/benchmarks.md gives the spread), and its
  derivatives are the eigh route's, evaluated at the same input. Where b >= k
  the two solvers are the same computation. With `spectral.eigh`'s batched CPU
  kernel the full decomposition is the faster of the two on CIFAR-10 (32 x 32
  Gram matrices, rank 8; docs/benchmarks.md).

  The TV term treats the matrix as one image: in the `concat` layout it also
  couples the last column of one channel with the first of the next.

  Args:
    x: (..., m, n) float32/float64.
    mask: (..., m, n) bool or 0/1, True on the anchors (kept fixed).
    rank: rank of the truncation, in [1, min(m, n)].
    lam: weight of the TV term, >= 0 (0 gives plain SRF).
    rho: factor on delta after each round, in (0, 1).
    step: gradient step, > 0.
    inner: steps per round (static), >= 1.
    max_outer: round cap (static), >= 1.
    tol: relative change that stops a matrix, >= 0.
    delta0: starting delta; default sigma_max(mask * x) per matrix.
    solver: "eigh" (a full decomposition per step) or "subspace" (a tracked subspace).

  Returns:
    (..., m, n): x on anchors, the completion elsewhere.
  """
  params = _checked_params(x, mask, rank=rank, lam=lam, rho=rho, step=step, inner=inner,
                           max_outer=max_outer, tol=tol, delta0=delta0, solver=solver)
  return _splic(x, mask, **params)


def splic_alternating(x: jax.Array, mask: jax.Array, **params) -> jax.Array:
  """Alternated SPLIC (sec. 3.4): complete with `mask` as anchors, then swap the roles.

  The first pass re-estimates the entries off `mask`; the second keeps those
  estimates as anchors and re-estimates the entries on `mask`, so no input entry
  reaches the output unchanged. The paper draws `mask` with p = 0.5.

  Args and returns: as `splic` (its parameters and defaults, declared there).
  """
  bound = inspect.signature(splic).bind(x, mask, **params)
  bound.apply_defaults()
  params = _checked_params(**bound.arguments)
  observed = jnp.asarray(mask).astype(bool)
  return _splic(_splic(x, observed, **params), ~observed, **params)


splic_alternating.__signature__ = inspect.signature(splic)


def _checked_params(x, mask, *, rank, lam, rho, step, inner, max_outer, tol, delta0,
                    solver) -> dict:
  """Validates the arguments and returns the parameters as the static Python scalars _splic takes."""
  validation.matrices_and_mask(x, mask)
  check_params(x.shape, rank=rank, lam=lam, rho=rho, step=step, inner=inner, max_outer=max_outer,
               tol=tol, delta0=delta0, solver=solver)
  return dict(rank=int(rank), lam=float(lam), rho=float(rho), step=float(step), inner=int(inner),
              max_outer=int(max_outer), tol=float(tol),
              delta0=None if delta0 is None else float(delta0), solver=solver)


@functools.partial(jax.jit, static_argnames=("rank", "lam", "rho", "step", "inner", "max_outer",
                                             "tol", "delta0", "solver"))
def _splic(x, mask, *, solver, **params):
  batch, shape = x.shape[:-2], x.shape[-2:]
  x = x.reshape((-1,) + shape)
  anchors = mask.astype(bool).reshape(x.shape)
  if solver == "subspace" and params["rank"] + _OVERSAMPLE >= min(shape):
    solver = "eigh"  # the tracked subspace would be the whole space: the same computation
  # custom_jvp's nondiff arguments must hash: the parameters go as sorted items.
  completed = _solve(x, anchors, tuple(sorted({**params, "solver": solver}.items())))
  return completed.reshape(batch + shape)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _solve(x, anchors, items):
  """The solver's rounds; derivatives are those of `_by_filters`, the map both compute."""
  params = dict(items)
  forward = _by_subspace if params["solver"] == "subspace" else _by_top_eigenvectors
  return forward(x, anchors, params)


@_solve.defjvp
def _solve_jvp(items, primals, tangents):
  # Both solvers evaluate the map that `_by_filters` writes as spectral filters, whose
  # derivative (Daleckii-Krein, spectral.gram_functions) stays finite at repeated singular
  # values. The subspace solver only approximates it and keeps its own output.
  x, anchors = primals
  dx, _ = tangents
  params = dict(items)
  out, dout = jax.jvp(lambda a: _by_filters(a, anchors, params), (x,), (dx,))
  if params["solver"] == "subspace":
    out = _by_subspace(x, anchors, params)
  return out, dout


def _by_filters(x, anchors, params):
  """Both steps as spectral filters of X_t: two k x k filter matrices applied to X_t."""
  rank, step = params["rank"], params["step"]
  project = lambda l, _: spectral.top_k(l, rank)
  descend = lambda l, d: spectral.top_k(l, rank) * (1 - step * _smoothed_rank_slope(l, d))

  def steps(current, delta, carried):
    x_r, x_descended = spectral.filter_matrices(current, [project, descend], delta)
    return x_r, x_descended, carried

  return _complete(x, anchors, _initial_sigma_max(x, anchors, params), (), steps, params)


def _by_top_eigenvectors(x, anchors, params):
  """`_by_filters` from the top-`rank` eigenvectors of G_t, without forming the filter matrices.

  X_r = U U^T X_t and X_r - step grad F_delta(X_r) = U diag(1 - step f(sigma^2)) U^T X_t for
  the top-`rank` eigenvectors U of G_t: 4 k rank n flops instead of 2 (2 k^3 + 2 k^2 n).
  """
  rank, step = params["rank"], params["step"]

  def steps(current, delta, carried):
    lam, q = spectral.eigh(spectral.gram(current))
    x_r, x_descended = _top_rank_step(current, q[..., -rank:], lam[..., -rank:], delta, step)
    return x_r, x_descended, carried

  return _complete(x, anchors, _initial_sigma_max(x, anchors, params), (), steps, params)


def _initial_sigma_max(x, anchors, params):
  """sigma_max(mask * x), from which delta starts; None where delta0 is given."""
  if params["delta0"] is not None:
    return None
  return spectral.largest_singular_value(jnp.where(anchors, x, 0))


def _top_rank_step(current, u, lam_top, delta, step):
  """(X_r, X_r - step grad F_delta(X_r)) from the top singular vectors on the short side.

  Args:
    current: (B, m, n) X_t.
    u: (B, k, rank) its top `rank` left (m <= n) or right (m > n) singular vectors.
    lam_top: (B, rank) their sigma^2.
  """
  scale = 1 - step * _smoothed_rank_slope(lam_top, delta)
  m, n = current.shape[-2:]
  if m <= n:
    coef = spectral.matmul(spectral.transpose(u), current)  # (rank, n)
    return spectral.matmul(u, coef), spectral.matmul(u * scale[..., None, :], coef)
  coef = spectral.matmul(current, u)  # (m, rank)
  ut = spectral.transpose(u)
  return spectral.matmul(coef, ut), spectral.matmul(coef * scale[..., None, :], ut)


def _by_subspace(x, anchors, params):
  rank = params["rank"]
  lam0, q0 = spectral.eigh(spectral.gram(jnp.where(anchors, x, 0)))
  sigma_max = spectral.safe_sqrt(lam0[..., -1])
  basis = q0[..., -(rank + _OVERSAMPLE):]

  def steps(current, delta, basis):
    g = spectral.gram(current)
    for _ in range(_POWER_STEPS):
      basis = spectral.orthonormal_basis(spectral.matmul(g, spectral.matmul(g, basis)))
    ritz = spectral.matmul(spectral.transpose(basis), spectral.matmul(g, basis))
    theta, w = spectral.eigh(ritz)
    u = spectral.matmul(basis, w[..., -rank:])  # (k, rank): the top singular vectors
    x_r, x_descended = _top_rank_step(current, u, theta[..., -rank:], delta, params["step"])
    return x_r, x_descended, basis

  return _complete(x, anchors, sigma_max, basis, steps, params)


def _complete(x, anchors, sigma_max, carried, steps, params):
  """Algorithm 1's rounds; `steps(X_t, delta, carried) -> (X_r, X_r - step grad F_delta, carried)`."""
  step, lam, rho, tol = params["step"], params["lam"], params["rho"], params["tol"]
  if params["delta0"] is None:
    # An all-zero start has nothing to smooth; any positive delta leaves it at zero.
    delta = jnp.where(sigma_max > 0, sigma_max, 1)
  else:
    delta = jnp.full(x.shape[:1], params["delta0"], x.dtype)

  def init(inputs):
    x, anchors, delta, carried = inputs
    return jnp.where(anchors, x, 0), delta, carried

  def round_(inputs, state):
    x, anchors, _, _ = inputs
    xt, delta, carried = state

    def gradient_step(carry, _):
      current, _, carried = carry
      x_r, x_descended, carried = steps(current, delta, carried)
      new = jnp.where(anchors, x, x_descended - step * lam * total_variation_grad(x_r))
      return (new, current, carried), None

    (x_new, x_prev, carried), _ = jax.lax.scan(gradient_step, (xt, xt, carried), None,
                                               length=params["inner"])
    change_sq = jnp.sum((x_new - x_prev) ** 2, axis=(-2, -1))
    converged = change_sq <= tol**2 * jnp.sum(x_prev**2, axis=(-2, -1))
    return (x_new, delta * rho, carried), converged

  return iterate.solve(init, round_, (x, anchors, delta, carried),
                       max_iters=params["max_outer"], output=lambda state: state[0])
