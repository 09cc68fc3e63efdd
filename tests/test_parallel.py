"""Data parallelism: 4 devices = 1 device, and two jax.distributed processes agree.

Each configuration runs in its own process (tests/train_worker.py): the device
count is fixed when JAX starts. The training is ME-Net's adversarial mode
(PGD through BPDA with fresh masks per step, BatchNorm, per-device
reconstruction) for one epoch of 8 steps.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CIFAR_TEST

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not CIFAR_TEST.is_file(), reason="needs ../shared/data CIFAR-10")


def _env(devices):
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _worker(out, workdir, devices=1, extra=()):
  return subprocess.Popen([sys.executable, "-m", "tests.train_worker", str(out), str(workdir),
                           *extra], cwd=REPO, env=_env(devices), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(proc):
  out, _ = proc.communicate(timeout=400)
  assert proc.returncode == 0, out[-3000:]


def _max_difference(a, b):
  a, b = np.load(a), np.load(b)
  assert sorted(a.files) == sorted(b.files)
  return max(float(np.abs(a[k] - b[k]).max()) for k in a.files if k not in ("step", "accuracy"))


def test_four_devices_train_like_one(tmp_path):
  runs = {n: _worker(tmp_path / f"{n}.npz", tmp_path / f"run{n}", devices=n) for n in (1, 4)}
  for proc in runs.values():
    _finish(proc)
  assert int(np.load(tmp_path / "1.npz")["step"]) == 8
  assert _max_difference(tmp_path / "1.npz", tmp_path / "4.npz") < 1e-5


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_train_and_agree(tmp_path):
  port = _free_port()
  procs = [_worker(tmp_path / f"p{i}.npz", tmp_path / "run",
                   extra=[f"--coordinator=localhost:{port}", f"--process={i}", "--processes=2"])
           for i in range(2)]
  # Both outputs are read before either is judged: when one process fails, the
  # other's log says why.
  outs = [proc.communicate(timeout=400)[0] for proc in procs]
  for i, (proc, out) in enumerate(zip(procs, outs)):
    assert proc.returncode == 0, "\n\n".join(f"process {j}:\n{o[-3000:]}"
                                             for j, o in enumerate(outs))
  assert int(np.load(tmp_path / "p0.npz")["step"]) == 8
  assert _max_difference(tmp_path / "p0.npz", tmp_path / "p1.npz") == 0.0
  # Each process built the ME test set of its own half of the split.
  assert len(list((tmp_path / "run-cache").iterdir())) == 2
