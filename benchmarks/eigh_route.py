"""What the CPU decomposition route of spectral.eigh buys, reconstructor by reconstructor.

  python -m benchmarks.eigh_route --data_dir=../shared/data

On CPU, `spectral.eigh` hands the whole batch to `batched_eigh` (C++, the batch
vectorised across SIMD lanes), not to jaxlib's batched LAPACK kernel, which blocks
XLA's thread pool and can hang (tests/test_no_hang.py). This script measures every
reconstructor with three routes in one process, interleaved: the library's, LAPACK one
matrix at a time (the library's route until issue 29), and the batched LAPACK kernel
(`jnp.linalg.eigh` on the whole batch), the last two patched in for the comparison only;
the batched LAPACK side runs from the main thread of a one-device program, where it
cannot deadlock. Each compiles separately (AOT), outputs are checked against the
library's, and rates are medians over `--rounds` passes.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import summary
from menet_jax import data, reconstruct
from menet_jax.reconstruct import masks, spectral
from menet_jax.utils import machine
from references.per_image import PARAMS

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data", "Directory with cifar-10-batches-py.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 500, "Images per pass (one jitted call).")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved passes of each route.")
_METHODS = flags.DEFINE_list("methods", ["eigh", "usvt", "soft_impute", "nuclear_norm", "splic"],
                             "Methods to measure; eigh: the decomposition alone, of the masked "
                             "images' Gram matrices (eigenvalues compared).")

_ROUTES = {"batched_eigh (library)": spectral.eigh,
           "LAPACK one at a time": spectral.one_at_a_time(lambda g: tuple(jnp.linalg.eigh(g))),
           "batched LAPACK kernel": jnp.linalg.eigh}


def _masked_gram(x, mask):
  """The Gram matrices the reconstructors decompose first: of the zero-filled observations."""
  return spectral.gram(x * mask)


def _compiled(name, route, x, mask):
  """`name` compiled with `route` as the decomposition (caches cleared so that it is retraced)."""
  saved = spectral.eigh
  spectral.eigh = route
  try:
    jax.clear_caches()
    if name == "eigh":
      fn = jax.jit(lambda a, b: spectral.eigh(_masked_gram(a, b))[0])
    else:
      fn = jax.jit(lambda a, b: reconstruct.get(name)(a, b, **PARAMS.get(name, {})))
    return fn.lower(x, mask).compile()
  finally:
    spectral.eigh = saved


def main(argv):
  del argv
  images, _ = data.load("cifar10", f"test[:{_NUM_IMAGES.value}]", _DATA_DIR.value)
  x = masks.to_matrices(jnp.asarray(images, jnp.float32) / 255 * 2 - 1, "concat")
  mask = masks.bernoulli(jax.random.key(0), x.shape, 0.5)
  print(f"# machine: {machine.describe()}")
  print(f"# {len(x)} CIFAR-10 test images, 32 x 96 concat, p = 0.5, float32, one call per pass\n")
  names = list(_ROUTES)
  library, others = names[0], names[1:]
  rows = ["| method | " + " | ".join(f"{r} img/s" for r in names) + " | "
          + " | ".join(f"ratio to {r}" for r in others) + " | max abs diff |",
          "|---" * (len(names) + len(others) + 1) + "|---|"]
  for name in _METHODS.value:
    fns = {r: _compiled(name, route, x, mask) for r, route in _ROUTES.items()}
    outs = {r: np.asarray(fn(x, mask)) for r, fn in fns.items()}
    seconds = {r: [] for r in fns}
    for _ in range(_ROUNDS.value):
      for r, fn in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(x, mask))
        seconds[r].append(time.perf_counter() - start)
    rate = {r: len(x) / float(np.median(s)) for r, s in seconds.items()}
    diff = max(float(np.abs(outs[library] - outs[r]).max()) for r in others)
    gap = f"max abs diff {diff:.1e}"
    if name == "eigh":
      # Each route's eigenvalues against numpy's float64 solver on the same float32 matrices.
      g = np.asarray(jax.jit(_masked_gram)(x, mask), np.float64)
      lam = np.linalg.eigvalsh(g)
      scale = np.abs(lam).max(axis=-1, keepdims=True)
      error = {r: float((np.abs(outs[r] - lam) / scale).max()) for r in names}
      gap += "; max |dlambda| / lambda_max against float64: " + ", ".join(
          f"{r} {e:.1e}" for r, e in error.items())
      print(f"# {gap}")
    for r in others:
      summary.record("eigh_route", name, rate[library], r, rate[r], "img/s", gap)
    rows.append(f"| {name} | " + " | ".join(f"{rate[r]:.1f}" for r in names) + " | "
                + " | ".join(f"{rate[library] / rate[r]:.2f}" for r in others) + f" | {diff:.1e} |")
    print(rows[-1], flush=True)
  print("\n" + "\n".join(rows))


if __name__ == "__main__":
  app.run(main)
