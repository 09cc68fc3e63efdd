"""experiments.intrinsic_dimension: flags -> data -> the library's estimate, printed."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from menet_jax import data
from menet_jax.analysis.intrinsic_dimension import levina_bickel
from tests.conftest import DATA_DIR
from tests.watchdog import REPO


@pytest.mark.skipif(not (DATA_DIR / "mnist").is_dir(), reason="needs ../shared/data MNIST")
def test_intrinsic_dimension_script_prints_both_estimates():
  proc = subprocess.run([sys.executable, "-m", "experiments.intrinsic_dimension",
                         "--datasets=mnist:test[:300]", f"--data_dir={DATA_DIR}"], cwd=REPO,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  row = re.search(r"\| mnist \| test\[:300\] \| 784 \| (\d+) \| ([\d.]+) \| ([\d.]+) \| 13 \|",
                  proc.stdout)
  assert row, proc.stdout
  images, _ = data.load("mnist", "test[:300]", DATA_DIR)
  x = np.unique(images.reshape(300, -1).astype(np.float64) / 255, axis=0)
  assert int(row[1]) == len(x)
  assert float(row[2]) == pytest.approx(levina_bickel(x, estimator="mackay"), abs=0.05)
  assert float(row[3]) == pytest.approx(levina_bickel(x, estimator="levina"), abs=0.05)
