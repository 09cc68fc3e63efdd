"""The configuration of a training run, with each dataset's defaults (Table 8, data.Dataset).

A `Config` is plain data: flags (experiments/) or code build one, `validate`
checks it before anything is created on disk, and the run directory stores it
as JSON so that a restart can prove it is the same run.

What the run trains is two independent choices, each a component string:

    defense     what sits in front of the classifier (`menet_jax.defenses`):
                "identity", "menet(method=usvt, keep=0.8, startp=0.4, endp=0.6, mask_num=10)"
    objective   how the classifier is trained (`menet_jax.training.objectives`):
                "standard", "pgd_at(eps=0.0314, step_size=0.0078, steps=7)"

Both are stored with every parameter written out, so that a default spelled
out and a default left implicit are the same run. The paper's four modes are
names for four combinations (`combination`): vanilla = identity + standard,
pure = menet + standard (on cached draws, Algorithm 1), adv = menet + pgd_at,
madry = identity + pgd_at.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from menet_jax import data, defenses, models
from menet_jax.training import objectives
from menet_jax.utils import validation
from menet_jax.utils.registry import format_spec, parse

MODES = ("vanilla", "pure", "adv", "madry")
# The paper's estimator: "Unless otherwise specified, we use the Nuclear Norm minimization method"
# (ME-Net.txt L107). The release's is USVT (docs/deviations.md).
ME_METHOD = "nuclear_norm"
OPTIMIZERS = ("sgd", "adam")

# Fields that say where things are or how the run is shown, not what is computed:
# a restarted run may change them.
RUNTIME_FIELDS = ("workdir", "data_dir", "cache_dir", "progress", "log_every", "eval_batch_size",
                  "imports")


def pgd_defaults(dataset: str) -> dict[str, float]:
  """The dataset's PGD: eps, step_size and steps (Section 3.3 of the paper)."""
  return dict(data.dataset(dataset).pgd)


def combination(mode: str, dataset: str, *, me_method: str = ME_METHOD,
                me_params: dict[str, Any] | None = None, layout: str | None = None,
                startp: float | None = None, endp: float | None = None,
                mask_num: int | None = None, inference: str | None = None,
                votes: int | None = None, adv_eps: float | None = None,
                adv_step: float | None = None, adv_steps: int | None = None) -> tuple[str, str]:
  """(defense, objective) component strings of one of the paper's modes: the shorthand that
  --mode expands to. Arguments left None take the component's declared default (MENet.create's,
  the dataset's PGD).

  Args:
    mode: "vanilla", "pure", "adv" or "madry".
    dataset: sets the PGD of adv and madry where adv_* are None (`pgd_defaults`).
    me_method, me_params, layout, startp, endp, mask_num, inference, votes: the
      ME-Net defense of pure and adv (votes only with inference="vote").
    adv_eps, adv_step, adv_steps: PGD of adv and madry training.
  """
  validation.choice("mode", mode, MODES)
  defense = "identity"
  if mode in ("pure", "adv"):
    given = dict(layout=layout, startp=startp, endp=endp, mask_num=mask_num, inference=inference,
                 votes=votes if inference == "vote" else None)
    defense = format_spec("menet", dict(me_params or {}, method=me_method,
                                        **{k: v for k, v in given.items() if v is not None}))
  objective = "standard"
  if mode in ("adv", "madry"):
    pgd = pgd_defaults(dataset)
    given = dict(eps=adv_eps, step_size=adv_step, steps=adv_steps)
    pgd.update({k: v for k, v in given.items() if v is not None})
    objective = format_spec("pgd_at", pgd)
  return defense, objective


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that determines a training run.

  Attributes (units in brackets):
    dataset: a registered dataset (menet_jax.data.names()).
    train_split, test_split: TFDS-style splits, e.g. "train", "test[:8000]".
    model: a registered classifier (menet_jax.models), e.g. "resnet18".
    defense: component string of the defense (menet_jax.defenses).
    objective: component string of the training objective (training.objectives).
    epochs, batch_size [global images], lr, lr_boundaries [epochs], lr_decay,
      momentum, weight_decay, augment: optimisation (Table 8).
    optimizer: "sgd" (with momentum; ME-Net's) or "adam" (PyTorch's defaults, beta
      0.9 / 0.999, eps 1e-8; the ER-Classifier's); both with coupled L2 weight decay.
    num_classes: logits of the classifier.
    seed: every random draw of the run derives from it.
    checkpoint_every [steps, 0 = once per epoch], keep_checkpoints.
    eval_batch_size, log_every, progress, workdir, data_dir, cache_dir: where
      and how (RUNTIME_FIELDS; a resumed run may change them).
    imports: plug-in modules (utils.plugins) that register components the run names; whatever
      reads the run imports them first (runtime: a resumed run may add one).
  """
  dataset: str
  workdir: str
  # The dataset's defaults (`for_dataset`: data.Dataset's training, num_classes, test_split).
  model: str
  epochs: int
  lr: float
  lr_boundaries: tuple[int, ...]
  augment: bool
  optimizer: str
  weight_decay: float
  num_classes: int
  test_split: str
  data_dir: str | None = None
  cache_dir: str | None = None
  train_split: str = "train"
  defense: str = "identity"
  objective: str = "standard"
  batch_size: int = 256  # the ME-Net release's
  lr_decay: float = 0.1
  momentum: float = 0.9
  seed: int = 0
  checkpoint_every: int = 0
  keep_checkpoints: int = 3
  eval_batch_size: int = 500
  log_every: int = 50
  progress: bool = True
  imports: tuple[str, ...] = ()

  def __post_init__(self):
    # The stored form writes every parameter out, so that equal runs compare equal.
    object.__setattr__(self, "defense", defenses.create(self.defense).spec())
    object.__setattr__(self, "objective", objectives.create(self.objective).spec())
    object.__setattr__(self, "lr_boundaries", tuple(self.lr_boundaries))
    object.__setattr__(self, "imports", tuple(self.imports))

  @classmethod
  def for_dataset(cls, dataset: str, *, mode: str | None = None, **overrides) -> "Config":
    """Table 8 defaults for `dataset`, then `overrides` (None values are ignored).

    `mode` (with the `combination` arguments among `overrides`: me_method,
    me_params, layout, startp, endp, mask_num, inference, votes, adv_eps,
    adv_step, adv_steps) sets defense and objective unless those are given.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    values = _dataset_defaults(dataset)
    missing = [k for k in _TRAINING_FIELDS if k not in values and k not in overrides]
    if missing:
      raise ValueError(f"{dataset} has no training defaults (no paper here trains on it): "
                       f"set {', '.join(missing)}")
    combo_args = {k: overrides.pop(k) for k in list(overrides)
                  if k in _COMBINATION_ARGS}
    if mode is not None:
      defense, objective = combination(mode, dataset, **combo_args)
      values.update(defense=defense, objective=objective)
    elif combo_args:
      raise ValueError(f"{sorted(combo_args)} only apply with a mode; set defense and objective "
                       "instead")
    values.update(overrides)
    return cls(dataset=dataset, **values)

  @property
  def mode(self) -> str:
    """The paper's name for this defense and objective (`combination`), or "custom"."""
    names = (parse(self.defense)[0], parse(self.objective)[0])
    return {("identity", "standard"): "vanilla", ("menet", "standard"): "pure",
            ("menet", "pgd_at"): "adv", ("identity", "pgd_at"): "madry"}.get(names, "custom")

  def image_shape(self) -> tuple[int, int, int]:
    return data.dataset(self.dataset).image_shape

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["lr_boundaries"] = list(self.lr_boundaries)
    out["imports"] = list(self.imports)
    return out

  @classmethod
  def from_json(cls, values: dict[str, Any]) -> "Config":
    """The inverse of `to_json`; also reads the config.json of runs written before defense and
    objective were separate fields (mode, me_method, ..., adv_steps)."""
    values = _from_legacy(dict(values))
    # A run stored before a field existed (optimizer) took its dataset's default.
    values = {**_dataset_defaults(values["dataset"]), **values}
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
      raise ValueError(f"unknown config fields {unknown}")
    values["lr_boundaries"] = tuple(values.get("lr_boundaries", ()))
    values["imports"] = tuple(values.get("imports", ()))
    return cls(**values)

  def identity(self) -> dict[str, Any]:
    """The fields that define what the run computes (all but RUNTIME_FIELDS)."""
    return {k: v for k, v in self.to_json().items() if k not in RUNTIME_FIELDS}

  @staticmethod
  def identity_of(stored: dict[str, Any]) -> dict[str, Any]:
    """`identity()` of a stored identity (a checkpoint's), read as `from_json` reads."""
    return Config.from_json({**stored, "workdir": stored.get("workdir", "")}).identity()

  def validate(self) -> None:
    """Raises ValueError naming the first bad field and its accepted values."""
    data.dataset(self.dataset)
    models.MODELS.bind(self.model)
    defenses.create(self.defense).check(self.image_shape())
    validation.integer_in("epochs", self.epochs, 1)
    validation.integer_in("batch_size", self.batch_size, 1)
    validation.number_in("lr", self.lr, 0.0, math.inf, lo_open=True)
    for b in self.lr_boundaries:
      validation.integer_in("lr_boundaries", b, 1)
    if list(self.lr_boundaries) != sorted(set(self.lr_boundaries)):
      raise ValueError(f"lr_boundaries must be strictly increasing epochs, got {self.lr_boundaries}")
    validation.number_in("lr_decay", self.lr_decay, 0.0, 1.0, lo_open=True)
    validation.number_in("momentum", self.momentum, 0.0, 1.0, hi_open=True)
    validation.choice("optimizer", self.optimizer, OPTIMIZERS)
    validation.number_in("weight_decay", self.weight_decay, 0.0, 1.0)
    validation.integer_in("num_classes", self.num_classes, 2)
    validation.integer_in("seed", self.seed, 0)
    validation.integer_in("checkpoint_every", self.checkpoint_every, 0)
    validation.integer_in("keep_checkpoints", self.keep_checkpoints, 1)
    validation.integer_in("eval_batch_size", self.eval_batch_size, 1)
    validation.integer_in("log_every", self.log_every, 1)
    json.dumps(self.to_json())  # must be JSON-serialisable for the run directory


# The fields of a dataset's training defaults, which a run on a dataset without them must set.
_TRAINING_FIELDS = ("model", "epochs", "lr", "lr_boundaries", "augment", "optimizer",
                    "weight_decay")


def _dataset_defaults(dataset: str) -> dict[str, Any]:
  """The Config fields that `dataset` sets (data.Dataset)."""
  ds = data.dataset(dataset)
  values = dict(num_classes=ds.num_classes, test_split=ds.test_split)
  if ds.training is not None:
    values.update({k: getattr(ds.training, k) for k in _TRAINING_FIELDS})
  return values


_COMBINATION_ARGS = ("me_method", "me_params", "layout", "startp", "endp", "mask_num",
                     "inference", "votes", "adv_eps", "adv_step", "adv_steps")
_LEGACY = {"me_channel": "layout"}


def _from_legacy(values: dict[str, Any]) -> dict[str, Any]:
  """A config.json of the mode / me_* era, as defense and objective strings."""
  if "mode" not in values:
    return values
  mode = values.pop("mode")
  args = {}
  for key in (*_COMBINATION_ARGS, *_LEGACY):
    if key in values:
      args[_LEGACY.get(key, key)] = values.pop(key)
  if "me_params" in args and not isinstance(args["me_params"], dict):
    args["me_params"] = dict(args["me_params"])
  defense, objective = combination(mode, values["dataset"], **args)
  return dict(values, defense=defense, objective=objective)
