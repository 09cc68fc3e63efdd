import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax.attacks import pgd


def test_linear_loss_reaches_the_analytic_optimum():
  # max_{|d|_inf <= eps, x + d in [0, 1]} w . (x + d) is attained at
  # clip(x + eps sign(w), 0, 1), coordinate by coordinate.
  rng = np.random.default_rng(0)
  x = rng.random((5, 12)).astype(np.float32)
  w = rng.normal(size=(5, 12)).astype(np.float32)
  eps = 0.1
  got = pgd(lambda xa, t: jnp.sum(w * xa, -1), jax.random.key(0), jnp.asarray(x), eps=eps,
            step_size=eps / 4, steps=12)
  np.testing.assert_allclose(np.asarray(got), np.clip(x + eps * np.sign(w), 0, 1), atol=1e-6)


def test_stays_in_the_ball_and_the_box():
  rng = np.random.default_rng(1)
  x = rng.random((8, 6)).astype(np.float32)
  loss = lambda xa, t: jnp.sum(jnp.sin(7 * xa + t), -1)  # noqa: E731
  got = np.asarray(pgd(loss, jax.random.key(1), jnp.asarray(x), eps=0.05, step_size=0.02, steps=5))
  assert np.abs(got - x).max() <= 0.05 + 1e-7 and got.min() >= 0 and got.max() <= 1


def test_random_start_uses_the_key():
  x = jnp.full((2, 4), 0.5)
  flat = lambda xa, t: jnp.zeros(xa.shape[0])  # noqa: E731  zero gradient: output = start
  a = pgd(flat, jax.random.key(0), x, eps=0.1, step_size=0.01, steps=1)
  b = pgd(flat, jax.random.key(1), x, eps=0.1, step_size=0.01, steps=1)
  assert not np.allclose(a, b) and np.abs(np.asarray(a) - 0.5).max() <= 0.1
  c = pgd(flat, jax.random.key(0), x, eps=0.1, step_size=0.01, steps=1, random_start=False)
  np.testing.assert_array_equal(np.asarray(c), np.asarray(x))


@pytest.mark.parametrize("kw, match", [
    (dict(eps=-0.1), "eps"), (dict(steps=0), "steps"), (dict(step_size=0.0), "step_size"),
])
def test_bad_arguments(kw, match):
  args = dict(eps=0.1, step_size=0.01, steps=2)
  args.update(kw)
  with pytest.raises(ValueError, match=match):
    pgd(lambda xa, t: xa.sum(-1), jax.random.key(0), jnp.zeros((1, 2)), **args)


def test_images_outside_unit_box_are_refused():
  with pytest.raises(ValueError, match=r"x must have values in \[0.0, 1.0\]"):
    pgd(lambda xa, t: xa.sum(-1), jax.random.key(0), jnp.full((1, 2), 1.5), eps=0.1,
        step_size=0.01, steps=1)
