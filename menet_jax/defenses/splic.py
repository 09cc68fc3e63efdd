"""SPLIC as a defense (shared/papers/SPLIC.txt, section 3.4): alternated structure-preserving
low-rank completion of every image, at training and at test time.

Half of the pixels (p = 0.5) are drawn as anchors, the others re-estimated by SPLIC (smoothed
rank + total variation, `reconstruct.splic`), then the roles swap (`splic_alternating`). It is
ME-Net's pipeline with that estimator and a fixed p, so `splic(...)` creates that `MENet`:

    splic(rank=8)   # rank R / 4 for 32 x 32 images, lam 0.02 (the paper's)
"""

from __future__ import annotations

from menet_jax.defenses.base import DEFENSES
from menet_jax.defenses.menet import MENet


def splic(*, rank: int = 8, lam: float = 0.02, p: float = 0.5, draws: int = 1,
          layout: str = "concat", inference: str = "mean", votes: int = 10,
          solver: str = "eigh") -> MENet:
  """The SPLIC defense: `draws` reconstructions per training image, anchors drawn with p.

  solver: reconstruct.splic's ("subspace" is faster at the same accuracy, docs/benchmarks.md).
  """
  return MENet.create(method="splic_alternating", rank=rank, lam=lam, solver=solver, startp=p,
                      endp=p, mask_num=draws, layout=layout, inference=inference, votes=votes)


DEFENSES.register("splic", splic)
