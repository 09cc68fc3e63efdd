"""t-SNE panels of codes: separated classes stay separated, and the figure is written."""

import numpy as np
from PIL import Image

from menet_jax.analysis import tsne


def test_separated_clusters_stay_separated_and_the_figure_is_written(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), 30)
  codes = rng.normal(size=(90, 8)) * 0.1 + 5 * np.eye(8)[labels]  # three tight, far clusters
  points = tsne.embed(codes, seed=0, perplexity=10)
  assert points.shape == (90, 2)
  # Each point's nearest other point in the picture has its class (an independent check by
  # brute force, not t-SNE's own).
  d = np.linalg.norm(points[:, None] - points[None], axis=-1) + np.diag(np.full(90, np.inf))
  assert np.all(labels[np.argmin(d, 1)] == labels)
  correct = rng.random(90) > 0.2
  panel = tsne.Panel("clean", points, labels, correct)
  path = tsne.figure([[panel, panel]], tmp_path / "f" / "tsne.png")
  with Image.open(path) as img:
    assert img.format == "PNG" and img.size[0] > img.size[1]  # two panels side by side
  assert [p.name for p in path.parent.iterdir()] == ["tsne.png"]  # no temporary left behind
