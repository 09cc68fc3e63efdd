"""t-SNE of an embedding classifier's codes, clean and under white-box PGD (the ER-Classifier's
Fig. 7), one row per trained run.

  python -m experiments.code_tsne --workdirs=runs/mnist_ecla_cpu,runs/mnist_er_minus_cpu \
      --names=E-CLA,ER- --eps=0.3 --out=docs/figures/er_tsne_mnist.png
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from menet_jax import attacks, data, evaluation
from menet_jax.analysis import tsne
from menet_jax.utils import validation

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Trained runs of embedding classifiers.")
_NAMES = flags.DEFINE_list("names", None, "A title per run (default: the run's directory).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where the datasets are.")
_IMAGES = flags.DEFINE_integer("images", 1000, "The first N images of each run's test split.")
_EPS = flags.DEFINE_float("eps", 0.3, "l-inf radius of the PGD (the training eps).")
_STEPS = flags.DEFINE_integer("steps", 20, "PGD steps (step 2.5 eps / steps, random start).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the attack and of t-SNE.")
_BATCH = flags.DEFINE_integer("batch_size", 500, "Images per batch.")
_OUT = flags.DEFINE_string("out", "out/er_tsne.png", "The figure (PNG).")
flags.mark_flag_as_required("workdirs")


def _codes_and_predictions(restored, x, y, key):
  """(codes, predictions) of the clean batch and of its PGD examples."""
  def encode(v):
    out = restored.apply_fn(restored.variables, v, train=False, method="encode")
    return out[0] if isinstance(out, tuple) else out  # a variational encoder: its mean

  logits = restored.network(restored.variables)
  x_adv = attacks.pgd(lambda v, t: attacks.cross_entropy(logits(v), y), key, x, eps=_EPS.value,
                      step_size=2.5 * _EPS.value / _STEPS.value, steps=_STEPS.value)
  return [(encode(v), jnp.argmax(logits(v), -1)) for v in (x, x_adv)]


def main(argv: list[str]) -> None:
  del argv
  names = _NAMES.value or _WORKDIRS.value
  if len(names) != len(_WORKDIRS.value):
    raise app.UsageError("--names needs one title per --workdirs entry")
  validation.integer_in("steps", _STEPS.value, 1)
  rows = []
  for name, workdir in zip(names, _WORKDIRS.value):
    restored = evaluation.load(workdir)
    images, labels = data.load(restored.config.dataset, restored.config.test_split,
                               _DATA_DIR.value or restored.config.data_dir)
    n = validation.integer_in("images", _IMAGES.value, 2, len(images))
    x, y = images[:n].astype(np.float32) / 255, labels[:n]
    fn = jax.jit(functools.partial(_codes_and_predictions, restored))
    parts = [fn(jnp.asarray(x[i:i + _BATCH.value]), jnp.asarray(y[i:i + _BATCH.value]),
                jax.random.fold_in(jax.random.key(_SEED.value), i))
             for i in range(0, n, _BATCH.value)]
    row = []
    for j, what in enumerate(("clean", f"PGD-{_STEPS.value}, eps {_EPS.value:g}")):
      codes = np.concatenate([np.asarray(p[j][0]) for p in parts])
      predictions = np.concatenate([np.asarray(p[j][1]) for p in parts])
      row.append(tsne.Panel(f"{name}: {what}", tsne.embed(codes, seed=_SEED.value), y,
                            predictions == y))
      print(f"{name} {what}: accuracy {np.mean(predictions == y):.2%} on {n} images")
    rows.append(row)
  print(f"figure: {tsne.figure(rows, _OUT.value)}")


if __name__ == "__main__":
  app.run(main)
