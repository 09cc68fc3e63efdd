"""The Objective interface: how a classifier (and whatever trains beside it) learns.

The training loop (`training.loop`) is one: it resumes, shards the batch over
devices and hosts, checkpoints, logs and evaluates, and never learns which
objective it runs. An objective is a small object, registered by name, that
builds the training state and takes one pure step:

    init(key, model, tx, image_shape) -> state       any pytree; checkpointed whole
    step(state, batch, key, *, defense, augment)     -> (state, {"loss", "accuracy", ...})
    classifier(model, state) -> (apply_fn, variables) what evaluation restores
    draws_in_step                                    whether `step` draws the defense itself

Batches: {"image": (B, H, W, C) uint8, "label": (B,) int32, and "level": (B,)
float32 when the objective draws the defense} sharded over the batch axis.
When `draws_in_step` is False and the defense preprocesses, the loop trains on
cached draws of it (ME-Net's Algorithm 1); when True, it feeds clean images and
the objective calls the defense (`transform`, `attack_view`) with fresh keys.
"""

from __future__ import annotations

import abc
from typing import Any, Callable

import flax.linen as nn
import jax
import optax

from menet_jax.defenses import Defense
from menet_jax.training import state as state_lib
from menet_jax.utils.registry import Registry

OBJECTIVES = Registry("objective")
Metrics = dict[str, jax.Array]


class Objective(abc.ABC):
  """Base class of every training objective; subclasses are frozen dataclasses."""

  #: The step applies the defense itself (fresh draws every step) instead of training on
  #: the loop's cached draws.
  draws_in_step: bool = False

  def init(self, key: jax.Array, model: nn.Module, tx: optax.GradientTransformation,
           image_shape: tuple[int, int, int]) -> Any:
    """The initial training state (default: the classifier's `TrainState`)."""
    return state_lib.create_train_state(key, model, tx, image_shape)

  @abc.abstractmethod
  def step(self, state: Any, batch: dict[str, jax.Array], key: jax.Array, *, defense: Defense,
           augment: bool) -> tuple[Any, Metrics]:
    """One update on a global batch; pure, so the loop can jit it.

    Returns:
      The new state and metrics of the batch (means over the batch), at least
      "loss" and "accuracy".
    """

  def classifier(self, model: nn.Module, state: Any
                 ) -> tuple[Callable[..., jax.Array], dict[str, Any]]:
    """(apply_fn, variables) of the trained classifier in `state` (a TrainState, or the tree
    a checkpoint restores it as): apply_fn(variables, x, train=False) -> logits."""
    if isinstance(state, dict):  # restored without a target; empty collections are not stored
      return model.apply, {"params": state["params"], "batch_stats": state.get("batch_stats", {})}
    return model.apply, {"params": state.params, "batch_stats": state.batch_stats}

  def spec(self) -> str:
    """The component string that creates this objective, every parameter written out."""
    return OBJECTIVES.spec_of(self)


def create(spec: str, **overrides: Any) -> Objective:
  """The objective a component string names, e.g. create("pgd_at(eps=0.3, steps=40)")."""
  return OBJECTIVES.create(spec, **overrides)


def names() -> tuple[str, ...]:
  return OBJECTIVES.names()


def register(name: str, **metadata: Any):
  """Class decorator: registers an `Objective` subclass under `name`."""
  return OBJECTIVES.register(name, **metadata)
