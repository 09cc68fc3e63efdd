"""The run directory: created whole or not at all, resumed only by the same run.

    workdir/
      config.json      the resolved configuration (training.config.Config)
      flags            the same as a flagfile: rerun with --flagfile=workdir/flags
      checkpoints/     orbax: last/ (every N steps, last k kept), best/ (by accuracy)
      tensorboard/     event files;  metrics.csv  the same numbers
      results.json     final metrics, written at the end

A new directory is assembled under a temporary name and renamed into place, so
a crash never leaves a directory that looks like a run. An existing directory
is resumed when its config.json describes the same run (fields that only say
where things are may differ, config.RUNTIME_FIELDS) and refused otherwise.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from menet_jax.training import config as config_lib
from menet_jax.utils import dicts, plugins


class RunMismatch(ValueError):
  """The directory holds another run (or is not a run directory)."""


def _flagfile(config: config_lib.Config) -> str:
  lines = []
  for name, value in config.to_json().items():
    if value is None:
      continue
    if name == "imports":  # the command line's repeatable --import, one line per module
      lines += [f"--import={module}" for module in value]
      continue
    if isinstance(value, list):
      value = ",".join(map(str, value))
    elif isinstance(value, bool):
      value = str(value).lower()
    lines.append(f"--{name}={value}")
  return "\n".join(lines) + "\n"


def prepare(config: config_lib.Config, *, create: bool = True) -> tuple[Path, bool]:
  """Checks `config.workdir` against `config`, creating it if needed.

  Args:
    config: a validated configuration.
    create: False on the non-chief processes of a multi-host run, which only check.

  Returns:
    (workdir, existed): existed is True when an earlier run of this config is resumed.

  Raises:
    RunMismatch: the directory holds a different run, or files that are not a run.
  """
  workdir = Path(config.workdir)
  config_file = workdir / "config.json"
  if workdir.exists() and not workdir.is_dir():
    raise RunMismatch(f"workdir {workdir} exists and is not a directory")
  if config_file.is_file():
    values = json.loads(config_file.read_text())
    plugins.load(values.get("imports", ()))  # the stored run may name plug-ins' components
    stored = config_lib.Config.from_json(values).identity()
    diff = dicts.differences(stored, config.identity(), where="the directory")
    if diff:
      raise RunMismatch(f"workdir {workdir} holds a different run ({'; '.join(diff)}); "
                        "use another --workdir")
    return workdir, True
  if workdir.is_dir() and any(workdir.iterdir()):
    raise RunMismatch(f"workdir {workdir} is not empty and has no config.json, so it is not a "
                      "menet_jax run; use another --workdir")
  if not create:
    raise RunMismatch(f"workdir {workdir} has not been created by process 0")
  workdir.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{workdir.name}.tmp-", dir=workdir.parent))
  os.chmod(tmp, 0o755)
  (tmp / "config.json").write_text(json.dumps(config.to_json(), indent=2, sort_keys=True) + "\n")
  (tmp / "flags").write_text(_flagfile(config))
  if workdir.is_dir():
    workdir.rmdir()  # empty, checked above
  os.rename(tmp, workdir)
  return workdir, False
