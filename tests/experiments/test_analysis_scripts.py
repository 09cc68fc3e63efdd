"""The analysis scripts: flags -> data -> the library, printed (intrinsic_dimension,
device_drift)."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from menet_jax import data
from menet_jax.analysis.intrinsic_dimension import levina_bickel
from tests.conftest import CIFAR_TEST, DATA_DIR
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


@pytest.mark.skipif(not CIFAR_TEST.is_file(), reason="needs ../shared/data CIFAR-10")
def test_device_drift_script_prints_a_row_per_step(tmp_path):
  # Two steps, four runs (float32 / float64 on 1 and 2 devices), each in its own process. The
  # float64 columns are the test's: the two device counts agree to float64 rounding (the bound
  # of tests/training/test_parallel.py), and float32 sits within float32 rounding of float64
  # after one step (lr 0.05 times gradients of magnitude <= ~1 of 16-image means: << 1e-4).
  proc = subprocess.run([sys.executable, "-m", "experiments.device_drift", "--devices=2",
                         "--images=32", f"--data_dir={DATA_DIR}", f"--workdir={tmp_path}"],
                        cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = re.findall(r"^\| (\d) \| (\S+) \| (\S+) \| (\S+) \| (\S+) \|$", proc.stdout, re.M)
  assert [int(r[0]) for r in rows] == [1, 2], proc.stdout
  assert all(float(r[2]) < 1e-9 for r in rows), rows
  assert float(rows[0][3]) < 1e-4 and float(rows[0][4]) < 1e-4, rows
  assert "machine:" in proc.stdout
