import numpy as np
import pytest

from menet_jax.evaluation import figures


def test_image_grid_places_cells(rng):
  cells = [[rng.uniform(0, 1, (4, 5, 3)), np.zeros((4, 5, 3))], [np.ones((4, 5, 1)), rng.uniform(0, 1, (4, 5, 3))]]
  grid = figures.image_grid(cells, row_labels=["a", "b"], col_labels=["x", "y"], scale=2, pad=1)
  assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
  # The all-ones grayscale cell (row 1, column 0) is a white 8 x 10 block ending at the right edge of column 0.
  assert (grid == 255).all(axis=-1).sum() >= 8 * 10
  with pytest.raises(ValueError, match="one row per row label"):
    figures.image_grid(cells, row_labels=["a"], col_labels=["x", "y"])


def test_png_and_rank_figure(tmp_path, rng):
  from PIL import Image
  figures.save_png(tmp_path / "g.png", (rng.uniform(0, 1, (6, 7, 3)) * 255).astype(np.uint8))
  assert Image.open(tmp_path / "g.png").size == (7, 6)
  figures.rank_figure({"a": np.array([1, 2, 2, 3]), "b": np.array([4, 4, 5])}, tmp_path / "r.png")
  assert Image.open(tmp_path / "r.png").format == "PNG"
