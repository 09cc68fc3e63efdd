"""l2 attacks against the analytic optima of linear models: l2-PGD, l2-APGD and Carlini-Wagner
l2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax.attacks import apgd, cw_l2, pgd


def test_l2_pgd_reaches_the_analytic_optimum_of_a_linear_loss():
  # max_{|d|_2 <= eps} w . (x + d) is at d = eps w / |w|_2 (interior x, so the box does not
  # bind: |d|_inf <= eps max|w| / |w| < 0.2 here).
  rng = np.random.default_rng(0)
  x = (0.3 + 0.4 * rng.random((5, 64))).astype(np.float32)
  w = rng.normal(size=(5, 64)).astype(np.float32)
  eps = 0.5
  got = pgd(lambda xa, t: jnp.sum(w * xa, -1), jax.random.key(0), jnp.asarray(x), eps=eps,
            step_size=eps / 4, steps=80, norm="l2")
  # From the random start, each radial projection shrinks the angle to w by about
  # eps / (eps + step): 80 steps leave 0.8^80 ~ 2e-8 of it.
  want = x + eps * w / np.linalg.norm(w, axis=1, keepdims=True)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_l2_apgd_reaches_the_analytic_optimum_of_a_linear_loss():
  # The same optimum, eps w / |w|_2, for APGD's l2 steps (g / |g|_2, radial projection).
  rng = np.random.default_rng(4)
  x = (0.3 + 0.4 * rng.random((5, 64))).astype(np.float32)
  w = rng.normal(size=(5, 64)).astype(np.float32)
  eps = 0.5
  got = apgd(lambda xa, t: jnp.sum(w * xa, -1), jax.random.key(0), jnp.asarray(x), eps=eps,
             steps=100, norm="l2")
  want = x + eps * w / np.linalg.norm(w, axis=1, keepdims=True)
  # The objective's gap to the optimum, relative to its eps |w|_2 range: the l2 step's
  # projections converge geometrically; 1e-4 leaves room for APGD's halved steps.
  gap = np.sum(w * (want - np.asarray(got)), 1) / (eps * np.linalg.norm(w, axis=1))
  assert np.all(gap >= -1e-6) and np.all(gap <= 1e-4), gap
  assert np.linalg.norm(np.asarray(got) - x, axis=1).max() <= eps + 1e-5


def test_l2_pgd_stays_in_the_ball_and_the_box_and_starts_uniformly():
  rng = np.random.default_rng(1)
  x = rng.random((256, 6)).astype(np.float32)
  loss = lambda xa, t: jnp.sum(jnp.sin(7 * xa + t), -1)  # noqa: E731
  got = np.asarray(pgd(loss, jax.random.key(1), jnp.asarray(x), eps=0.3, step_size=0.2, steps=5,
                       norm="l2"))
  assert np.linalg.norm(got - x, axis=1).max() <= 0.3 + 1e-6 and got.min() >= 0 and got.max() <= 1
  # The random start is uniform in the ball: P(|d| <= r) = (r / eps)^d; in d = 6, the median
  # radius is eps 2^(-1/6). Mid-grey images keep the box out of the way.
  flat = lambda xa, t: jnp.zeros(xa.shape[0])  # noqa: E731
  mid = jnp.full((4000, 6), 0.5)
  start = pgd(flat, jax.random.key(2), mid, eps=0.3, step_size=0.1, steps=1, norm="l2")
  radius = np.linalg.norm(np.asarray(start) - 0.5, axis=1)
  # 4,000 draws: the empirical median is within 3 standard errors (about 0.004) of 0.267.
  assert abs(np.median(radius) - 0.3 * 2 ** (-1 / 6)) < 0.006
  assert radius.max() <= 0.3 + 1e-6


def test_cw_l2_finds_the_distance_to_a_linear_boundary():
  # Logits W x + b: the smallest l2 perturbation that makes class j beat the true class y is
  # g_j = (z_y - z_j) / |w_y - w_j|_2 (box not binding). CW's f follows the runner-up class,
  # so it lands on the boundary with the class it crosses into, k: at distance g_k, never
  # below min_j g_j; with two classes that is the optimum.
  rng = np.random.default_rng(3)
  for classes in (2, 4):
    d = 20
    weights = rng.normal(size=(classes, d)).astype(np.float32)
    bias = rng.normal(size=classes).astype(np.float32)
    x = (0.4 + 0.2 * rng.random((64, d))).astype(np.float32)
    z = x @ weights.T + bias
    y = np.argmax(z, 1)
    gaps = np.array([[(z[i, y[i]] - z[i, j]) / np.linalg.norm(weights[y[i]] - weights[j])
                      if j != y[i] else np.inf for j in range(classes)] for i in range(len(x))])
    # Distances of 0.03 to 0.3: well above Adam's resolution (steps of about lr / 2 per
    # pixel), small enough that the box [0, 1] does not bind.
    keep = np.flatnonzero((gaps.min(1) > 0.03) & (gaps.min(1) < 0.3))[:6]
    x, y, gaps = x[keep], y[keep], gaps[keep]
    x_adv, found = cw_l2(lambda xa, t: xa @ weights.T + bias, jnp.asarray(x), jnp.asarray(y),
                         steps=500, binary_steps=10, lr=0.005, initial_const=1.0)
    assert np.all(np.asarray(found))
    dist = np.linalg.norm(np.asarray(x_adv) - x, axis=1)
    logits = np.asarray(x_adv) @ weights.T + bias
    crossed = np.argmax(np.where(np.eye(classes, dtype=bool)[y], -np.inf, logits), 1)
    assert np.all(logits[np.arange(len(y)), crossed] >= logits[np.arange(len(y)), y])
    assert np.all(dist >= gaps.min(1) * (1 - 1e-4)), (dist, gaps)
    # 1 %: the search over c (10 rounds) and Adam at a fixed rate stop just past the boundary.
    np.testing.assert_allclose(dist, gaps[np.arange(len(y)), crossed], rtol=1e-2)


def test_cw_l2_reports_what_it_did_not_find():
  # A constant classifier cannot be fooled: nothing found, the clean images come back.
  x = jnp.full((3, 5), 0.5)
  x_adv, found = cw_l2(lambda xa, t: jnp.tile(jnp.array([[5.0, 0.0]]), (xa.shape[0], 1)), x,
                       jnp.zeros(3, jnp.int32), steps=10, binary_steps=2)
  assert not np.any(np.asarray(found))
  np.testing.assert_array_equal(np.asarray(x_adv), np.asarray(x))


@pytest.mark.parametrize("call, match", [
    (lambda: pgd(lambda xa, t: xa.sum(-1), jax.random.key(0), jnp.zeros((1, 4)), eps=2.5,
                 step_size=0.1, steps=1, norm="l2"), r"eps must be in \[0.0, 2.0\]"),
    (lambda: pgd(lambda xa, t: xa.sum(-1), jax.random.key(0), jnp.zeros((1, 4)), eps=0.5,
                 step_size=0.1, steps=1, norm="l1"), "norm"),
    (lambda: cw_l2(lambda xa, t: xa, jnp.zeros((1, 2)), jnp.zeros(1, jnp.int32), steps=0),
     "steps"),
    (lambda: cw_l2(lambda xa, t: xa, jnp.zeros((1, 2)), jnp.zeros(1, jnp.int32), lr=0.0), "lr"),
])
def test_bad_l2_arguments(call, match):
  with pytest.raises(ValueError, match=match):
    call()
