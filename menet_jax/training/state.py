"""The classifier's training state: parameters, optimizer state, BatchNorm statistics, and the
steps every objective shares (its factories from a run's Config: training.factories)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from menet_jax.models import normalize


class TrainState(train_state.TrainState):
  """Parameters, optimizer state and BatchNorm running statistics of one classifier."""
  batch_stats: Any


def init_variables(module: nn.Module, key: jax.Array, shape: tuple[int, ...],
                   dtype: Any = None, **kwargs) -> Any:
  """module.init on zeros of `shape` (a batch of 2 prepended), every float variable in
  normalize.wide_dtype(dtype), by default of the module's compute dtype.

  Variables are float32 (flax's default), or float64 for a module whose compute dtype is
  float64 (under jax_enable_x64): a float64 reference run keeps no float32 value anywhere.
  kwargs go to module.init (e.g. train=False).
  """
  wide = normalize.wide_dtype(dtype or getattr(module, "dtype", None) or jnp.float32)
  variables = module.init(key, jnp.zeros((2, *shape), wide), **kwargs)
  return jax.tree.map(lambda v: v.astype(wide) if jnp.issubdtype(v.dtype, jnp.floating) else v,
                      variables)


def create_train_state(key: jax.Array, model: nn.Module, tx: optax.GradientTransformation,
                       image_shape: tuple[int, int, int]) -> TrainState:
  """Initial parameters, BatchNorm statistics and optimizer state (`init_variables`)."""
  variables = init_variables(model, key, image_shape, train=False)
  return TrainState.create(apply_fn=model.apply, params=variables["params"],
                           batch_stats=variables.get("batch_stats", {}), tx=tx)


def logits(state: TrainState, params: Any, x: jax.Array, *, train: bool
           ) -> tuple[jax.Array, Any]:
  """(logits, BatchNorm updates or None): training mode uses batch statistics."""
  variables = {"params": params, "batch_stats": state.batch_stats}
  if train:
    return state.apply_fn(variables, x, train=True, mutable=["batch_stats"])
  return state.apply_fn(variables, x, train=False), None


def cross_entropy(logits_: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits_, labels)
