"""ME-Net's preprocessing on real images: reconstruction grids (Fig. 2, 9), each estimator's
reconstruction error and time, and approximate ranks (Fig. 1).

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
from menet_jax.reconstruct import rank, reconstruct_images

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data", "Directory with the offline datasets.")
_OUT_DIR = flags.DEFINE_string("out_dir", "out/demo", "Where the figures are written.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 3, "CIFAR-10 test images in the grid.")
_PS = flags.DEFINE_list("p", ["0.3", "0.5", "0.7", "0.9"], "Observation probabilities (columns).")
_SPLIC_RANK = flags.DEFINE_integer("splic_rank", 8, "SPLIC's rank (the paper's R / 4).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of the masks.")
_ERROR_IMAGES = flags.DEFINE_integer("error_images", 200,
                                     "CIFAR-10 test images of the reconstruction-error table.")

# The error table's estimators at their defaults, each in the layout it is used in: TV
# minimization solves one channel at a time.
ERROR_METHODS = {"usvt": ({"keep": 0.8}, "concat"), "soft_impute": ({}, "concat"),
                 "nuclear_norm": ({}, "concat"), "tv_minimization": ({}, "separate")}

# The datasets of the rank figure (each on its labelled evaluation split, `test_split`).
RANK_DATASETS = ("mnist", "fashion_mnist", "cifar10", "svhn_cropped", "tiny_imagenet")


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

  images, _ = data.load("cifar10", f"test[:{_ERROR_IMAGES.value}]", _DATA_DIR.value)
  print(error_table(key, images.astype(np.float32) / 255, ps))

  ranks = {}
  for name in RANK_DATASETS:
    split = data.dataset(name).test_split
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


def error_table(key, images: np.ndarray, ps: list[float]) -> str:
  """Markdown table: PSNR (dB, all pixels, [0, 1] scale) of each estimator's reconstruction at
  each p, and its time per image (compilation excluded); all see the same masks per layout.

  Args:
    images: (N, H, W, C) float32 in [0, 1].
  """
  lines = [f"| estimator (layout) | {' | '.join(f'p = {p}' for p in ps)} | ms per image |",
           "|---" * (len(ps) + 2) + "|"]
  for name, (params, layout) in ERROR_METHODS.items():
    cells, seconds = [], 0.0
    for p in ps:
      run = lambda: np.asarray(reconstruct_images(key, images, method=name, p=p, layout=layout,
                                                  **params))
      run()  # compiles
      start = time.perf_counter()
      out = run()
      seconds += time.perf_counter() - start
      mse = float(np.mean((out - images) ** 2))
      cells.append(f"{-10 * np.log10(mse):.1f}")
    per_image = 1e3 * seconds / (len(ps) * len(images))
    lines.append(f"| {name} ({layout}) | {' | '.join(cells)} | {per_image:.2f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  app.run(main)
