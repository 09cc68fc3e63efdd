"""Matrix estimation: masks and image <-> matrix layouts, and pure, batched, jittable
reconstructors on (..., m, n) matrices, by name."""

from menet_jax.reconstruct import masks
from menet_jax.reconstruct.images import reconstruct_images
from menet_jax.reconstruct.nuclear_norm import nuclear_norm
from menet_jax.reconstruct.registry import RECONSTRUCTORS, check_params, get, names, register
from menet_jax.reconstruct.soft_impute import soft_impute
from menet_jax.reconstruct.splic import (smoothed_rank, smoothed_rank_grad, splic,
                                         splic_alternating, total_variation, total_variation_grad)
from menet_jax.reconstruct.tv_minimization import tv_minimization
from menet_jax.reconstruct.usvt import usvt

__all__ = [
    "RECONSTRUCTORS", "check_params", "get", "masks", "names", "nuclear_norm", "reconstruct_images",
    "register", "smoothed_rank", "smoothed_rank_grad", "soft_impute", "splic",
    "splic_alternating", "total_variation", "total_variation_grad", "tv_minimization", "usvt",
]
