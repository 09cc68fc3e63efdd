"""ME-Net's preprocessing on real images: reconstruction grids (Fig. 2, 9) and approximate ranks (Fig. 1).

  python -m experiments.reconstruct_demo --data_dir=../shared/data --out_dir=out/demo
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags, logging

from menet_jax import data
from menet_jax.evaluation import figures
from menet_jax.reconstruct import rank

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data", "Directory with the offline datasets.")
_OUT_DIR = flags.DEFINE_string("out_dir", "out/demo", "Where the figures are written.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 3, "CIFAR-10 test images in the grid.")
_PS = flags.DEFINE_list("p", ["0.3", "0.5", "0.7", "0.9"], "Observation probabilities (columns).")
_SPLIC_RANK = flags.DEFINE_integer("splic_rank", 8, "SPLIC's rank (the paper's R / 4).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of the masks.")

# Each dataset's labelled evaluation split.
RANK_SPLITS = {"mnist": "test", "fashion_mnist": "test", "cifar10": "test", "svhn_cropped": "test",
               "tiny_imagenet": "validation"}


def main(argv):
  del argv
  out = Path(_OUT_DIR.value)
  key = jax.random.key(_SEED.value)
  ps = [float(q) for q in _PS.value]

  start = time.perf_counter()
  images, _ = data.load("cifar10", f"test[:{_NUM_IMAGES.value}]", _DATA_DIR.value)
  methods = {"usvt": {}, "soft_impute": {}, "nuclear_norm": {}, "splic": {"rank": _SPLIC_RANK.value}}
  grid = figures.reconstruction_grid(key, images.astype(np.float32) / 255, ps, methods)
  grid_path = out / "reconstructions_cifar10.png"
  figures.save_png(grid_path, grid)
  logging.info("reconstruction grid in %.1f s", time.perf_counter() - start)

  ranks = {}
  for name, split in RANK_SPLITS.items():
    try:
      ds_images, _ = data.load(name, split, _DATA_DIR.value, backend="files")
    except FileNotFoundError as e:
      print(f"skipping {name} for the rank figure: {e}")
      continue
    ranks[name] = rank.approximate_rank(ds_images)
    r = ranks[name]
    print(f"{name} {split}: approximate rank (90% energy) median {np.median(r):.0f}, "
          f"90th percentile {np.percentile(r, 90):.0f}, on {len(r)} images")
  rank_path = out / "approximate_rank.png"
  figures.rank_figure(ranks, rank_path)

  print(f"wrote {grid_path.resolve()}")
  print(f"wrote {rank_path.resolve()}")


if __name__ == "__main__":
  app.run(main)
