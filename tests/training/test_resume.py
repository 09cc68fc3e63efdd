"""A real run, killed with SIGKILL after a checkpoint and restarted with the same
command, ends with exactly the parameters of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from menet_jax.training import checkpoint, factories, objectives
from menet_jax.training.config import Config
from tests.conftest import CIFAR_TEST, DATA_DIR

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not CIFAR_TEST.is_file(), reason="needs ../shared/data CIFAR-10")


# Both runs: 3 epochs of 16 steps, checkpoints every 8 steps.
RUNS = {
    # ME-Net pure training: 256 images x 2 masks / batch 32.
    "menet": ["-m", "experiments.cifar10", "--train_split=train[:256]", "--test_split=test[:64]",
              "--model=small_cnn", "--mode=pure", "--me_method=usvt", "--startp=0.4",
              "--endp=0.6", "--mask_num=2", "--lr_boundaries=2", "--lr=0.05"],
    # The ER-Classifier's three updates with PGD adversarial training (Adam), on MNIST's
    # offline test set (the first 512 images train, the last 64 judge).
    "er": ["-m", "experiments.mnist", "--train_split=test[:512]", "--test_split=test[9936:]",
           "--model=er_mnist(width=8)", "--mode=vanilla",
           "--objective=er(eps=0.3,step_size=0.1,steps=2)", "--optimizer=adam", "--lr=0.001",
           "--weight_decay=0"],
}


def _command(run, workdir, cache):
  return [sys.executable, *RUNS[run], f"--workdir={workdir}", f"--data_dir={DATA_DIR}",
          f"--cache_dir={cache}", "--epochs=3", "--batch_size=32", "--eval_batch_size=32",
          "--checkpoint_every=8", "--log_every=4", "--noprogress"]


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu")


def _final_state(workdir):
  config = Config.from_json(json.loads((workdir / "config.json").read_text()))
  model = factories.create_model(config)
  tx = factories.optimizer(config, steps_per_epoch=16)
  objective = objectives.create(config.objective)
  target = jax.eval_shape(lambda k: objective.init(k, model, tx, config.image_shape()),
                          jax.random.key(0))
  with checkpoint.Checkpoints(workdir / "checkpoints", config=config.identity()) as ckpts:
    assert ckpts.latest_step() == 48
    state = ckpts.restore(target)
  return jax.tree.leaves(state)


@pytest.mark.parametrize("run", sorted(RUNS))
def test_killed_run_resumes_to_the_uninterrupted_result(run, tmp_path):
  cache = tmp_path / "cache"
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  subprocess.run(_command(run, straight, cache), cwd=REPO, env=_env(), check=True,
                 capture_output=True, timeout=400)

  proc = subprocess.Popen(_command(run, killed, cache), cwd=REPO, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  last = killed / "checkpoints" / "last"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if last.is_dir() and any(p.name.isdigit() and int(p.name) >= 16 for p in last.iterdir()):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert not (killed / "results.json").exists(), "the run ended before it could be killed"

  resumed = subprocess.run(_command(run, killed, cache), cwd=REPO, env=_env(), capture_output=True,
                           text=True, timeout=400)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed" in resumed.stderr
  for a, b in zip(_final_state(straight), _final_state(killed), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  r1, r2 = (json.loads((d / "results.json").read_text()) for d in (straight, killed))
  assert r1["test_accuracy"] == r2["test_accuracy"] and r1["test_loss"] == r2["test_loss"]
  # The metrics of the lost stretch were replaced, not duplicated.
  rows = (killed / "metrics.csv").read_text().splitlines()[1:]
  keys = [(r.split(",")[0], r.split(",")[2]) for r in rows]
  assert len(keys) == len(set(keys))
