import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import masks


def test_mask_probs_is_the_appendix_b_schedule():
  np.testing.assert_allclose(masks.mask_probs(0.6, 0.8, 10), np.arange(10) * 0.02 + 0.6, atol=1e-12)
  np.testing.assert_allclose(masks.mask_probs(0.8, 1.0, 10).mean(), 0.89, atol=1e-12)
  np.testing.assert_allclose(masks.mask_probs(0.5, 0.5, 3), [0.5, 0.5, 0.5])


def test_bernoulli_frequency_and_determinism():
  key = jax.random.key(7)
  m = np.asarray(masks.bernoulli(key, (200, 32, 96), 0.3))
  assert m.dtype == bool
  # 614400 draws: the standard error of the frequency is 6e-4.
  assert abs(m.mean() - 0.3) < 3e-3
  np.testing.assert_array_equal(m, np.asarray(masks.bernoulli(key, (200, 32, 96), 0.3)))
  assert not np.array_equal(m, np.asarray(masks.bernoulli(jax.random.key(8), (200, 32, 96), 0.3)))


def test_bernoulli_per_matrix_probabilities():
  p = jnp.asarray([0.1, 0.5, 0.9, 1.0])
  m = np.asarray(masks.bernoulli(jax.random.key(0), (4, 100, 100), p))
  np.testing.assert_allclose(m.mean(axis=(1, 2)), p, atol=0.02)
  assert m[3].all()


def test_concat_layout_is_the_release_layout(rng):
  images = rng.uniform(0, 1, (2, 5, 7, 3)).astype(np.float32)
  mats = np.asarray(masks.to_matrices(jnp.asarray(images), "concat"))
  chw = images.transpose(0, 3, 1, 2)
  expected = np.concatenate([chw[:, 0], chw[:, 1], chw[:, 2]], axis=2)  # H x 3W, as train_pure.py
  np.testing.assert_array_equal(mats, expected)
  np.testing.assert_array_equal(np.asarray(masks.from_matrices(jnp.asarray(mats), "concat", 3)), images)


def test_separate_layout_round_trip_and_shared_mask(rng):
  images = rng.uniform(0, 1, (2, 6, 4, 3)).astype(np.float32)
  mats = masks.to_matrices(jnp.asarray(images), "separate")
  assert mats.shape == (2, 3, 6, 4)
  np.testing.assert_array_equal(np.asarray(masks.from_matrices(mats, "separate", 3)), images)
  m = np.asarray(masks.image_mask(jax.random.key(1), images.shape, 0.5, "separate"))
  assert m.shape == (2, 3, 6, 4)
  assert (m == m[:, :1]).all()  # one mask shared by the channels


@pytest.mark.parametrize("args,match", [
    ((0.0, 0.8, 10), "startp"), ((0.6, 1.2, 10), "endp"), ((0.8, 0.6, 10), "endp"),
    ((0.6, 0.8, 0), "n"), ((0.6, 0.8, 2.5), "n"),
])
def test_mask_probs_bad_input(args, match):
  with pytest.raises(ValueError, match=match):
    masks.mask_probs(*args)


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, float("nan"), np.array([0.5, 0.0])])
def test_bernoulli_bad_p(p):
  with pytest.raises(ValueError, match="p must"):
    masks.bernoulli(jax.random.key(0), (2, 4, 4), p)
