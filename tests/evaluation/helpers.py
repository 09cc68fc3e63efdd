"""A small classifier restored as evaluation sees a trained run, for the runner's tests."""

import jax
import jax.numpy as jnp

from menet_jax import defenses, evaluation, models
from menet_jax.training.config import Config


def small_cnn(defense=None, seed=0, shape=(16, 16, 3)):
  model = models.create("small_cnn", num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3)
  variables = model.init(jax.random.key(seed), jnp.zeros((1, *shape)), train=False)
  return evaluation.Restored(apply_fn=model.apply, variables=variables,
                             defense=defense or defenses.Identity(),
                             config=Config.for_dataset("cifar10", workdir="w", model="small_cnn"),
                             checkpoint="", step=0)
