"""PGD adversarial training through the defense (Madry et al., 2018; ME-Net, section 3.3).

Each step attacks the batch with l-inf PGD through the defense's attack view
(BPDA for ME-Net) with a fresh draw at every attack step, then trains on one
more fresh draw of the adversarial batch. With the identity defense this is
Madry et al.'s adversarial training; with ME-Net it is the release's
train_adv.py: as there, an epoch visits the clean images n times and its k-th
part draws at level p_k (the loop's batches carry the level).

`attacked_inputs` is that batch for any objective. The attack runs the network in
training mode (batch statistics, as the release's net.train()) without updating the
running statistics.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from menet_jax.attacks import pgd
from menet_jax.data import cifar10
from menet_jax.defenses import Defense
from menet_jax.training import state as state_lib
from menet_jax.training.objectives.base import Objective, register
from menet_jax.training.objectives.standard import inputs, sgd_step
from menet_jax.utils import validation


@register("pgd_at")
@dataclasses.dataclass(frozen=True)
class PGDAdversarialTraining(Objective):
  """Attributes: eps (l-inf radius, pixels in [0, 1]), step_size, steps of the PGD; by default
  ME-Net's (its Section 3.3, on CIFAR-10; a run takes its dataset's, training.config).
  warmup_steps: 0 (none), or the training steps over which the radius grows linearly to eps:
  step s (from 0) attacks at radius min(1, (s + 1) / warmup_steps) eps (`attacked_inputs`).
  A small network can stay at chance under the full radius from the first step (the
  CPU-scale Madry control, docs/results.md); the warm-up lets it start on weaker attacks."""
  eps: float = cifar10.PGD["eps"]
  step_size: float = cifar10.PGD["step_size"]
  steps: int = cifar10.PGD["steps"]
  warmup_steps: int = 0

  draws_in_step = True

  def __post_init__(self):
    validation.number_in("eps", self.eps, 0.0, 1.0)
    validation.number_in("step_size", self.step_size, 0.0, 1.0, lo_open=True)
    validation.integer_in("steps", self.steps, 1)
    validation.integer_in("warmup_steps", self.warmup_steps, 0)

  def step(self, state, batch, key, *, defense: Defense, augment: bool):
    radius = (jnp.minimum(1.0, (state.step + 1) / self.warmup_steps) if self.warmup_steps
              else None)
    x_train, labels = attacked_inputs(
        lambda x, t: state_lib.logits(state, state.params, x, train=True)[0], batch, key,
        defense=defense, augment=augment, eps=self.eps, step_size=self.step_size, steps=self.steps,
        radius=radius)
    return sgd_step(state, x_train, labels)


def attacked_inputs(logits_fn: Callable[[jax.Array, jax.Array], jax.Array],
                    batch: dict[str, jax.Array], key: jax.Array, *, defense: Defense,
                    augment: bool, eps: float, step_size: float, steps: int,
                    radius: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """What an adversarially trained objective trains on: (inputs (B, H, W, C), labels (B,)).

  The batch's images, augmented, then (eps > 0) attacked by l-inf PGD on the cross-entropy
  of logits_fn(x, t) (the network at attack step t) through the defense's attack view with a
  fresh draw at every step, then one more fresh draw of the defense. The step key is split as
  every objective splits it (augmentation, attack start, draws).

  radius: None, or a scalar r in (0, 1]: the attack then moves the image by at most r eps.
  PGD runs over z in the eps-ball on the loss at x + r (z - x), a point of the r eps-ball
  (and of [0, 1], between x and z); its sign steps are those of PGD at radius r eps and step
  r step_size, whose box [0, 1] becomes the slightly tighter [(1 - r) x, (1 - r) x + r].
  """
  k_aug, k_pgd, k_draw = jax.random.split(key, 3)
  x, labels = inputs(batch, k_aug, augment), batch["label"]
  b = x.shape[0]
  level = batch.get("level", jnp.full((b,), defense.test_level, jnp.float32))

  def keys_at(t):  # one key per image for the draw of attack step t (t = steps: training)
    return jax.random.split(jax.random.fold_in(k_draw, t), b)

  if eps > 0:
    clean = x
    shrink = (lambda z: z) if radius is None else (lambda z: clean + radius * (z - clean))

    def attack_loss(z, t):
      return state_lib.cross_entropy(
          logits_fn(defense.attack_view(keys_at(t), shrink(z), level), t), labels)
    x = shrink(pgd(attack_loss, k_pgd, x, eps=eps, step_size=step_size, steps=steps))
  return jax.lax.stop_gradient(defense.transform(keys_at(steps), x, level)), labels
