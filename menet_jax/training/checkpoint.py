"""Checkpoints of a training state: the last few for resuming, and the best one.

`Checkpoints` keeps two orbax `CheckpointManager`s under one directory:

    directory/last/<step>/   the newest `keep` checkpoints, to resume a killed run
    directory/best/<step>/   the one with the highest evaluation accuracy

Each step holds two items: `state`, the training state pytree (any pytree of
arrays; flax's TrainState works), and `config`, the run's configuration as JSON.
Restoring compares the stored configuration with the current one and the stored
tree with the target, and refuses a checkpoint of another model or configuration
with a `CheckpointMismatch` that names what differs, before any array is read.

A save that is killed part-way never looks complete. Orbax (0.12.8) writes a step
into `<step>.orbax-checkpoint-tmp` and, once every process has finished writing
and passed a barrier, the primary process writes `commit_success.txt` into it and
renames it to `<step>` (`AtomicRenameTemporaryPath.finalize`); a rename is atomic
on POSIX file systems. Steps are listed by their final names, so a leftover
temporary directory is not a checkpoint; the next `Checkpoints` on the directory
deletes it (orbax's `cleanup_tmp_directories`). On Google Cloud Storage, which
cannot rename atomically, orbax instead counts only the step directories that
hold `commit_success.txt`.

Saves are asynchronous: `save` returns once the arrays are copied to host memory,
and the files are written in a background thread while training goes on (so the
saved arrays may be donated or overwritten right away). `restore` and `close`
wait for that write; `wait_until_finished` waits explicitly.

In a multi-process run every process constructs `Checkpoints` and makes the same
calls with the same arguments; orbax divides the writing between processes and
synchronises them.
"""

from __future__ import annotations

import json
import os
import types
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from menet_jax.utils import dicts, validation

PyTree = Any

class CheckpointMismatch(ValueError):
  """A checkpoint of another model or configuration than the one restoring it."""


class Checkpoints:
  """Saves and restores training states in `directory/last` and `directory/best`.

  Usage::

    with Checkpoints(workdir / "checkpoints", config=config) as ckpts:
      if ckpts.latest_step() is not None:
        state = ckpts.restore(state)
      ...
      ckpts.save(step, state)
      ckpts.save_best(step, state, accuracy)

  Args:
    directory: Where the checkpoints live; created if missing.
    config: The run's configuration, a JSON-serialisable mapping, stored with
      every checkpoint and compared with the stored one on restore.
    keep: How many of the newest checkpoints `save` keeps in `directory/last`.
    ignore: Keys of `config` that may differ between a checkpoint and the run
      restoring it (say, the number of steps of a run that is being extended).
    normalize: Maps a stored config to the form of `config` before they are
      compared (e.g. reads an older layout of the same configuration).

  Raises:
    ValueError: If `directory` is an existing regular file, `keep` is not a
      positive integer, `config` is not a JSON-serialisable mapping, or `ignore`
      is a single string rather than a collection of keys.
  """

  def __init__(self, directory: str | os.PathLike, *, config: Mapping[str, Any], keep: int = 3,
               ignore: Collection[str] = (),
               normalize: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None):
    directory = Path(directory).absolute()  # orbax refuses relative paths
    if directory.is_file():
      raise ValueError(f"directory must be a directory, but {directory} is a regular file")
    keep = validation.integer_in("keep", keep, 1)
    if not isinstance(config, Mapping):
      raise ValueError(f"config must be a mapping, got {type(config).__name__}")
    try:
      # The JSON round trip gives the form a restored config comes back in
      # (tuples as lists), so that the two compare equal.
      self._config = json.loads(json.dumps(dict(config), allow_nan=False))
    except (TypeError, ValueError) as e:
      raise ValueError(f"config must be JSON-serialisable: {e}") from None
    if isinstance(ignore, str):
      raise ValueError(f"ignore must be a collection of config keys, not the string {ignore!r}")
    self._ignore = frozenset(ignore)
    self._normalize = normalize
    self._last = _manager(directory / "last",
                          preservation_policy=ocp.checkpoint_managers.LatestN(n=keep))
    # best_fn makes orbax store the accuracy with each checkpoint; BestN then
    # deletes all but the most accurate one.
    self._best = _manager(directory / "best", best_fn=_accuracy, best_mode="max",
                          preservation_policy=ocp.checkpoint_managers.BestN(
                              get_metric_fn=_accuracy, n=1, keep_checkpoints_without_metrics=False))
    best_step = self._best.best_step()
    self._best_record = (None if best_step is None
                         else (best_step, _accuracy(self._best.metrics(best_step))))

  def latest_step(self) -> int | None:
    """The step of the newest checkpoint in `directory/last`, or None if there is none."""
    return self._last.latest_step()

  def save(self, step: int, state: PyTree) -> None:
    """Saves `state` as step `step` in `directory/last`, keeping the newest `keep`.

    A step that is already saved is not written again: a training loop's final
    save often repeats its last periodic one.

    Args:
      step: A non-negative integer, not below the latest saved step.
      state: The pytree to save.

    Raises:
      ValueError: If `step` is not a non-negative integer or is below the latest
        saved step.
    """
    step = _step(step)
    latest = self._last.latest_step()
    if latest is not None and step < latest:
      raise ValueError(f"step must not be below the latest saved step {latest}, got {step}")
    if step != latest:
      self._last.save(step, args=self._args(state), force=True)

  def save_best(self, step: int, state: PyTree, accuracy: float) -> bool:
    """Saves `state` in `directory/best` if `accuracy` beats the best so far.

    In a multi-process run `accuracy` must be the same number on every process,
    since each decides on its own whether to take part in the save.

    Args:
      step: A non-negative integer.
      state: The pytree to save.
      accuracy: The evaluation accuracy of `state`; higher is better.

    Returns:
      Whether `state` became the best checkpoint (and the previous one was
      deleted). A tie with the best keeps the earlier checkpoint.

    Raises:
      ValueError: If `step` is not a non-negative integer or `accuracy` is not a
        finite real number.
    """
    step = _step(step)
    accuracy = _real("accuracy", accuracy)
    if self._best_record is not None and accuracy <= self._best_record[1]:
      return False
    if step in self._best.all_steps():
      # Saved by the lost part of a killed run, which reached this step before,
      # or earlier in this run; its save may still be in flight.
      self._best.wait_until_finished()
      self._best.delete(step)
    # force: orbax's own save policy skips steps below the newest saved one.
    self._best.save(step, args=self._args(state), metrics={"accuracy": accuracy}, force=True)
    self._best_record = (step, accuracy)
    return True

  def best(self) -> tuple[int, float] | None:
    """The step and accuracy of the best checkpoint, or None if there is none."""
    return self._best_record

  def restore(self, target: PyTree) -> PyTree:
    """Restores the newest checkpoint of `directory/last`.

    Args:
      target: A pytree of the structure to restore into, whose leaves are arrays
        or `jax.ShapeDtypeStruct`s; the restored arrays take their dtypes and
        shardings.

    Returns:
      The restored pytree, of the structure of `target`.

    Raises:
      FileNotFoundError: If there is no checkpoint.
      CheckpointMismatch: If the checkpoint was written with another
        configuration (outside `ignore`) or holds another tree than `target`.
    """
    return self._restore(self._last, self._last.latest_step(), target)

  def restore_best(self, target: PyTree) -> PyTree:
    """Restores the best checkpoint of `directory/best`; see `restore`."""
    return self._restore(self._best, None if self._best_record is None else self._best_record[0],
                         target)

  def restore_tree(self, which: str | int = "last") -> tuple[int, PyTree]:
    """(step, the saved state as nested dicts of arrays), restored without a target.

    For inference, which needs the classifier's variables and nothing that
    would build the optimizer; the config is still checked.

    Args:
      which: "last" (the newest checkpoint), "best", or the step of a kept checkpoint.
    """
    if isinstance(which, int) and not isinstance(which, bool):
      kept = self._last.all_steps()
      if which not in kept:
        raise ValueError(f"which: no checkpoint of step {which} in {self._last.directory}; "
                         f"kept: {sorted(kept)}")
      return which, self._restore(self._last, which, None)
    validation.choice("which", which, ("last", "best"))
    if which == "last":
      manager, step = self._last, self._last.latest_step()
    else:
      manager, step = self._best, None if self._best_record is None else self._best_record[0]
    return step, self._restore(manager, step, None)

  def wait_until_finished(self) -> None:
    """Blocks until the files of every save so far are written."""
    self._last.wait_until_finished()
    self._best.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases orbax's resources."""
    self._last.close()
    self._best.close()

  def __enter__(self) -> Checkpoints:
    return self

  def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
               traceback: types.TracebackType | None) -> None:
    self.close()

  def _args(self, state: PyTree) -> ocp.args.Composite:
    return ocp.args.Composite(state=ocp.args.StandardSave(state),
                              config=ocp.args.JsonSave(self._config))

  def _restore(self, manager: ocp.CheckpointManager, step: int | None, target: PyTree) -> PyTree:
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    manager.wait_until_finished()  # the step may still be being written
    where = manager.directory / str(step)
    stored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    stored_config = stored["config"]
    if self._normalize is not None:
      stored_config = json.loads(json.dumps(self._normalize(stored_config)))
    _check_config(stored_config, self._config, self._ignore, where)
    stored_tree = manager.item_metadata(step)["state"].tree
    if target is not None:
      # Checked here because orbax reads arrays before it notices a mismatch, and
      # fails with a long traceback that leaves its reads running.
      _check_tree(stored_tree, target, where)
    else:
      # Without a target orbax would restore the arrays onto the devices they were saved from,
      # and refuses when this process has others (a run trained on 4 devices, read on 1).
      # One local device holds them; callers place them from there.
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            stored_tree)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
    return manager.restore(step, args=args)["state"]


def _manager(directory: Path, **options: Any) -> ocp.CheckpointManager:
  # Registering the handlers lets a fresh manager read items it has not saved yet.
  handlers = ocp.handlers.create_default_handler_registry(
      state=ocp.StandardCheckpointHandler(), config=ocp.JsonCheckpointHandler())
  # cleanup_tmp_directories: a new run deletes what killed saves left behind.
  # The barrier prefix: orbax names the multi-process barrier of an async save after the
  # step alone ("_async_write_complete.<step>"), so `last` and `best` saving the same step
  # at once collided and hung a two-process run (1 run in 6 on this machine).
  options = ocp.CheckpointManagerOptions(
      cleanup_tmp_directories=True,
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          barrier_sync_key_prefix=directory.name),
      **options)
  return ocp.CheckpointManager(directory, options=options, handler_registry=handlers)


def _accuracy(metrics: Mapping[str, float]) -> float:
  return metrics["accuracy"]


def _check_config(stored: Mapping[str, Any], current: Mapping[str, Any], ignore: frozenset[str],
                  where: Path) -> None:
  """Raises CheckpointMismatch listing the keys outside `ignore` whose values differ."""
  differences = dicts.differences(stored, current, where="the checkpoint", ignore=ignore)
  if differences:
    raise CheckpointMismatch(f"checkpoint {where} was written with another config: "
                             + "; ".join(differences))


def _check_tree(stored: PyTree, target: PyTree, where: Path) -> None:
  """Raises CheckpointMismatch unless `stored` (orbax metadata) has the leaves and
  shapes of `target`; dtypes may differ, since restoring casts."""
  def shapes(tree):
    # np.shape reads .shape where there is one (arrays, ShapeDtypeStruct, orbax
    # metadata) and covers Python scalars (flax's initial step is an int).
    return {"/".join(path): np.shape(leaf) for path, leaf in ocp.tree.to_flat_dict(tree).items()}
  have, want = shapes(stored), shapes(target)
  differences = (
      [f"{path} only in the checkpoint" for path in sorted(have.keys() - want.keys())]
      + [f"{path} only in the target" for path in sorted(want.keys() - have.keys())]
      + [f"{path} has shape {have[path]} in the checkpoint, {want[path]} in the target"
         for path in sorted(have.keys() & want.keys()) if have[path] != want[path]])
  if differences:
    more = f"; and {len(differences) - 3} more" if len(differences) > 3 else ""
    raise CheckpointMismatch(f"checkpoint {where} holds another model: "
                             + "; ".join(differences[:3]) + more)


def _step(value: Any) -> int:
  array = np.asarray(value)
  if array.ndim != 0 or array.dtype.kind not in "iu" or int(array) < 0:
    shown = f"an array of shape {array.shape}" if array.ndim else repr(value)
    raise ValueError(f"step must be a non-negative integer, got {shown}")
  return int(array)


def _real(name: str, value: Any) -> float:
  array = np.asarray(value)
  if array.ndim != 0 or array.dtype.kind not in "iuf":
    shown = f"an array of shape {array.shape}" if array.ndim else repr(value)
    raise ValueError(f"{name} must be a real number, got {shown}")
  return validation.real_number(name, float(array))
