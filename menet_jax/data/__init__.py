"""Data: the registered datasets, their loaders (local files | TFDS), the input pipeline, the
preprocessing cache.

    images, labels = data.load("cifar10", "test[:1000]", "../shared/data")
    data.dataset("cifar10").image_shape   # (32, 32, 3)

A dataset is one module that registers a `Dataset` (data.datasets); those below register on
import, and a project adds its own the same way from outside the package.
"""

from menet_jax.data import cache, input_pipeline
# The datasets of the papers; each registers itself.
from menet_jax.data import (  # noqa: F401
    cifar10, fashion_mnist, imagenet, mnist, stl10, svhn, tiny_imagenet)
from menet_jax.data.datasets import Dataset, Training, names, register
from menet_jax.data.datasets import get as dataset
from menet_jax.data.loaders import BACKENDS, TFDS_EXTRA, Opened, count, load, open_split

__all__ = ["BACKENDS", "Dataset", "Opened", "TFDS_EXTRA", "Training", "cache", "count",
           "dataset", "input_pipeline", "load", "names", "open_split", "register"]
