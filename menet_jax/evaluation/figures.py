"""Figures in the style of the ME-Net paper: reconstruction grids (Fig. 2, 9) and rank plots (Fig. 1)."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from menet_jax.reconstruct import masks, reconstruct_images
from menet_jax.utils.atomic_write import atomic_write


def image_grid(cells: Sequence[Sequence[np.ndarray]], *, row_labels: Sequence[str],
               col_labels: Sequence[str], scale: int = 3, pad: int = 2) -> np.ndarray:
  """Tiles images into a labelled grid.

  Args:
    cells: rows of (H, W, C) images in [0, 1], C in {1, 3}, all the same size.
    row_labels: one label per row, drawn on the left.
    col_labels: one label per column, drawn on top.
    scale: integer upscaling of each pixel (nearest neighbour).
    pad: pixels between cells.

  Returns:
    (height, width, 3) uint8 RGB.
  """
  from PIL import Image, ImageDraw

  if len(row_labels) != len(cells) or any(len(r) != len(col_labels) for r in cells):
    raise ValueError("cells must have one row per row label and one column per column label")
  h, w = cells[0][0].shape[:2]
  ch, cw = h * scale, w * scale
  left, top = 8 + 7 * max(len(s) for s in row_labels), 14
  height = top + len(cells) * (ch + pad)
  width = left + len(col_labels) * (cw + pad)
  canvas = np.full((height, width, 3), 255, np.uint8)
  for r, row in enumerate(cells):
    for c, img in enumerate(row):
      img = np.clip(np.asarray(img, np.float64), 0, 1)
      if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
      big = np.kron(np.round(img * 255).astype(np.uint8), np.ones((scale, scale, 1), np.uint8))
      y, x = top + r * (ch + pad), left + c * (cw + pad)
      canvas[y:y + ch, x:x + cw] = big
  pil = Image.fromarray(canvas)
  draw = ImageDraw.Draw(pil)
  for r, label in enumerate(row_labels):
    draw.text((4, top + r * (ch + pad) + ch // 2 - 5), label, fill=(0, 0, 0))
  for c, label in enumerate(col_labels):
    draw.text((left + c * (cw + pad) + 2, 1), label, fill=(0, 0, 0))
  return np.asarray(pil)


def reconstruction_grid(key, images: np.ndarray, ps: Sequence[float],
                        methods: Mapping[str, Mapping[str, object]], layout: str = "concat") -> np.ndarray:
  """ME-Net reconstructions of each image at each p (Fig. 2 and 9 of the paper).

  For every image, one row of masked inputs (dropped entries black), one row per
  method and one row of the original; one column per p. Within a column all
  methods see the same mask.

  Args:
    key: PRNG key of the masks.
    images: (N, H, W, C) float in [0, 1].
    ps: observation probabilities, one per column.
    methods: reconstructor name -> its parameters.
    layout: "concat" or "separate".

  Returns:
    (height, width, 3) uint8 RGB grid.
  """
  p = np.asarray(ps, np.float32)
  cells, labels = [], []
  for i, image in enumerate(np.asarray(images, np.float32)):
    batch = np.repeat(image[None], len(ps), axis=0)
    mask = masks.from_matrices(masks.image_mask(key, batch.shape, p, layout), layout, batch.shape[-1])
    cells.append(list(batch * np.asarray(mask)))
    labels.append(f"#{i} masked")
    for name, params in methods.items():
      cells.append(list(np.asarray(reconstruct_images(key, batch, method=name, p=p, layout=layout,
                                                      **params))))
      labels.append(f"#{i} {name}")
    cells.append([image] * len(ps))
    labels.append(f"#{i} original")
  return image_grid(cells, row_labels=labels, col_labels=[f"p = {q}" for q in ps])


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
  """Writes an (H, W, 3) uint8 image as PNG, atomically."""
  from PIL import Image

  with atomic_write(path) as tmp:
    Image.fromarray(image).save(tmp, format="PNG")


def rank_figure(ranks: Mapping[str, np.ndarray], path: str | os.PathLike, *, energy: float = 0.9) -> None:
  """Histogram (red) and empirical CDF (blue) of approximate ranks, one panel per dataset (Fig. 1)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(ranks), figsize=(3.6 * len(ranks), 3.0), squeeze=False)
  for ax, (name, r) in zip(axes[0], ranks.items()):
    bins = np.arange(0.5, r.max() + 1.5)
    ax.hist(r, bins=bins, color="tab:red", alpha=0.7)
    ax.set_xlabel(f"approximate rank ({energy:.0%} energy)")
    ax.set_ylabel("images", color="tab:red")
    ax.set_title(f"{name} (n = {len(r)})")
    cdf = ax.twinx()
    values = np.sort(r)
    cdf.step(values, np.arange(1, len(values) + 1) / len(values), where="post", color="tab:blue")
    cdf.set_ylim(0, 1.02)
    cdf.set_ylabel("empirical CDF", color="tab:blue")
  fig.tight_layout()
  with atomic_write(path) as tmp:
    fig.savefig(tmp, dpi=120, format="png")
  plt.close(fig)
