"""Spectral filters of matrices, computed from the smaller Gram matrix.

Every reconstructor in this package changes the singular values of a matrix and
keeps its singular vectors. For x = U diag(sigma) V^T with m <= n,

    U diag(s_i sigma_i) V^T = H x,   H = U diag(s) U^T,

where U and lambda = sigma^2 are the eigenvectors and eigenvalues of the m x m
Gram matrix G = x x^T (x^T x and x H for tall matrices). A filter gives the
scale factors s = s(lambda) in terms of lambda, so no square roots of small,
possibly negative rounding-level eigenvalues are needed and 1/sigma never appears.

Why the Gram route: the eigendecomposition of the 32 x 32 Gram matrix of a
32 x 96 CIFAR matrix costs a fraction of the corresponding SVD (about a third
with LAPACK one matrix at a time; `eigh` now batches it), and the two matrix
products around it are cheap. The price is precision: eigenvalues of G carry
absolute errors of about eps * sigma_max^2, so singular values below about
sqrt(eps) * sigma_max (3e-4 sigma_max in float32) are not resolved. All filters used here map those
directions to (almost) the same scale, so the effect on the output is at that
level; run under `jax_enable_x64` where more is needed.

Derivatives: `gram_functions` has a custom JVP, the Daleckii-Krein formula

    dH = Q (Gamma o (Q^T dG Q)) Q^T,   Gamma_ij = (s_i - s_j) / (lambda_i - lambda_j),

with Gamma_ij = (s'_i + s'_j) / 2 where lambda_i ~ lambda_j. Unlike
differentiating `eigh` itself, this stays finite at repeated eigenvalues, which
images with blank rows and rank-deficient masked matrices always have.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from menet_jax.reconstruct import batched_eigh

# A filter maps the ascending eigenvalues lambda (..., k) of the Gram matrix,
# and a pytree of float parameters, to scale factors s (..., k). It must act
# elementwise on lambda, apart from masks chosen by position in the ascending
# order (top-k selections), which are constant almost everywhere.
Filter = Callable[[jax.Array, Any], jax.Array]

_HIGHEST = jax.lax.Precision.HIGHEST


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  """Full-precision matmul: TPUs and recent GPUs otherwise round float32 products to bf16/tf32."""
  return jnp.matmul(a, b, precision=_HIGHEST)


@jax.custom_jvp
def eigh(g: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Ascending eigenvalues and eigenvectors of symmetric (..., k, k) matrices.

  On CPU the whole batch goes to `batched_eigh`, a C++ kernel that vectorises the batch
  across SIMD lanes (2.5-3x LAPACK one matrix at a time on CIFAR-10's 32 x 32 Gram
  matrices, docs/benchmarks.md).
  Not jaxlib's batched LAPACK kernel (0.10.2): it splits a batch over XLA's intra-op
  thread pool and blocks the calling thread until the pieces are done, and when XLA runs
  two such kernels concurrently on pool threads (independent loops in one program, or one
  per device) every pool thread can end up waiting for work that no free thread picks up,
  and the program hangs for good. `batched_eigh` only uses threads it starts and joins.
  Other backends use their batched kernels (cuSOLVER on GPUs, Jacobi on TPUs).

  Derivatives are those of `jnp.linalg.eigh` (undefined where eigenvalues
  repeat); the filters below differentiate through `gram_functions` instead.
  """
  return jax.lax.platform_dependent(g, cpu=batched_eigh.eigh,
                                    default=lambda a: tuple(jnp.linalg.eigh(a)))


@eigh.defjvp
def _eigh_jvp(primals, tangents):
  # dlambda_i = q_i^T dG q_i,  dQ = Q (F o (Q^T dG Q)),  F_ij = 1 / (lambda_j - lambda_i), F_ii = 0,
  # with dG symmetrised as the decomposition symmetrises G.
  (g,), (dg,) = primals, tangents
  lam, q = eigh(g)
  dg = (dg + transpose(dg)) / 2
  dg_q = matmul(transpose(q), matmul(dg, q))
  off = ~jnp.eye(lam.shape[-1], dtype=bool)
  gap = lam[..., None, :] - lam[..., :, None]
  f = jnp.where(off, 1 / jnp.where(off, gap, 1), 0)
  return (lam, q), (jnp.diagonal(dg_q, axis1=-2, axis2=-1), matmul(q, f * dg_q))


def one_at_a_time(fn: Callable[[jax.Array], Any]) -> Callable[[jax.Array], Any]:
  """fn on a (B, ...) batch as a loop over single matrices (`eigh` says why, for CPU).

  benchmarks/eigh_route.py also times LAPACK's eigh this way.

  Batched by vmap (including a caller's vmap around this module's functions),
  the sequential_vmap wrapper becomes a loop over single matrices (lax.map), so
  LAPACK never sees a batch.
  """
  return jax.vmap(jax.custom_batching.sequential_vmap(fn))


_QR_ONE_AT_A_TIME = one_at_a_time(lambda y: jnp.linalg.qr(y)[0])


def orthonormal_basis(y: jax.Array) -> jax.Array:
  """Q of the reduced QR decomposition of y: (..., k, b) -> (..., k, b), b <= k.

  Q's columns are orthonormal and span y's columns where y has full column rank.
  On CPU LAPACK one matrix at a time (`eigh` says why). Not meant to be differentiated (the
  derivative of QR is undefined where y is rank-deficient).
  """
  k, b = y.shape[-2:]
  flat = y.reshape(-1, k, b)
  q = jax.lax.platform_dependent(flat, cpu=_QR_ONE_AT_A_TIME,
                                 default=lambda a: jnp.linalg.qr(a)[0])
  return q.reshape(y.shape)


def transpose(a: jax.Array) -> jax.Array:
  return jnp.swapaxes(a, -1, -2)


def gram(x: jax.Array) -> jax.Array:
  """The smaller Gram matrix of x: (..., m, n) -> (..., k, k), k = min(m, n)."""
  m, n = x.shape[-2:]
  return matmul(x, transpose(x)) if m <= n else matmul(transpose(x), x)


def _assemble(q: jax.Array, s: jax.Array) -> jax.Array:
  return matmul(q * s[..., None, :], transpose(q))


def _diag(v: jax.Array) -> jax.Array:
  return v[..., :, None] * jnp.eye(v.shape[-1], dtype=v.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def gram_functions(filters: Sequence[Filter], g: jax.Array, params: Any) -> tuple[jax.Array, ...]:
  """H_f = Q diag(f(lambda, params)) Q^T for each filter f, where g = Q diag(lambda) Q^T.

  Args:
    filters: static sequence of filters.
    g: (..., k, k) symmetric positive semi-definite.
    params: pytree of float arrays passed to every filter (differentiable).

  Returns:
    One (..., k, k) symmetric matrix per filter.
  """
  return _spectrum_and_functions(tuple(filters), g, params)[1]


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _spectrum_and_functions(filters, g, params):
  """(lambda, gram_functions(filters, g, params)) from one decomposition."""
  lam, q = eigh(g)
  return lam, tuple(_assemble(q, f(lam, params)) for f in filters)


@_spectrum_and_functions.defjvp
def _spectrum_and_functions_jvp(filters, primals, tangents):
  g, params = primals
  dg, dparams = tangents
  lam, q = eigh(g)
  dg_q = matmul(transpose(q), matmul(dg, q))
  dlam = lam[..., :, None] - lam[..., None, :]
  scale = jnp.max(jnp.abs(lam), axis=-1)[..., None, None]
  close = jnp.abs(dlam) <= 64 * jnp.finfo(lam.dtype).eps * scale
  outs, douts = [], []
  for f in filters:
    s, ds = jax.jvp(lambda l: f(l, params), (lam,), (jnp.ones_like(lam),))
    _, ds_params = jax.jvp(lambda p: f(lam, p), (params,), (dparams,))
    divided = (s[..., :, None] - s[..., None, :]) / jnp.where(close, 1, dlam)
    tangent_slope = (ds[..., :, None] + ds[..., None, :]) / 2
    gamma = jnp.where(close, tangent_slope, divided)
    outs.append(_assemble(q, s))
    douts.append(matmul(q, matmul(gamma * dg_q + _diag(ds_params), transpose(q))))
  dlam_diag = jnp.diagonal(dg_q, axis1=-2, axis2=-1)
  return (lam, tuple(outs)), (dlam_diag, tuple(douts))


@jax.custom_jvp
def gram_eigvalsh(g: jax.Array) -> jax.Array:
  """Ascending eigenvalues of a symmetric (..., k, k) matrix.

  Its JVP is dlambda_i = q_i^T dG q_i, which needs no eigenvector derivative and
  so stays finite at repeated eigenvalues.
  """
  return eigh(g)[0]


@gram_eigvalsh.defjvp
def _gram_eigvalsh_jvp(primals, tangents):
  (g,), (dg,) = primals, tangents
  lam, q = eigh(g)
  return lam, jnp.einsum("...ij,...ik,...kj->...j", q, dg, q, precision=_HIGHEST)


def filter_matrices(x: jax.Array, filters: Sequence[Filter], params: Any = ()) -> tuple[jax.Array, ...]:
  """Applies each filter to the singular values of x, keeping its singular vectors.

  Args:
    x: (..., m, n).
    filters: static sequence of filters (see `Filter`).
    params: pytree of float arrays for the filters.

  Returns:
    One (..., m, n) array per filter: U diag(s_f(sigma^2) * sigma) V^T.
  """
  return filter_matrices_and_spectrum(x, filters, params)[1]


def filter_matrices_and_spectrum(x: jax.Array, filters: Sequence[Filter], params: Any = ()
                                 ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
  """`filter_matrices`, and the squared singular values its decomposition found.

  For solvers that also need a function of the spectrum (a nuclear norm for a stopping
  rule): it comes with the step's decomposition instead of a second one.

  Returns:
    lambda: (..., k) the ascending eigenvalues of `gram(x)`, k = min(m, n), i.e. sigma^2
      up to absolute errors of about eps * sigma_max^2; and `filter_matrices`' outputs.
  """
  m, n = x.shape[-2:]
  lam, hs = _spectrum_and_functions(tuple(filters), gram(x), params)
  return lam, tuple(matmul(h, x) if m <= n else matmul(x, h) for h in hs)


def top_k(lam: jax.Array, k: int) -> jax.Array:
  """1.0 on the k largest of the ascending eigenvalues `lam`, 0.0 elsewhere."""
  size = lam.shape[-1]
  return jnp.broadcast_to((jnp.arange(size) >= size - k).astype(lam.dtype), lam.shape)


def safe_sqrt(v: jax.Array) -> jax.Array:
  """sqrt(max(v, 0)) with a zero (not infinite) derivative at and below 0."""
  positive = v > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, v, 1)), 0)


def largest_singular_value(x: jax.Array) -> jax.Array:
  """sigma_max of each matrix: (..., m, n) -> (...)."""
  return safe_sqrt(gram_eigvalsh(gram(x))[..., -1])


def soft_threshold(lam: jax.Array, tau: jax.Array) -> jax.Array:
  """Filter for sigma -> max(sigma - tau, 0): scale 1 - tau / sigma above tau, 0 below.

  tau: (...) one threshold per matrix.
  """
  tau = jnp.asarray(tau)[..., None]
  keep = lam > tau * tau
  return jnp.where(keep, 1 - tau / jnp.sqrt(jnp.where(keep, lam, 1)), 0)
