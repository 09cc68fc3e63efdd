"""Training objectives by name: "standard", "pgd_at(eps=..., step_size=..., steps=...)", and
for embedding classifiers "er", "ecla", "vaecla" (objectives.embedding).

A new objective is a module that subclasses `Objective` and registers itself;
importing it (here, or from the caller's code) makes its name available.
"""

from menet_jax.training.objectives import embedding, pgd_at, standard  # noqa: F401 (register)
from menet_jax.training.objectives.base import OBJECTIVES, Objective, create, names, register

__all__ = ["OBJECTIVES", "Objective", "create", "names", "register"]
