"""What an evaluation attacks: a classifier with its variables, and the defense in front of it.

    apply_fn(variables, x) -> logits     x: (B, H, W, C) float32 in [0, 1]; logits (B, classes)

Any JAX classifier fits: a Flax model's `apply` with its variables (bound to inference mode),
or a plain function of x (`Target.of`). The variables are an argument, not a constant, so
that jit traces them once instead of baking them into every compiled attack. A trained run of
this project is one through `evaluation.restore`, the only part of evaluation that knows
training.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from menet_jax import defenses
from menet_jax.defenses import Defense


@dataclasses.dataclass(frozen=True)
class Target:
  """A classifier and its defense.

  Attributes:
    apply_fn: (variables, x (B, H, W, C)) -> (B, classes) logits.
    variables: the classifier's variables (any pytree; None for a plain function).
    defense: what sits in front of the classifier (`defenses.Identity()` for none).
  """
  apply_fn: Callable[[Any, jax.Array], jax.Array]
  variables: Any
  defense: Defense

  def network(self, variables: Any) -> Callable[[jax.Array], jax.Array]:
    """x -> logits with explicit `variables` (so that jit sees them as arguments)."""
    return lambda x: self.apply_fn(variables, x)

  def with_defense(self, defense: Defense) -> "Target":
    return dataclasses.replace(self, defense=defense)

  @staticmethod
  def of(model: Callable[..., jax.Array], variables: Any = None,
         defense: Defense | str | None = None) -> "Target":
    """The target of a user's classifier.

    Args:
      model: x -> logits when `variables` is None, else (variables, x) -> logits (e.g. a Flax
        module's `apply`, with any `train=False` already bound).
      variables: the model's variables, or None.
      defense: a `Defense`, a component string ("median(size=3)"), or None for no defense.
    """
    if not callable(model):
      raise TypeError(f"model must be callable (x -> logits, or (variables, x) -> logits), got "
                      f"{type(model).__name__}")
    defense = as_defense(defense)
    apply_fn = (lambda _, x: model(x)) if variables is None else model
    return Target(apply_fn=apply_fn, variables=variables, defense=defense)


def as_defense(defense: Defense | str | None) -> Defense:
  """A `Defense` from itself, a component string, or None (the identity)."""
  if isinstance(defense, str):
    return defenses.create(defense)
  if defense is None:
    return defenses.create("identity")
  if not isinstance(defense, Defense):
    raise TypeError(f"defense must be a Defense, a component string or None, got "
                    f"{type(defense).__name__}")
  return defense
