"""The Square attack: its schedule, its search space, and what it finds on models with a known
answer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import attacks
from menet_jax.attacks.square import fraction


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
  with pytest.raises(ValueError, match="H >= 2"):
    attacks.square(loss, jax.random.key(0), jnp.full((2, 16), 0.5), eps=0.1)
