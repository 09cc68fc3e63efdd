"""Matrix estimation: pure, batched, jittable reconstructors on (..., m, n) matrices."""

from menet_jax.reconstruct.images import reconstruct_images
from menet_jax.reconstruct.nuclear_norm import nuclear_norm
from menet_jax.reconstruct.registry import check_params, get, names, register
from menet_jax.reconstruct.soft_impute import soft_impute
from menet_jax.reconstruct.splic import (smoothed_rank, smoothed_rank_grad, splic, splic_alternating,
                                         total_variation, total_variation_grad)
from menet_jax.reconstruct.usvt import usvt

__all__ = [
    "check_params", "get", "names", "nuclear_norm", "reconstruct_images", "register",
    "smoothed_rank", "smoothed_rank_grad", "soft_impute", "splic", "splic_alternating",
    "total_variation", "total_variation_grad", "usvt",
]
