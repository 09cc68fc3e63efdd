"""PGD adversarial training through the defense (Madry et al., 2018; ME-Net, section 3.3).

Each step attacks the batch with l-inf PGD through the defense's attack view
(BPDA for ME-Net) with a fresh draw at every attack step, then trains on one
more fresh draw of the adversarial batch. With the identity defense this is
Madry et al.'s adversarial training; with ME-Net it is the release's
train_adv.py: as there, an epoch visits the clean images n times and its k-th
part draws at level p_k (the loop's batches carry the level).

The attack runs the network in training mode (batch statistics, as the release's
net.train()) without updating the running statistics.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from menet_jax.attacks import pgd
from menet_jax.defenses import Defense
from menet_jax.training import state as state_lib
from menet_jax.training.objectives.base import Objective, register
from menet_jax.training.objectives.standard import inputs, sgd_step
from menet_jax.utils import validation


@register("pgd_at")
@dataclasses.dataclass(frozen=True)
class PGDAdversarialTraining(Objective):
  """Attributes: eps (l-inf radius, pixels in [0, 1]), step_size, steps of the PGD."""
  eps: float = 8 / 255
  step_size: float = 2 / 255
  steps: int = 7

  draws_in_step = True

  def __post_init__(self):
    validation.number_in("eps", self.eps, 0.0, 1.0)
    validation.number_in("step_size", self.step_size, 0.0, 1.0, lo_open=True)
    validation.integer_in("steps", self.steps, 1)

  def step(self, state, batch, key, *, defense: Defense, augment: bool):
    k_aug, k_pgd, k_draw = jax.random.split(key, 3)
    x, labels = inputs(batch, k_aug, augment), batch["label"]
    b = x.shape[0]
    level = batch.get("level", jnp.full((b,), defense.test_level, jnp.float32))

    def keys_at(t):  # one key per image for the draw of attack step t (t = steps: training)
      return jax.random.split(jax.random.fold_in(k_draw, t), b)

    def attack_loss(xa, t):
      logits, _ = state_lib.logits(state, state.params, defense.attack_view(keys_at(t), xa, level),
                                   train=True)
      return state_lib.cross_entropy(logits, labels)

    x_adv = pgd(attack_loss, k_pgd, x, eps=self.eps, step_size=self.step_size, steps=self.steps)
    x_train = jax.lax.stop_gradient(defense.transform(keys_at(self.steps), x_adv, level))
    return sgd_step(state, x_train, labels)
