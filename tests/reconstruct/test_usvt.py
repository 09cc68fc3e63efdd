import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import reconstruct
from references import matrices as references


def _batch(rng, shape, p=0.6):
  return rng.uniform(-1, 1, shape), rng.random(shape) < p


@pytest.mark.parametrize("shape", [(3, 12, 20), (2, 20, 12), (15, 15)])
@pytest.mark.parametrize("kwargs", [dict(keep=0.8), dict(keep=0.3), dict(keep=1.0),
                                    dict(threshold="universal", eta=0.01)])
def test_matches_numpy_per_matrix(rng, shape, kwargs):
  x, mask = _batch(rng, shape)
  with jax.enable_x64(True):
    out = np.asarray(reconstruct.usvt(jnp.asarray(x), jnp.asarray(mask), **kwargs))
  ref = np.stack([references.usvt(a, b, **kwargs) for a, b in
                  zip(x.reshape((-1,) + shape[-2:]), mask.reshape((-1,) + shape[-2:]))])
  np.testing.assert_allclose(out.reshape(ref.shape), ref, atol=1e-5, rtol=0)


def test_float32_on_cifar_matches_float64_reference(cifar_matrices, rng):
  x = cifar_matrices
  mask = rng.random(x.shape) < 0.5
  out = np.asarray(reconstruct.usvt(jnp.asarray(x, jnp.float32), jnp.asarray(mask)))
  ref = np.stack([references.usvt(a, b) for a, b in zip(x, mask)])
  # Gram-matrix eigendecomposition in float32: errors of order sqrt(eps) * sigma_max / sigma.
  assert np.max(np.abs(out - ref)) < 2e-4
  assert np.mean(np.abs(out - ref)) < 5e-6


def test_universal_threshold_keeps_signal_drops_noise(rng):
  # A rank-1 signal of singular value ~ sqrt(m n) stands far above the noise
  # threshold 2.01 sqrt(n p); the estimate should be close to the signal.
  m, n = 60, 80
  u, v = rng.uniform(-1, 1, m), rng.uniform(-1, 1, n)
  signal = np.outer(u, v)
  noisy = np.clip(signal + rng.uniform(-0.1, 0.1, (m, n)), -1, 1)
  mask = rng.random((m, n)) < 0.7
  with jax.enable_x64(True):
    est = np.asarray(reconstruct.usvt(jnp.asarray(noisy), jnp.asarray(mask), threshold="universal"))
  assert np.linalg.norm(est - signal) / np.linalg.norm(signal) < 0.15
  assert np.linalg.matrix_rank(est, tol=1e-8) == 1


def test_no_observed_entry_gives_zero():
  x = jnp.ones((2, 4, 5))
  mask = jnp.zeros((2, 4, 5), bool)
  np.testing.assert_array_equal(np.asarray(reconstruct.usvt(x, mask)), 0.0)
