"""The ME-Net preprocessing of whole images: mask, estimate, clip, as the release does it."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from menet_jax.reconstruct import masks, registry
from menet_jax.utils import validation


def reconstruct_images(key: jax.Array, images: jax.Array, *, method: str, p, layout: str = "concat",
                       **params) -> jax.Array:
  """Drops pixels at random and reconstructs the images by matrix estimation.

  Images are scaled to [-1, 1], laid out as matrices (`masks.to_matrices`),
  masked with a fresh Bernoulli(p) mask (`masks.image_mask`), estimated with
  `method`, clipped to [-1, 1] (part of the release's pipeline, not input
  sanitising) and scaled back to [0, 1].

  Args:
    key: PRNG key for the mask.
    images: (N, H, W, C) float32/float64 in [0, 1], any C >= 1.
    method: a registered reconstructor name ("usvt", "soft_impute",
      "nuclear_norm", "splic", "splic_alternating").
    p: observation probability in (0, 1], a float or an (N,) array.
    layout: "concat" (H x C*W, the paper's default) or "separate".
    **params: the method's parameters (e.g. keep=0.8, mu=1.0, rank=8).

  Returns:
    (N, H, W, C) reconstructions in [0, 1], dtype of `images`.
  """
  validation.floating_array("images", images, min_ndim=4)
  if images.ndim != 4:
    raise ValueError(f"images must have shape (N, H, W, C), got {tuple(images.shape)}")
  validation.values_in("images", images, 0.0, 1.0)
  validation.choice("layout", layout, masks.LAYOUTS)
  masks.check_p(p, images.shape[0])
  n, h, w, c = images.shape
  matrix_shape = (n, h, c * w) if layout == "concat" else (n, c, h, w)
  registry.check_params(method, matrix_shape, **params)
  return _pipeline(method, layout, tuple(sorted(params.items())))(key, images, p)


@functools.lru_cache(maxsize=None)
def _pipeline(method: str, layout: str, params: tuple):
  estimate = registry.get(method)

  @jax.jit
  def run(key, images, p):
    mask = masks.image_mask(key, images.shape, p, layout)
    return estimate_masked(images, mask, estimate=estimate, layout=layout, params=dict(params))

  return run


def estimate_masked(images: jax.Array, mask: jax.Array, *, estimate, layout: str, params: dict
                    ) -> jax.Array:
  """The deterministic part of the pipeline, for callers that draw their own masks.

  No validation: this is the traced core that `reconstruct_images` and the
  defenses (which draw one mask per example from per-example keys) share.

  Args:
    images: (N, H, W, C) float in [0, 1].
    mask: bool mask in matrix layout, as `masks.image_mask` returns it.
    estimate: a reconstructor, `registry.get(method)`.
    layout: "concat" or "separate".
    params: the method's parameters.

  Returns:
    (N, H, W, C) reconstructions in [0, 1].
  """
  mats = masks.to_matrices(2 * images - 1, layout)
  est = jnp.clip(estimate(mats, mask, **params), -1, 1)
  return masks.from_matrices((est + 1) / 2, layout, images.shape[-1])
