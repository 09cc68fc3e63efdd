"""The small factories of a run (as the Flax ImageNet example's): its classifier and optimizer,
from its Config."""

from __future__ import annotations

import flax.linen as nn
import optax

from menet_jax import data, models
from menet_jax.training.config import Config


def learning_rate_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
  """lr, multiplied by lr_decay at each epoch of lr_boundaries (Table 8's step decay)."""
  return optax.piecewise_constant_schedule(
      config.lr, {b * steps_per_epoch: config.lr_decay for b in config.lr_boundaries})


def optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
  """The config's optimizer with coupled L2 weight decay on every parameter, as torch.optim's
  SGD (with momentum) or Adam (beta 0.9 / 0.999, eps 1e-8) with weight_decay."""
  schedule = learning_rate_schedule(config, steps_per_epoch)
  step = (optax.sgd(schedule, config.momentum) if config.optimizer == "sgd"
          else optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8))
  return optax.chain(optax.add_decayed_weights(config.weight_decay), step)


def create_model(config: Config) -> nn.Module:
  """The run's classifier, normalising with its dataset's statistics (or its recipe's)."""
  ds = data.dataset(config.dataset)
  mean, std = models.normalization_of(config.model, ds.mean, ds.std)
  return models.create(config.model, num_classes=config.num_classes, mean=mean, std=std)
