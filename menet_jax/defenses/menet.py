"""The ME-Net defense: random masks + matrix estimation in front of a classifier.

One `MENet` value describes the preprocessing (method, its parameters, layout
and the mask schedule) and is what training, the ME training set and evaluation
all use, so the three can never disagree about the defense.

Masks are drawn from one PRNG key *per example* (`keys`: (B,)), so the mask an
image gets depends on its own key only, not on the batch it travels in or on
how that batch is split over devices and hosts.

Inference follows Algorithm 1 of the paper (one mask at p = mean(p_i)) or
Appendix J (a majority vote over k masks at that p).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax import masks, validation
from menet_jax.bpda import bpda
from menet_jax.reconstruct import images as images_lib
from menet_jax.reconstruct import registry

INFERENCE = ("mean", "vote")


@dataclasses.dataclass(frozen=True)
class MENet:
  """ME-Net preprocessing. Build it with `MENet.create`, which validates.

  Attributes:
    method: registered reconstructor name (`menet_jax.reconstruct.registry`).
    params: the method's parameters as sorted (name, value) pairs (hashable,
      so a MENet can be a static argument of jit).
    layout: "concat" (H x C*W, the paper's choice) or "separate".
    startp, endp, mask_num: the training mask schedule, `masks.mask_probs`.
    inference: "mean" (one mask at mean p) or "vote" (majority over `votes` masks).
    votes: number of masks for "vote".
  """
  method: str
  params: tuple[tuple[str, Any], ...]
  layout: str
  startp: float
  endp: float
  mask_num: int
  inference: str = "mean"
  votes: int = 1

  @classmethod
  def create(cls, *, method: str, startp: float, endp: float, mask_num: int,
             image_shape: tuple[int, int, int], layout: str = "concat", inference: str = "mean",
             votes: int = 10, **params) -> "MENet":
    """Validates everything that can be checked without data and returns the defense.

    Args:
      method: reconstructor name, e.g. "usvt", "nuclear_norm".
      startp, endp, mask_num: mask schedule (p_i = startp + i (endp - startp) / mask_num).
      image_shape: (H, W, C) of the images it will see (checks the method's
        parameters, e.g. a rank, against the matrix size).
      layout: "concat" or "separate".
      inference: "mean" or "vote".
      votes: masks per image for "vote" (>= 1; ignored for "mean").
      **params: the method's parameters.
    """
    masks.mask_probs(startp, endp, mask_num)
    validation.choice("layout", layout, masks.LAYOUTS)
    validation.choice("inference", inference, INFERENCE)
    votes = validation.integer_in("votes", votes, 1)
    if len(image_shape) != 3:
      raise ValueError(f"image_shape must be (H, W, C), got {image_shape}")
    h, w, c = image_shape
    registry.check_params(method, (1, h, c * w) if layout == "concat" else (1, c, h, w), **params)
    return cls(method=method, params=tuple(sorted(params.items())), layout=layout,
               startp=float(startp), endp=float(endp), mask_num=int(mask_num),
               inference=inference, votes=votes if inference == "vote" else 1)

  @property
  def train_probs(self) -> np.ndarray:
    """(mask_num,) the training observation probabilities p_i."""
    return masks.mask_probs(self.startp, self.endp, self.mask_num)

  @property
  def mean_p(self) -> float:
    """The inference probability of Algorithm 1, mean(p_i)."""
    return float(self.train_probs.mean())

  def describe(self) -> dict[str, Any]:
    """JSON-serialisable description (for manifests and result tables)."""
    return {"method": self.method, "params": dict(self.params), "layout": self.layout,
            "startp": self.startp, "endp": self.endp, "mask_num": self.mask_num,
            "inference": self.inference, "votes": self.votes, "mean_p": self.mean_p}

  def reconstruct(self, keys: jax.Array, images: jax.Array, p: jax.Array) -> jax.Array:
    """Masks each image with its own key and probability and reconstructs it.

    Jittable (the defense itself is static configuration).

    Args:
      keys: (B,) PRNG keys, one per image.
      images: (B, H, W, C) float32 in [0, 1].
      p: (B,) or scalar observation probabilities in (0, 1].

    Returns:
      (B, H, W, C) reconstructions in [0, 1].
    """
    b, h, w, c = images.shape
    p = jnp.broadcast_to(jnp.asarray(p, jnp.float32), (b,))
    one = functools.partial(masks.image_mask, image_shape=(1, h, w, c), layout=self.layout)
    mask = jax.vmap(lambda k, q: one(k, p=q)[0])(keys, p)
    return images_lib.estimate_masked(images, mask, estimate=registry.get(self.method),
                                      layout=self.layout, params=dict(self.params))

  def differentiable(self) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    """`reconstruct` with BPDA's identity backward pass: f(images, keys, p).

    The forward pass is the true reconstruction; gradients flow to the images
    as if the reconstruction were the identity (Athalye et al., 2018).
    """
    return bpda(lambda x, keys, p: self.reconstruct(keys, x, p))

  def inference_keys(self, key: jax.Array, indices: jax.Array) -> jax.Array:
    """(votes, B) per-example keys for inference, tied to each image's global index."""
    indices = jnp.asarray(indices)
    per_vote = jax.vmap(lambda v: jax.random.fold_in(key, v))(jnp.arange(self.votes))
    return jax.vmap(lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(indices))(per_vote)


def majority_vote(logits: jax.Array) -> jax.Array:
  """Majority vote over predicted labels (Appendix J); ties go to the smaller label.

  Args:
    logits: (k, B, classes) logits of k randomized predictions per image.

  Returns:
    (B,) int32 labels.
  """
  votes = jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1], dtype=jnp.int32).sum(0)
  return jnp.argmax(votes, -1).astype(jnp.int32)
