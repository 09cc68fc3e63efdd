"""The metric log of a run directory: TensorBoard event files and a CSV.

`MetricWriter` writes every scalar twice: as TensorBoard events under
`workdir/tensorboard` (with TensorBoard's own event writer and protos, so no
TensorFlow is needed), and as rows of `workdir/metrics.csv` in long format,

    step,wall_time,name,value

which any tool reads without TensorBoard. The CSV is flushed on every `write`, so
a killed run keeps every row it wrote except possibly a partly written last one,
which the next writer on the directory drops.

A killed run that restarts from its checkpoint at step s repeats the steps after
s. `resume_step=s` drops the CSV rows of those steps and writes a TensorBoard
`SessionLog.START` event, after which TensorBoard discards the earlier events of
steps after s, so neither log shows two histories.

In a multi-host run one host writes the log; the others pass `enabled=False` and
their writers create nothing, but still check their arguments, so a bad call fails
on every host alike instead of on one while the others wait for it.
"""

from __future__ import annotations

import csv
import os
import time
import types
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from menet_jax.utils.atomic_write import atomic_write

CSV_HEADER = "step,wall_time,name,value\n"
# Seconds between the event writer's own flushes, so that TensorBoard shows a
# running job's scalars soon without a flush() from the training loop.
_EVENT_FLUSH_SECS = 10


class MetricWriter:
  """Writes scalars to TensorBoard event files and a CSV in a run directory.

  Usage::

    with MetricWriter(workdir, resume_step=restored_step) as writer:
      writer.write(step, {"train/loss": loss, "train/accuracy": accuracy})

  Args:
    workdir: The run directory; created if missing.
    enabled: False makes every call a no-op (beyond argument checks) that creates
      nothing, for the non-writing hosts of a multi-host run.
    resume_step: The step of the checkpoint a restarted run resumes from. Rows of
      later steps, which belong to the part of the killed run that is being
      repeated, are removed from the CSV and hidden in TensorBoard. None keeps an
      existing log as it is and appends to it.

  Raises:
    ValueError: If `resume_step` is not a non-negative integer, or
      `workdir/metrics.csv` exists but is not a metric log.
  """

  def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True,
               resume_step: int | None = None):
    if resume_step is not None:
      resume_step = _step("resume_step", resume_step)
    self._enabled = enabled
    self._closed = False
    if not enabled:
      return
    workdir = Path(workdir)
    csv_path = workdir / "metrics.csv"
    _prepare_csv(csv_path, resume_step)
    self._csv_file = open(csv_path, "a", newline="", encoding="utf-8")
    self._csv = csv.writer(self._csv_file, lineterminator="\n")
    self._events = EventFileWriter(str(workdir / "tensorboard"), flush_secs=_EVENT_FLUSH_SECS)
    if resume_step is not None:
      # TensorBoard discards the events of steps >= a START event's step; starting
      # one after the checkpoint keeps the checkpoint's own step, as the CSV does.
      self._events.add_event(event_pb2.Event(
          wall_time=time.time(), step=resume_step + 1,
          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Logs `scalars` at `step` and flushes the CSV.

    Args:
      step: A non-negative integer (a 0-d integer array, such as a train state's
        step, is accepted).
      scalars: Metric names to real numbers (Python, numpy or 0-d jax). NaN and
        inf are written as they are: a diverging loss is what the log must show.
        TensorBoard stores the values as float32, the CSV in full precision.

    Raises:
      ValueError: If `step` is not a non-negative integer, or a name is not a
        non-empty string without line breaks, or a value is not a real number.
      RuntimeError: If the writer is closed.
    """
    step = _step("step", step)
    values = _scalars(scalars)
    if self._closed:
      raise RuntimeError("MetricWriter.write called after close()")
    if not self._enabled:
      return
    now = time.time()
    self._csv.writerows((step, now, name, value) for name, value in values.items())
    self._csv_file.flush()
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=name, simple_value=value) for name, value in values.items()])
    self._events.add_event(event_pb2.Event(wall_time=now, step=step, summary=summary))

  def flush(self) -> None:
    """Writes everything logged so far to disk, TensorBoard events included."""
    if self._enabled and not self._closed:
      self._csv_file.flush()
      self._events.flush()

  def close(self) -> None:
    """Flushes and closes both logs; later calls do nothing."""
    if self._enabled and not self._closed:
      self._csv_file.close()
      self._events.close()
    self._closed = True

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
               traceback: types.TracebackType | None) -> None:
    self.close()


def _prepare_csv(path: Path, resume_step: int | None) -> None:
  """Creates the CSV, or rewrites an existing one without a partial last row and,
  when resuming, without the rows of steps after `resume_step`."""
  if not path.exists():
    with atomic_write(path) as tmp:
      tmp.write_text(CSV_HEADER, encoding="utf-8")
    return
  with open(path, newline="", encoding="utf-8") as f:
    lines = f.readlines()
  if not lines or lines[0] != CSV_HEADER:
    first = lines[0] if lines else ""
    raise ValueError(f"{path} exists but is not a metric log: its first line is {first!r}, "
                     f"expected {CSV_HEADER!r}")
  rows = lines[1:]
  # Names have no line breaks (checked in write), so a row without its newline is
  # one a killed run was writing.
  kept = [row for row in rows if row.endswith("\n")]
  if resume_step is not None:
    kept = [row for row in kept if int(row.split(",", 1)[0]) <= resume_step]
  if len(kept) < len(rows):
    with atomic_write(path) as tmp:
      tmp.write_text(CSV_HEADER + "".join(kept), encoding="utf-8")


def _describe(value: Any) -> str:
  return f"an array of shape {np.shape(value)}" if np.ndim(value) else repr(value)


def _step(name: str, value: Any) -> int:
  array = np.asarray(value)
  if array.ndim != 0 or array.dtype.kind not in "iu" or int(array) < 0:
    raise ValueError(f"{name} must be a non-negative integer, got {_describe(value)}")
  return int(array)


def _scalars(scalars: Any) -> dict[str, float]:
  if not isinstance(scalars, Mapping):
    raise ValueError(
        f"scalars must be a mapping from names to numbers, got {type(scalars).__name__}")
  values = {}
  for name, value in scalars.items():
    if not isinstance(name, str) or not name or "\n" in name or "\r" in name:
      raise ValueError(f"scalars names must be non-empty strings without line breaks, got {name!r}")
    array = np.asarray(value)
    if array.ndim != 0 or array.dtype.kind not in "iuf":
      raise ValueError(f"scalars[{name!r}] must be a real number, got {_describe(value)}")
    values[name] = float(array)
  return values
