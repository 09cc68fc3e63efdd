"""Checkpoints: round trips, retention, refusals of foreign checkpoints, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax.training.checkpoint import CheckpointMismatch, Checkpoints
from tests import watchdog

CONFIG = {"model": "resnet20", "lr": 0.1, "widths": (16, 32), "num_steps": 100}


def _state(seed=0, width=4):
  """A TrainState-like pytree: a step, params, batch stats and an optimizer state."""
  rng = np.random.default_rng(seed)
  params = {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 3, width)), jnp.float32)},
            "dense": {"kernel": jnp.asarray(rng.normal(size=(width, 10)), jnp.float32),
                      "bias": jnp.asarray(rng.normal(size=10), jnp.float32)}}
  return {"step": jnp.asarray(seed, jnp.int32),
          "params": params,
          "batch_stats": {"mean": jnp.asarray(rng.normal(size=width), jnp.float32)},
          "opt_state": (jax.tree.map(jnp.zeros_like, params), {})}


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert x.dtype == y.dtype


def _steps(path):
  return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())


def test_round_trip_and_resume_in_a_new_process(tmp_path):
  with Checkpoints(tmp_path, config=CONFIG) as ckpts:
    assert ckpts.latest_step() is None and ckpts.best() is None
    ckpts.save(7, _state(7))
    _assert_trees_equal(ckpts.restore(_state(0)), _state(7))  # waits for the async save
  # A restarted run has a fresh object (orbax manager) on the same directory.
  with Checkpoints(tmp_path, config=CONFIG) as ckpts:
    assert ckpts.latest_step() == 7
    _assert_trees_equal(ckpts.restore(_state(0)), _state(7))


def test_keeps_the_last_k(tmp_path):
  with Checkpoints(tmp_path, config=CONFIG, keep=2) as ckpts:
    for step in (10, 20, 30, 30):  # the repeated final save is skipped
      ckpts.save(step, _state(step))
    ckpts.wait_until_finished()
    assert ckpts.latest_step() == 30
    assert _steps(tmp_path / "last") == [20, 30]
    _assert_trees_equal(ckpts.restore(_state(0)), _state(30))
    with pytest.raises(ValueError, match="step must not be below the latest saved step 30, got 25"):
      ckpts.save(25, _state(25))
    # Any kept step can be read back as a tree; a step not kept is named with what is.
    step, tree = ckpts.restore_tree(20)
    assert step == 20
    np.testing.assert_array_equal(tree["params"]["dense"]["bias"],
                                  _state(20)["params"]["dense"]["bias"])
    with pytest.raises(ValueError, match=r"no checkpoint of step 10 .* kept: \[20, 30\]"):
      ckpts.restore_tree(10)


def test_keeps_only_the_best(tmp_path):
  with Checkpoints(tmp_path, config=CONFIG) as ckpts:
    saves = [(1, 0.3), (2, 0.5), (3, 0.4), (4, 0.5)]  # a tie keeps the earlier one
    assert [ckpts.save_best(s, _state(s), a) for s, a in saves] == [True, True, False, False]
    assert ckpts.best() == (2, 0.5)
    ckpts.wait_until_finished()
    assert _steps(tmp_path / "best") == [2]
    _assert_trees_equal(ckpts.restore_best(_state(0)), _state(2))
    assert ckpts.latest_step() is None  # best and last are separate
  with Checkpoints(tmp_path, config=CONFIG) as ckpts:
    assert ckpts.best() == (2, 0.5)
    assert not ckpts.save_best(5, _state(5), 0.45)
    assert ckpts.save_best(1, _state(1), 0.6)  # an earlier step, as after a restore, still counts
    assert ckpts.best() == (1, 0.6)
    ckpts.wait_until_finished()
    assert _steps(tmp_path / "best") == [1]


def test_refuses_another_config_naming_the_key(tmp_path):
  with Checkpoints(tmp_path, config=CONFIG) as ckpts:
    ckpts.save(1, _state(1))
  other = {**CONFIG, "lr": 0.2, "num_steps": 200, "seed": 3}
  with Checkpoints(tmp_path, config=other) as ckpts:
    with pytest.raises(CheckpointMismatch, match=r"lr: 0\.1 in the checkpoint, 0\.2 now; "
                                                r"num_steps: 100 in the checkpoint, 200 now; "
                                                r"seed: missing in the checkpoint, 3 now"):
      ckpts.restore(_state(0))
  with Checkpoints(tmp_path, config=other, ignore=("lr", "num_steps", "seed")) as ckpts:
    _assert_trees_equal(ckpts.restore(_state(0)), _state(1))


def test_refuses_another_model(tmp_path):
  with Checkpoints(tmp_path, config=CONFIG) as ckpts:
    ckpts.save(1, _state(1))
    wider = _state(0, width=8)
    with pytest.raises(CheckpointMismatch, match=r"holds another model: batch_stats/mean has shape "
                                                r"\(4,\) in the checkpoint, \(8,\) in the target; "
                                                r".*; and 2 more$"):
      ckpts.restore(wider)
    renamed = _state(0)
    renamed["params"]["head"] = renamed["params"].pop("dense")
    with pytest.raises(CheckpointMismatch, match="params/dense/bias only in the checkpoint"):
      ckpts.restore(renamed)


def test_restores_into_abstract_target_with_sharding(tmp_path):
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        _state(0))
  target["params"]["dense"]["bias"] = jax.ShapeDtypeStruct((10,), jnp.bfloat16, sharding=sharding)
  with Checkpoints(tmp_path, config=CONFIG) as ckpts:
    ckpts.save(3, _state(3))
    restored = ckpts.restore(target)
  assert all(isinstance(x, jax.Array) and x.sharding == sharding for x in jax.tree.leaves(restored))
  assert restored["params"]["dense"]["bias"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(restored["params"]["dense"]["kernel"],
                                _state(3)["params"]["dense"]["kernel"])


def test_leftover_of_a_killed_save_is_not_a_checkpoint(tmp_path):
  with Checkpoints(tmp_path, config=CONFIG) as ckpts:
    ckpts.save(1, _state(1))
  # What a process killed while writing step 2 leaves behind.
  leftover = tmp_path / "last" / "2.orbax-checkpoint-tmp"
  (leftover / "state").mkdir(parents=True)
  (leftover / "state" / "_METADATA").write_text("{")
  with Checkpoints(tmp_path, config=CONFIG) as ckpts:
    assert ckpts.latest_step() == 1
    _assert_trees_equal(ckpts.restore(_state(0)), _state(1))
    ckpts.save(2, _state(2))
    _assert_trees_equal(ckpts.restore(_state(0)), _state(2))
  assert _steps(tmp_path / "last") == [1, 2] and not leftover.exists()


def test_restore_without_checkpoint(tmp_path):
  with Checkpoints(tmp_path, config=CONFIG) as ckpts:
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
      ckpts.restore(_state(0))
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
      ckpts.restore_best(_state(0))


def test_accepts_array_step_and_accuracy(tmp_path):
  with Checkpoints(tmp_path, config=CONFIG) as ckpts:
    ckpts.save(jnp.asarray(4), _state(4))
    assert ckpts.save_best(np.int64(4), _state(4), jnp.asarray(0.25))
    assert ckpts.latest_step() == 4 and ckpts.best() == (4, 0.25)


@pytest.mark.parametrize("kwargs,match", [
    ({"keep": 0}, r"keep must be an integer >= 1"),
    ({"keep": 2.0}, "keep must be an integer"),
    ({"config": [("lr", 0.1)]}, "config must be a mapping"),
    ({"config": {"f": lambda x: x}}, "config must be JSON-serialisable"),
    ({"config": {"lr": float("nan")}}, "config must be JSON-serialisable"),
    ({"ignore": "seed"}, "ignore must be a collection of config keys"),
])
def test_bad_arguments(tmp_path, kwargs, match):
  with pytest.raises(ValueError, match=match):
    Checkpoints(tmp_path, **{"config": CONFIG, **kwargs})


def test_directory_must_not_be_a_file(tmp_path):
  (tmp_path / "ckpt").write_text("")
  with pytest.raises(ValueError, match="directory must be a directory, but .*ckpt is a regular"):
    Checkpoints(tmp_path / "ckpt", config=CONFIG)


@pytest.mark.parametrize("step", [-1, 1.0, "2", True, np.arange(2)])
def test_bad_step(tmp_path, step):
  with Checkpoints(tmp_path, config=CONFIG) as ckpts:
    with pytest.raises(ValueError, match="^step must be a non-negative integer"):
      ckpts.save(step, _state(0))
    with pytest.raises(ValueError, match="^step must be a non-negative integer"):
      ckpts.save_best(step, _state(0), 0.5)


@pytest.mark.parametrize("accuracy,match", [
    (float("nan"), "accuracy must be finite"),
    ("0.5", "accuracy must be a real number"),
    (np.ones(2), r"accuracy must be a real number, got an array of shape \(2,\)"),
])
def test_bad_accuracy(tmp_path, accuracy, match):
  with Checkpoints(tmp_path, config=CONFIG) as ckpts:
    with pytest.raises(ValueError, match=match):
      ckpts.save_best(0, _state(0), accuracy)


SAVE_ON_FOUR_DEVICES = """
import sys, jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from menet_jax.training.checkpoint import Checkpoints
assert jax.device_count() == 4
replicated = NamedSharding(Mesh(np.asarray(jax.devices()), ("data",)), PartitionSpec())
with Checkpoints(sys.argv[1], config={"model": "m"}) as ckpts:
  ckpts.save(3, {"params": {"w": jax.device_put(jnp.arange(8.0), replicated)}})
"""


def test_a_checkpoint_saved_on_four_devices_reads_on_one(tmp_path):
  # A run trained on 4 devices, evaluated in a 1-device process: restoring without a target
  # must not ask for the devices it was saved from.
  watchdog.run(["-c", SAVE_ON_FOUR_DEVICES, tmp_path], devices=4, timeout=120,
               what="a save on 4 devices")
  with Checkpoints(tmp_path, config={"model": "m"}) as ckpts:
    step, tree = ckpts.restore_tree()
  assert step == 3
  np.testing.assert_array_equal(np.asarray(tree["params"]["w"]), np.arange(8.0))
