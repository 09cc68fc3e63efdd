"""Runs an iterative per-matrix solver over a batch in which every matrix stops on its own.

A batch solved in lock-step costs as many iterations as its slowest matrix: on
200 CIFAR-10 matrices the nuclear-norm solver needed 25 iterations for the
median matrix and 45 for the slowest (default tol). `solve` instead keeps a fixed number of slots
busy (continuous batching): when a matrix converges, its result is written out
and the next pending matrix takes its slot, so the work follows the mean
iteration count. Each matrix goes through exactly the iterations it would go
through alone, so the results do not depend on the batch or the slot count.

A `while_loop` cannot be differentiated in reverse mode, so `solve` carries a
custom JVP that differentiates the same iterations run in lock-step by a `scan`
over the whole batch, with each matrix frozen once it has converged.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

# init(inputs) -> state; step(inputs, state) -> (state, converged). Both act on
# pytrees whose leaves share a leading batch dimension; init must be cheap (it
# runs for the slots refilled at each iteration).
Init = Callable[[Any], Any]
Step = Callable[[Any, Any], tuple[Any, jax.Array]]

_tree_map = jax.tree_util.tree_map


def default_slots() -> int:
  """Slots kept busy: few on CPU, where 128 matrices already fill the eigensolver's SIMD
  lanes and threads (16 blocks of 8) and a short tail matters more; many on accelerators,
  which need wide batches."""
  return 128 if jax.default_backend() == "cpu" else 4096


def solve(init: Init, step: Step, inputs: Any, *, max_iters: int, slots: int | None = None,
          output: Callable[[Any], Any] | None = None) -> Any:
  """Iterates `step` on every matrix until it reports convergence or `max_iters` steps.

  Args:
    init: initial state from the inputs, batched.
    step: one iteration, batched; returns the new state and a (B,) bool of
      matrices that have converged (their new state is final).
    inputs: pytree of arrays with leading dimension N, one entry per matrix.
    max_iters: static cap on the iterations of each matrix.
    slots: matrices iterated at once (static); default `default_slots()`.
    output: the part of a (batched) state to return; default: all of it. Only that part
      is written out as matrices finish, so solvers that carry more than their answer
      (momentum, step counters) pass it.

  Returns:
    output(final state) of every matrix, leading dimension N.
  """
  slots = default_slots() if slots is None else slots
  output = (lambda state: state) if output is None else output

  @jax.custom_jvp
  def run(inputs):
    return _continuous(init, step, inputs, max_iters, slots, output)

  @run.defjvp
  def _run_jvp(primals, tangents):
    return jax.jvp(lambda i: output(_lockstep(init, step, i, max_iters)), primals, tangents)

  return run(inputs)


def _where(mask: jax.Array, a: Any, b: Any) -> Any:
  def pick(x, y):
    return jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim)), x, y)
  return _tree_map(pick, a, b)


def _take(tree: Any, index: jax.Array) -> Any:
  return _tree_map(lambda a: a[index], tree)


def _lockstep(init, step, inputs, max_iters):
  n = jax.tree_util.tree_leaves(inputs)[0].shape[0]

  def advance(carry):
    state, done = carry
    new, converged = step(inputs, state)
    return _where(done, state, new), done | converged

  def body(carry, _):
    return jax.lax.cond(jnp.all(carry[1]), lambda c: c, advance, carry), None

  (state, _), _ = jax.lax.scan(body, (init(inputs), jnp.zeros(n, bool)), None, length=max_iters)
  return state


def _continuous(init, step, inputs, max_iters, slots, output):
  n = jax.tree_util.tree_leaves(inputs)[0].shape[0]
  s = min(slots, n)
  # slot -> matrix index; n marks an empty slot (and makes its writes drop).
  index = jnp.arange(s)
  slot_inputs = _take(inputs, index)
  state = init(slot_inputs)
  results = _tree_map(lambda a: jnp.zeros((n,) + a.shape[1:], a.dtype), output(state))
  carry = (index, slot_inputs, state, jnp.zeros(s, jnp.int32), jnp.asarray(s), results)

  def pending(carry):
    return jnp.any(carry[0] < n)

  # Matrices retire in groups of at most `group` slots: the gathers, scatters and `init`
  # of a refill touch those rows only, not all s, since on CPU a full-width pass over the
  # slots at every retirement cost about 7 % of Soft-Impute's time (docs/benchmarks.md).
  group = max(1, s // 16)

  def retire_group(carry):
    finished, (index, slot_inputs, state, iters, next_index, results) = carry
    (slot,) = jnp.nonzero(finished, size=group, fill_value=s)  # ascending; s: none
    valid = slot < s
    row = jnp.where(valid, slot, 0)
    target = jnp.where(valid, index[row], n)
    results = _tree_map(lambda r, v: r.at[target].set(v[row], mode="drop"), results,
                        output(state))
    # Retired slots take the next pending matrices, in slot order.
    incoming = next_index + jnp.cumsum(valid) - 1
    refill = valid & (incoming < n)
    new_inputs = _take(inputs, jnp.where(refill, incoming, 0))
    into = jnp.where(refill, slot, s)
    put = lambda a, b: a.at[into].set(b, mode="drop")
    slot_inputs = _tree_map(put, slot_inputs, new_inputs)
    state = _tree_map(put, state, init(new_inputs))
    iters = iters.at[into].set(0, mode="drop")
    retired = jnp.where(valid, slot, s)
    index = index.at[retired].set(jnp.where(refill, incoming, n), mode="drop")
    finished = finished.at[retired].set(False, mode="drop")
    return finished, (index, slot_inputs, state, iters, next_index + jnp.sum(valid), results)

  def retire_and_refill(finished, carry):
    return jax.lax.while_loop(lambda c: jnp.any(c[0]), retire_group, (finished, carry))[1]

  def body(carry):
    index, slot_inputs, state, iters, next_index, results = carry
    state, converged = step(slot_inputs, state)
    iters = iters + 1
    finished = (index < n) & (converged | (iters >= max_iters))
    carry = (index, slot_inputs, state, iters, next_index, results)
    # Most iterations finish no matrix: skip the gathers and scatters then.
    return jax.lax.cond(jnp.any(finished), retire_and_refill, lambda _, c: c, finished, carry)

  return jax.lax.while_loop(pending, body, carry)[5]
