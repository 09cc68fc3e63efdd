"""menet_jax: ME-Net and related preprocessing defenses in JAX (see docs/architecture.md)."""

from menet_jax import reconstruct
from menet_jax.defenses.bpda import bpda
from menet_jax.reconstruct import masks, reconstruct_images

__version__ = "0.1.0"

__all__ = ["bpda", "masks", "reconstruct", "reconstruct_images", "__version__"]
