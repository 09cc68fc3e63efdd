"""The evaluation's settings and their defaults, declared once: the Python call
(`evaluation.evaluate`) and the command line (`--mode=eval`'s flags) both read them from here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from menet_jax.attacks import NORMS, max_radius
from menet_jax.evaluation import suite
from menet_jax.utils import validation


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What an evaluation runs, and how.

  Attributes:
    attacks: attack entries (`suite.parse_attacks`): component strings, name@s1/s2, or a
      preset: "auto" (AutoAttack's "rand" version for a randomized defense, "standard"
      otherwise), "standard" or "rand". A "clean" row is always added first.
    norm: the threat model's norm, "linf" or "l2".
    eps: its radius, in `norm` (l2 in pixel units, pixels in [0, 1]); required.
    step_size: the default step of the PGD-type attacks; None: eps / 4 (APGD, FAB and Square
      set their own).
    attack_steps: steps of the iterative attacks whose entry sets none.
    restarts: random restarts of every random attack (robust = survives all).
    draws: draws of a randomized defense judging each example (a deterministic defense is
      judged once).
    seed: seed of the attacks (fold_in(seed, 0)) and of the judging draws (fold_in(seed, 1)).
    batch_size: images per attack batch.
    sanity_eps: radii of the BPDA-PGD sanity sweep; None: 0, eps / 4, eps, 2 eps and half
      the largest distance (the mid-grey image is that far from any image), those within
      reach; () for no sweep.
    sanity_images: images (the first ones) of the sanity checks; fewer than 100 is flagged as
      too few to mean much.
    curve_eps: more radii at which every attack row runs again, for the figure's curves of
      accuracy against eps (each a cascade if the evaluation is); () for none.
    cascade: attack each image only while it is still robust (AutoAttack's way: the worst case
      is the same, the time is not); None: on when the attacks are a preset.
    progress: a progress bar per attack row.
  """
  attacks: tuple[str, ...] = ("auto",)
  norm: str = "linf"
  eps: float | None = None
  step_size: float | None = None
  attack_steps: tuple[int, ...] = (7, 20, 40)
  restarts: int = 1
  draws: int = 10
  seed: int = 0
  batch_size: int = 500
  sanity_eps: tuple[float, ...] | None = None
  sanity_images: int = 100
  curve_eps: tuple[float, ...] = ()
  cascade: bool | None = None
  progress: bool = True

  def replace(self, **changes: Any) -> "EvalConfig":
    unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise TypeError(f"unknown evaluation setting(s) {sorted(unknown)}; settings: "
                      f"{', '.join(f.name for f in dataclasses.fields(self))}")
    return dataclasses.replace(self, **changes)

  def checked(self, image_shape: tuple[int, ...], randomized: bool) -> "Plan":
    """Every setting validated against the images' (H, W, C) shape and the defense, before any
    work; the defaults that depend on them filled in."""
    norm = validation.choice("norm", self.norm, NORMS)
    largest = max_radius(norm, tuple(image_shape))
    if self.eps is None:
      raise ValueError(f"eps (the threat model's radius) is required: a number in [0, "
                       f"{largest:.4g}] under {norm}")
    eps = validation.number_in("eps", self.eps, 0.0, largest)
    default_step = eps / 4 if eps > 0 else largest / 1000
    step = validation.number_in("step_size", default_step if self.step_size is None
                                else self.step_size, 0.0, largest, lo_open=True)
    attacks = (self.attacks,) if isinstance(self.attacks, str) else tuple(self.attacks)
    steps = [validation.integer_in("attack_steps", s, 1) for s in self.attack_steps]
    rows = suite.parse_attacks(list(attacks), steps, norm, randomized)
    rows = rows if "clean" in rows else ["clean", *rows]
    for name in ("restarts", "draws", "batch_size", "sanity_images"):
      validation.integer_in(name, getattr(self, name), 1)
    validation.integer_in("seed", self.seed, 0)
    if self.sanity_eps is None:
      sanity = sorted(e for e in {0.0, eps / 4, eps, 2 * eps, 0.5 * largest} if e <= largest)
    else:
      sanity = [validation.number_in("sanity_eps", e, 0.0, largest) for e in self.sanity_eps]
    curve = sorted({validation.number_in("curve_eps", e, 0.0, largest)
                    for e in self.curve_eps} - {eps})
    cascade = all(suite.is_preset(a) for a in attacks) if self.cascade is None else \
        bool(self.cascade)
    return Plan(rows=tuple(rows), norm=norm, eps=eps, step_size=step,
                sanity_eps=tuple(sanity), curve_eps=tuple(curve), cascade=cascade,
                draws=self.draws if randomized else 1, config=self)


@dataclasses.dataclass(frozen=True)
class Plan:
  """An `EvalConfig` checked against its images and defense: the canonical attack rows (clean
  first), the radius, the default step, the sweep's and the curve's radii, whether to cascade,
  the draws."""
  rows: tuple[str, ...]
  norm: str
  eps: float
  step_size: float
  sanity_eps: tuple[float, ...]
  curve_eps: tuple[float, ...]
  cascade: bool
  draws: int
  config: EvalConfig

  def __getattr__(self, name: str) -> Any:  # restarts, seed, batch_size, ... of the config
    return getattr(self.config, name)
