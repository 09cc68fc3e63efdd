"""The Square attack under an l-inf or an l2 bound (Andriushchenko, Croce, Flammarion & Hein,
"Square Attack: a query-efficient black-box adversarial attack via random search", ECCV 2020,
Alg. 1 with the l-inf sampling of Alg. 2 or the l2 sampling of Alg. 3).

l-inf: a score-based random search over the vertices of the eps-ball:

    init:  delta_0 = eps * s,  s in {-1, 1} per column and channel (vertical stripes)
    step:  a square window of side h_i at a uniformly random position gets one new value
           per channel, eps * (+-1), the rest of delta_i is kept;
           delta_{i+1} = the candidate if it raises the loss, else delta_i
    h_i = round(sqrt(p_i H W)), at least 1 and at most H - 1, where p_i halves on a fixed
    schedule of the iteration (p_init at the start; over 10,000 queries: after 10, 50, 200, 500,
    1,000, 2,000, 4,000, 6,000 and 8,000; a shorter budget runs the same schedule rescaled, or,
    with rescale=False as AutoAttack runs its 5,000 queries, the first part of it).

l2: a random search on the sphere of radius eps, which moves mass between two windows:

    eta(h): the h x h pattern of eq. (2): two halves (rows < h // 2, and the rest) of opposite
           sign, each the sum of 1 / (k + 1)^2 over its centred squares of half-width k >= the
           pixel's Chebyshev distance d from the half's centre (k <= n = h // 2), i.e.
           eta = sum_{k=d}^{n} 1 / (k + 1)^2 there, each half then of unit norm, transposed with
           probability 1/2
    init:  tiles of side H // 5 (the grid centred), each eta(H // 5) with a random sign per
           channel; delta_0 the tiling scaled to norm eps
    step:  windows W1, W2 of side h_i = max(round(sqrt(p_i H W)), 3), made odd, at uniformly
           random positions; per channel, W1 gets eta(h_i) (random sign) plus W1's old content
           scaled to unit norm, that sum scaled to norm sqrt(max(eps^2 - |delta|^2, 0) / C
           + |delta on W1 u W2|^2); W2 outside W1 is zeroed (the mass it held moves to W1); the
           candidate is x + eps delta' / |delta'|, clipped to [0, 1]

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

from menet_jax.attacks.pgd import NORMS, ball, check_inputs
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
           eps: float, queries: int = 5000, p_init: float = 0.8, rescale: bool = True,
           norm: str = "linf") -> jax.Array:
  """Square attack ascending `loss_fn` until it is positive, within the `norm` ball.

  Args:
    loss_fn: (x_adv (B, H, W, C), t int32 scalar) -> (B,) per-example loss to maximise, positive
      once the attack has succeeded (e.g. the margin loss of `attacks.margin`); t numbers the
      queries (a randomized defense draws afresh per query).
    key: PRNG key of the search.
    x: (B, H, W, C) float clean images in [0, 1]; H >= 2 under l-inf, H, W >= 5 under l2.
    eps: the radius: in [0, 1] under l-inf, in [0, sqrt(H W C)] under l2 (pixel units).
    queries: forward passes per image, >= 1 (AutoAttack: 5,000).
    p_init: initial fraction of the image a window covers, in (0, 1] (0.8 in AutoAttack).
    rescale: run the 10,000-query schedule of p at the pace of `queries`; False keeps its
      iterations (AutoAttack's standard version: 5,000 queries end at p_init / 128).
    norm: "linf" or "l2".

  Returns:
    (B, H, W, C) the highest-loss point found per example: under l-inf on the eps-ball's
    vertices where [0, 1] allows, under l2 at distance eps before [0, 1] clips it.
  """
  norm = validation.choice("norm", norm, NORMS)
  eps = check_inputs(x, eps, norm)
  smallest = 2 if norm == "linf" else 5
  if x.ndim != 4 or min(x.shape[1:3]) < smallest:
    raise ValueError(f"x must be images (B, H, W, C) with H, W >= {smallest} under {norm}, got "
                     f"shape {tuple(x.shape)}")
  queries = validation.integer_in("queries", queries, 1)
  p_init = validation.number_in("p_init", p_init, 0.0, 1.0, lo_open=True)
  h, w = x.shape[1:3]

  def side(i):
    """h_i (int32 scalar), the side of iteration i's windows."""
    return jnp.sqrt(fraction(p_init, i, queries, rescale) * h * w)

  init, candidate = (_linf if norm == "linf" else _l2)(x, eps, side)
  k_init, k_search = jax.random.split(key)
  x_adv = init(k_init)
  best = loss_fn(x_adv, jnp.int32(0))

  def step(i, carry):
    x_adv, best = carry
    new = candidate(i, jax.random.fold_in(k_search, i), x_adv)
    loss = loss_fn(new, i)
    take = (loss > best) & (best <= 0)  # a succeeded image keeps its point
    return jnp.where(take[:, None, None, None], new, x_adv), jnp.where(take, loss, best)

  return jax.lax.fori_loop(1, queries, step, (x_adv, best))[0]


def _windows(key: jax.Array, b: int, h: int, w: int, side: jax.Array
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """A side x side window per image at a uniformly random position: (mask (B, H, W, 1), its
  row and column offsets of every pixel, (B, H, W, 1) each)."""
  k_r, k_c = jax.random.split(key)
  top = jax.random.randint(k_r, (b, 1, 1, 1), 0, h - side + 1)
  left = jax.random.randint(k_c, (b, 1, 1, 1), 0, w - side + 1)
  i = jnp.arange(h)[:, None, None] - top
  j = jnp.arange(w)[None, :, None] - left
  return (i >= 0) & (i < side) & (j >= 0) & (j < side), i, j


def _linf(x: jax.Array, eps: float, side_of: Callable[[jax.Array], jax.Array]):
  """(init, candidate) of the l-inf search: vertical stripes, then one window per query set to
  eps * (+-1) per channel."""
  b, h, w, c = x.shape
  lo, hi = ball(x, eps)
  vertex = lambda signs: jnp.clip(x + eps * signs, lo, hi)  # signs broadcast against x

  def init(key):
    return vertex(jax.random.rademacher(key, (b, 1, w, c), x.dtype))

  def candidate(i, k, x_adv):
    """x_adv with one random window set to eps * (+-1) per channel; redrawn (at most REDRAWS
    times) where that changes nothing, as the paper does."""
    side = jnp.clip(jnp.round(side_of(i)), 1, h - 1).astype(jnp.int32)

    def draw(k):
      k_w, k_s = jax.random.split(k)
      window = _windows(k_w, b, h, w, side)[0]
      new = jnp.where(window, vertex(jax.random.rademacher(k_s, (b, 1, 1, c), x.dtype)), x_adv)
      return new, jnp.any(new != x_adv, axis=(1, 2, 3))

    def redraw(state):
      n, k, new, changed = state
      k, k_draw = jax.random.split(k)
      again, again_changed = draw(k_draw)
      return n + 1, k, jnp.where(changed[:, None, None, None], new, again), changed | again_changed

    k, k_first = jax.random.split(k)
    state = (jnp.int32(0), k, *draw(k_first))
    return jax.lax.while_loop(lambda s: (s[0] < REDRAWS) & ~jnp.all(s[3]), redraw, state)[2]

  return init, candidate


def eta(i: jax.Array, j: jax.Array, side: jax.Array | int, transposed: jax.Array | bool,
        largest: int) -> jax.Array:
  """The l2 search's pattern eta(side) (eq. (2) of the paper) at pixel offsets (i, j) from the
  window's corner, 0 outside the window: rows < side // 2 positive, the others negative, each
  half sum_{k=d}^{side // 2} 1 / (k + 1)^2 at Chebyshev distance d from its centre and of norm
  1 / sqrt(2) (so the window's is 1); with `transposed` the pattern at (j, i).

  Args:
    i, j: (..., H, W, 1) integer offsets (broadcast against each other, `side` and
      `transposed`); the norms are taken over the last three axes, which must hold one window.
    side: the window's side, <= `largest` (a static bound).
  Returns:
    (..., H, W, 1) float32: eta's values, of norm 1 over the window.
  """
  i, j = jnp.where(transposed, j, i), jnp.where(transposed, i, j)
  half = side // 2
  upper = i < half
  rows = jnp.where(upper, half, side - half)
  d = jnp.maximum(jnp.abs(jnp.where(upper, i, i - half) - rows // 2), jnp.abs(j - side // 2))
  inside = (i >= 0) & (i < side) & (j >= 0) & (j < side)
  k = jnp.arange(largest // 2 + 1)
  value = jnp.sum(jnp.where((d[..., None] <= k) & (k <= jnp.asarray(half)[..., None]),
                            1.0 / (k + 1.0) ** 2, 0.0), axis=-1)
  value = jnp.where(inside, value, 0.0)
  norm = lambda part: jnp.sqrt(jnp.sum(jnp.where(part, value ** 2, 0.0), axis=(-3, -2, -1),
                                       keepdims=True))
  tiny = jnp.finfo(jnp.float32).tiny
  return jnp.where(upper, value / jnp.maximum(norm(upper), tiny),
                   -value / jnp.maximum(norm(~upper), tiny)) / np.sqrt(2.0)


def _l2(x: jax.Array, eps: float, side_of: Callable[[jax.Array], jax.Array]):
  """(init, candidate) of the l2 search (Alg. 3): a tiling of eta patterns, then mass moved
  from a second window into the first, the whole always at norm eps before [0, 1] clips."""
  b, h, w, c = x.shape
  tiny = jnp.finfo(jnp.float32).tiny
  norms = lambda v, axes=(1, 2, 3): jnp.sqrt(jnp.sum(v * v, axis=axes, keepdims=True))
  on_sphere = lambda delta: jnp.clip(x + eps * delta / jnp.maximum(norms(delta), tiny), 0, 1)

  def init(key):
    """Tiles of side H // 5 (a 5 x 5 grid, centred), each eta(tile) or its transpose with a
    random sign per channel."""
    tile = min(h, w) // 5
    top, left = (h - 5 * tile) // 2, (w - 5 * tile) // 2
    r, q = np.arange(h)[:, None] - top, np.arange(w)[None, :] - left
    inside = (r >= 0) & (r < 5 * tile) & (q >= 0) & (q < 5 * tile)
    number = np.where(inside, (r // tile) * 5 + q // tile, 0)  # (H, W) each pixel's tile
    k_t, k_s = jax.random.split(key)
    grid = jnp.arange(tile)
    pattern = eta(grid[:, None, None], grid[None, :, None], tile, False, tile)[..., 0]
    flip = jax.random.bernoulli(k_t, 0.5, (b, 25))[:, number]
    at = lambda p: p[r % tile, q % tile]
    tiled = jnp.where(flip, at(pattern.T), at(pattern))[..., None]  # (B, H, W, 1)
    signs = jax.random.rademacher(k_s, (b, 25, c), x.dtype)[:, number]  # (B, H, W, C)
    return on_sphere(jnp.where(inside[..., None], tiled * signs, 0.0))

  def candidate(i, k, x_adv):
    largest = min(h, w) - (1 - min(h, w) % 2)  # the largest odd side that fits
    side = jnp.maximum(jnp.round(side_of(i)), 3).astype(jnp.int32)
    side = jnp.minimum(side + 1 - side % 2, largest)
    k_1, k_2, k_t, k_s = jax.random.split(k, 4)
    w1, i1, j1 = _windows(k_1, b, h, w, side)
    w2 = _windows(k_2, b, h, w, side)[0]
    delta = x_adv - x
    pattern = eta(i1, j1, side, jax.random.bernoulli(k_t, 0.5, (b, 1, 1, 1)), largest)
    old = jnp.where(w1, delta, 0.0)
    new = pattern * jax.random.rademacher(k_s, (b, 1, 1, c), x.dtype) + \
        old / jnp.maximum(norms(old, (1, 2)), tiny)
    unused = jnp.maximum(eps ** 2 - norms(delta) ** 2, 0.0)
    size = jnp.sqrt(unused / c + norms(jnp.where(w1 | w2, delta, 0.0)) ** 2)
    new = new / jnp.maximum(norms(new, (1, 2)), tiny) * size
    return on_sphere(jnp.where(w1, new, jnp.where(w2, 0.0, delta)))

  return init, candidate
