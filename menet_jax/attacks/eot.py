"""Expectation over Transformation (Athalye, Carlini & Wagner, 2018).

A randomized defense f(x; r) is attacked through the expected loss

    L_EOT(x) = E_r[ L(f(x; r)) ]  ~  (1 / R) sum_{i=1..R} L(f(x; r_i))

whose gradient is the average of the R per-draw gradients (the gradient of the
mean is the mean of the gradients). At step t the draws r_i come from
fold_in(fold_in(key, t), i): every step sees R fresh draws, and the same key
replays the same attack.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from menet_jax.utils import validation


def eot(loss_fn: Callable[[jax.Array, jax.Array], jax.Array], key: jax.Array, samples: int,
        chunk: int | None = None) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """Averages a randomized per-example loss over `samples` draws.

  Args:
    loss_fn: (x (B, ...), key) -> (B,) loss under the draw of randomness that key gives.
    key: PRNG key of the attack's randomness.
    samples: R >= 1 draws per evaluation.
    chunk: draws evaluated at once (vectorised); the others run sequentially,
      which bounds memory at `chunk` copies of the batch. Default: all R at once.

  Returns:
    (x (B, ...), t int32 scalar) -> (B,) the R-sample average loss at step t,
    the signature `pgd` and `apgd` ascend.
  """
  samples = validation.integer_in("samples", samples, 1)
  chunk = samples if chunk is None else validation.integer_in("chunk", chunk, 1, samples)

  def averaged(x: jax.Array, t: jax.Array) -> jax.Array:
    keys = jax.random.split(jax.random.fold_in(key, t), samples)
    losses = jax.lax.map(lambda k: loss_fn(x, k), keys, batch_size=chunk)
    return jnp.mean(losses, axis=0)

  return averaged


def fresh_draws(loss_fn: Callable[[jax.Array, jax.Array], jax.Array], key: jax.Array
                ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """One fresh draw per step (BPDA-PGD on a randomized defense): loss(x, fold_in(key, t))."""
  return lambda x, t: loss_fn(x, jax.random.fold_in(key, t))
