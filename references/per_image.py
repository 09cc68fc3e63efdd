"""The per-image reference reconstructors that the benchmarks measure menet_jax against.

Each takes one (m, n) float64 matrix in [-1, 1] and its boolean mask, as the
ME-Net release reconstructs: numpy (one SVD per image and iteration) or cvxpy.
"""

from __future__ import annotations

from references import matrices as references

SPLIC_RANK = 8  # the paper's R / 4 for 32-pixel images
PARAMS = {"splic": {"rank": SPLIC_RANK}, "splic_alternating": {"rank": SPLIC_RANK}}


def _splic_alternating_reference(x, mask, rank):
  first = references.splic(x, mask, rank)
  return references.splic(first, ~mask, rank)


REFERENCES = {
    "usvt": ("numpy loop", lambda x, m: references.usvt(x, m)),
    "soft_impute": ("numpy loop", lambda x, m: references.soft_impute(x, m)),
    "nuclear_norm": ("cvxpy + SCS", lambda x, m: references.nuclear_norm_cvxpy(x, m, 1.0)),
    "splic": ("numpy loop", lambda x, m: references.splic(x, m, SPLIC_RANK)),
    "splic_alternating": ("numpy loop", lambda x, m: _splic_alternating_reference(x, m, SPLIC_RANK)),
}
