import os
from pathlib import Path

import numpy as np
import pytest

# Most of the suite's time is XLA compiling small graphs once each, and much of a compile is
# LLVM optimising the generated CPU code. The suite runs at XLA's backend level 2 instead of the
# default 3: measured on 2 cores, RIDE's evaluation test 75 s -> 41 s, the multi-device and EOT
# tests 116 s -> 83 s together (their run time did not grow). The passes change no semantics,
# only floating-point rounding, which the tolerances allow. (Level 0 compiles faster still but
# runs the heavier tests several times slower, and its code changed the 1- against 4-device
# training comparison by 0.08, so the suite does not use it.) Set before JAX starts (conftest is
# imported before any test module); child processes inherit it. MENET_TEST_XLA_OPT=3 runs the
# suite at XLA's default level.
os.environ["XLA_FLAGS"] = " ".join(filter(None, [
    os.environ.get("XLA_FLAGS"),
    f"--xla_backend_optimization_level={os.environ.get('MENET_TEST_XLA_OPT', '2')}"]))

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
