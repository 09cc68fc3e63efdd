"""BPDA-PGD throughput through each reconstructor: menet_jax against the release's pipeline.

  python -m benchmarks.attack --data_dir=../shared/data

One PGD step through ME-Net under BPDA is: draw a mask per image, reconstruct
every image, run the network forward and backward on the reconstructions, take
the signed step. Both implementations attack the same CIFAR-10 test images with
the same network (`--model`, randomly initialised: speed does not depend on the
weights), eps 8/255, step 2/255, a fresh p = `--p` mask per image and step:

  menet_jax   the whole attack (evaluation.suite's "bpda_pgd") jitted, batched,
              reconstruction per batch on the device, float32
  reference   as the release attacks: a Python loop over images inside every
              step, each reconstructed by the per-image numpy / cvxpy code of
              benchmarks.reconstruct (float64), then the network's gradient on
              the batch (jitted JAX), then the step in numpy

The measurement alternates `--rounds` passes of menet_jax (`--batch_size`
images x `--steps` steps) with reference steps on `--ref_batch` images
(together about `--ref_seconds`), so both see the same load; rates are
images x steps per second from the median pass / median reference step.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import summary
from menet_jax import data, defenses, evaluation
from menet_jax.attacks import cross_entropy
from menet_jax.evaluation import suite
from menet_jax.reconstruct import masks
from menet_jax.training import factories
from menet_jax.training.config import Config
from menet_jax.utils import machine
from references.per_image import PARAMS, REFERENCES

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data", "Directory with cifar-10-batches-py.")
_MODEL = flags.DEFINE_string("model", "small_cnn", "Network (menet_jax.models).")
_BATCH = flags.DEFINE_integer("batch_size", 250, "Images per menet_jax attack call.")
_STEPS = flags.DEFINE_integer("steps", 10, "PGD steps per menet_jax pass.")
_REF_BATCH = flags.DEFINE_integer("ref_batch", 16, "Images per reference step.")
_REF_SECONDS = flags.DEFINE_float("ref_seconds", 30.0, "Time budget of each reference.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternations of a menet_jax pass and reference steps.")
_P = flags.DEFINE_float("p", 0.5, "Observation probability of the masks.")
_METHODS = flags.DEFINE_list("methods", ["usvt", "soft_impute", "nuclear_norm", "splic"],
                             "Reconstructors to measure.")

EPS, STEP = 8 / 255, 2 / 255


def _reference_step(grad_fn, ref, rng, x_adv, x, y):
  """One release-style BPDA-PGD step: per-image reconstruction, then the batch gradient."""
  mats = masks.to_matrices(jnp.asarray(2 * x_adv - 1), "concat")
  recon = []
  for m in np.asarray(mats, np.float64):
    est = np.clip(ref(m, rng.random(m.shape) < _P.value), -1, 1)
    recon.append(est)
  recon = np.asarray(masks.from_matrices(jnp.asarray(np.stack(recon) + 1, jnp.float32) / 2,
                                         "concat", 3))
  g = np.asarray(grad_fn(recon, y))  # BPDA: the gradient at the reconstruction, identity backward
  return np.clip(np.clip(x_adv + STEP * np.sign(g), x - EPS, x + EPS), 0, 1)


def main(argv):
  del argv
  n = _BATCH.value
  images, labels = data.load("cifar10", f"test[:{n}]", _DATA_DIR.value)
  x = images.astype(np.float32) / 255
  config = Config.for_dataset("cifar10", workdir="-", model=_MODEL.value)
  net = factories.create_model(config)
  variables = net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  apply = lambda v: net.apply(variables, v, train=False)
  grad_fn = jax.jit(jax.grad(lambda v, y: jnp.sum(cross_entropy(apply(v), y))))
  rng = np.random.default_rng(0)

  print(f"# machine: {machine.describe()}")
  print(f"# {_MODEL.value}, {n} CIFAR-10 test images x {_STEPS.value} BPDA-PGD steps per "
        f"menet_jax pass; reference steps on {_REF_BATCH.value} images; p = {_P.value}\n")
  rows = ["| method | menet_jax img x steps/s | compile s | reference | reference img x steps/s "
          "(steps) | speed-up |", "|---|---|---|---|---|---|"]
  for name in _METHODS.value:
    defense = defenses.MENet.create(method=name, startp=_P.value, endp=_P.value, mask_num=1,
                                    **PARAMS.get(name, {}))
    restored = evaluation.Target(apply_fn=functools.partial(net.apply, train=False),
                                 variables=variables, defense=defense)
    attack = suite.ATTACKS.lookup(f"bpda_pgd(steps={_STEPS.value})")

    @jax.jit
    def run(variables, key, xb, yb):
      ctx = evaluation.context(restored, variables, None, None, eps=EPS, step_size=STEP)
      return attack(ctx, key, xb, yb)

    t = time.perf_counter()
    jax.block_until_ready(run(variables, jax.random.key(0), x, labels))
    compile_s = time.perf_counter() - t
    ref_name, ref = REFERENCES[name]
    passes, ref_steps = [], []
    xr, xc, yr = x[:_REF_BATCH.value].copy(), x[:_REF_BATCH.value], labels[:_REF_BATCH.value]
    for r in range(_ROUNDS.value):
      t = time.perf_counter()
      jax.block_until_ready(run(variables, jax.random.key(r + 1), x, labels))
      passes.append(time.perf_counter() - t)
      chunk = time.perf_counter()
      while len(ref_steps) < 2 * (r + 1) or time.perf_counter() - chunk < \
          _REF_SECONDS.value / _ROUNDS.value:
        t = time.perf_counter()
        xr = _reference_step(grad_fn, ref, rng, xr, xc, yr)
        ref_steps.append(time.perf_counter() - t)
    ours = n * _STEPS.value / float(np.median(passes))
    theirs = len(xr) / float(np.median(ref_steps))
    summary.record("attack (BPDA-PGD)", name, ours, f"{ref_name} per image", theirs,
                   "img x steps/s")
    rows.append(f"| {name} | {ours:.0f} | {compile_s:.1f} | {ref_name} per image | "
                f"{theirs:.3g} ({len(ref_steps)}) | {ours / theirs:.2g}x |")
    print(rows[-1], flush=True)
  print("\n" + "\n".join(rows))


if __name__ == "__main__":
  app.run(main)
