"""The Square attack: its schedule, its search space, and what it finds on models with a known
answer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import attacks
from menet_jax.attacks.square import eta, fraction


def test_window_fraction_follows_the_papers_schedule():
  # p halves after iterations 10, 50, 200, 500, 1k, 2k, 4k, 6k and 8k of 10,000 (and at the same
  # fractions of a shorter budget).
  expected = {0: 0.8, 10: 0.8, 11: 0.4, 50: 0.4, 51: 0.2, 201: 0.1, 501: 0.05, 1001: 0.025,
              2001: 0.0125, 4001: 0.00625, 6001: 0.003125, 8001: 0.0015625, 9999: 0.0015625}
  for i, p in expected.items():
    assert float(fraction(0.8, jnp.int32(i), 10000)) == pytest.approx(p), i
  assert float(fraction(0.8, jnp.int32(2), 1000)) == pytest.approx(0.4)  # 20 of 10,000
  assert float(fraction(0.8, jnp.int32(6), 1000)) == pytest.approx(0.2)  # 60 of 10,000
  # Unrescaled (AutoAttack's 5,000 queries): the iterations of the 10,000-query schedule.
  assert float(fraction(0.8, jnp.int32(60), 1000, rescale=False)) == pytest.approx(0.2)
  assert float(fraction(0.8, jnp.int32(4999), 5000, rescale=False)) == pytest.approx(0.00625)


def _linear(w, b):
  """Logits of a linear model on flattened images, and its margin loss."""
  logits = lambda xa: xa.reshape(len(xa), -1) @ w + b
  return logits


def test_square_stays_on_the_ball_and_is_deterministic():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(0, 1, (6, 8, 8, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(192, 4)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 4, 6))
  loss = lambda xa, t: attacks.margin(_linear(w, 0.0)(xa), y)
  run = jax.jit(lambda k: attacks.square(loss, k, x, eps=0.05, queries=60))
  x_adv = np.asarray(run(jax.random.key(1)))
  np.testing.assert_array_equal(x_adv, np.asarray(run(jax.random.key(1))))
  assert not np.array_equal(x_adv, np.asarray(run(jax.random.key(2))))
  # Every pixel sits on a vertex of the eps-ball, or on the [0, 1] boundary that cut it.
  d = np.abs(x_adv - np.asarray(x))
  on_vertex = np.isclose(d, 0.05, atol=1e-6) | (x_adv == 0) | (x_adv == 1)
  assert on_vertex.all() and d.max() <= 0.05 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


def test_square_finds_the_linear_optimum_and_nothing_where_none_exists():
  # Two classes, logits (0, w.x + b) on 4 x 4 x 1 images: the largest margin the l-inf ball
  # allows is w.x + b + eps |w|_1 (all pixels at x + eps sign(w), away from [0, 1]'s edges), so
  # an image is breakable iff that is > 0. The search must break the breakable ones within its
  # budget (each pixel has one right sign) and can never break the others.
  rng = np.random.default_rng(3)
  w = rng.normal(size=16)
  x = rng.uniform(0.3, 0.7, (64, 16))
  eps = 0.05
  clean = x @ w
  b = -clean - eps * np.abs(w).sum() * rng.uniform(-0.9, 0.9, 64)  # best margin in +-0.9 eps|w|_1
  logits = lambda xa: jnp.stack([jnp.zeros(len(xa)), xa.reshape(len(xa), -1) @ w + b], -1)
  y = jnp.zeros(64, jnp.int32)
  loss = lambda xa, t: attacks.margin(logits(xa), y)
  x_adv = attacks.square(loss, jax.random.key(0), jnp.asarray(x.reshape(64, 4, 4, 1)), eps=eps,
                         queries=1000)
  broken = np.asarray(loss(x_adv, 0)) > 0
  breakable = clean + b + eps * np.abs(w).sum() > 0
  assert not (broken & ~breakable).any()
  # Images whose best margin is at least 0.1 eps |w|_1 above zero: a few hundred queries over
  # 16 pixels set enough signs right.
  clear = clean + b + eps * np.abs(w).sum() > 0.1 * eps * np.abs(w).sum()
  assert clear.sum() >= 20 and broken[clear].all(), (broken[clear].mean(), clear.sum())


def test_a_misclassified_image_is_left_as_the_search_found_it():
  # The loss is already positive at the first query for image 0 (its bias makes it
  # misclassified): the search must not move it afterwards.
  w = jnp.zeros((16, 2)).at[:, 1].set(1.0)
  b = jnp.asarray([0.0, 0.0])
  x = jnp.full((2, 4, 4, 1), 0.5)
  y = jnp.asarray([0, 1])
  shift = jnp.asarray([[0.0, 100.0], [0.0, -100.0]])  # image 0: class 1 wins; image 1: class 0
  loss = lambda xa, t: attacks.margin(_linear(w, b)(xa) + shift, y)
  x_adv = attacks.square(loss, jax.random.key(0), x, eps=0.1, queries=30)
  start = np.asarray(jnp.clip(x + 0.1 * jax.random.rademacher(
      jax.random.split(jax.random.key(0))[0], (2, 1, 4, 1), x.dtype), 0, 1))
  np.testing.assert_array_equal(np.asarray(x_adv)[0], start[0])


def test_square_rejects_bad_arguments():
  x = jnp.full((2, 4, 4, 1), 0.5)
  loss = lambda xa, t: jnp.zeros(len(xa))
  with pytest.raises(ValueError, match="queries"):
    attacks.square(loss, jax.random.key(0), x, eps=0.1, queries=0)
  with pytest.raises(ValueError, match="p_init"):
    attacks.square(loss, jax.random.key(0), x, eps=0.1, p_init=0.0)
  with pytest.raises(ValueError, match="H, W >= 2 under linf"):
    attacks.square(loss, jax.random.key(0), jnp.full((2, 16), 0.5), eps=0.1)
  with pytest.raises(ValueError, match="H, W >= 5 under l2"):
    attacks.square(loss, jax.random.key(0), x, eps=0.1, norm="l2")
  with pytest.raises(ValueError, match="norm"):
    attacks.square(loss, jax.random.key(0), x, eps=0.1, norm="l1")
  with pytest.raises(ValueError, match=r"eps must be in \[0.0, 4.0\]"):  # sqrt(16) pixels
    attacks.square(loss, jax.random.key(0), jnp.full((2, 16, 1, 1), 0.5), eps=5.0, norm="l2")


def _eta_from_the_paper(h):
  """Eq. (2) of the Square attack paper, written out: the h x h pattern's two halves (h // 2
  rows, then the rest; n = h // 2), eta_{r,s} = sum_{k=0}^{M} 1 / (n + 1 - k)^2 with
  M = n - max(|r - c_r|, |s - c_s|) about the half's centre (c_r, c_s), each half of unit norm,
  the second negated, the whole of unit norm."""
  def half(rows):
    n, out = h // 2, np.zeros((rows, h))
    for r in range(rows):
      for s in range(h):
        m = n - max(abs(r - rows // 2), abs(s - h // 2))
        out[r, s] = sum(1.0 / (n + 1 - k) ** 2 for k in range(m + 1))
    return out / np.linalg.norm(out)
  e = np.concatenate([half(h // 2), -half(h - h // 2)])
  return e / np.linalg.norm(e)


def test_the_l2_pattern_is_the_papers():
  # One compilation: the side and the orientation are traced, on an 11 x 11 grid.
  g = jnp.arange(11)
  pattern = jax.jit(lambda side, transposed: eta(g[:, None, None], g[None, :, None], side,
                                                 transposed, 11)[..., 0])
  for h in range(3, 12):
    for transposed in (False, True):
      got = np.asarray(pattern(h, transposed))
      expected = _eta_from_the_paper(h)
      # float32 sums of at most 6 terms of size <= 1, then two normalisations: a few ulps.
      np.testing.assert_allclose(got[:h, :h], expected.T if transposed else expected, atol=1e-6)
      assert not got[h:].any() and not got[:, h:].any()
  # Inside a larger grid (a window at offset (2, 1) of an 8 x 9 image), zero outside.
  i, j = np.arange(8)[:, None, None] - 2, np.arange(9)[None, :, None] - 1
  got = np.asarray(eta(i, j, 5, False, 7))[..., 0]
  np.testing.assert_allclose(got[2:7, 1:6], _eta_from_the_paper(5), atol=1e-6)
  assert np.count_nonzero(got) == np.count_nonzero(got[2:7, 1:6])


def test_l2_square_stays_on_the_sphere_and_breaks_what_the_radius_allows():
  # Two classes, logits (0, w.x + b) with |w|_2 = 1 on 8 x 8 x 1 images in [0.3, 0.7]: within
  # the l2 ball of radius eps the largest margin is w.x + b + eps, so an image farther than eps
  # from the boundary can never be broken ([0, 1] only takes points away).
  rng = np.random.default_rng(3)
  w = rng.normal(size=64)
  w /= np.linalg.norm(w)
  x = rng.uniform(0.3, 0.7, (64, 64))
  eps = 0.5
  distance = eps * rng.uniform(0.05, 2.0, 64)
  b = -x @ w - distance
  logits = lambda xa: jnp.stack([jnp.zeros(len(xa)), xa.reshape(len(xa), -1) @ w + b], -1)
  y = jnp.zeros(64, jnp.int32)
  loss = lambda xa, t: attacks.margin(logits(xa), y)
  xi = jnp.asarray(x.reshape(64, 8, 8, 1), jnp.float32)
  run = jax.jit(lambda k: attacks.square(loss, k, xi, eps=eps, queries=300, norm="l2"))
  x_adv = np.asarray(run(jax.random.key(0)))
  np.testing.assert_array_equal(x_adv, np.asarray(run(jax.random.key(0))))
  assert x_adv.min() >= 0 and x_adv.max() <= 1
  # Every candidate is x + eps u / |u|_2 (then clipped, which cannot lengthen it).
  d = np.linalg.norm((x_adv - np.asarray(xi)).reshape(64, -1), axis=1)
  assert d.max() <= eps * (1 + 1e-5), d.max()
  broken = np.asarray(loss(x_adv, 0)) > 0
  assert not broken[distance > eps].any()
  # Images at most half the radius from the boundary: the search moves the perturbation's mass
  # along w within a few hundred queries.
  near = distance < 0.5 * eps
  assert near.sum() >= 10 and broken[near].all(), (broken[near].mean(), near.sum())
