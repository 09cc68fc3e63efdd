import numpy as np
import pytest

from menet_jax.reconstruct import rank


def test_approximate_rank_matches_numpy(rng):
  # Images of known rank plus small noise, in both layouts.
  images = np.empty((6, 12, 10, 3))
  for i in range(6):
    r = i % 3 + 1
    images[i] = np.clip((rng.uniform(0, 1, (12, r)) @ rng.uniform(0, 1, (r, 30)) / r).reshape(12, 10, 3)
                        + rng.uniform(0, 0.01, (12, 10, 3)), 0, 1)
  got = rank.approximate_rank(images.astype(np.float32), energy=0.9)
  mats = np.concatenate([images[..., c] for c in range(3)], axis=-1)
  s2 = np.linalg.svd(mats, compute_uv=False) ** 2
  expected = np.argmax(np.cumsum(s2, -1) >= 0.9 * s2.sum(-1, keepdims=True), axis=-1) + 1
  np.testing.assert_array_equal(got, expected)
  sep = rank.approximate_rank(images.astype(np.float32), layout="separate")
  assert sep.shape == (6,) and (sep >= 1).all()
  uint8 = rank.approximate_rank(np.round(images * 255).astype(np.uint8))
  assert np.abs(uint8 - got).max() <= 1


@pytest.mark.parametrize("kwargs,match", [(dict(energy=0.0), "energy"), (dict(layout="tiles"), "layout")])
def test_approximate_rank_bad_input(kwargs, match):
  with pytest.raises(ValueError, match=match):
    rank.approximate_rank(np.zeros((1, 4, 4, 1), np.float32), **kwargs)
