"""The nuclear-norm solver's continuation: arithmetic and objective gap per schedule.

  python -m benchmarks.continuation --data_dir=../shared/data

On `--num_images` CIFAR-10 test images (32 x 96 concat, p = 0.5, float32, one batch), runs
`nuclear_norm.accelerated_svt` at the library's threshold mu / 2 and tol, without continuation
and with each start (a fraction of sigma_max(mask * x)) and ratio of `--starts` x `--factors`,
and reports the dense arithmetic per image (`benchmarks.flops`: a count, so it does not depend
on the machine's load), the images/s of the median of `--rounds` calls, and the relative gap of
the objective mu ||X||_* + ||P(X - x)||^2 to the optimum (the library's solver in float64 at tol
1e-9, 5,000 iterations). The library's schedule is nuclear_norm.CONTINUATION_START and _FACTOR.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import flops
from menet_jax import data, reconstruct
from menet_jax.reconstruct import masks, spectral
from menet_jax.reconstruct.nuclear_norm import accelerated_svt
from menet_jax.utils import machine
from references import matrices as references

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data", "Directory with cifar-10-batches-py.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 200, "CIFAR-10 test images (one batch).")
_STARTS = flags.DEFINE_list("starts", ["1", "0.5", "0.25", "0.125"],
                            "Continuation starts, as fractions of sigma_max.")
_FACTORS = flags.DEFINE_list("factors", ["0.5", "0.7", "0.8"], "Continuation ratios.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed calls per schedule (median).")
_MU = 1.0
_TOL = 1e-3  # nuclear_norm's default


def _solver(start: float | None, factor: float):
  def solve(x, observed):
    threshold = jnp.full(x.shape[:1], _MU / 2, x.dtype)
    begin = None if start is None else start * spectral.largest_singular_value(
        jnp.where(observed, x, 0))
    return accelerated_svt(x, observed, threshold, max_iters=500, tol=_TOL, start=begin,
                           factor=factor)
  return jax.jit(solve)


def main(argv):
  del argv
  images, _ = data.load("cifar10", f"test[:{_NUM_IMAGES.value}]", _DATA_DIR.value)
  x = masks.to_matrices(jnp.asarray(images, jnp.float32) / 255 * 2 - 1, "concat")
  observed = masks.bernoulli(jax.random.key(0), x.shape, 0.5).astype(bool)
  x64, m64 = np.asarray(x, np.float64), np.asarray(observed)
  with jax.enable_x64(True):
    optimum = np.asarray(reconstruct.nuclear_norm(jnp.asarray(x64), jnp.asarray(m64), mu=_MU,
                                                  tol=1e-9, max_iters=5000))
  best = np.array([references.nuclear_objective(a, m, o, _MU) for a, m, o in zip(x64, m64, optimum)])
  print(f"# machine: {machine.describe()}")
  print(f"# {len(x)} CIFAR-10 test images, 32 x 96 concat, p = 0.5, float32, mu {_MU}, tol {_TOL}\n")
  rows = ["| start (x sigma_max) | factor | MFLOP/img | img/s | objective gap mean | max |",
          "|---|---|---|---|---|---|"]
  schedules = [(None, 0.7)] + [(float(s), float(f)) for s in _STARTS.value for f in _FACTORS.value]
  for start, factor in schedules:
    fn = _solver(start, factor)
    per_image = flops.per_item(fn, x, observed)
    out = jax.block_until_ready(fn(x, observed))  # compiles afresh: counting cleared the caches
    seconds = []
    for _ in range(_ROUNDS.value):
      begin = time.perf_counter()
      out = jax.block_until_ready(fn(x, observed))
      seconds.append(time.perf_counter() - begin)
    ours = np.array([references.nuclear_objective(a, m, o, _MU)
                     for a, m, o in zip(x64, m64, np.asarray(out, np.float64))])
    gap = (ours - best) / best
    label = "none" if start is None else f"{start:g}"
    rows.append(f"| {label} | {'' if start is None else f'{factor:g}'} | {per_image / 1e6:.2f} "
                f"| {len(x) / np.median(seconds):.0f} | {gap.mean():.1e} | {gap.max():.1e} |")
    print(rows[-1], flush=True)
  print("\n" + "\n".join(rows))


if __name__ == "__main__":
  app.run(main)
