"""Approximate rank of images (ME-Net, sec. 2.2 and Fig. 1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax.reconstruct import masks, spectral
from menet_jax.utils import validation


def approximate_rank(images: np.ndarray, *, energy: float = 0.9, layout: str = "concat",
                     batch_size: int = 1000) -> np.ndarray:
  """The smallest k whose top-k singular values hold `energy` of each image's energy.

  Energy is the squared Frobenius norm, sum_i sigma_i^2: k is the smallest
  integer with sum_{i<=k} sigma_i^2 >= energy * sum_i sigma_i^2, computed on the
  image as a matrix in `layout` ("concat": H x C*W; "separate": per channel,
  reported as the largest over channels). Pixels are scaled to [0, 1].

  Args:
    images: (N, H, W, C) uint8 or float in [0, 1].
    energy: fraction in (0, 1].
    layout: "concat" or "separate".
    batch_size: images per call.

  Returns:
    (N,) int64 ranks in [1, min(m, n)] (0 for an all-black image).
  """
  energy = validation.number_in("energy", energy, 0.0, 1.0, lo_open=True)
  validation.choice("layout", layout, masks.LAYOUTS)
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must have shape (N, H, W, C), got {images.shape}")
  scale = 255.0 if images.dtype == np.uint8 else 1.0
  ranks = [np.asarray(_ranks(jnp.asarray(images[i:i + batch_size], jnp.float32) / scale, energy, layout))
           for i in range(0, len(images), batch_size)]
  return np.concatenate(ranks).astype(np.int64)


@jax.jit
def _cumulative_energy(mats):
  # sigma_i^2 are the eigenvalues of the smaller Gram matrix (spectral.eigh: no batched
  # LAPACK call on CPU); rounding-level negative ones are clipped.
  s2 = jnp.maximum(spectral.gram_eigvalsh(spectral.gram(mats))[..., ::-1], 0)
  total = jnp.sum(s2, axis=-1, keepdims=True)
  return jnp.cumsum(s2, axis=-1), total


def _ranks(images, energy, layout):
  cumulative, total = _cumulative_energy(masks.to_matrices(images, layout))
  # Relative slack so that energy = 1 is reached despite float32 rounding of the cumsum.
  ranks = jnp.sum(cumulative < energy * total * (1 - 1e-6), axis=-1) + (total[..., 0] > 0)
  return ranks if layout == "concat" else jnp.max(ranks, axis=-1)
