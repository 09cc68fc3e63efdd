import os
from pathlib import Path

import numpy as np
import pytest

# ../shared/data beside the checkout holds the offline datasets; MENET_DATA_DIR overrides it.
DATA_DIR = Path(os.environ.get("MENET_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
CIFAR_TEST = DATA_DIR / "cifar10" / "cifar-10-batches-py" / "test_batch"


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture(scope="session")
def cifar_matrices():
  """32 real CIFAR-10 test images as 32 x 96 concat matrices in [-1, 1] (float64)."""
  if not CIFAR_TEST.is_file():
    pytest.skip(f"CIFAR-10 test batch not found at {CIFAR_TEST}")
  from menet_jax import data
  images, _ = data.load("cifar10", "test[:32]", DATA_DIR)
  x = images.astype(np.float64) / 255 * 2 - 1
  return np.concatenate([x[..., 0], x[..., 1], x[..., 2]], axis=-1)
