"""The median filter as a test-time defense (a baseline of RIDE, Table 4).

Each channel of each image is replaced by its k x k median:

    out[i, j, c] = median{ x_pad[i + a, j + b, c] : 0 <= a, b < k }

with x padded by k // 2 on every side: zeros ("zero", the paper's setting) or
the mirror image without repeating the edge ("reflect": numpy's reflect,
scipy's "mirror"; the RIDE release's MNIST demo). k is odd, so the median is
the middle of the k^2 sorted values, not an average. Deterministic; attacked
through BPDA's identity.

    median(k=3, padding=zero)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from menet_jax.defenses.base import DEFENSES, Defense
from menet_jax.utils import validation

PADDINGS = {"zero": "constant", "reflect": "reflect"}


def median_filter(x: jax.Array, k: int, padding: str = "zero") -> jax.Array:
  """k x k median of every channel: (..., H, W, C) -> (..., H, W, C); k odd, padding as above."""
  r = k // 2
  pad = [(0, 0)] * (x.ndim - 3) + [(r, r), (r, r), (0, 0)]
  padded = jnp.pad(x, pad, mode=PADDINGS[padding])
  h, w = x.shape[-3:-1]
  windows = jnp.stack([padded[..., a:a + h, b:b + w, :] for a in range(k) for b in range(k)], -1)
  return jnp.sort(windows, axis=-1)[..., k * k // 2]


@dataclasses.dataclass(frozen=True)
class Median(Defense):
  """Attributes: k (odd window size, >= 1), padding ("zero" or "reflect")."""
  k: int = 3
  padding: str = "zero"

  def __post_init__(self):
    validation.integer_in("k", self.k, 1)
    if self.k % 2 == 0:
      raise ValueError(f"k must be odd, got {self.k}")
    validation.choice("padding", self.padding, tuple(PADDINGS))

  def check(self, image_shape: tuple[int, int, int]) -> None:
    if self.padding == "reflect" and min(image_shape[:2]) <= self.k // 2:
      raise ValueError(f"k={self.k} with reflect padding needs images larger than k // 2, got "
                       f"{image_shape}")

  def transform(self, keys: jax.Array, x: jax.Array, level: jax.Array) -> jax.Array:
    return median_filter(x, self.k, self.padding)

  def describe(self) -> dict[str, Any]:
    return {"defense": "median", "k": self.k, "padding": self.padding}


DEFENSES.register("median", Median)
