"""APGD-T: the targeted DLR loss against its definition, the choice of targets, and what it
breaks on a linear model whose breakable images are known."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import attacks


def test_targeted_dlr_matches_its_definition():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(7, 10)).astype(np.float32)
  y = rng.integers(0, 10, 7)
  t = (y + 1 + rng.integers(0, 9, 7)) % 10
  top = -np.sort(-z, 1)  # decreasing
  expected = -(z[np.arange(7), y] - z[np.arange(7), t]) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2
                                                           + 1e-12)
  np.testing.assert_allclose(attacks.dlr_targeted(jnp.asarray(z), jnp.asarray(y),
                                                  jnp.asarray(t)), expected, rtol=1e-5)
  with pytest.raises(ValueError, match="at least 4 classes"):
    attacks.dlr_targeted(jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), jnp.ones(2, jnp.int32))


def _linear(seed, n=48, d=30, classes=6):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(d, classes)).astype(np.float32)
  x = rng.uniform(0.3, 0.7, size=(n, d)).astype(np.float32)
  y = np.argmax(x @ w, -1).astype(np.int32)
  return w, x, y


def test_apgd_t_breaks_what_a_linear_model_lets_it_and_nothing_else():
  # Logits z = W x, pixels kept away from [0, 1]'s edges by eps: image i can be misclassified
  # within the l-inf ball iff some class j has z_j - z_y + eps |w_j - w_y|_1 > 0 (the corner
  # eps sign(w_j - w_y) maximises z_j - z_y, and then y is not the argmax). APGD-T must break
  # the images that need clearly less than eps and can never break those that need more.
  w, x, y = _linear(0)
  z = x @ w
  # The smallest radius that breaks image i: min_j (z_y - z_j) / |w_j - w_y|_1.
  radius = np.min([[(z[i, y[i]] - z[i, j]) / np.abs(w[:, j] - w[:, y[i]]).sum()
                    if j != y[i] else np.inf for j in range(w.shape[1])]
                   for i in range(len(x))], axis=1)
  eps = float(np.median(radius))
  assert eps < 0.3  # the ball stays inside [0, 1] around pixels in [0.3, 0.7]
  clearly, never = radius < 0.8 * eps, radius > eps
  assert clearly.sum() >= 8 and never.sum() >= 8  # the problem has both kinds
  logits = lambda xa, t: xa @ w
  out = np.asarray(attacks.apgd_targeted(logits, jax.random.key(0), jnp.asarray(x),
                                         jnp.asarray(y), eps=eps, steps=20, targets=9))
  assert np.abs(out - x).max() <= eps + 1e-6  # targets=9 is capped at the 5 other classes
  broken = np.argmax(out @ w, -1) != y
  assert broken[clearly].all() and not broken[never].any()


def test_apgd_t_tries_the_targets_in_the_order_of_the_clean_logits():
  # One target: the class of the second largest clean logit. Make every class but that one
  # unreachable: APGD-T with targets=1 must still break the images, through that class.
  rng = np.random.default_rng(1)
  x = rng.uniform(0.3, 0.7, size=(16, 12)).astype(np.float32)
  w = np.zeros((12, 5), np.float32)
  w[:, 1] = 1.0  # z_1 = sum(x): the runner-up, reachable
  b = np.array([x.sum(1).max() + 0.3, 0.0, -100, -100, -100], np.float32)
  y = np.zeros(16, np.int32)
  logits = lambda xa, t: xa @ w + b
  gap = b[0] - x.sum(1)  # z_0 - z_1 at the clean point
  eps = 0.05
  out = np.asarray(attacks.apgd_targeted(logits, jax.random.key(2), jnp.asarray(x),
                                         jnp.asarray(y), eps=eps, steps=10, targets=1))
  pred = np.argmax(np.asarray(logits(jnp.asarray(out), 0)), -1)
  reachable = gap < 12 * eps - 1e-3
  np.testing.assert_array_equal(pred[reachable], 1)
  np.testing.assert_array_equal(pred[~reachable], 0)
  assert reachable.any() and (~reachable).any()
