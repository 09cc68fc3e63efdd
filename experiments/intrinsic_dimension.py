"""The Levina-Bickel intrinsic dimension of datasets (the ER-Classifier's Table 3 column).

  python -m experiments.intrinsic_dimension --datasets=mnist:test[:1000],cifar10:train[:1000]
"""

from __future__ import annotations

import numpy as np
from absl import app, flags

from menet_jax import data
from menet_jax.analysis.intrinsic_dimension import ESTIMATORS, levina_bickel
from menet_jax.utils import machine

_DATASETS = flags.DEFINE_list("datasets", ["mnist:test[:1000]", "cifar10:train[:1000]"],
                              "dataset:split pairs, 1,000 samples each in the paper.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where the datasets are.")
_K1 = flags.DEFINE_integer("k1", 6, "Fewest neighbours (hub-toolbox's default).")
_K2 = flags.DEFINE_integer("k2", 12, "Most neighbours (hub-toolbox's default).")
# The paper's Table 3 (shared/papers/ER-Classifier.txt), printed beside the estimates.
PAPER = {"mnist": 13, "cifar10": 17, "stl10": 20, "tiny_imagenet": 19}


def main(argv: list[str]) -> None:
  del argv
  print("| dataset | split | pixels | points | mackay | levina | paper (Table 3) |")
  print("|---|---|---|---|---|---|---|")
  for entry in _DATASETS.value:
    name, _, split = entry.partition(":")
    if not split:
      raise app.UsageError(f"datasets entries are dataset:split, got {entry!r}")
    images, _ = data.load(name, split, _DATA_DIR.value)
    x = images.reshape(len(images), -1).astype(np.float64) / 255
    unique = np.unique(x, axis=0)
    if len(unique) != len(x):  # said, not hidden: the estimate needs distinct points
      print(f"<!-- {name} {split}: {len(x) - len(unique)} duplicate images left out -->")
    est = {e: levina_bickel(unique, k1=_K1.value, k2=_K2.value, estimator=e) for e in ESTIMATORS}
    print(f"| {name} | {split} | {x.shape[1]} | {len(unique)} | {est['mackay']:.1f} | "
          f"{est['levina']:.1f} | {PAPER.get(name, '—')} |")
  print(f"\nk = {_K1.value} .. {_K2.value}; machine: {machine.describe()}")


if __name__ == "__main__":
  app.run(main)
