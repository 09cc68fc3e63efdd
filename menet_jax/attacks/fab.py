"""FAB-T: the targeted Fast Adaptive Boundary attack under an l-inf or l2 norm (Croce & Hein,
"Minimally distorted adversarial examples with a fast adaptive boundary attack", ICML 2020,
Algorithm 1, in the targeted version AutoAttack runs).

FAB looks for the adversarial example closest to x. Towards a target class t it linearises
g = f_t - f_y at the iterate x_k (one forward and one backward pass: the vector-Jacobian
product of the logits with the cotangent e_t - e_y),

    pi_k = {z : w.z + b = 0},   w = grad g(x_k),   b = g(x_k) - w.x_k,

projects both the iterate and the clean point onto pi_k intersected with the box [0, 1]^n,

    d_k = P(x_k),  d_0 = P(x),  P(p) = argmin ||d||_p  s.t.  w.(p + d) + b = 0,  p + d in [0, 1]^n,

and takes a step biased towards x, overshooting the linearised boundary by eta:

    alpha = min(||d_k|| / (||d_k|| + ||d_0||), alpha_max)
    x_{k+1} = clip((1 - alpha)(x_k + eta d_k) + alpha (x + eta d_0), 0, 1).

When x_{k+1} is misclassified (argmax != y, any class: AutoAttack's test) it replaces the
best point if it is closer to x, and the iterate steps back towards x: x_{k+1} <- x + beta
(x_{k+1} - x). The first run of every target starts at x; further restarts start at
x + r u / ||u||, r = min(best distance so far, eps) / 2, u uniform in [-1, 1]^n (l-inf) or
Gaussian (l2), clipped to [0, 1]: the rule of the authors' first FAB code, which carries the
best distance across restarts. AutoAttack's, r = eps / 2, is the same on every image it still
attacks, since it stops attacking an image once it is broken within eps.
Target k = 2 .. targets + 1 is the class of the k-th largest clean logit; AutoAttack's
standard FAB-T runs 9 targets, 1 restart and 100 steps with alpha_max = 0.1, eta = 1.05 and
beta = 0.9, the defaults here.

The projection (`project_hyperplane_box`). Let c = w.p + b and s_i = sign(c) sign(w_i): the
cheapest way to reach the plane moves coordinate i in the direction -s_i, which has room
rho_i = p_i (s_i > 0) or 1 - p_i (s_i < 0) before it leaves the box. For l-inf,

    ||d||_inf <= r  reaches at most  h(r) = sum_i |w_i| min(r, rho_i)  of the needed |c|,

so the radius is r* = min {r : h(r) = |c|} and d_i = -s_i min(r*, rho_i). For l2 the KKT
conditions give d = clip(-lambda w, -p, 1 - p) for a scalar lambda >= 0 (c > 0), i.e.

    d_i = -s_i min(lambda |w_i|, rho_i),   sum_i w_i^2 min(lambda, rho_i / |w_i|) = |c|.

Both are the root of a concave, piecewise linear, non-decreasing h(lam) = sum_i a_i
min(lam, tau_i): with the breakpoints tau sorted, h at each is a cumulative sum, the first
one reaching |c| brackets the root and h is linear in between (O(n log n) per example). When
the box keeps the plane out of reach (h(max tau) < |c|), the projection returns the box's
point closest to the plane, d_i = -s_i rho_i (the unique minimiser of |w.(p + d) + b| over the
box, with d_i = 0 where w_i = 0). Under l-inf the minimiser is not unique (coordinates with
room to spare may take any value up to r*); this one is the authors' implementation's.

What the function returns: per image, the closest misclassified point found over all
targets and restarts if its distance is at most eps, otherwise x itself (an image that is
already misclassified is its own closest adversarial example, at distance 0). AutoAttack
instead keeps the first point within eps it finds; the images broken are the same, up to the
random starts' draws. Each step costs two forward passes and one backward pass (the gradient,
and the test of x_{k+1}), as in AutoAttack; restarts and targets run one after another.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax.attacks.pgd import NORMS, check_inputs
from menet_jax.utils import validation

LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


def _flat_norm(v: jax.Array, norm: str) -> jax.Array:
  """(B, n) -> (B,) the `norm` of each row."""
  return jnp.max(jnp.abs(v), -1) if norm == "linf" else jnp.sqrt(jnp.sum(v * v, -1))


def _breakpoint_root(a: jax.Array, tau: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The smallest lam >= 0 with h(lam) = sum_i a_i min(lam, tau_i) >= c, per row.

  Args:
    a: (B, n) slopes >= 0.
    tau: (B, n) breakpoints >= 0.
    c: (B,) targets >= 0.

  Returns:
    lam (B,) and feasible (B,) bool: whether h reaches c at all (h(max tau) >= c).
  """
  n = a.shape[-1]
  tau_s, a_s = jax.lax.sort((tau, a), dimension=-1, num_keys=1)
  below = jnp.cumsum(a_s * tau_s, -1)  # sum_{j <= k} a_j tau_j
  from_k = jnp.flip(jnp.cumsum(jnp.flip(a_s, -1), -1), -1)  # sum_{j >= k} a_j
  after_k = jnp.concatenate([from_k[:, 1:], jnp.zeros_like(from_k[:, :1])], -1)
  h = below + tau_s * after_k  # h(tau_(k))
  k = jnp.sum(h < c[:, None], -1)  # h rises, so the root lies in [tau_(k-1), tau_(k)]
  feasible = k < n
  pick = lambda v, i: jnp.take_along_axis(v, jnp.clip(i, 0, n - 1)[:, None], -1)[:, 0]
  first = k == 0
  lo = jnp.where(first, 0.0, pick(tau_s, k - 1))
  below_lo = jnp.where(first, 0.0, pick(below, k - 1))
  slope = pick(from_k, k)
  lam = (c - below_lo) / jnp.maximum(slope, jnp.finfo(a.dtype).tiny)
  return jnp.clip(lam, lo, pick(tau_s, k)), feasible


def _project(p: jax.Array, w: jax.Array, b: jax.Array, norm: str) -> jax.Array:
  """`project_hyperplane_box` on flat rows, without argument checks."""
  c = jnp.sum(w * p, -1) + b
  s = jnp.where(c >= 0, 1.0, -1.0).astype(p.dtype)[:, None] * jnp.sign(w)
  room = jnp.where(w != 0, jnp.maximum(jnp.where(s > 0, p, 1.0 - p), 0.0), 0.0)
  abs_w = jnp.abs(w)
  if norm == "linf":
    lam, feasible = _breakpoint_root(abs_w, room, jnp.abs(c))
    move = jnp.minimum(lam[:, None], room)
  else:
    tau = jnp.where(w != 0, room / jnp.maximum(abs_w, jnp.finfo(p.dtype).tiny), 0.0)
    lam, feasible = _breakpoint_root(abs_w * abs_w, tau, jnp.abs(c))
    move = jnp.minimum(lam[:, None] * abs_w, room)
  return -s * jnp.where(feasible[:, None], move, room)


def project_hyperplane_box(x: jax.Array, w: jax.Array, b: jax.Array,
                           norm: str = "linf") -> jax.Array:
  """Per example, the shortest step d onto the plane w.(x + d) + b = 0 with x + d in [0, 1].

  Where the box keeps the plane out of reach, d moves to the box's point closest to the plane
  (smallest |w.(x + d) + b|; d = 0 where w = 0). Under l-inf the shortest step is not unique;
  this one moves every coordinate the plane needs by min(r*, its room), r* the l-inf distance.

  Args:
    x: (B, ...) float points in [0, 1].
    w: (B, ...) normals, the shape of x.
    b: (B,) offsets.
    norm: "linf" or "l2".

  Returns:
    (B, ...) the steps d, with x + d in [0, 1].
  """
  validation.floating_array("x", x, min_ndim=1)
  validation.choice("norm", norm, NORMS)
  if getattr(w, "shape", None) != x.shape:
    raise ValueError(f"w must have the shape of x {tuple(x.shape)}, got {getattr(w, 'shape', w)}")
  if getattr(b, "shape", None) != x.shape[:1]:
    raise ValueError(f"b must have shape {tuple(x.shape[:1])}, got {getattr(b, 'shape', b)}")
  flat = lambda v: jnp.reshape(v, (x.shape[0], -1)).astype(x.dtype)
  return _project(flat(x), flat(w), jnp.asarray(b, x.dtype), norm).reshape(x.shape)


def fab_t(logits_fn: LogitsFn, key: jax.Array, x: jax.Array, y: jax.Array, *, eps: float,
          steps: int = 100, targets: int = 9, norm: str = "linf", restarts: int = 1,
          alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9) -> jax.Array:
  """Targeted FAB (FAB-T) on a batch: the closest adversarial example it finds, if within eps.

  Args:
    logits_fn: (x_adv (B, ...), t int32 scalar) -> (B, C) logits; t numbers the calls (0 for
      the clean logits, then 1, 2, ... for each step's gradient and check, across targets and
      restarts), so a randomized defense can draw afresh per call.
    key: PRNG key for the random starts of restarts 2, 3, ... (the first starts at x).
    x: (B, ...) float clean inputs in [0, 1].
    y: (B,) int labels in [0, C).
    eps: radius in [0, 1] (l-inf) or [0, sqrt(pixels)] (l2) of the threat model.
    steps: iterations per target and restart, >= 1 (AutoAttack: 100).
    targets: target classes tried, >= 1 (AutoAttack: 9), capped at C - 1: the classes of the
      2nd .. (targets + 1)-th largest clean logits.
    norm: "linf" or "l2", the distance minimised.
    restarts: runs per target, >= 1 (AutoAttack: 1).
    alpha_max: largest bias of a step towards x, in [0, 1].
    eta: overshoot of the linearised boundary, >= 1.
    beta: backward step towards x after a success, in (0, 1].

  Returns:
    (B, ...) per image the closest misclassified point found if its `norm` distance to x is
    at most eps, otherwise x: always in the eps-ball and [0, 1].
  """
  eps = check_inputs(x, eps, norm)
  steps = validation.integer_in("steps", steps, 1)
  targets = validation.integer_in("targets", targets, 1)
  restarts = validation.integer_in("restarts", restarts, 1)
  alpha_max = validation.number_in("alpha_max", alpha_max, 0.0, 1.0)
  eta = validation.number_in("eta", eta, 1.0, math.inf)
  beta = validation.number_in("beta", beta, 0.0, 1.0, lo_open=True)
  batch = x.shape[0]
  y_dtype = getattr(y, "dtype", None)
  if getattr(y, "shape", None) != (batch,) or not np.issubdtype(y_dtype, np.integer):
    raise ValueError(f"y must be integer labels of shape ({batch},), got "
                     f"{getattr(y, 'shape', type(y).__name__)} of dtype {y_dtype}")
  clean = logits_fn(x, jnp.int32(0))
  if clean.ndim != 2 or clean.shape[0] != batch or clean.shape[1] < 2:
    raise ValueError(f"logits_fn must return ({batch}, C >= 2) logits, got {clean.shape}")
  classes = clean.shape[1]
  validation.values_in("y", y, 0, classes - 1)
  targets = min(targets, classes - 1)
  runs = targets * restarts

  flat = lambda v: v.reshape(batch, -1)
  unflat = lambda v: v.reshape(x.shape)
  x_flat = flat(x)
  dtype = x.dtype
  y = y.astype(jnp.int32)
  # Run j attacks target j // restarts (its rank among the clean logits) from start j % restarts.
  ranked = jnp.argsort(-clean, axis=-1)[:, 1:targets + 1].astype(jnp.int32)
  run_targets = jnp.repeat(ranked.T, restarts, axis=0)  # (runs, B)
  run_index = jnp.arange(runs, dtype=jnp.int32)

  def distance(v):
    return _flat_norm(v, norm)

  def random_start(k, radius):
    if norm == "linf":
      u = jax.random.uniform(k, x_flat.shape, dtype, -1.0, 1.0)
    else:
      u = jax.random.normal(k, x_flat.shape, dtype)
    u = u / jnp.maximum(distance(u), jnp.finfo(dtype).tiny)[:, None]
    return jnp.clip(x_flat + radius[:, None] * u, 0.0, 1.0)

  def run(carry, inputs):
    best_x, best_d = carry
    target, j = inputs
    cotangent = jax.nn.one_hot(target, classes, dtype=clean.dtype) - jax.nn.one_hot(
        y, classes, dtype=clean.dtype)
    radius = jnp.minimum(best_d, eps) / 2
    start = jnp.where(j % restarts == 0, x_flat,
                      random_start(jax.random.fold_in(key, j), radius))

    def step(i, state):
      xk, best_x, best_d = state
      t = 1 + 2 * (j * steps + i)
      logits, vjp = jax.vjp(lambda z: logits_fn(unflat(z), t), xk)
      w = vjp(cotangent)[0].astype(dtype)
      g = jnp.sum(logits * cotangent, -1).astype(dtype)
      b = g - jnp.sum(w * xk, -1)
      d = _project(jnp.concatenate([xk, x_flat]), jnp.concatenate([w, w]),
                   jnp.concatenate([b, b]), norm)
      d_k, d_0 = d[:batch], d[batch:]
      n_k, n_0 = distance(d_k), distance(d_0)
      alpha = jnp.minimum(n_k / jnp.maximum(n_k + n_0, jnp.finfo(dtype).tiny), alpha_max)
      alpha = jnp.where(n_k + n_0 > 0, alpha, alpha_max)[:, None]
      new = jnp.clip((1 - alpha) * (xk + eta * d_k) + alpha * (x_flat + eta * d_0), 0.0, 1.0)
      adversarial = jnp.argmax(logits_fn(unflat(new), t + 1), -1) != y
      dist = distance(new - x_flat)
      closer = adversarial & (dist < best_d)
      best_x = jnp.where(closer[:, None], new, best_x)
      best_d = jnp.where(closer, dist, best_d)
      new = jnp.where(adversarial[:, None], x_flat + beta * (new - x_flat), new)
      return new, best_x, best_d

    _, best_x, best_d = jax.lax.fori_loop(0, steps, step, (start, best_x, best_d))
    return (best_x, best_d), None

  misclassified = jnp.argmax(clean, -1) != y
  init = (x_flat, jnp.where(misclassified, 0.0, jnp.inf).astype(dtype))
  (best_x, best_d), _ = jax.lax.scan(run, init, (run_targets, run_index))
  return unflat(jnp.where((best_d <= eps)[:, None], best_x, x_flat))
