"""The Boundary attack, decision-based (Brendel, Rauber & Bethge, ICLR 2018).

The attacker sees only the defended model's decision. It starts from an
adversarial point (uniform noise that the model misclassifies, moved towards
the clean image by binary search) and walks along the decision boundary towards
the clean image x. Each step proposes

    orthogonal: eta ~ N(0, I) scaled to delta * d, where d = |x_adv - x|_2, and the
                candidate x_adv + eta rescaled back onto the sphere of radius d around x;
    source:     the candidate moved a fraction epsilon of its way towards x,

and keeps it if it is still adversarial. Every `adapt_every` steps delta and
epsilon adapt per example: delta grows (x 1/0.9) when more than half of the
orthogonal proposals stayed adversarial and shrinks (x 0.9) when fewer than a
fifth did; epsilon does the same with the accepted steps.

The attack minimises the l2 distance. For an accuracy at an l-inf radius, the
final point is projected onto the eps-ball around x (`project_linf`): the
example counts as broken iff the projected point is misclassified.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from menet_jax.attacks.pgd import check_inputs
from menet_jax.utils import validation

Decision = Callable[[jax.Array, jax.Array], jax.Array]


def _norm(v: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(v.reshape(v.shape[0], -1) ** 2, -1))


def _expand(v: jax.Array, ndim: int) -> jax.Array:
  return v.reshape(v.shape + (1,) * (ndim - 1))


def initial_point(is_adversarial: Decision, key: jax.Array, x: jax.Array, *, trials: int = 100,
                  search_steps: int = 20) -> tuple[jax.Array, jax.Array]:
  """An adversarial starting point per example: the first of `trials` uniform-noise
  images that is adversarial, then a binary search on the segment towards x.

  Returns:
    ((B, ...) starting points, (B,) bool found). Where no noise image was
    adversarial, the point is x itself and found is False.
  """
  def trial(i, carry):
    start, found = carry
    k = jax.random.fold_in(key, i)
    noise = jax.random.uniform(jax.random.fold_in(k, 0), x.shape, x.dtype)
    new = ~found & is_adversarial(noise, jax.random.fold_in(k, 1))
    return jnp.where(_expand(new, x.ndim), noise, start), found | new

  start, found = jax.lax.fori_loop(0, trials, trial, (x, jnp.zeros(x.shape[:1], bool)))

  # Invariant: the blend at `hi` is adversarial; search the smallest such weight of the noise.
  def search(i, carry):
    lo, hi = carry
    mid = (lo + hi) / 2
    adv = is_adversarial(x + _expand(mid, x.ndim) * (start - x),
                         jax.random.fold_in(key, trials + i))
    return jnp.where(adv, lo, mid), jnp.where(adv, mid, hi)

  ones = jnp.ones(x.shape[:1], x.dtype)
  _, hi = jax.lax.fori_loop(0, search_steps, search, (0 * ones, ones))
  return jnp.where(_expand(found, x.ndim), x + _expand(hi, x.ndim) * (start - x), x), found


def boundary(is_adversarial: Decision, key: jax.Array, x: jax.Array, *, steps: int = 1000,
             spherical_step: float = 0.01, source_step: float = 0.01, adapt_every: int = 10,
             init_trials: int = 100) -> tuple[jax.Array, jax.Array]:
  """The Boundary attack on a batch (each example keeps its own step sizes).

  Args:
    is_adversarial: (x (B, ...), key) -> (B,) bool, the defended model's decision
      (True when the label is wrong); the key feeds the defense's randomness.
    key: PRNG key for the proposals and the defense's draws.
    x: (B, ...) float clean inputs in [0, 1].
    steps: proposals per example >= 1 (ME-Net: 1000).
    spherical_step, source_step: initial delta and epsilon, in (0, 1).
    adapt_every: steps between step-size adaptations >= 1.
    init_trials: uniform-noise images tried for the starting point.

  Returns:
    ((B, ...) adversarial points with the smallest l2 distance found, in [0, 1];
    (B,) bool found: False where no starting point was adversarial, the point is
    then x).
  """
  check_inputs(x, 0.0)
  steps = validation.integer_in("steps", steps, 1)
  spherical_step = validation.number_in("spherical_step", spherical_step, 0.0, 1.0,
                                        lo_open=True, hi_open=True)
  source_step = validation.number_in("source_step", source_step, 0.0, 1.0,
                                     lo_open=True, hi_open=True)
  adapt_every = validation.integer_in("adapt_every", adapt_every, 1)
  init_trials = validation.integer_in("init_trials", init_trials, 1)
  k_init, k_walk = jax.random.split(key)
  start, found = initial_point(is_adversarial, k_init, x, trials=init_trials)
  b = x.shape[0]
  ex = lambda v: _expand(v, x.ndim)

  def step(t, carry):
    xa, delta, eps, orth_ok, step_ok = carry
    k = jax.random.fold_in(k_walk, t)
    k_eta, k_q1, k_q2 = jax.random.split(k, 3)
    d = _norm(xa - x)
    eta = jax.random.normal(k_eta, x.shape, x.dtype)
    eta = eta * ex(delta * d / jnp.maximum(_norm(eta), 1e-12))
    # Orthogonal proposal: back onto the sphere of radius d around x.
    moved = xa + eta - x
    orth = jnp.clip(x + moved * ex(d / jnp.maximum(_norm(moved), 1e-12)), 0.0, 1.0)
    cand = jnp.clip(orth + ex(eps) * (x - orth), 0.0, 1.0)
    orth_adv = is_adversarial(orth, k_q1)
    accept = orth_adv & is_adversarial(cand, k_q2) & found & (_norm(cand - x) < d)
    xa = jnp.where(ex(accept), cand, xa)
    orth_ok = orth_ok + orth_adv.astype(jnp.int32)
    step_ok = step_ok + accept.astype(jnp.int32)
    adapt = (t + 1) % adapt_every == 0
    rate_orth = orth_ok / adapt_every
    rate_step = step_ok / adapt_every
    grow = lambda v, r: jnp.where(r > 0.5, v / 0.9, jnp.where(r < 0.2, v * 0.9, v))
    delta = jnp.where(adapt, jnp.clip(grow(delta, rate_orth), 1e-6, 1.0), delta)
    eps = jnp.where(adapt, jnp.clip(grow(eps, rate_step), 1e-6, 0.5), eps)
    zeros = jnp.zeros_like(orth_ok)
    return (xa, delta, eps, jnp.where(adapt, zeros, orth_ok), jnp.where(adapt, zeros, step_ok))

  full = lambda v: jnp.full((b,), v, x.dtype)
  zeros = jnp.zeros((b,), jnp.int32)
  out = jax.lax.fori_loop(0, steps, step, (start, full(spherical_step), full(source_step),
                                           zeros, zeros))
  return out[0], found
