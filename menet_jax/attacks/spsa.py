"""SPSA, a score-based attack (Uesato et al., "Adversarial Risk and the Dangers of
Evaluating Against Weak Attacks", ICML 2018).

The attacker only queries the scores (logits) of the defended model. At each
iteration the gradient of the loss L is estimated by simultaneous perturbation
with n Rademacher directions v_i in {-1, +1}^d and a finite difference delta:

    g = (1 / n) sum_i [L(x + delta v_i) - L(x - delta v_i)] / (2 delta) * v_i

(n / 2 antithetic pairs, as in Uesato et al.'s n = 2 x pairs), the perturbation
takes an Adam step with learning rate lr on g, and is projected back onto the
eps-ball and [0, 1]. Uesato et al. and ME-Net use the margin loss
max_{j != y} z_j - z_y; ME-Net's evaluation uses n = 2048 ("batch size").
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from menet_jax.attacks.pgd import ball, check_inputs
from menet_jax.utils import validation


def spsa(loss_fn: Callable[[jax.Array, jax.Array], jax.Array], key: jax.Array, x: jax.Array, *,
         eps: float, steps: int, samples: int = 2048, delta: float = 0.01, lr: float = 0.01,
         chunk: int = 128) -> jax.Array:
  """l-inf SPSA ascending a score-based loss.

  Args:
    loss_fn: (x (B, ...), key) -> (B,) per-example loss from the model's scores;
      the key feeds the defense's randomness (one fresh draw per query).
    key: PRNG key for the directions and the defense's draws.
    x: (B, ...) float clean inputs in [0, 1].
    eps: l-inf radius in [0, 1].
    steps: iterations >= 1.
    samples: n directions per iteration, an even number >= 2.
    delta: finite-difference step > 0.
    lr: Adam learning rate > 0.
    chunk: directions evaluated at once (bounds memory at 2 x chunk x B inputs).

  Returns:
    (B, ...) adversarial inputs in the eps-ball and [0, 1] (the last iterate).
  """
  eps = check_inputs(x, eps)
  steps = validation.integer_in("steps", steps, 1)
  samples = validation.integer_in("samples", samples, 2)
  if samples % 2:
    raise ValueError(f"samples must be even (antithetic pairs), got {samples}")
  delta = validation.number_in("delta", delta, 0.0, 1.0, lo_open=True)
  lr = validation.number_in("lr", lr, 0.0, 1.0, lo_open=True)
  pairs = samples // 2
  chunk = validation.integer_in("chunk", chunk, 1)
  chunk = min(chunk, pairs)
  lo, hi = ball(x, eps)
  opt = optax.adam(lr)

  def estimate(xa, k):
    def one(kk):
      k_dir, k_plus, k_minus = jax.random.split(kk, 3)
      v = jax.random.rademacher(k_dir, x.shape, x.dtype)
      # Queries stay valid images: the defense and the model only see [0, 1].
      diff = (loss_fn(jnp.clip(xa + delta * v, 0.0, 1.0), k_plus)
              - loss_fn(jnp.clip(xa - delta * v, 0.0, 1.0), k_minus))
      return diff.reshape((-1,) + (1,) * (x.ndim - 1)) * v / (2 * delta)
    g = jax.lax.map(one, jax.random.split(k, pairs), batch_size=chunk)
    return jnp.mean(g, axis=0)

  def step(t, carry):
    xa, state = carry
    g = estimate(xa, jax.random.fold_in(key, t))
    # optax minimises: ascend L by descending -L.
    updates, state = opt.update(-g, state)
    return jnp.clip(xa + updates, lo, hi), state

  return jax.lax.fori_loop(0, steps, step, (x, opt.init(x)))[0]
