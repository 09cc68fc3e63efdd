"""t-SNE pictures of a classifier's codes, clean and under attack (the ER-Classifier's Fig. 7).

Each panel is one t-SNE fit (scikit-learn's TSNE; separate fits for the clean and the
adversarial codes, as the paper's text describes): points coloured by their true class,
a dot where the model is right and a down-triangle where it is wrong.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from menet_jax.utils import validation
from menet_jax.utils.atomic_write import atomic_write


def embed(codes: np.ndarray, *, seed: int, perplexity: float = 30.0) -> np.ndarray:
  """(n, k) codes -> (n, 2) t-SNE coordinates (PCA initialisation, the given seed)."""
  from sklearn.manifold import TSNE  # noqa: PLC0415 - only the figure needs scikit-learn

  codes = np.asarray(codes, np.float64).reshape(len(codes), -1)
  validation.number_in("perplexity", perplexity, 1.0, len(codes) - 1.0)
  return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed
              ).fit_transform(codes)


@dataclasses.dataclass(frozen=True)
class Panel:
  """One scatter: points (n, 2), labels (n,) int, correct (n,) bool, a title."""
  title: str
  points: np.ndarray
  labels: np.ndarray
  correct: np.ndarray


def figure(rows: Sequence[Sequence[Panel]], path: str | Path, *, classes: int = 10) -> Path:
  """Draws the panels (rows x columns) to a PNG at `path`, written atomically."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  n_rows, n_cols = len(rows), max(len(r) for r in rows)
  fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols, 4.2 * n_rows), squeeze=False)
  colours = plt.get_cmap("tab10")(np.arange(classes) % 10)
  for r, row in enumerate(rows):
    for c, panel in enumerate(row):
      ax = axes[r][c]
      for mask, marker, size in ((panel.correct, "o", 6), (~panel.correct, "v", 14)):
        ax.scatter(panel.points[mask, 0], panel.points[mask, 1], s=size, marker=marker,
                   c=colours[panel.labels[mask]], linewidths=0)
      ax.set_title(f"{panel.title}\n{panel.correct.mean():.1%} correct (o), "
                   f"{(~panel.correct).sum()} wrong (v)", fontsize=9)
      ax.set_xticks([])
      ax.set_yticks([])
  fig.tight_layout()
  path = Path(path)
  with atomic_write(path) as tmp:
    fig.savefig(tmp, format="png", dpi=110)
  plt.close(fig)
  return path
