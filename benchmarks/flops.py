"""The arithmetic a reconstructor executes, and the rate the host's matrix multiply reaches.

A benchmark row's achieved GFLOP/s is the dense linear algebra a method executed, counted in a
separate, untimed run, over the time its timed runs took; the host's measured matmul rate in
the same process is the machine's limit it is set against. Counted, at every call of
`reconstruct.spectral`'s three kernels, with the standard dense counts:

  matmul              (..., m, k) @ (..., k, n):                 2 m k n per matrix
  eigh                (..., k, k) symmetric, values and vectors: 9 k^3 (Golub & Van Loan's count
                                                                 for the tridiagonal QR route)
  orthonormal_basis   (..., k, b) Householder QR and its Q:      4 k b^2 - 4 b^3 / 3

Every matrix product, decomposition and QR of the reconstructors goes through these (the
spectral filters, the solvers' subspace steps), so the count covers their dense arithmetic;
elementwise work (masks, thresholds, the solvers' bookkeeping) is not counted. Iterative
solvers keep `iterate.default_slots()` matrices in flight, and idle slots at the end of a
batch are counted too: the count is what the machine did, not the least the answer needs.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from typing import Callable, Iterator

import jax
import jax.numpy as jnp

from menet_jax.reconstruct import spectral


def _batch(shape: tuple[int, ...]) -> int:
  return math.prod(shape[:-2])


def _matmul_flops(a: jax.Array, b: jax.Array) -> float:
  shape = jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2])
  m, k = a.shape[-2:]
  return 2.0 * math.prod(shape) * m * k * b.shape[-1]


def _eigh_flops(g: jax.Array) -> float:
  return 9.0 * _batch(g.shape) * g.shape[-1] ** 3


def _qr_flops(y: jax.Array) -> float:
  k, b = y.shape[-2:]
  return _batch(y.shape) * (4.0 * k * b * b - 4.0 * b**3 / 3)


@contextlib.contextmanager
def counting() -> Iterator[Callable[[], float]]:
  """Counts the flops of `spectral`'s kernels run inside the block; yields a function that
  returns the count so far (call it after the outputs are ready).

  The kernels are swapped for counting versions and JAX's caches cleared on entry and exit,
  so functions traced inside the block count and those traced elsewhere do not. Each kernel
  adds its count when it executes (a host callback), so a kernel inside a loop counts once
  per iteration it runs.
  """
  total = [0.0]
  originals = {name: getattr(spectral, name) for name in ("matmul", "eigh", "orthonormal_basis")}

  def counted(name, flops):
    original = originals[name]

    def fn(*args):
      out = original(*args)
      # The callback takes an output element, so it runs when (and as often as) the kernel does.
      first = jax.tree_util.tree_leaves(out)[0]
      jax.debug.callback(lambda _, f=flops(*args): total.__setitem__(0, total[0] + f),
                         first.reshape(-1)[0])
      return out
    return fn

  replacements = {"matmul": counted("matmul", _matmul_flops),
                  "eigh": counted("eigh", _eigh_flops),
                  "orthonormal_basis": counted("orthonormal_basis", _qr_flops)}
  jax.clear_caches()
  for name, fn in replacements.items():
    setattr(spectral, name, fn)
  try:
    yield lambda: total[0]
  finally:
    for name, fn in originals.items():
      setattr(spectral, name, fn)
    jax.clear_caches()


def matmul_rate(n: int = 2048, batch: int = 1, repeats: int = 5, dtype=jnp.float32) -> float:
  """The host's float32 matmul rate in GFLOP/s: the median of `repeats` timed products of
  (batch, n, n) matrices, after one untimed call (compilation)."""
  a = jax.random.normal(jax.random.key(0), (batch, n, n), dtype)
  fn = jax.jit(lambda x: spectral.matmul(x, x))
  jax.block_until_ready(fn(a))
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(a))
    seconds.append(time.perf_counter() - start)
  return 2.0 * batch * n**3 / statistics.median(seconds) / 1e9


def per_item(fn: Callable[..., jax.Array], *args: jax.Array) -> float:
  """Flops `fn(*args)` executes per leading-axis item of args[0], counted in a fresh trace."""
  with counting() as count:
    jax.block_until_ready(jax.jit(fn)(*args))
    jax.effects_barrier()
    return count() / args[0].shape[0]
