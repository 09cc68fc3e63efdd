"""Guo et al.'s (2018) total-variation minimization as a defense, the preprocessing baseline of
ME-Net's Tables 3 and 11: drop pixels with a Bernoulli mask, reconstruct each channel by TV
minimization on the kept pixels (`reconstruct.tv_minimization`).

It is ME-Net's pipeline with that estimator on one matrix per channel ("separate" layout, one
mask shared by the channels), the "same setting used with ME-Net" of the ME-Net paper, so
`tv_minimization(...)` creates that `MENet`; its mask schedule and inference are ME-Net's:

    tv_minimization(weight=0.03, startp=0.4, endp=0.6, mask_num=5)
"""

from __future__ import annotations

from typing import Any

from menet_jax.defenses.base import DEFENSES
from menet_jax.defenses.menet import MENet


def tv_minimization(**kwargs: Any) -> MENet:
  """The defense: `MENet.create`'s arguments (mask schedule, inference) and the reconstructor's
  (weight, norm, max_iters, tol), with the method and the "separate" layout fixed."""
  for fixed in ("method", "layout"):
    if fixed in kwargs:
      raise ValueError(f"tv_minimization fixes {fixed} (method=tv_minimization, "
                       f"layout=separate); got {fixed}={kwargs[fixed]!r}")
  return MENet.create(method="tv_minimization", layout="separate", **kwargs)


DEFENSES.register("tv_minimization", tv_minimization)
