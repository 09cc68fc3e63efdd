"""The Square attack under an l-inf bound (Andriushchenko, Croce, Flammarion & Hein, "Square
Attack: a query-efficient black-box adversarial attack via random search", ECCV 2020, Alg. 1
with the l-inf sampling of Alg. 2).

A score-based random search over the vertices of the eps-ball:

    init:  delta_0 = eps * s,  s in {-1, 1} per column and channel (vertical stripes)
    step:  a square window of side h_i at a uniformly random position gets one new value
           per channel, eps * (+-1), the rest of delta_i is kept;
           delta_{i+1} = the candidate if it raises the loss, else delta_i
    h_i = round(sqrt(p_i H W)), at least 1 and at most H - 1, where p_i halves on a fixed
    schedule of the iteration (p_init at the start; over 10,000 queries: after 10, 50, 200, 500,
    1,000, 2,000, 4,000, 6,000 and 8,000; a shorter budget runs the same schedule rescaled, or,
    with rescale=False as AutoAttack runs its 5,000 queries, the first part of it).

Each query costs one forward pass; an image stops changing once its loss is positive (it is
misclassified when the loss is the margin max_{j != y} z_j - z_y). No gradient is used, so a
defense that masks gradients cannot hide from it: AutoAttack uses it as its check for that.
Against a randomized defense each query sees a fresh draw, and the search keeps the luckiest
draw's point: it then follows the noise (on make demo's ME-Net model, 1,000 queries left 46 %
of 200 images against BPDA-PGD-7's 22 %; on the same network without the defense, 11 % and
8 % after 1,000 and 5,000 queries against APGD-CE-100's 6.5 %). AutoAttack, likewise, runs
it only in its version for deterministic models.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax.attacks.pgd import ball, check_inputs
from menet_jax.utils import validation

# Iterations (out of 10,000) after which p halves, and the most window resamplings per query
# (the paper redraws until the window changes; 10 redraws leave it unchanged with probability
# 2^-10 per channel pattern, and an unchanged window only costs that query).
SCHEDULE = np.asarray([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000])
REDRAWS = 10


def fraction(p_init: float, i: jax.Array, queries: int, rescale: bool = True) -> jax.Array:
  """p_i: the fraction of the image a window covers at iteration i of `queries` (of 10,000
  when not `rescale`)."""
  scaled = (i * 10000) // queries if rescale else i
  halvings = jnp.searchsorted(jnp.asarray(SCHEDULE), scaled, side="left")
  return p_init / 2.0 ** halvings


def square(loss_fn: Callable[[jax.Array, jax.Array], jax.Array], key: jax.Array, x: jax.Array, *,
           eps: float, queries: int = 5000, p_init: float = 0.8, rescale: bool = True
           ) -> jax.Array:
  """Square attack ascending `loss_fn` until it is positive, within the l-inf ball.

  Args:
    loss_fn: (x_adv (B, H, W, C), t int32 scalar) -> (B,) per-example loss to maximise, positive
      once the attack has succeeded (e.g. the margin loss of `attacks.margin`); t numbers the
      queries (a randomized defense draws afresh per query).
    key: PRNG key of the search.
    x: (B, H, W, C) float clean images in [0, 1], H >= 2.
    eps: l-inf radius in [0, 1].
    queries: forward passes per image, >= 1 (AutoAttack: 5,000).
    p_init: initial fraction of the image a window covers, in (0, 1] (0.8 in AutoAttack).
    rescale: run the 10,000-query schedule of p at the pace of `queries`; False keeps its
      iterations (AutoAttack's standard version: 5,000 queries end at p_init / 128).

  Returns:
    (B, H, W, C) the highest-loss point found per example, on the eps-ball's vertices where
    [0, 1] allows.
  """
  eps = check_inputs(x, eps)
  if x.ndim != 4 or x.shape[1] < 2:
    raise ValueError(f"x must be images (B, H, W, C) with H >= 2, got shape {tuple(x.shape)}")
  queries = validation.integer_in("queries", queries, 1)
  p_init = validation.number_in("p_init", p_init, 0.0, 1.0, lo_open=True)
  b, h, w, c = x.shape
  lo, hi = ball(x, eps)
  vertex = lambda signs: jnp.clip(x + eps * signs, lo, hi)  # signs broadcast against x
  k_init, k_search = jax.random.split(key)
  x_adv = vertex(jax.random.rademacher(k_init, (b, 1, w, c), x.dtype))
  best = loss_fn(x_adv, jnp.int32(0))
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]

  def candidate(i, k, x_adv):
    """x_adv with one random window set to eps * (+-1) per channel; redrawn (at most REDRAWS
    times) where that changes nothing, as the paper does."""
    side = jnp.clip(jnp.round(jnp.sqrt(fraction(p_init, i, queries, rescale) * h * w)), 1, h - 1)
    side = side.astype(jnp.int32)

    def draw(k):
      k_r, k_c, k_s = jax.random.split(k, 3)
      top = jax.random.randint(k_r, (b, 1, 1), 0, h - side + 1)
      left = jax.random.randint(k_c, (b, 1, 1), 0, w - side + 1)
      window = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
      new = jnp.where(window[..., None], vertex(jax.random.rademacher(k_s, (b, 1, 1, c),
                                                                      x.dtype)), x_adv)
      return new, jnp.any(new != x_adv, axis=(1, 2, 3))

    def redraw(state):
      n, k, new, changed = state
      k, k_draw = jax.random.split(k)
      again, again_changed = draw(k_draw)
      return n + 1, k, jnp.where(changed[:, None, None, None], new, again), changed | again_changed

    k, k_first = jax.random.split(k)
    state = (jnp.int32(0), k, *draw(k_first))
    return jax.lax.while_loop(lambda s: (s[0] < REDRAWS) & ~jnp.all(s[3]), redraw, state)[2]

  def step(i, carry):
    x_adv, best = carry
    new = candidate(i, jax.random.fold_in(k_search, i), x_adv)
    loss = loss_fn(new, i)
    take = (loss > best) & (best <= 0)  # a succeeded image keeps its point
    return jnp.where(take[:, None, None, None], new, x_adv), jnp.where(take, loss, best)

  return jax.lax.fori_loop(1, queries, step, (x_adv, best))[0]
