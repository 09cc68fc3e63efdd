"""The CPU eigensolver of `spectral.eigh`: batched Householder + QL in C++, through the XLA FFI.

The kernel (batched_eigh.cc, built by `pip install`, see setup.py) decomposes a batch of
small symmetric matrices with the batch vectorised across SIMD lanes, and splits the
batch over threads it owns and joins; it never uses or waits on XLA's thread pool, so it
keeps the no-hang guarantee that decomposing one matrix at a time gave
(tests/test_no_hang.py). It returns what `jnp.linalg.eigh` returns: ascending
eigenvalues and orthonormal eigenvectors of the symmetric part, to the accuracy of a
backward-stable solver in the input's precision.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from menet_jax.reconstruct import _batched_eigh

# The kernel indexes a block of k x k matrices with 32-bit ints (8 float32 lanes).
MAX_SIZE = 8192

_TARGETS = {jnp.dtype(dtype): f"menet_jax_batched_eigh_{dtype}" for dtype in ("float32", "float64")}

for _dtype, _capsule in _batched_eigh.handlers().items():
  jax.ffi.register_ffi_target(_TARGETS[jnp.dtype(_dtype)], _capsule, platform="cpu")


def isa() -> str:
  """The compiled version in use: "avx2" (AVX2 + FMA) or "baseline"; chosen for the CPU when
  the library loads, or forced to "baseline" by MENET_JAX_EIGH_ISA=baseline."""
  return _batched_eigh.isa()


def eigh(g: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Eigenvalues and eigenvectors of symmetric matrices on CPU.

  Args:
    g: (..., k, k) float32 or float64, k <= MAX_SIZE; only its symmetric part (g + g^T) / 2
      is used.

  Returns:
    lambda: (..., k) ascending; q: (..., k, k) with the eigenvectors as columns.
  """
  if g.ndim < 2 or g.shape[-1] != g.shape[-2]:
    raise ValueError(f"g must be (..., k, k), got shape {g.shape}")
  if g.shape[-1] > MAX_SIZE:
    k = g.shape[-1]
    raise ValueError(f"g must be at most {MAX_SIZE} x {MAX_SIZE}, got {k} x {k}")
  if jnp.dtype(g.dtype) not in _TARGETS:
    raise TypeError(f"g must be float32 or float64, got {g.dtype}")
  call = jax.ffi.ffi_call(
      _TARGETS[jnp.dtype(g.dtype)],
      (jax.ShapeDtypeStruct(g.shape[:-1], g.dtype), jax.ShapeDtypeStruct(g.shape, g.dtype)),
      vmap_method="broadcast_all")
  lam, q = call(g)
  return lam, q
