"""The attacks against known answers: analytic optima of linear models, numpy
references of the losses and the subspace projection, and undefended networks
driven to zero accuracy."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import attacks, models
from menet_jax.attacks.apgd import checkpoints
from menet_jax.defenses import MENet


def _linear_problem(seed=0, n=6, d=20, classes=2):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(d, classes)).astype(np.float32)
  x = rng.uniform(0.3, 0.7, size=(n, d)).astype(np.float32)
  y = np.argmax(x @ w, -1).astype(np.int32)
  return w, x, y


def _optimal_binary(w, x, y, eps):
  """argmax over the eps-ball of (w_other - w_y) . x': the corner eps sign(w_other - w_y)."""
  direction = (w[:, 1 - y] - w[:, y]).T  # (n, d)
  return x + eps * np.sign(direction)


def test_fgsm_pgd_and_apgd_reach_the_analytic_optimum_of_a_linear_model():
  w, x, y = _linear_problem()
  eps = 0.1
  loss = lambda xa, t: attacks.cross_entropy(xa @ w, y)
  best = _optimal_binary(w, x, y, eps)
  np.testing.assert_allclose(attacks.fgsm(loss, x, eps=eps), best, atol=1e-6)
  for keep_best in (False, True):
    out = attacks.pgd(loss, jax.random.key(0), x, eps=eps, step_size=0.03, steps=8,
                      keep_best=keep_best)
    np.testing.assert_allclose(out, best, atol=1e-6)
  out = attacks.apgd(loss, jax.random.key(1), x, eps=eps, steps=10)
  np.testing.assert_allclose(out, best, atol=1e-6)
  # The optimal margin is the clean margin minus eps |w_other - w_y|_1.
  margin = lambda v: np.take_along_axis(v @ w, 1 - y[:, None], 1)[:, 0] - \
      np.take_along_axis(v @ w, y[:, None], 1)[:, 0]
  np.testing.assert_allclose(
      margin(best), margin(x) + eps * np.abs(w[:, 1] - w[:, 0]).sum(), rtol=1e-5)


def test_cw_pgd_on_a_multiclass_linear_model_reaches_the_best_corner():
  w, x, y = _linear_problem(seed=1, classes=4)
  eps = 0.15
  out = attacks.pgd(lambda xa, t: attacks.cw_margin(xa @ w, y, 1e6), jax.random.key(0), x,
                    eps=eps, step_size=0.05, steps=10)
  # The optimum of max_j (w_j - w_y).(x + d) over |d| <= eps is max_j of the per-target corners.
  z = x @ w
  opt = np.max([[z[i, j] - z[i, y[i]] + eps * np.abs(w[:, j] - w[:, y[i]]).sum()
                 for j in range(4) if j != y[i]] for i in range(len(x))], axis=1)
  got = np.asarray(attacks.margin(out @ w, y))
  assert np.all(got <= opt + 1e-4)
  # CW-PGD ascends the max-margin, which may sit in a local corner; most reach the optimum.
  assert np.mean(np.isclose(got, opt, atol=1e-4)) >= 0.5


def test_losses_match_numpy_definitions(rng):
  z = rng.normal(size=(7, 5)).astype(np.float32) * 3
  y = rng.integers(0, 5, 7).astype(np.int32)
  other = np.array([max(z[i, j] for j in range(5) if j != y[i]) for i in range(7)])
  true = z[np.arange(7), y]
  np.testing.assert_allclose(attacks.margin(z, y), other - true, rtol=1e-6)
  np.testing.assert_allclose(attacks.cw_margin(z, y, 0.5), np.minimum(other - true, 0.5),
                             rtol=1e-6)
  srt = np.sort(z, 1)
  np.testing.assert_allclose(attacks.dlr(z, y), -(true - other) / (srt[:, -1] - srt[:, -3] + 1e-12),
                             rtol=1e-5)
  logp = z - np.log(np.exp(z).sum(1, keepdims=True))
  np.testing.assert_allclose(attacks.cross_entropy(z, y), -logp[np.arange(7), y], rtol=1e-5)
  with pytest.raises(ValueError, match="at least 3 classes"):
    attacks.dlr(z[:, :2], np.zeros(7, np.int32))


def test_apgd_checkpoints_follow_the_paper():
  # p: 0, .22, .41, .57, .70, .80, .87, .93, .99 -> ceil(p * 100).
  assert list(checkpoints(100)) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_pgd_keep_best_returns_the_highest_loss_iterate():
  # A loss whose sign flips with t: numpy replays the iterates and picks the best one.
  x = np.full((3, 4), 0.5, np.float32)
  c = np.array([1.0, -1.0, -1.0, 1.0, -1.0], np.float32)
  a = np.array([[1, 2, 3, 4], [-1, 0, 2, 1], [0, 0, 0, 1]], np.float32)
  loss = lambda xa, t: jnp.asarray(c)[t] * jnp.sum(xa * a, -1)
  out = attacks.pgd(loss, jax.random.key(0), x, eps=0.2, step_size=0.05, steps=4,
                    random_start=False, keep_best=True)
  xs, xi = [], x.copy()
  for t in range(4):
    xs.append((xi.copy(), c[t] * np.sum(xi * a, -1)))
    xi = np.clip(xi + 0.05 * np.sign(c[t] * a), x - 0.2, x + 0.2)
  xs.append((xi.copy(), c[4] * np.sum(xi * a, -1)))
  losses = np.stack([l for _, l in xs])
  pick = np.argmax(losses, 0)
  np.testing.assert_allclose(out, np.stack([xs[p][0][i] for i, p in enumerate(pick)]), atol=1e-6)


def test_eot_averages_r_fresh_draws():
  key = jax.random.key(3)
  x = jnp.ones((2, 5))
  noisy = lambda xa, k: jnp.sum(xa * jax.random.normal(k, xa.shape), -1)
  for chunk in (None, 3):
    loss = attacks.eot(noisy, key, samples=7, chunk=chunk)
    g = jax.grad(lambda xa: jnp.sum(loss(xa, jnp.int32(4))))(x)
    keys = jax.random.split(jax.random.fold_in(key, 4), 7)
    expected = np.mean([np.asarray(jax.random.normal(k, x.shape)) for k in keys], 0)
    np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-6)
  # Different steps see different draws.
  assert not np.allclose(loss(x, jnp.int32(0)), loss(x, jnp.int32(1)))


def test_bpda_and_eot_gradients_through_menet_are_finite_and_shaped():
  defense = MENet.create(method="usvt", startp=0.5, endp=0.7, mask_num=2)
  x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3))
  w = jax.random.normal(jax.random.key(1), (8 * 8 * 3, 10))
  y = jnp.arange(4)

  def loss(xa, k):
    xr = defense.attack_view(jax.random.split(k, 4), xa, jnp.full((4,), defense.test_level))
    return attacks.cross_entropy(xr.reshape(4, -1) @ w, y)

  for fn in (attacks.fresh_draws(loss, jax.random.key(2)),
             attacks.eot(loss, jax.random.key(2), samples=5, chunk=2)):
    g = jax.grad(lambda xa: jnp.sum(fn(xa, jnp.int32(0))))(x)
    assert g.shape == x.shape
    assert np.all(np.isfinite(g)) and np.all(np.abs(np.asarray(g)).reshape(4, -1).max(1) > 0)


def test_projected_bpda_perturbation_lies_in_the_top_singular_subspace(rng):
  x = rng.uniform(0.25, 0.75, size=(3, 8, 8, 3)).astype(np.float32)
  w = rng.normal(size=(8 * 8 * 3, 10)).astype(np.float32)
  y = np.arange(3, dtype=np.int32)
  loss = lambda xa, t: attacks.cross_entropy(xa.reshape(3, -1) @ w, y)
  rank, eps = 2, 0.05
  out = np.asarray(attacks.projected_pgd(loss, x, eps=eps, step_size=0.02, steps=5, rank=rank))
  delta = out - x
  assert np.abs(delta).max() <= eps + 1e-6 and np.abs(delta).max() > eps / 2
  for i in range(3):
    # numpy reference: the concat layout H x (C W) of 2x - 1, its SVD, U_k U_k^T D V_k V_k^T.
    m = np.concatenate([2 * x[i, ..., c] - 1 for c in range(3)], axis=1)
    u, _, vt = np.linalg.svd(m.astype(np.float64))
    uk, vk = u[:, :rank], vt[:rank].T
    d = np.concatenate([delta[i, ..., c] for c in range(3)], axis=1)
    np.testing.assert_allclose(uk @ uk.T @ d @ vk @ vk.T, d, atol=1e-5)
    # and it is not trivially in it: a random matrix is not.
    r = rng.normal(size=d.shape)
    assert np.abs(uk @ uk.T @ r @ vk @ vk.T - r).max() > 0.1


def _small_cnn_problem(n=16):
  model = models.create("small_cnn", num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3)
  x = jax.random.uniform(jax.random.key(0), (n, 16, 16, 3))
  variables = model.init(jax.random.key(1), x, train=False)
  logits = lambda v: model.apply(variables, v, train=False)
  y = jnp.argmax(logits(x), -1)  # the clean accuracy is 100% by construction
  return logits, x, y


def test_gradient_attacks_drive_an_undefended_cnn_to_zero_at_large_eps():
  logits, x, y = _small_cnn_problem()
  acc = lambda v: float(jnp.mean(jnp.argmax(logits(v), -1) == y))
  assert acc(x) == 1.0
  ce = lambda v, t: attacks.cross_entropy(logits(v), y)
  assert acc(attacks.pgd(ce, jax.random.key(0), x, eps=0.3, step_size=0.05, steps=20)) == 0.0
  dlr = lambda v, t: attacks.dlr(logits(v), y)
  assert acc(attacks.apgd(dlr, jax.random.key(0), x, eps=0.3, steps=20)) == 0.0


def test_spsa_and_boundary_lower_the_accuracy_of_an_undefended_model():
  logits, x, y = _small_cnn_problem()
  acc = lambda v: float(jnp.mean(jnp.argmax(logits(v), -1) == y))
  x_s = attacks.spsa(lambda v, k: attacks.margin(logits(v), y), jax.random.key(0), x, eps=0.3,
                     steps=20, samples=32, lr=0.05)
  assert np.abs(np.asarray(x_s - x)).max() <= 0.3 + 1e-6
  assert acc(x_s) <= 0.5
  wrong = lambda v, k: jnp.argmax(logits(v), -1) != y
  x_b, found = attacks.boundary(wrong, jax.random.key(0), x, steps=200)
  assert bool(jnp.all(found))
  assert float(jnp.mean(wrong(x_b, None))) == 1.0  # every returned point is adversarial
  start, _ = attacks.boundary(wrong, jax.random.key(0), x, steps=1)
  dist = lambda v: np.sqrt(((np.asarray(v) - np.asarray(x)) ** 2).reshape(len(x), -1).sum(1))
  assert np.mean(dist(x_b)) < 0.8 * np.mean(dist(start))  # the walk approached x
  assert acc(attacks.project_linf(x_b, x, 0.3)) < 1.0


@pytest.mark.parametrize("call, match", [
    (lambda x: attacks.pgd(lambda v, t: v.sum(-1), jax.random.key(0), x, eps=-0.1,
                           step_size=0.1, steps=1), "eps must be in"),
    (lambda x: attacks.pgd(lambda v, t: v.sum(-1), jax.random.key(0), x, eps=0.1,
                           step_size=0.1, steps=0), "steps must be an integer >= 1"),
    (lambda x: attacks.apgd(lambda v, t: v.sum(-1), jax.random.key(0), x, eps=0.1, steps=0),
     "steps must be an integer >= 1"),
    (lambda x: attacks.fgsm(lambda v, t: v.sum(-1), x * 2, eps=0.1), "x must have values in"),
    (lambda x: attacks.spsa(lambda v, k: v.sum(-1), jax.random.key(0), x, eps=0.1, steps=1,
                            samples=3), "samples must be even"),
    (lambda x: attacks.boundary(lambda v, k: v.sum(-1) > 0, jax.random.key(0), x, steps=0),
     "steps must be an integer >= 1"),
    (lambda x: attacks.eot(lambda v, k: v.sum(-1), jax.random.key(0), samples=0),
     "samples must be an integer >= 1"),
    (lambda x: attacks.projected_pgd(lambda v, t: v.sum((1, 2, 3)), x.reshape(1, 2, 2, 1),
                                     eps=0.1, step_size=0.1, steps=1, rank=3),
     "rank must be an integer in \\[1, 2\\]"),
])
def test_bad_inputs_raise_clear_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call(jnp.full((1, 4), 0.6))
