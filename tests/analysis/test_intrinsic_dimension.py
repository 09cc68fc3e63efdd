"""The Levina-Bickel estimator on data of known dimension, against the estimator's own theory.

For points that locally look like a uniform (Poisson) sample of an m-dimensional set,
sum_{j<k} log(T_k / T_j) is Gamma(k - 1, rate m): so (k - 2) / that sum has mean m (the
"levina" pooling is unbiased) and its inverse has mean (k - 1) / ((k - 2) m) (the "mackay"
pooling tends to m (k - 2) / (k - 1), averaged over k)."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from menet_jax.analysis.intrinsic_dimension import levina_bickel, neighbour_distances


def _embedded_gaussian(rng, d, ambient, n=1000):
  basis, _ = np.linalg.qr(rng.normal(size=(ambient, d)))
  return rng.normal(size=(n, d)) @ basis.T  # a d-dimensional Gaussian in a random subspace


def test_neighbour_distances_match_a_kd_tree():
  x = np.random.default_rng(0).normal(size=(300, 7))
  want, _ = cKDTree(x).query(x, k=6)  # column 0 is the point itself
  np.testing.assert_allclose(neighbour_distances(x, 5, chunk=64), want[:, 1:], rtol=1e-9)


@pytest.mark.parametrize("d, ambient", [(5, 100), (2, 10)])
def test_known_dimension_is_recovered(d, ambient):
  x = _embedded_gaussian(np.random.default_rng(d), d, ambient)
  mackay_factor = np.mean([(k - 2) / (k - 1) for k in range(6, 13)])
  # 7 %: the sampling error of 1,000 points (the per-point estimate has standard deviation
  # m / sqrt(k - 3); neighbouring estimates share points) and the Gaussian's density varying
  # within a neighbourhood, which the Poisson model ignores.
  assert levina_bickel(x, estimator="levina") == pytest.approx(d, rel=0.07)
  assert levina_bickel(x, estimator="mackay") == pytest.approx(d * mackay_factor, rel=0.07)


def test_bad_inputs_are_refused():
  x = np.random.default_rng(1).normal(size=(50, 3))
  with pytest.raises(ValueError, match="duplicate"):
    levina_bickel(np.concatenate([x, x[:2]]))
  with pytest.raises(ValueError, match="more than k2 = 12 points"):
    levina_bickel(x[:12])
  with pytest.raises(ValueError, match="k1"):
    levina_bickel(x, k1=2)
  with pytest.raises(ValueError, match="estimator"):
    levina_bickel(x, estimator="mle")
