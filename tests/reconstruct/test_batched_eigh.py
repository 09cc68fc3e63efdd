"""batched_eigh (the C++ CPU eigensolver) against numpy's float64 LAPACK.

Bounds are derived, not measured: Householder tridiagonalisation and QL rotations are
backward stable, (Q + dQ)(Lambda)(Q + dQ)^T = G + E with |E|_2 <= c n eps |G|_2 and Q
orthogonal to c n eps, for a modest c; by Weyl's theorem every eigenvalue is then within
|E|_2 of the exact one. The tests take c = 4.
"""

import os
import pathlib
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax.reconstruct import batched_eigh


def _bound(n, dtype, norm):
  return 4 * n * np.finfo(dtype).eps * norm


def _check(g, lam, q):
  """lam, q are an eigendecomposition of sym(g) to the backward-stable bound."""
  g = np.asarray(g, np.float64)
  g = (g + np.swapaxes(g, -1, -2)) / 2
  lam, q = np.asarray(lam), np.asarray(q)
  n, dtype = g.shape[-1], lam.dtype
  norm = np.linalg.norm(g, 2, axis=(-2, -1))[..., None]
  lam_ref = np.linalg.eigvalsh(g)
  assert np.all(np.diff(lam, axis=-1) >= 0), "eigenvalues not ascending"
  assert np.all(np.abs(lam - lam_ref) <= _bound(n, dtype, norm) + np.finfo(dtype).tiny)
  q64 = q.astype(np.float64)
  residual = np.linalg.norm(g @ q64 - q64 * lam[..., None, :].astype(np.float64), axis=-2)
  assert np.all(residual <= _bound(n, dtype, norm) + np.finfo(dtype).tiny)
  orth = np.abs(np.swapaxes(q64, -1, -2) @ q64 - np.eye(n))
  assert orth.max() <= _bound(n, dtype, 1.0)


def _gram_batch(rng, batch, n, width):
  """Gram matrices of masked images, as the reconstructors decompose: some rank-deficient."""
  x = rng.uniform(size=(batch, n, width)) * (rng.uniform(size=(batch, n, width)) < 0.5)
  x[::5, : n // 4] = 0                   # blank rows: repeated zero eigenvalues
  x[1::5] = x[1::5, :1]                  # rank one
  x[2::5, :, width // 8 :] = 0           # rank <= width / 8
  return np.einsum("bij,bkj->bik", x, x).astype(np.float32)


@pytest.mark.parametrize("batch", [1, 7, 8, 9, 33, 300])
def test_gram_matrices_float32(rng, batch):
  g = _gram_batch(rng, batch, 32, 96)
  lam, q = jax.jit(batched_eigh.eigh)(jnp.asarray(g))
  assert lam.dtype == q.dtype == jnp.float32
  _check(g, lam, q)


@pytest.mark.parametrize("n", [1, 2, 3, 17, 64, 100])
def test_sizes_and_general_symmetric(rng, n):
  g = rng.standard_normal((11, n, n)).astype(np.float32)  # not symmetric: its symmetric part
  lam, q = batched_eigh.eigh(jnp.asarray(g))
  _check(g, lam, q)


def test_float64(rng):
  g = rng.standard_normal((2, 3, 24, 24))
  with jax.enable_x64(True):
    lam, q = jax.jit(batched_eigh.eigh)(jnp.asarray(g))
    assert lam.dtype == q.dtype == jnp.float64 and lam.shape == (2, 3, 24)
  _check(g, lam, q)


def test_exact_cases():
  # Repeated eigenvalues, a zero matrix, an unsorted diagonal, and entries whose squares
  # overflow float32 (the solver scales each matrix).
  diag = np.diag(np.array([3.0, -1.0, 2.0, 2.0, 0.0], np.float32))
  g = np.stack([np.eye(5, dtype=np.float32), np.zeros((5, 5), np.float32), diag,
                1e30 * np.ones((5, 5), np.float32), 1e-30 * diag])
  lam, q = batched_eigh.eigh(jnp.asarray(g))
  np.testing.assert_array_equal(lam[0], np.ones(5))
  np.testing.assert_array_equal(lam[1], np.zeros(5))
  np.testing.assert_array_equal(lam[2], [-1.0, 0.0, 2.0, 2.0, 3.0])
  np.testing.assert_allclose(lam[3], [0, 0, 0, 0, 5e30], atol=_bound(5, np.float32, 5e30))
  np.testing.assert_allclose(lam[4], 1e-30 * np.array([-1.0, 0.0, 2.0, 2.0, 3.0]), rtol=1e-6)
  assert np.all(np.isfinite(q))
  _check(g[:3], lam[:3], q[:3])


def test_non_finite_input_gives_nan_for_that_matrix_only(rng):
  g = _gram_batch(rng, 8, 6, 10)  # one SIMD block
  g[3, 1, 2] = np.nan
  g[5, 0, 0] = np.inf
  lam, q = map(np.asarray, batched_eigh.eigh(jnp.asarray(g)))
  for i in (3, 5):
    assert np.isnan(lam[i]).all() and np.isnan(q[i]).all()
  ok = [0, 1, 2, 4, 6, 7]
  _check(g[ok], lam[ok], q[ok])


def test_batch_position_and_vmap_do_not_change_results(rng):
  # Each matrix is computed on its own lane: in a batch of any size, at any position, under
  # vmap, and split over threads, it gets the same bits as alone.
  g = jnp.asarray(_gram_batch(rng, 300, 32, 96))
  lam, q = batched_eigh.eigh(g)
  for i in (0, 7, 8, 150, 299):
    lam_i, q_i = batched_eigh.eigh(g[i])
    np.testing.assert_array_equal(lam_i, lam[i])
    np.testing.assert_array_equal(q_i, q[i])
  lam_v, q_v = jax.vmap(batched_eigh.eigh)(g.reshape(3, 100, 32, 32))
  np.testing.assert_array_equal(lam_v.reshape(lam.shape), lam)
  np.testing.assert_array_equal(q_v.reshape(q.shape), q)


def test_empty_batch():
  lam, q = batched_eigh.eigh(jnp.zeros((0, 4, 4)))
  assert lam.shape == (0, 4) and q.shape == (0, 4, 4)


def test_bad_input_is_rejected_before_tracing():
  with pytest.raises(ValueError, match="g must be"):
    batched_eigh.eigh(jnp.zeros((3, 4, 5)))
  with pytest.raises(ValueError, match="g must be"):
    batched_eigh.eigh(jnp.zeros((4,)))
  with pytest.raises(ValueError, match="at most 8192"):
    batched_eigh.eigh(jax.ShapeDtypeStruct((8193, 8193), jnp.float32))
  with pytest.raises(TypeError, match="float32 or float64"):
    batched_eigh.eigh(jnp.zeros((2, 4, 4), jnp.int32))


def test_the_version_in_use_is_reported():
  forced = os.environ.get("MENET_JAX_EIGH_ISA") == "baseline"
  expected = {"baseline"} if forced or platform.machine() != "x86_64" else {"avx2", "baseline"}
  assert batched_eigh.isa() in expected


@pytest.mark.skipif(os.environ.get("MENET_JAX_EIGH_ISA") == "baseline",
                    reason="already the baseline")
def test_the_baseline_build_passes_these_tests():
  # The AVX2 + FMA version serves the CPUs this suite runs on; this file again, in a child
  # process on the baseline version (no FMA: where the QL iteration once failed to end).
  repo = pathlib.Path(__file__).resolve().parents[2]
  out = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
       str(pathlib.Path(__file__).relative_to(repo))],
      cwd=repo, env={**os.environ, "MENET_JAX_EIGH_ISA": "baseline"}, capture_output=True,
      text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert " passed" in out.stdout and "failed" not in out.stdout
