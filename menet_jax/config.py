"""The configuration of a training run, and the paper's defaults per dataset (Table 8).

A `Config` is plain data: flags (experiments/) or code build one, `validate`
checks it before anything is created on disk, and the run directory stores it
as JSON so that a restart can prove it is the same run.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from menet_jax import data, validation
from menet_jax.reconstruct import registry

MODES = ("vanilla", "pure", "adv", "madry")
MODELS = ("lenet", "resnet18", "wrn-28-10", "wrn-34-10", "densenet121", "small_cnn")

# Table 8 of the paper (model, epochs, lr, lr decay epochs, augmentation) and the
# PGD of Section 3.3 for adversarial training; weight decay 1e-4 and batch 256 are
# the release's train_pure.py / train_adv.py defaults.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "cifar10": dict(model="resnet18", epochs=200, lr=0.1, lr_boundaries=(100, 150), augment=True,
                    adv_eps=8 / 255, adv_step=2 / 255, adv_steps=7, num_classes=10),
    "svhn_cropped": dict(model="resnet18", epochs=200, lr=0.01, lr_boundaries=(100, 150),
                         augment=True, adv_eps=8 / 255, adv_step=2 / 255, adv_steps=7,
                         num_classes=10),
    "mnist": dict(model="lenet", epochs=200, lr=0.01, lr_boundaries=(100, 150), augment=False,
                  adv_eps=0.3, adv_step=0.01, adv_steps=40, num_classes=10),
    "fashion_mnist": dict(model="lenet", epochs=200, lr=0.01, lr_boundaries=(100, 150),
                          augment=False, adv_eps=0.3, adv_step=0.01, adv_steps=40, num_classes=10),
    "tiny_imagenet": dict(model="densenet121", epochs=90, lr=0.1, lr_boundaries=(30, 60),
                          augment=True, adv_eps=8 / 255, adv_step=2 / 255, adv_steps=7,
                          num_classes=200),
}
TEST_SPLIT = {"tiny_imagenet": "validation"}

# Fields that say where things are or how the run is shown, not what is computed:
# a restarted run may change them.
RUNTIME_FIELDS = ("workdir", "data_dir", "cache_dir", "progress", "log_every", "eval_batch_size")


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that determines a training run.

  Attributes (units in brackets):
    dataset: one of menet_jax.data.DATASETS.
    train_split, test_split: TFDS-style splits, e.g. "train", "test[:8000]".
    model: one of MODELS.
    mode: "vanilla" (no ME), "pure" (SGD on the ME training set), "adv" (ME-Net
      with PGD adversarial training through BPDA), "madry" (PGD without ME).
    me_method, me_params, me_channel: reconstructor, its parameters, layout.
    startp, endp, mask_num: mask schedule (masks.mask_probs).
    inference, votes: "mean" (one mask at mean p) or "vote" (majority over votes).
    epochs, batch_size [global images], lr, lr_boundaries [epochs], lr_decay,
      momentum, weight_decay, augment: optimisation (Table 8).
    adv_eps, adv_step [pixels in [0, 1]], adv_steps: PGD for adv/madry training.
    seed: every random draw of the run derives from it.
    checkpoint_every [steps, 0 = once per epoch], keep_checkpoints.
  """
  dataset: str
  workdir: str
  data_dir: str | None = None
  cache_dir: str | None = None
  train_split: str = "train"
  test_split: str = "test"
  model: str = "resnet18"
  mode: str = "pure"
  me_method: str = "usvt"
  me_params: tuple[tuple[str, Any], ...] = ()
  me_channel: str = "concat"
  startp: float = 0.8
  endp: float = 1.0
  mask_num: int = 10
  inference: str = "mean"
  votes: int = 10
  epochs: int = 200
  batch_size: int = 256
  lr: float = 0.1
  lr_boundaries: tuple[int, ...] = (100, 150)
  lr_decay: float = 0.1
  momentum: float = 0.9
  weight_decay: float = 1e-4
  augment: bool = True
  adv_eps: float = 8 / 255
  adv_step: float = 2 / 255
  adv_steps: int = 7
  num_classes: int = 10
  seed: int = 0
  checkpoint_every: int = 0
  keep_checkpoints: int = 3
  eval_batch_size: int = 500
  log_every: int = 50
  progress: bool = True

  @classmethod
  def for_dataset(cls, dataset: str, **overrides) -> "Config":
    """Table 8 defaults for `dataset`, then `overrides` (None values are ignored)."""
    validation.choice("dataset", dataset, tuple(DATASET_DEFAULTS))
    values = dict(DATASET_DEFAULTS[dataset], test_split=TEST_SPLIT.get(dataset, "test"))
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "me_params" in values and isinstance(values["me_params"], dict):
      values["me_params"] = tuple(sorted(values["me_params"].items()))
    if "lr_boundaries" in values:
      values["lr_boundaries"] = tuple(values["lr_boundaries"])
    return cls(dataset=dataset, **values)

  @property
  def uses_me(self) -> bool:
    return self.mode in ("pure", "adv")

  @property
  def adversarial(self) -> bool:
    return self.mode in ("adv", "madry")

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["me_params"] = dict(self.me_params)
    out["lr_boundaries"] = list(self.lr_boundaries)
    return out

  @classmethod
  def from_json(cls, values: dict[str, Any]) -> "Config":
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
      raise ValueError(f"unknown config fields {unknown}")
    values = dict(values)
    values["me_params"] = tuple(sorted(values.get("me_params", {}).items()))
    values["lr_boundaries"] = tuple(values.get("lr_boundaries", ()))
    return cls(**values)

  def identity(self) -> dict[str, Any]:
    """The fields that define what the run computes (all but RUNTIME_FIELDS)."""
    return {k: v for k, v in self.to_json().items() if k not in RUNTIME_FIELDS}

  def validate(self) -> None:
    """Raises ValueError naming the first bad field and its accepted values."""
    validation.choice("dataset", self.dataset, tuple(DATASET_DEFAULTS))
    if self.dataset not in data.DATASETS:
      raise ValueError(f"dataset must be one of {data.DATASETS}, got {self.dataset!r}")
    validation.choice("model", self.model, MODELS)
    validation.choice("mode", self.mode, MODES)
    validation.choice("me_method", self.me_method, registry.names())
    validation.choice("me_channel", self.me_channel, ("concat", "separate"))
    validation.choice("inference", self.inference, ("mean", "vote"))
    validation.integer_in("votes", self.votes, 1)
    validation.number_in("startp", self.startp, 0.0, 1.0, lo_open=True)
    validation.number_in("endp", self.endp, 0.0, 1.0, lo_open=True)
    if self.endp < self.startp:
      raise ValueError(f"endp must be >= startp, got startp={self.startp}, endp={self.endp}")
    validation.integer_in("mask_num", self.mask_num, 1)
    validation.integer_in("epochs", self.epochs, 1)
    validation.integer_in("batch_size", self.batch_size, 1)
    validation.number_in("lr", self.lr, 0.0, math.inf, lo_open=True)
    for b in self.lr_boundaries:
      validation.integer_in("lr_boundaries", b, 1)
    if list(self.lr_boundaries) != sorted(set(self.lr_boundaries)):
      raise ValueError(f"lr_boundaries must be strictly increasing epochs, got {self.lr_boundaries}")
    validation.number_in("lr_decay", self.lr_decay, 0.0, 1.0, lo_open=True)
    validation.number_in("momentum", self.momentum, 0.0, 1.0, hi_open=True)
    validation.number_in("weight_decay", self.weight_decay, 0.0, 1.0)
    validation.number_in("adv_eps", self.adv_eps, 0.0, 1.0)
    validation.number_in("adv_step", self.adv_step, 0.0, 1.0, lo_open=True)
    validation.integer_in("adv_steps", self.adv_steps, 1)
    validation.integer_in("num_classes", self.num_classes, 2)
    validation.integer_in("seed", self.seed, 0)
    validation.integer_in("checkpoint_every", self.checkpoint_every, 0)
    validation.integer_in("keep_checkpoints", self.keep_checkpoints, 1)
    validation.integer_in("eval_batch_size", self.eval_batch_size, 1)
    validation.integer_in("log_every", self.log_every, 1)
    json.dumps(self.to_json())  # me_params values must be JSON-serialisable for the manifest
