"""Standard training: cross-entropy on the batch as the loop hands it over.

With a defense that preprocesses, the loop hands over cached draws of it: ME-Net's
pure training (Algorithm 1, n reconstructions of every image). Without one, the
clean images: vanilla training.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from menet_jax.data import input_pipeline
from menet_jax.defenses import Defense
from menet_jax.training import state as state_lib
from menet_jax.training.objectives.base import Metrics, Objective, register


def sgd_step(state: state_lib.TrainState, x: jax.Array, labels: jax.Array
             ) -> tuple[state_lib.TrainState, Metrics]:
  """One optimizer step on cross-entropy at inputs x (B, H, W, C) in [0, 1], train-mode BN."""
  def loss_fn(params):
    logits, updates = state_lib.logits(state, params, x, train=True)
    return state_lib.cross_entropy(logits, labels).mean(), (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return state, {"loss": loss, "accuracy": accuracy}


def inputs(batch: dict[str, jax.Array], key: jax.Array, augment: bool) -> jax.Array:
  """The batch's images in [0, 1] (input_pipeline.to_float), pad-4 cropped and flipped if
  `augment`."""
  chex.assert_rank(batch["image"], 4)
  chex.assert_shape(batch["label"], batch["image"].shape[:1])
  x = input_pipeline.to_float(batch["image"])
  return input_pipeline.augment(key, x) if augment else x


@register("standard")
@dataclasses.dataclass(frozen=True)
class Standard(Objective):
  """SGD on cross-entropy (Table 8's optimiser is the loop's)."""

  def step(self, state, batch, key, *, defense: Defense, augment: bool):
    del defense  # the loop feeds cached draws of it, if any
    # The first of the three keys every objective splits its step key into (augmentation,
    # attack start, draws), so that an image's augmentation does not depend on the objective.
    k_aug = jax.random.split(key, 3)[0]
    return sgd_step(state, inputs(batch, k_aug, augment), batch["label"])
