"""benchmarks.flops: the executed dense arithmetic, against counts written out by hand."""

import jax
import jax.numpy as jnp
import pytest

from benchmarks import flops
from menet_jax import reconstruct
from menet_jax.reconstruct import spectral

M, N = 32, 96  # a CIFAR-10 image as a concat matrix; k = min(m, n) = 32
GRAM = 2 * M * N * M          # x x^T
EIGH = 9 * M**3               # its decomposition
FILTER = 2 * M**3 + 2 * M * M * N  # H = Q diag(s) Q^T, then H x


@pytest.fixture(scope="module")
def batch():
  x = jax.random.uniform(jax.random.key(0), (5, M, N), minval=-1, maxval=1)
  return x, jax.random.bernoulli(jax.random.key(1), 0.5, x.shape)


def test_usvt_is_one_gram_decomposition_and_filter_per_image(batch):
  count = flops.per_item(lambda x, m: reconstruct.get("usvt")(x, m), *batch)
  assert count == GRAM + EIGH + FILTER


def test_a_loop_counts_once_per_iteration_it_runs(batch):
  # Soft-Impute: sigma_max (a Gram matrix and its decomposition), then one filter per
  # iteration; tol = 0 runs every matrix for exactly max_iters iterations.
  for iters in (1, 3):
    count = flops.per_item(
        lambda x, m, i=iters: reconstruct.get("soft_impute")(x, m, max_iters=i, tol=0.0), *batch)
    assert count == GRAM + EIGH + iters * (GRAM + EIGH + FILTER)


def test_the_kernels_are_restored_and_uncounted_outside_the_block(batch):
  kernels = (spectral.matmul, spectral.eigh, spectral.orthonormal_basis)
  with flops.counting() as count:
    pass
  assert (spectral.matmul, spectral.eigh, spectral.orthonormal_basis) == kernels
  assert count() == 0
  y = jnp.ones((2, 7, 3))
  with flops.counting() as count:
    jax.block_until_ready(jax.jit(spectral.orthonormal_basis)(y))
    jax.effects_barrier()
  assert count() == pytest.approx(2 * (4 * 7 * 9 - 4 * 27 / 3))


def test_the_matmul_rate_is_positive_and_finite():
  assert 0 < flops.matmul_rate(64, repeats=2) < 1e6
