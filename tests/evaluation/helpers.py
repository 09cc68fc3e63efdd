"""A small classifier as evaluation sees one (a `Target`), for the runner's tests."""

import functools

import jax
import jax.numpy as jnp

from menet_jax import defenses, evaluation, models


def small_cnn(defense=None, seed=0, shape=(16, 16, 3)):
  model = models.create("small_cnn", num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3)
  variables = model.init(jax.random.key(seed), jnp.zeros((1, *shape)), train=False)
  return evaluation.Target(apply_fn=functools.partial(model.apply, train=False),
                           variables=variables, defense=defense or defenses.Identity())
