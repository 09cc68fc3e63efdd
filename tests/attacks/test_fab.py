"""FAB-T: its hyperplane-and-box projection against cvxpy, the distances it reaches on affine
models whose minimal adversarial distance is known, and its contract (ball, determinism, jit,
call numbering, argument checks)."""

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax.attacks.fab import fab_t, project_hyperplane_box
from menet_jax.attacks.pgd import pgd

ETA = 1.05  # fab_t's default overshoot


def _norm(v, norm):
  v = np.asarray(v, np.float64).reshape(len(v), -1)
  return np.abs(v).max(1) if norm == "linf" else np.linalg.norm(v, axis=1)


def _cp_norm(expr, norm):
  return cp.norm(expr, "inf") if norm == "linf" else cp.norm(expr, 2)


def _projection_problems(rng, n, groups):
  """Points x in [0, 1]^n, normals w and offsets b; |w.x + b| is a chosen fraction u of the
  most that moving x inside the box can take off it: u < 1 feasible, u > 1 not."""
  xs, ws, cs = [], [], []
  for (lo, hi), (u_lo, u_hi), count in groups:
    x = rng.uniform(lo, hi, (count, n))
    w = rng.normal(size=(count, n))
    sign = rng.choice([-1.0, 1.0], count)
    room = np.where(sign[:, None] * w > 0, x, 1 - x)  # how far each coordinate can help
    cs.append(sign * rng.uniform(u_lo, u_hi, count) * (np.abs(w) * room).sum(1))
    xs.append(x)
    ws.append(w)
  x, w, c = map(np.concatenate, (xs, ws, cs))
  # The float32 problem that project_hyperplane_box solves, exactly, in float64 for cvxpy.
  return tuple(v.astype(np.float32).astype(np.float64) for v in (x, w, c - (w * x).sum(1)))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_matches_cvxpy_with_and_without_active_box(norm):
  # Interior points (x in [0.3, 0.7], the plane at most 10 % of the reachable offset away: the
  # box does not bind) and points anywhere in the box with the plane up to 95 % of the reachable
  # offset away (many coordinates end on the box's faces).
  rng = np.random.default_rng(0)
  n = 10
  x, w, b = _projection_problems(rng, n, [((0.3, 0.7), (0.01, 0.1), 8),
                                          ((0.0, 1.0), (0.3, 0.95), 24)])
  d = np.asarray(project_hyperplane_box(*(jnp.asarray(v, jnp.float32) for v in (x, w, b)),
                                        norm=norm), np.float64)
  z = x + d
  assert z.min() >= -1e-7 and z.max() <= 1 + 1e-7  # float32 rounding of x + (1 - x)
  np.testing.assert_allclose((w * z).sum(1) + b, 0, atol=2e-5)
  box_active = 0
  for i in range(len(x)):
    v = cp.Variable(n)
    # l2 as a QP (squared norm): the solver's argmin is then accurate to ~1e-8.
    objective = _cp_norm(v - x[i], "linf") if norm == "linf" else cp.sum_squares(v - x[i])
    plane = [w[i] @ v + b[i] == 0]
    problem = cp.Problem(cp.Minimize(objective), plane + [v >= 0, v <= 1])
    problem.solve()
    assert problem.status == "optimal"
    if norm == "linf":  # the l-inf argmin is not unique: compare the distance
      assert _norm(d[i:i + 1], norm)[0] == pytest.approx(problem.value, abs=1e-5)
    else:  # unique
      np.testing.assert_allclose(d[i], v.value - x[i], atol=1e-5)
    free = cp.Problem(cp.Minimize(objective), plane)
    free.solve()
    box_active += free.value < problem.value - 1e-3
  assert box_active >= 10, box_active
  # The interior group: the box-free answer |c| / ||w||_dual (l-inf: dual l1; l2: l2).
  dual = np.abs(w[:8]).sum(1) if norm == "linf" else np.linalg.norm(w[:8], axis=1)
  np.testing.assert_allclose(_norm(d[:8], norm), np.abs((w * x).sum(1) + b)[:8] / dual,
                             rtol=1e-5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_out_of_reach_returns_the_boxs_closest_point(norm):
  # The plane lies beyond what the box allows: d takes x to the box's vertex closest to the
  # plane (the unique minimiser of |w.z + b| over the box, as cvxpy finds it).
  rng = np.random.default_rng(1)
  n = 8
  x, w, b = _projection_problems(rng, n, [((0.0, 1.0), (1.1, 2.0), 10)])
  d = np.asarray(project_hyperplane_box(*(jnp.asarray(v, jnp.float32) for v in (x, w, b)),
                                        norm=norm), np.float64)
  for i in range(len(x)):
    v = cp.Variable(n)
    assert cp.Problem(cp.Minimize(0), [w[i] @ v + b[i] == 0, v >= 0, v <= 1]).solve() == np.inf
    closest = cp.Problem(cp.Minimize(cp.abs(w[i] @ v + b[i])), [v >= 0, v <= 1])
    closest.solve()
    np.testing.assert_allclose(x[i] + d[i], v.value, atol=1e-5)
    assert abs(w[i] @ (x[i] + d[i]) + b[i]) == pytest.approx(closest.value, rel=1e-5)


def test_projection_degenerate_planes():
  # On the plane already (c = 0): no step. A zero normal: no step, no NaN. A zero coordinate
  # of w never moves.
  x = jnp.asarray([[0.2, 0.5, 0.9], [0.2, 0.5, 0.9], [0.5, 0.5, 0.5]], jnp.float32)
  w = jnp.asarray([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]], jnp.float32)
  b = jnp.asarray([-(0.2 - 1.0 + 0.45), 3.0, -0.6], jnp.float32)
  for norm in ("linf", "l2"):
    d = np.asarray(project_hyperplane_box(x, w, b, norm))
    np.testing.assert_allclose(d[:2], 0, atol=1e-7)
    assert d[2, 1] == 0 and np.isfinite(d).all()
    assert float(jnp.sum(w[2] * (x[2] + d[2])) + b[2]) == pytest.approx(0, abs=1e-6)


def _disjoint_model(norm, rng, batch=12):
  """Three classes on 4 x 4 x 1 images: f_0 = 0, f_1 = w1.x + b1 on pixels 0..7, f_2 = w2.x + b2
  on pixels 8..15. Moving towards class 1 leaves f_2 unchanged, and back. The distance to
  class k's boundary is r_k = -f_k(x) / ||w_k||_dual (x in [0.3, 0.7] and r_k <= 0.08: the box
  never binds); r_2 = r_1 / 2, but class 1 has the second largest clean logit (|w2| is 4x)."""
  dual = (lambda v: np.abs(v).sum()) if norm == "linf" else np.linalg.norm
  w1 = np.concatenate([rng.normal(size=8), np.zeros(8)])
  w2 = np.concatenate([np.zeros(8), rng.normal(size=8)])
  w2 *= 4 * dual(w1) / dual(w2)
  x = rng.uniform(0.3, 0.7, (batch, 16))
  r1 = rng.uniform(0.04, 0.08, batch) if norm == "linf" else rng.uniform(0.1, 0.2, batch)
  r2 = r1 / 2
  b1 = -x @ w1 - r1 * dual(w1)
  b2 = -x @ w2 - r2 * dual(w2)
  w = jnp.asarray(np.stack([np.zeros(16), w1, w2], 1), jnp.float32)
  b1, b2 = jnp.asarray(b1, jnp.float32), jnp.asarray(b2, jnp.float32)

  def logits(xa, t):
    i = jnp.arange(len(xa)) % batch  # images keep their own biases (tiled batches allowed)
    z = xa.reshape(len(xa), -1) @ w
    return z + jnp.stack([jnp.zeros(len(xa)), b1[i], b2[i]], -1)

  return logits, jnp.asarray(x.reshape(batch, 4, 4, 1), jnp.float32), r1, r2


def _ratio_on_a_line(steps, eta=ETA, alpha_max=0.1, beta=0.9):
  """The paper's iteration where the boundary is a plane the box never reaches: every iterate
  is x + rho d*, d* the projection of x (the iterate's own projection is (1 - rho) d*). Returns
  the smallest rho > 1 (adversarial) it visits: the best distance over r."""
  rho, best = 0.0, np.inf
  for _ in range(steps):
    alpha = min((1 - rho) / (1 - rho + 1), alpha_max)
    rho = (1 - alpha) * (rho + eta * (1 - rho)) + alpha * eta
    if rho > 1:
      best, rho = min(best, rho), beta * rho
  return best


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_targets_follow_the_clean_logit_ranking_and_reach_the_analytic_distance(norm):
  # FAB's first step from x lands at x + eta d*, d* the exact projection onto the (affine)
  # target boundary: adversarial, at eta r; nothing closer than r is adversarial for that
  # target. On this model every iterate stays on the ray x + rho d*, and the paper's updates
  # reduce to a recursion in rho (_ratio_on_a_line: the second step reaches 1.0052 r). targets=1
  # attacks only the second largest clean logit (class 1) even though class 2's boundary is
  # closer; targets=2 finds class 2's (r_2 = r_1 / 2 < r_1 / eta: the class 1 run cannot win).
  rng = np.random.default_rng(2)
  logits, x, r1, r2 = _disjoint_model(norm, rng)
  y = jnp.zeros(len(x), jnp.int32)
  clean = np.asarray(logits(x, 0))
  assert (clean.argmax(1) == 0).all() and (clean[:, 1] > clean[:, 2]).all()
  eps = 0.2 if norm == "linf" else 0.5
  expected = _ratio_on_a_line(10)
  assert 1 < expected < 1.006
  for targets, r, cls in [(1, r1, 1), (2, r2, 2)]:
    x_adv = fab_t(logits, jax.random.key(0), x, y, eps=eps, steps=10, targets=targets,
                  norm=norm)
    dist = _norm(x_adv - x, norm)
    assert (np.asarray(logits(x_adv, 0)).argmax(1) == cls).all(), targets
    assert (dist >= r).all() and (dist <= ETA * r).all(), (targets, dist / r)
    np.testing.assert_allclose(dist / r, expected, rtol=1e-4)


def _affine_multiclass(rng, batch, classes, pixels):
  w = rng.normal(size=(pixels, classes))
  b = rng.normal(size=classes)
  x = rng.uniform(0, 1, (batch, pixels))
  logits = lambda xa, t: xa.reshape(len(xa), -1) @ jnp.asarray(w, jnp.float32) + jnp.asarray(
      b, jnp.float32)
  return logits, w, b, x


def _halfspace_distance(x, w_t, b_t, norm):
  """min ||z - x|| over z in [0, 1]^n with w_t.z + b_t >= 0 (cvxpy); inf if none."""
  v = cp.Variable(len(x))
  problem = cp.Problem(cp.Minimize(_cp_norm(v - x, norm)), [w_t @ v + b_t >= 0, v >= 0, v <= 1])
  problem.solve()
  return problem.value if problem.status == "optimal" else np.inf


@pytest.mark.parametrize("norm,eps", [("linf", 0.06), ("l2", 0.2)])
def test_affine_multiclass_distances_are_within_the_overshoot_of_the_minimum(norm, eps):
  # An affine 4-class model on 4 x 4 x 1 images, x anywhere in [0, 1] (the box binds). Every
  # misclassified z has f_t(z) >= f_y(z) for some t, so no adversarial point lies closer than
  # R = min_t R_t, R_t the distance (in the box) to the halfspace f_t >= f_y. The run towards
  # the minimising t starts with clip(x + eta d*), d* the box-constrained projection: f_t - f_y
  # there is (eta - 1) times the part of the decrease the box does not cut, > 0, so it is
  # adversarial, at distance <= eta R. targets=9 is capped at C - 1 = 3: every t is tried.
  # Hence FAB-T's distance lies in [R, eta R]; images with eta R <= eps are broken, those with
  # R > eps come back clean, as do images misclassified from the start.
  rng = np.random.default_rng(3)
  batch, classes, pixels = 24, 4, 16
  logits, w, b, x = _affine_multiclass(rng, batch, classes, pixels)
  y = np.argmax(x @ w + b, 1)
  y[:2] = (y[:2] + 1) % classes  # misclassified from the start
  R = np.array([min(_halfspace_distance(x[i], w[:, t] - w[:, y[i]], b[t] - b[y[i]], norm)
                    for t in range(classes) if t != y[i]) for i in range(2, batch)])
  xj = jnp.asarray(x.reshape(batch, 4, 4, 1), jnp.float32)
  run = jax.jit(lambda k: fab_t(logits, k, xj, jnp.asarray(y), eps=eps, steps=20, norm=norm))
  x_adv = np.asarray(run(jax.random.key(0)))
  x32 = np.asarray(xj)
  np.testing.assert_array_equal(x_adv[:2], x32[:2])
  x_adv, x32 = x_adv[2:], x32[2:]
  changed = (x_adv != x32).reshape(len(x_adv), -1).any(1)
  dist = _norm(x_adv - x32, norm)
  pred = np.asarray(logits(jnp.asarray(x_adv), 0)).argmax(1)
  assert (pred[changed] != y[2:][changed]).all()
  assert (dist <= eps).all() and x_adv.min() >= 0 and x_adv.max() <= 1
  assert (dist[changed] >= R[changed] * (1 - 1e-4) - 1e-6).all()
  assert (dist[changed] <= ETA * R[changed] * (1 + 1e-4) + 1e-6).all(), dist / R
  must_break, must_fail = ETA * R <= eps * (1 - 1e-3), R > eps * (1 + 1e-3)
  assert must_break.sum() >= 5 and must_fail.sum() >= 5, (must_break.sum(), must_fail.sum())
  assert changed[must_break].all() and not changed[must_fail].any()


def _mlp(seed, pixels=16, hidden=32, classes=5):
  r = np.random.default_rng(seed)
  w1 = jnp.asarray(r.normal(size=(pixels, hidden)) * 2 / np.sqrt(pixels), jnp.float32)
  b1 = jnp.asarray(r.normal(size=hidden) * 0.5, jnp.float32)
  w2 = jnp.asarray(r.normal(size=(hidden, classes)) / np.sqrt(hidden), jnp.float32)
  return lambda xa, t: jnp.tanh(xa.reshape(len(xa), -1) @ w1 + b1) @ w2


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.2)])
def test_mlp_points_are_adversarial_in_the_ball_and_deterministic(norm, eps):
  # A tiny tanh MLP: every changed image is misclassified, within eps and [0, 1]; the same
  # key gives the same result (jit or not); a second restart per target only adds runs (the
  # first restart of each target still starts at x), so it breaks at least the same images,
  # no farther. And FAB-T breaks about as many images as targeted PGD with the same targets and
  # steps (measured over 6 seeds: equal or one image apart; the test asks >= 90 %).
  logits = _mlp(1)
  x = jnp.asarray(np.random.default_rng(101).uniform(0, 1, (48, 4, 4, 1)), jnp.float32)
  y = jnp.argmax(logits(x, 0), -1)
  kwargs = dict(eps=eps, steps=20, targets=4, norm=norm)
  run = jax.jit(lambda k: fab_t(logits, k, x, y, **kwargs))
  x_adv = np.asarray(run(jax.random.key(5)))
  np.testing.assert_array_equal(x_adv, np.asarray(run(jax.random.key(5))))
  if norm == "linf":  # (one compilation more)
    np.testing.assert_allclose(
        x_adv, np.asarray(fab_t(logits, jax.random.key(5), x, y, **kwargs)), atol=1e-6)
  changed = (x_adv != np.asarray(x)).reshape(len(x), -1).any(1)
  dist = _norm(x_adv - np.asarray(x), norm)
  assert (np.asarray(logits(jnp.asarray(x_adv), 0)).argmax(1)[changed] != np.asarray(y)[
      changed]).all()
  assert dist.max() <= eps and x_adv.min() >= 0 and x_adv.max() <= 1
  assert 5 <= changed.sum() <= 43, changed.sum()

  x_two = np.asarray(fab_t(logits, jax.random.key(5), x, y, restarts=2, **kwargs))
  changed_two = (x_two != np.asarray(x)).reshape(len(x), -1).any(1)
  dist_two = _norm(x_two - np.asarray(x), norm)
  clear = changed & (dist < eps - 1e-5)
  assert changed_two[clear].all() and (dist_two[clear] <= dist[clear] + 1e-6).all()

  # Targeted PGD on the margin f_t - f_y towards each of the same 4 targets, in one batch.
  ranked = jnp.argsort(-logits(x, 0), -1)[:, 1:5].T.reshape(-1)
  tiled, y_tiled = jnp.tile(x, (4, 1, 1, 1)), jnp.tile(y, 4)
  pick = lambda z, c: jnp.take_along_axis(z, c[:, None], -1)[:, 0]
  loss = lambda xa, t: pick(logits(xa, t), ranked) - pick(logits(xa, t), y_tiled)
  x_pgd = pgd(loss, jax.random.key(0), tiled, eps=eps, step_size=eps / 4, steps=20, norm=norm,
              random_start=False)
  pgd_broken = np.asarray(jnp.argmax(logits(x_pgd, 0), -1) != y_tiled).reshape(4, -1).any(0)
  assert changed.sum() >= 0.9 * pgd_broken.sum(), (changed.sum(), pgd_broken.sum())


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.4)])
def test_calls_are_numbered_and_restarts_start_at_half_the_best_distance(norm, eps):
  # One clean call, then a gradient call and a check per step, per target and restart: all
  # with distinct t (a randomized defense draws afresh per call). A restart starts on the
  # sphere of radius min(best distance so far, eps) / 2 around x (x in [0.3, 0.7]: no pixel
  # is clipped); the best distance after the first run of target 1 is what targets=1,
  # restarts=1 returns (eps where it returns x).
  seen = {}
  base = _mlp(2)

  def logits(xa, t):
    jax.debug.callback(lambda v, z: seen.setdefault(int(v), np.asarray(z)), t, xa)
    return base(xa, t)

  x = jnp.asarray(np.random.default_rng(0).uniform(0.3, 0.7, (12, 4, 4, 1)), jnp.float32)
  y = jnp.argmax(base(x, 0), -1)
  steps = 3
  first = np.asarray(fab_t(base, jax.random.key(0), x, y, eps=eps, steps=steps, targets=1,
                           norm=norm))
  best = _norm(first - np.asarray(x), norm)
  broken = (first != np.asarray(x)).reshape(len(x), -1).any(1)
  assert 0 < broken.sum() < len(x), broken.sum()
  jax.block_until_ready(fab_t(logits, jax.random.key(0), x, y, eps=eps, steps=steps,
                              targets=2, restarts=2, norm=norm))
  jax.effects_barrier()
  assert sorted(seen) == list(range(1 + 2 * 2 * steps * 2))
  restart_start = seen[1 + 2 * steps]  # run 1 (target 1, restart 2), first gradient call
  radius = _norm(restart_start - np.asarray(x), norm)
  np.testing.assert_allclose(radius, np.where(broken, best, eps) / 2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs,name", [
    (dict(eps=-0.1), "eps"), (dict(eps=1.5), "eps"), (dict(steps=0), "steps"),
    (dict(targets=0), "targets"), (dict(norm="l1"), "norm"), (dict(restarts=0), "restarts"),
    (dict(alpha_max=1.5), "alpha_max"), (dict(eta=0.9), "eta"), (dict(beta=0.0), "beta"),
    (dict(beta=1.2), "beta"), (dict(steps=2.5), "steps")])
def test_bad_arguments_raise(kwargs, name):
  x = jnp.full((2, 4, 4, 1), 0.5)
  args = dict(eps=0.1) | kwargs
  with pytest.raises(ValueError, match=name):
    fab_t(_mlp(0), jax.random.key(0), x, jnp.zeros(2, jnp.int32), **args)


def test_bad_inputs_raise():
  logits = _mlp(0)
  x = jnp.full((2, 4, 4, 1), 0.5)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="^y"):
    fab_t(logits, key, x, jnp.zeros(3, jnp.int32), eps=0.1)
  with pytest.raises(ValueError, match="^y"):
    fab_t(logits, key, x, jnp.zeros(2), eps=0.1)
  with pytest.raises(ValueError, match="^y"):
    fab_t(logits, key, x, jnp.asarray([0, 5]), eps=0.1)  # 5 classes: labels 0 .. 4
  with pytest.raises(ValueError, match="^x"):
    fab_t(logits, key, x + 1, jnp.zeros(2, jnp.int32), eps=0.1)
  with pytest.raises(ValueError, match="logits_fn"):
    fab_t(lambda xa, t: logits(xa, t)[:, :1], key, x, jnp.zeros(2, jnp.int32), eps=0.1)
  with pytest.raises(ValueError, match="norm"):
    project_hyperplane_box(x, x, jnp.zeros(2), "l1")
  with pytest.raises(ValueError, match="^w"):
    project_hyperplane_box(x, x[:, 0], jnp.zeros(2))
  with pytest.raises(ValueError, match="^b"):
    project_hyperplane_box(x, x, jnp.zeros(3))
