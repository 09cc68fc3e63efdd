"""Projected BPDA, the second adaptive attack of ME-Net section 3.4.

ME-Net keeps the global (low-rank) structure of an image, so this attacker
perturbs only that structure: it ascends the BPDA gradient projected onto the
span of the top-k singular vectors of the clean image. With the image laid out
as a matrix X = U S V^T (the reconstruction's layout, on 2x - 1 as the
reconstruction sees it), the projection of a matrix G is

    P(G) = U_k U_k^T G V_k V_k^T,

the orthogonal projection onto matrices whose column space lies in span(U_k)
and row space in span(V_k). The iteration stays in that subspace:

    d_{t+1} = s(d_t + alpha P(g_t) / |P(g_t)|_inf),   s(d) = d min(1, eps / |d|_inf)

(the l-inf-normalised projected gradient takes the place of sign(g), which would
leave the subspace; rescaling by s, unlike clipping, stays in it). The attack
returns clip(x + d_T, 0, 1): d_T lies in the subspace, and so does x_adv - x
wherever clipping to [0, 1] did not bite.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from menet_jax.attacks.pgd import check_inputs, loss_and_grad
from menet_jax.reconstruct import masks, spectral
from menet_jax.utils import validation


def subspace_projector(images: jax.Array, rank: int, layout: str = "concat"
                       ) -> Callable[[jax.Array], jax.Array]:
  """P(.) onto the top-`rank` singular subspace of each image.

  Args:
    images: (B, H, W, C) clean images in [0, 1].
    rank: k >= 1, at most the smaller matrix dimension.
    layout: the matrix layout, "concat" (H x C*W) or "separate" (C matrices H x W).

  Returns:
    P: (B, H, W, C) -> (B, H, W, C), linear, idempotent and self-adjoint.
  """
  validation.choice("layout", layout, masks.LAYOUTS)
  if images.ndim != 4:
    raise ValueError(f"images must have shape (B, H, W, C), got {tuple(images.shape)}")
  mats = masks.to_matrices(2 * images - 1, layout)
  m, n = mats.shape[-2:]
  rank = validation.integer_in("rank", rank, 1, min(m, n))
  # Top eigenvectors of X X^T and X^T X span the top left and right singular vectors;
  # projectors built from them do not depend on the signs an SVD would pick.
  t = spectral.transpose
  u = spectral.eigh(spectral.matmul(mats, t(mats)))[1][..., -rank:]
  v = spectral.eigh(spectral.matmul(t(mats), mats))[1][..., -rank:]
  pu, pv = spectral.matmul(u, t(u)), spectral.matmul(v, t(v))
  channels = images.shape[-1]

  def project(g: jax.Array) -> jax.Array:
    gm = masks.to_matrices(g, layout)
    pm = spectral.matmul(spectral.matmul(pu, gm), pv)
    return masks.from_matrices(pm, layout, channels)

  return project


def projected_pgd(loss_fn: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array, *,
                  eps: float, step_size: float, steps: int, rank: int,
                  layout: str = "concat") -> jax.Array:
  """l-inf ascent of `loss_fn` restricted to each image's top-`rank` singular subspace.

  Args:
    loss_fn: (x_adv (B, H, W, C), t int32 scalar) -> (B,) loss to maximise (BPDA
      through the defense, fresh randomness per t).
    x: (B, H, W, C) clean images in [0, 1].
    eps, step_size, steps: radius, step alpha and number of steps.
    rank: k, the number of singular vectors spanning the subspace.
    layout: the defense's matrix layout.

  Returns:
    (B, H, W, C) clip(x + d, 0, 1) with d in the subspace and |d|_inf <= eps.
  """
  eps = check_inputs(x, eps)
  validation.number_in("step_size", step_size, 0.0, 1.0, lo_open=True)
  steps = validation.integer_in("steps", steps, 1)
  project = subspace_projector(x, rank, layout)
  axes = tuple(range(1, x.ndim))

  def linf(v):
    return jnp.max(jnp.abs(v), axis=axes, keepdims=True)

  def step(t, d):
    _, g = loss_and_grad(loss_fn, jnp.clip(x + d, 0.0, 1.0), t)
    pg = project(g)
    d = d + step_size * pg / jnp.maximum(linf(pg), 1e-12)
    return d * jnp.minimum(1.0, eps / jnp.maximum(linf(d), 1e-12))

  d = jax.lax.fori_loop(0, steps, step, jnp.zeros_like(x))
  return jnp.clip(x + d, 0.0, 1.0)
