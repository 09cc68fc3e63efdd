"""The ME-Net defense: random masks + matrix estimation in front of a classifier.

One `MENet` value describes the preprocessing (method, its parameters, layout
and the mask schedule); training, the ME training set and evaluation all use
it through the `Defense` interface, so they can never disagree about it.

A draw masks each image with its own key and level p (the observation
probability) and reconstructs it (`reconstruct.images.estimate_masked`).
Training draws use the schedule p_i = startp + i (endp - startp) / n of
Appendix B; inference uses one mask at p = mean(p_i) (Algorithm 1) or, with
inference="vote", a majority vote over `votes` masks at that p (Appendix J).

    menet(method=usvt, keep=0.8, startp=0.4, endp=0.6, mask_num=10)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax.defenses.base import DEFENSES, Defense
from menet_jax.reconstruct import images as images_lib
from menet_jax.reconstruct import masks, registry
from menet_jax.utils import validation
from menet_jax.utils.registry import format_spec

INFERENCE = ("mean", "vote")


@dataclasses.dataclass(frozen=True)
class MENet(Defense):
  """ME-Net preprocessing. Build it with `MENet.create` (or `defenses.create("menet(...)")`).

  Attributes:
    method: registered reconstructor name (`menet_jax.reconstruct.registry`).
    params: every parameter of the method as sorted (name, value) pairs
      (hashable, so that a MENet can be a static argument of jit).
    layout: "concat" (H x C*W, the paper's choice) or "separate".
    startp, endp, mask_num: the training mask schedule, `masks.mask_probs`.
    inference: "mean" (one mask at mean p) or "vote" (majority over `votes` masks).
    votes: number of masks per prediction (1 for "mean").
  """
  method: str
  params: tuple[tuple[str, Any], ...]
  layout: str
  startp: float
  endp: float
  mask_num: int
  inference: str = "mean"
  votes: int = 1

  randomized = True

  @classmethod
  def create(cls, *, method: str, layout: str = "concat", startp: float = 0.8, endp: float = 1.0,
             mask_num: int = 10, inference: str = "mean", votes: int = 10,
             **params: Any) -> "MENet":
    """Validates everything that needs no data and returns the defense.

    Args:
      method: reconstructor name, e.g. "usvt", "nuclear_norm".
      layout: "concat" or "separate".
      startp, endp, mask_num: mask schedule (p_i = startp + i (endp - startp) / mask_num).
      inference: "mean" or "vote".
      votes: masks per image for "vote" (>= 1; ignored for "mean").
      **params: the method's parameters; the method's declared defaults fill the rest.
    """
    masks.mask_probs(startp, endp, mask_num)
    validation.choice("layout", layout, masks.LAYOUTS)
    validation.choice("inference", inference, INFERENCE)
    votes = validation.integer_in("votes", votes, 1)
    _, params = registry.RECONSTRUCTORS.bind(method, **params)
    return cls(method=method, params=tuple(sorted(params.items())), layout=layout,
               startp=float(startp), endp=float(endp), mask_num=int(mask_num),
               inference=inference, votes=votes if inference == "vote" else 1)

  def check(self, image_shape: tuple[int, int, int]) -> None:
    """Checks the method's parameters (e.g. a rank) against the matrices of `image_shape`."""
    if len(image_shape) != 3:
      raise ValueError(f"image_shape must be (H, W, C), got {image_shape}")
    h, w, c = image_shape
    shape = (1, h, c * w) if self.layout == "concat" else (1, c, h, w)
    registry.check_params(self.method, shape, **dict(self.params))

  @property
  def train_levels(self) -> np.ndarray:
    """(mask_num,) the training observation probabilities p_i."""
    return masks.mask_probs(self.startp, self.endp, self.mask_num)

  @property
  def test_level(self) -> float:
    """The inference probability of Algorithm 1, mean(p_i)."""
    return float(self.train_levels.mean())

  def describe(self) -> dict[str, Any]:
    return {"defense": "menet", "method": self.method, "params": dict(self.params),
            "layout": self.layout, "startp": self.startp, "endp": self.endp,
            "mask_num": self.mask_num, "inference": self.inference, "votes": self.votes,
            "mean_p": self.test_level}

  def spec(self) -> str:
    votes = {"votes": self.votes} if self.inference == "vote" else {}
    return format_spec("menet", dict(self.params, method=self.method, layout=self.layout,
                                     startp=self.startp, endp=self.endp, mask_num=self.mask_num,
                                     inference=self.inference, **votes))

  def transform(self, keys: jax.Array, x: jax.Array, level: jax.Array) -> jax.Array:
    """Masks each image with its own key and probability and reconstructs it (jittable).

    Args:
      keys: (B,) PRNG keys, one per image.
      x: (B, H, W, C) float32 in [0, 1].
      level: (B,) or scalar observation probabilities in (0, 1].

    Returns:
      (B, H, W, C) reconstructions in [0, 1].
    """
    b, h, w, c = x.shape
    p = jnp.broadcast_to(jnp.asarray(level, jnp.float32), (b,))
    one = functools.partial(masks.image_mask, image_shape=(1, h, w, c), layout=self.layout)
    mask = jax.vmap(lambda k, q: one(k, p=q)[0])(keys, p)
    return images_lib.estimate_masked(x, mask, estimate=registry.get(self.method),
                                      layout=self.layout, params=dict(self.params))


DEFENSES.register("menet", MENet.create)
