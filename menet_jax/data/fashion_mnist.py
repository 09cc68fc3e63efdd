"""Fashion-MNIST (Xiao et al., 2017): MNIST's format and sizes, ten kinds of clothing.

Files: the four IDX files (data.idx), also found where Debian's dataset-fashion-mnist package
puts them. Trained and attacked like MNIST (its model, schedule and PGD).
"""

from menet_jax.data import idx, mnist
from menet_jax.data.datasets import Dataset, register

DATASET = register(Dataset(
    name="fashion_mnist", image_shape=(28, 28, 1), num_classes=10, splits=("train", "test"),
    mean=mnist.MEAN, std=mnist.STD, pgd=mnist.PGD, training=mnist.TRAINING, has_split=idx.has_split,
    read=idx.read,
    files="the four Fashion-MNIST IDX .gz files (github.com/zalandoresearch/fashion-mnist), "
          "or `apt-get install dataset-fashion-mnist`",
    subdirs=("fashion_mnist", "fashion-mnist"),
    system_dirs=("/usr/share/datasets/fashion-mnist",), tfds_name="fashion_mnist"))
