"""What deciding on one matrix at a time costs: the CPU decomposition route of spectral.eigh.

  python -m benchmarks.eigh_route --data_dir=../shared/data

On CPU, `spectral.eigh` hands LAPACK one matrix at a time, because jaxlib's
batched kernel blocks XLA's thread pool and can hang (tests/test_no_hang.py).
This script measures every reconstructor twice in one process, interleaved:
with the library's route, and with the batched kernel (`jnp.linalg.eigh` on the
whole batch) patched in for the comparison only; the batched side runs from
the main thread of a one-device program, where it cannot deadlock. Both
compile separately (AOT), outputs are checked to agree, and rates are medians
over `--rounds` passes.
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
_METHODS = flags.DEFINE_list("methods", ["usvt", "soft_impute", "nuclear_norm", "splic"],
                             "Methods to measure.")

_ROUTES = {"one matrix at a time (library)": spectral.eigh,
           "batched LAPACK kernel": jnp.linalg.eigh}


def _compiled(name, route, x, mask):
  """`name` compiled with `route` as the decomposition (caches cleared so that it is retraced)."""
  saved = spectral.eigh
  spectral.eigh = route
  try:
    jax.clear_caches()
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
  rows = [f"| method | {names[0]} img/s | {names[1]} img/s | ratio | max abs diff |",
          "|---|---|---|---|---|"]
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
    diff = float(np.abs(outs[names[0]] - outs[names[1]]).max())
    summary.record("eigh_route", name, rate[names[0]], names[1], rate[names[1]], "img/s",
                   f"max abs diff {diff:.1e}")
    rows.append(f"| {name} | {rate[names[0]]:.1f} | {rate[names[1]]:.1f} | "
                f"{rate[names[0]] / rate[names[1]]:.2f} | {diff:.1e} |")
    print(rows[-1], flush=True)
  print("\n" + "\n".join(rows))


if __name__ == "__main__":
  app.run(main)
