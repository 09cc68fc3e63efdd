"""A trained run restored for inference: the classifier, its variables, its defense.

Only the model and the variables the classifier needs are built; no optimizer,
no training state. The checkpoint must have been written by the run's own
configuration (config.json), which is checked.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import jax

from menet_jax import defenses
from menet_jax.evaluation.target import Target
from menet_jax.training import checkpoint, factories, objectives
from menet_jax.training.config import Config
from menet_jax.utils import parallel, plugins, validation

CHECKPOINTS = ("last", "best")


@dataclasses.dataclass(frozen=True)
class Restored(Target):
  """A trained run's classifier and the defense in front of it (a `Target`).

  Attributes:
    apply_fn: (variables, x) -> logits in inference mode.
    variables: the classifier's variables ({"params", "batch_stats"}).
    defense: the run's defense (or the one evaluation put in front of it).
    config: the run's configuration.
    checkpoint: the restored checkpoint directory; step: its training step.
  """
  config: Config
  checkpoint: str
  step: int


def load_plugins(workdir: str | Path) -> list[str]:
  """Imports the plug-ins that the run in `workdir` recorded (none if there is no run there),
  so that the components it names are registered; returns them."""
  config_file = Path(workdir) / "config.json"
  if not config_file.is_file():
    return []
  return plugins.load(json.loads(config_file.read_text()).get("imports", ()))


def read_config(workdir: str | Path) -> Config:
  """The configuration of the trained run in `workdir` (its config.json), after importing the
  plug-ins it records.

  Raises:
    FileNotFoundError: workdir holds no run.
  """
  config_file = Path(workdir) / "config.json"
  if not config_file.is_file():
    raise FileNotFoundError(f"no trained run in {workdir}: {config_file} does not exist")
  values = json.loads(config_file.read_text())
  plugins.load(values.get("imports", ()))  # the components the run names may be plug-ins'
  return Config.from_json(values)


def load(workdir: str | Path, which: str = "last", *, defense: str | None = None,
         **defense_overrides: Any) -> Restored:
  """Restores a trained run's classifier (and its defense) from its run directory.

  Args:
    workdir: a run directory written by the training loop (config.json and
      checkpoints/).
    which: "last" (the final checkpoint) or "best" (the best test accuracy:
      selected on the test set, so biased upwards; "last" is the honest choice).
    defense: a component string of another defense to put in front of the
      classifier; None keeps the run's.
    **defense_overrides: parameters of the defense to change, e.g. inference="vote".

  Raises:
    FileNotFoundError: no run or no checkpoint of that kind in workdir.
  """
  validation.choice("checkpoint", which, CHECKPOINTS)
  workdir = Path(workdir)
  config = read_config(workdir)
  config.validate()
  ckpt_dir = workdir / "checkpoints" / which
  if not ckpt_dir.is_dir() or not any(p.name.isdigit() for p in ckpt_dir.iterdir()):
    raise FileNotFoundError(f"no {which!r} checkpoint in {ckpt_dir}")
  with checkpoint.Checkpoints(workdir / "checkpoints", config=config.identity(),
                              keep=config.keep_checkpoints,
                              normalize=Config.identity_of) as ckpts:
    step, tree = ckpts.restore_tree(which)
  model = factories.create_model(config)
  apply_fn, variables = objectives.create(config.objective).classifier(model, tree)
  chosen = defenses.create(defense or config.defense, **defense_overrides)
  chosen.check(config.image_shape())
  # Replicated on this process's devices: the evaluation splits each batch's defense draws
  # over them (runner._placed), and jit refuses variables committed to one of them.
  variables = jax.device_put(variables, parallel.replicated(parallel.mesh(jax.local_devices())))
  return Restored(apply_fn=functools.partial(apply_fn, train=False), variables=variables,
                  defense=chosen, config=config, checkpoint=str(ckpt_dir.absolute() / str(step)),
                  step=step)
