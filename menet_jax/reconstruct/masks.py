"""Observation masks and the image <-> matrix layouts of ME-Net.

ME-Net drops each pixel independently, keeping it with probability `p`
(Bernoulli masks), and treats an image as one matrix (`concat`: the C channels
side by side, H x W*C, the paper's default) or as C matrices that share one mask
(`separate`). Appendix B of the paper trains on n masks per image with
probabilities spread evenly from `startp` towards `endp` (`mask_probs`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax.utils import validation

LAYOUTS = ("concat", "separate")


def mask_probs(startp: float, endp: float, n: int) -> np.ndarray:
  """The n observation probabilities of Appendix B: p_i = startp + i (endp - startp) / n.

  `mask_probs(0.6, 0.8, 10)` is 0.60, 0.62, ..., 0.78 as in the paper's text
  ("p: 0.6 -> 0.8 ... with an equal interval of 0.02"). The released training
  script uses i = 1..n instead (0.62, ..., 0.80); the paper's schedule is kept
  here. Inference uses one mask at the mean of these values.

  Returns: (n,) float64.
  """
  startp = validation.number_in("startp", startp, 0.0, 1.0, lo_open=True)
  endp = validation.number_in("endp", endp, 0.0, 1.0, lo_open=True)
  n = validation.integer_in("n", n, 1)
  if endp < startp:
    raise ValueError(f"endp must be >= startp, got startp={startp}, endp={endp}")
  return startp + np.arange(n) * (endp - startp) / n


def check_p(p, batch: int | None = None) -> None:
  """Validates an observation probability: a float or a (batch,) array in (0, 1]."""
  if isinstance(p, (int, float, np.floating, np.integer)) and not isinstance(p, bool):
    validation.number_in("p", p, 0.0, 1.0, lo_open=True)
    return
  shape = getattr(p, "shape", None)
  if shape is None:
    raise ValueError(f"p must be a float or an array of floats, got {type(p).__name__}")
  if batch is not None and tuple(shape) not in ((), (batch,)):
    raise ValueError(f"p must be a scalar or have shape ({batch},), got {tuple(shape)}")
  if validation.is_concrete(p):
    arr = np.asarray(p, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or arr.min() <= 0.0 or arr.max() > 1.0:
      raise ValueError(f"p must be in (0, 1], got values in [{arr.min()}, {arr.max()}]")


def bernoulli(key: jax.Array, shape: tuple[int, ...], p) -> jax.Array:
  """Random observation mask: True (observed) with probability p.

  Args:
    key: PRNG key.
    shape: (..., m, n) shape of the mask.
    p: observation probability in (0, 1]; a float, or an array broadcastable
      to the leading dims `shape[:-2]` (one probability per matrix).

  Returns:
    (..., m, n) bool.
  """
  if len(shape) < 2:
    raise ValueError(f"shape must have at least 2 dimensions (..., m, n), got {shape}")
  check_p(p)
  p = jnp.asarray(p, dtype=jnp.float32)
  return jax.random.bernoulli(key, p[..., None, None], shape)


def to_matrices(images: jax.Array, layout: str) -> jax.Array:
  """Images (N, H, W, C) -> matrices.

  concat:   (N, H, C*W), the channel planes side by side [c0 | c1 | ...].
  separate: (N, C, H, W), one matrix per channel.
  """
  validation.choice("layout", layout, LAYOUTS)
  if layout == "concat":
    n, h, w, c = images.shape
    return jnp.transpose(images, (0, 1, 3, 2)).reshape(n, h, c * w)
  return jnp.transpose(images, (0, 3, 1, 2))


def from_matrices(mats: jax.Array, layout: str, channels: int) -> jax.Array:
  """Inverse of `to_matrices`: back to (N, H, W, C)."""
  validation.choice("layout", layout, LAYOUTS)
  if layout == "concat":
    n, h, cw = mats.shape
    return jnp.transpose(mats.reshape(n, h, channels, cw // channels), (0, 1, 3, 2))
  return jnp.transpose(mats, (0, 2, 3, 1))


def image_mask(key: jax.Array, image_shape: tuple[int, int, int, int], p, layout: str) -> jax.Array:
  """A mask in matrix layout for images of shape (N, H, W, C).

  concat draws one bit per matrix entry, i.e. per pixel and channel, as the
  release does; separate draws one (H, W) mask per image and shares it across
  the channels.

  Returns: bool, (N, H, C*W) for concat, (N, C, H, W) for separate.
  """
  n, h, w, c = image_shape
  if layout == "concat":
    return bernoulli(key, (n, h, c * w), p)
  shared = bernoulli(key, (n, h, w), p)
  return jnp.broadcast_to(shared[:, None], (n, c, h, w))
