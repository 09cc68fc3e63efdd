"""MNIST (LeCun et al., 1998): 28 x 28 x 1, 10 classes, 60,000 training and 10,000 test images.

Files: the four IDX files (data.idx). ../shared/data holds only the test split: split it, e.g.
--train_split='test[:8000]' --test_split='test[8000:]'.
"""

from menet_jax.data import idx
from menet_jax.data.datasets import Dataset, Training, register

# Madry et al.'s MNIST LeNet (mnist_challenge) feeds raw pixels in [0, 1]: mean 0, std 1.
MEAN, STD = (0.0,), (1.0,)
# Section 3.3 of ME-Net, Madry et al.'s: eps 0.3, step 0.01, 40 steps; also Fashion-MNIST's.
PGD = dict(eps=0.3, step_size=0.01, steps=40)
# ME-Net's Table 8 for MNIST, and for Fashion-MNIST, which the project trains like it.
TRAINING = Training(model="lenet", epochs=200, lr=0.01, lr_boundaries=(100, 150), augment=False)

DATASET = register(Dataset(
    name="mnist", image_shape=(28, 28, 1), num_classes=10, splits=("train", "test"),
    mean=MEAN, std=STD, pgd=PGD, training=TRAINING, has_split=idx.has_split, read=idx.read,
    files="train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
          "t10k-labels-idx1-ubyte.gz (http://yann.lecun.com/exdb/mnist/)",
    subdirs=("mnist", "MNIST"), tfds_name="mnist"))
