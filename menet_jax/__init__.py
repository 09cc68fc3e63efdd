"""menet_jax: ME-Net and related preprocessing defenses in JAX."""

from menet_jax import masks, reconstruct
from menet_jax.bpda import bpda
from menet_jax.reconstruct import reconstruct_images

__version__ = "0.1.0"

__all__ = ["bpda", "masks", "reconstruct", "reconstruct_images", "__version__"]
