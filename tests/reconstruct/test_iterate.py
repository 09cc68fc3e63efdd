"""The continuous-batching driver against a solver whose iteration counts are known analytically."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax.reconstruct import iterate


def _halving(threshold):
  # x -> x / 2 until |x| < threshold: a matrix starting at x0 stops after
  # k = max(1, ceil(log2(|x0| / threshold))) steps (exactly, for powers of two).
  def init(inputs):
    return inputs

  def step(inputs, state):
    new = state / 2
    return new, jnp.all(jnp.abs(new) < threshold, axis=(-2, -1))

  return init, step


def _expected(x0, threshold, max_iters):
  out = []
  for a in x0:
    k = 0
    while True:
      k += 1
      a = a / 2
      if np.all(np.abs(a) < threshold) or k == max_iters:
        break
    out.append(a)
  return np.stack(out)


@pytest.mark.parametrize("slots", [1, 3, 7, 100])
def test_each_matrix_runs_its_own_iterations(slots):
  # Starting values 2^0 .. 2^9: 1 to 10 halvings; max_iters cuts the largest.
  x0 = np.stack([np.full((2, 3), 2.0 ** e) for e in np.random.default_rng(0).permutation(10)])
  init, step = _halving(threshold=1.0)
  out = iterate.solve(init, step, jnp.asarray(x0, jnp.float32), max_iters=8, slots=slots)
  np.testing.assert_array_equal(out, _expected(x0, 1.0, 8))


def test_pytree_inputs_and_states():
  def init(inputs):
    x, scale = inputs
    return {"value": x * scale[:, None, None], "steps": jnp.zeros(x.shape[0])}

  def step(inputs, state):
    new = {"value": state["value"] / 2, "steps": state["steps"] + 1}
    return new, state["steps"] + 1 >= inputs[1]

  scale = jnp.asarray([1.0, 3.0, 2.0, 5.0])
  out = iterate.solve(init, step, (jnp.ones((4, 2, 2)), scale), max_iters=10, slots=2)
  np.testing.assert_array_equal(out["steps"], [1, 3, 2, 5])
  np.testing.assert_allclose(out["value"][:, 0, 0], scale / 2 ** scale)
  # output= returns (and writes out) only part of the state, in values and derivatives.
  steps = iterate.solve(init, step, (jnp.ones((4, 2, 2)), scale), max_iters=10, slots=2,
                        output=lambda s: s["steps"])
  np.testing.assert_array_equal(steps, [1, 3, 2, 5])
  grad = jax.grad(lambda x: jnp.sum(iterate.solve(init, step, (x, scale), max_iters=10, slots=2,
                                                  output=lambda s: s["value"])))(jnp.ones((4, 2, 2)))
  np.testing.assert_allclose(grad[:, 0, 0], scale / 2 ** scale)


def test_gradient_follows_the_iterations():
  # d(x0 / 2^k)/dx0 = 2^-k with k the matrix's own iteration count.
  x0 = jnp.asarray([[[1.5]], [[6.0]], [[40.0]]])
  init, step = _halving(threshold=1.0)
  loss = lambda a: jnp.sum(iterate.solve(init, step, a, max_iters=20, slots=2))
  np.testing.assert_allclose(jax.grad(loss)(x0)[:, 0, 0], [0.5, 0.125, 1 / 64])
  np.testing.assert_allclose(jax.jit(jax.grad(loss))(x0)[:, 0, 0], [0.5, 0.125, 1 / 64])


def test_vmap_over_an_extra_axis():
  x0 = jnp.asarray(np.stack([np.full((3, 1, 1), v) for v in (1.5, 12.0)]))
  init, step = _halving(threshold=1.0)
  out = jax.vmap(lambda a: iterate.solve(init, step, a, max_iters=20, slots=2))(x0)
  np.testing.assert_allclose(out[:, 0, 0, 0], [0.75, 0.75])
