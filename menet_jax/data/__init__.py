"""Data: dataset loaders (local files | TFDS), the input pipeline, the preprocessing cache.

    images, labels = data.load("cifar10", "test[:1000]", "../shared/data")
"""

from menet_jax.data import cache, input_pipeline
from menet_jax.data.loaders import BACKENDS, DATASETS, IMAGE_SHAPES, SPLITS, TFDS_EXTRA, load

__all__ = ["BACKENDS", "DATASETS", "IMAGE_SHAPES", "SPLITS", "TFDS_EXTRA", "cache",
           "input_pipeline", "load"]
