"""The one training loop runs any registered objective: a toy one defined here, for a few steps."""

import csv
import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax.evaluation import restore
from menet_jax.training import loop, objectives, run_dir
from menet_jax.training.config import Config
from menet_jax.training.objectives.standard import inputs, sgd_step
from tests.conftest import CIFAR_TEST, DATA_DIR


@objectives.register("toy_fresh_draws")
@dataclasses.dataclass(frozen=True)
class ToyFreshDraws(objectives.Objective):
  """SGD on one fresh draw of the defense per step, reporting the level it drew at."""
  scale: float = 1.0

  draws_in_step = True

  def step(self, state, batch, key, *, defense, augment):
    x = inputs(batch, key, augment)
    keys = jnp.stack([key] * x.shape[0])
    state, metrics = sgd_step(state, defense.transform(keys, x, batch["level"]), batch["label"])
    return state, dict(metrics, level=jnp.mean(batch["level"]) * self.scale)


@pytest.mark.skipif(not CIFAR_TEST.is_file(), reason="needs ../shared/data CIFAR-10")
def test_a_registered_objective_trains_through_the_loop(tmp_path):
  try:
    config = Config.for_dataset(
        "cifar10", workdir=str(tmp_path / "run"), data_dir=str(DATA_DIR),
        cache_dir=str(tmp_path / "cache"), train_split="test[:64]", test_split="test[64:80]",
        model="small_cnn", defense="menet(method=usvt, startp=0.4, endp=0.6, mask_num=2)",
        objective="toy_fresh_draws(scale=2)", epochs=1, batch_size=16, eval_batch_size=8,
        progress=False, log_every=1)
    config.validate()
    assert config.objective == "toy_fresh_draws(scale=2.0)" and config.mode == "custom"
    workdir, _ = run_dir.prepare(config)
    state, result = loop.train_and_evaluate(config, workdir)
    # The loop fed clean images, each half of the epoch at its level (p 0.4, then 0.5).
    assert int(state.step) == 8 and result["objective"] == "toy_fresh_draws(scale=2.0)"
    with open(workdir / "metrics.csv") as f:
      levels = [float(r["value"]) for r in csv.DictReader(f) if r["name"] == "level"]
    np.testing.assert_allclose(levels, [0.8] * 4 + [1.0] * 4, rtol=1e-6)
    # Evaluation restores its classifier without knowing the objective.
    restored = restore.load(workdir)
    assert restored.step == 8 and json.loads((workdir / "results.json").read_text())["step"] == 8
  finally:
    objectives.OBJECTIVES.unregister("toy_fresh_draws")
