import os
import stat

import numpy as np
import pytest

from menet_jax import figures, rank
from menet_jax.atomic_write import atomic_write


def test_approximate_rank_matches_numpy(rng):
  # Images of known rank plus small noise, in both layouts.
  images = np.empty((6, 12, 10, 3))
  for i in range(6):
    r = i % 3 + 1
    images[i] = np.clip((rng.uniform(0, 1, (12, r)) @ rng.uniform(0, 1, (r, 30)) / r).reshape(12, 10, 3)
                        + rng.uniform(0, 0.01, (12, 10, 3)), 0, 1)
  got = rank.approximate_rank(images.astype(np.float32), energy=0.9)
  mats = np.concatenate([images[..., c] for c in range(3)], axis=-1)
  s2 = np.linalg.svd(mats, compute_uv=False) ** 2
  expected = np.argmax(np.cumsum(s2, -1) >= 0.9 * s2.sum(-1, keepdims=True), axis=-1) + 1
  np.testing.assert_array_equal(got, expected)
  sep = rank.approximate_rank(images.astype(np.float32), layout="separate")
  assert sep.shape == (6,) and (sep >= 1).all()
  uint8 = rank.approximate_rank(np.round(images * 255).astype(np.uint8))
  assert np.abs(uint8 - got).max() <= 1


@pytest.mark.parametrize("kwargs,match", [(dict(energy=0.0), "energy"), (dict(layout="tiles"), "layout")])
def test_approximate_rank_bad_input(kwargs, match):
  with pytest.raises(ValueError, match=match):
    rank.approximate_rank(np.zeros((1, 4, 4, 1), np.float32), **kwargs)


def test_image_grid_places_cells(rng):
  cells = [[rng.uniform(0, 1, (4, 5, 3)), np.zeros((4, 5, 3))], [np.ones((4, 5, 1)), rng.uniform(0, 1, (4, 5, 3))]]
  grid = figures.image_grid(cells, row_labels=["a", "b"], col_labels=["x", "y"], scale=2, pad=1)
  assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
  # The all-ones grayscale cell (row 1, column 0) is a white 8 x 10 block ending at the right edge of column 0.
  assert (grid == 255).all(axis=-1).sum() >= 8 * 10
  with pytest.raises(ValueError, match="one row per row label"):
    figures.image_grid(cells, row_labels=["a"], col_labels=["x", "y"])


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
  target = tmp_path / "sub" / "out.bin"
  with pytest.raises(RuntimeError):
    with atomic_write(target) as tmp:
      tmp.write_bytes(b"partial")
      raise RuntimeError("killed")
  assert not target.exists() and list(target.parent.iterdir()) == []
  with atomic_write(target) as tmp:
    tmp.write_bytes(b"complete")
  assert target.read_bytes() == b"complete" and list(target.parent.iterdir()) == [target]
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_png_and_rank_figure(tmp_path, rng):
  from PIL import Image
  figures.save_png(tmp_path / "g.png", (rng.uniform(0, 1, (6, 7, 3)) * 255).astype(np.uint8))
  assert Image.open(tmp_path / "g.png").size == (7, 6)
  figures.rank_figure({"a": np.array([1, 2, 2, 3]), "b": np.array([4, 4, 5])}, tmp_path / "r.png")
  assert Image.open(tmp_path / "r.png").format == "PNG"
