"""MetricWriter: read back with TensorBoard's own reader and the csv module."""

import csv
import math
import time

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from menet_jax.training.metrics import CSV_HEADER, MetricWriter


def _csv_rows(workdir):
  with open(workdir / "metrics.csv", newline="") as f:
    rows = list(csv.reader(f))
  assert ",".join(rows[0]) + "\n" == CSV_HEADER
  return [(int(step), float(wall), name, float(value)) for step, wall, name, value in rows[1:]]


def _tensorboard(workdir):
  events = EventAccumulator(str(workdir / "tensorboard"))
  events.Reload()
  return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _wait_for_next_second():
  # Event files are named by creation time in whole seconds, and TensorBoard reads
  # them in name order; a restart within the same second could sort before the
  # run it resumes. Real restarts take longer than a second.
  time.sleep(1.01 - time.time() % 1)


def test_round_trip_csv_and_tensorboard(tmp_path):
  with MetricWriter(tmp_path) as writer:
    for step in range(3):
      writer.write(step, {"train/loss": 1.0 / (step + 1), "train/accuracy": 0.25 * step})
    writer.write(3, {"train/loss": math.nan, "grad_norm": math.inf})

  rows = _csv_rows(tmp_path)
  assert [(s, n) for s, _, n, _ in rows[:2]] == [(0, "train/loss"), (0, "train/accuracy")]
  assert [v for s, _, n, v in rows if n == "train/loss"][:3] == [1.0, 0.5, 1.0 / 3]
  assert math.isnan(rows[-2][3]) and rows[-1][2:] == ("grad_norm", math.inf)
  assert all(abs(wall - time.time()) < 60 for _, wall, _, _ in rows)

  scalars = _tensorboard(tmp_path)
  assert sorted(scalars) == ["grad_norm", "train/accuracy", "train/loss"]
  assert scalars["train/accuracy"] == [(0, 0.0), (1, 0.25), (2, 0.5)]
  steps, values = zip(*scalars["train/loss"])
  assert steps == (0, 1, 2, 3)
  np.testing.assert_allclose(values[:3], [1.0, 0.5, 1.0 / 3], rtol=1e-6)  # float32 in TensorBoard
  assert math.isnan(values[3]) and scalars["grad_norm"] == [(3, math.inf)]


def test_accepts_array_steps_and_values(tmp_path):
  with MetricWriter(tmp_path) as writer:
    writer.write(jnp.asarray(7), {"a": np.float32(0.5), "b": jnp.asarray(2.0), "c": np.int64(3)})
  rows = [(s, n, v) for s, _, n, v in _csv_rows(tmp_path)]
  assert rows == [(7, "a", 0.5), (7, "b", 2.0), (7, "c", 3.0)]


def test_resume_drops_the_lost_part_of_a_killed_run(tmp_path):
  with MetricWriter(tmp_path) as writer:
    for step in range(1, 11):
      writer.write(step, {"loss": float(step)})
  _wait_for_next_second()
  # Restarted from the checkpoint at step 5: steps 6.. are computed again.
  with MetricWriter(tmp_path, resume_step=5) as writer:
    for step in range(6, 9):
      writer.write(step, {"loss": 100.0 + step})

  expected = [(s, float(s)) for s in range(1, 6)] + [(s, 100.0 + s) for s in range(6, 9)]
  assert [(s, v) for s, _, _, v in _csv_rows(tmp_path)] == expected
  assert _tensorboard(tmp_path)["loss"] == expected


def test_partial_last_row_of_a_killed_run_is_dropped(tmp_path):
  with MetricWriter(tmp_path) as writer:
    writer.write(1, {"loss": 1.0})
  with open(tmp_path / "metrics.csv", "a") as f:
    f.write("2,1700000000.0,lo")  # killed mid-row
  with MetricWriter(tmp_path) as writer:
    writer.write(2, {"loss": 2.0})
  assert [(s, n, v) for s, _, n, v in _csv_rows(tmp_path)] == [(1, "loss", 1.0), (2, "loss", 2.0)]


def test_resume_without_an_earlier_log(tmp_path):
  with MetricWriter(tmp_path / "run", resume_step=0) as writer:
    writer.write(1, {"loss": 1.0})
  assert _tensorboard(tmp_path / "run") == {"loss": [(1, 1.0)]}


def test_disabled_writer_creates_nothing(tmp_path):
  workdir = tmp_path / "run"
  with MetricWriter(workdir, enabled=False, resume_step=3) as writer:
    writer.write(4, {"loss": 1.0})
    writer.flush()
  assert not workdir.exists()
  with pytest.raises(ValueError, match="step must be a non-negative integer"):
    writer.write(-1, {"loss": 1.0})  # checks run on every host alike


def test_refuses_a_file_that_is_not_a_metric_log(tmp_path):
  (tmp_path / "metrics.csv").write_text("epoch,loss\n1,0.5\n")
  with pytest.raises(ValueError, match="metrics.csv exists but is not a metric log"):
    MetricWriter(tmp_path)


def test_write_after_close(tmp_path):
  writer = MetricWriter(tmp_path)
  writer.close()
  writer.close()
  with pytest.raises(RuntimeError, match="after close"):
    writer.write(0, {"loss": 1.0})


@pytest.mark.parametrize("step", [-1, 1.5, 2.0, "3", True, np.array([1, 2]), None])
def test_bad_step(tmp_path, step):
  with MetricWriter(tmp_path) as writer:
    with pytest.raises(ValueError, match="^step must be a non-negative integer"):
      writer.write(step, {"loss": 1.0})


@pytest.mark.parametrize("scalars,match", [
    ([("loss", 1.0)], "scalars must be a mapping"),
    ({"": 1.0}, "scalars names must be non-empty strings"),
    ({"a\nb": 1.0}, "without line breaks"),
    ({3: 1.0}, "scalars names must be"),
    ({"loss": "1.0"}, r"scalars\['loss'\] must be a real number"),
    ({"loss": True}, r"scalars\['loss'\] must be a real number"),
    ({"loss": np.ones(2)}, r"got an array of shape \(2,\)"),
    ({"loss": 1 + 2j}, "must be a real number"),
])
def test_bad_scalars(tmp_path, scalars, match):
  with MetricWriter(tmp_path) as writer:
    with pytest.raises(ValueError, match=match):
      writer.write(0, scalars)


def test_bad_resume_step(tmp_path):
  with pytest.raises(ValueError, match="^resume_step must be a non-negative integer, got -2"):
    MetricWriter(tmp_path, resume_step=-2)
