"""Checks against gradient masking (Carlini et al., "On Evaluating Adversarial
Robustness", 2019, section 5), run on an evaluation's results.

A defense that hides its gradients instead of being robust shows itself by
accuracy that does not fall as the budget grows, does not reach zero when the
budget allows any image, rises with more attack steps, or is higher under a
white-box attack than under a weaker one. Each check compares accuracies of
the same images; "within noise" allows two standard errors of the difference
of two binomial proportions, sqrt((a(1 - a) + b(1 - b)) / n), and at least
one image.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Sequence

import numpy as np

from menet_jax.evaluation import suite

# Accuracy with a budget that allows any image (eps = 0.5 reaches mid-grey from anywhere).
NEAR_ZERO = 0.05


@dataclasses.dataclass(frozen=True)
class Check:
  name: str
  passed: bool
  detail: str


def tolerance(a: float, b: float, n: int) -> float:
  """Two standard errors of a - b for accuracies a, b on n images (at least 1 / n)."""
  return max(2 * math.sqrt((a * (1 - a) + b * (1 - b)) / n), 1 / n)


def not_above(name: str, low_label: str, low: float, high_label: str, high: float, n: int
              ) -> Check:
  """Passes when `low` <= `high` within noise."""
  tol = tolerance(low, high, n)
  ok = low <= high + tol
  relation = "<=" if ok else ">"
  return Check(name, ok, f"{low_label} {low:.2%} {relation} {high_label} {high:.2%} "
                         f"(+ noise {tol:.2%}, n = {n})")


def eps_sweep(accuracy_by_eps: Sequence[tuple[float, float]], n: int, unbounded: float = 0.5
              ) -> list[Check]:
  """Accuracy non-increasing in eps (within noise), and near zero at eps >= `unbounded`, a
  radius that reaches mid-grey from any image (0.5 under l-inf, 0.5 sqrt(pixels) under l2)."""
  checks = []
  pairs = sorted(accuracy_by_eps)
  for (e0, a0), (e1, a1) in zip(pairs, pairs[1:]):
    checks.append(not_above("accuracy falls as eps grows", f"eps {e1:.4g}", a1,
                            f"eps {e0:.4g}", a0, n))
  for e, a in pairs:
    if e >= unbounded:
      ok = a <= NEAR_ZERO + 1 / n
      checks.append(Check(f"accuracy ~ 0 at eps {unbounded:.4g}", ok,
                          f"eps {e:.4g}: {a:.2%} ({'<=' if ok else '>'} {NEAR_ZERO:.0%})"))
  return checks


def steps_monotone(results: Sequence) -> list[Check]:
  """For each attack run at several step counts (all else equal): more steps, no higher
  accuracy."""
  checks = []
  by_attack: dict[str, list] = {}
  for r in results:
    if r.steps is not None:
      others = {k: v for k, v in suite.ATTACKS.bind(r.spec)[1].items() if k != "steps"}
      by_attack.setdefault(suite.format_spec(r.attack, others), []).append(r)
  for attack, rows in by_attack.items():
    rows = sorted(rows, key=lambda r: r.steps)
    for r0, r1 in zip(rows, rows[1:]):
      checks.append(not_above(f"more steps do not help ({attack})", f"{r1.steps} steps",
                              r1.accuracy, f"{r0.steps} steps", r0.accuracy, r1.images))
  return checks


def attack_order(results: Sequence, randomized: bool) -> list[Check]:
  """More knowledge, no higher accuracy: among rows that run the same optimiser on the same
  loss for the same steps, each attacker that knows more (`suite.Threat.knowledge`: transfer
  < gray-box < white-box < white-box with EOT on a randomized defense) is compared with the
  rows of the next lower level present."""
  checks = []

  def group(r):
    t = suite.threat(r.attack)
    return t.method, t.loss, r.steps

  def knowledge(r):
    return suite.threat(r.attack).knowledge(suite.ATTACKS.bind(r.spec)[1], randomized)

  comparable = [r for r in results if suite.threat(r.attack).method != "none"]
  for _, rows in itertools.groupby(sorted(comparable, key=lambda r: str(group(r))), key=group):
    by_level: dict[int, list] = {}
    for r in rows:
      by_level.setdefault(knowledge(r), []).append(r)
    levels = sorted(by_level, reverse=True)
    for high, low in zip(levels, levels[1:]):
      for s, w in itertools.product(by_level[high], by_level[low]):
        checks.append(not_above(f"{s.label} <= {w.label}", s.label, s.accuracy, w.label,
                                w.accuracy, s.images))
  return checks


def loss_order(results: Sequence) -> list[Check]:
  """Cross-entropy no more robust than a margin loss: among rows that run the same optimiser
  with the same access and steps, cross-entropy's accuracy must not be above that of a
  margin-type loss (CW margin, DLR). Above it, cross-entropy's gradient is vanishing
  (a saturated softmax), the gradient masking that Carlini and Wagner's and Croce and Hein's
  losses were made for."""
  checks = []

  def group(r):
    t = suite.threat(r.attack)
    return t.access, t.method, r.steps

  for _, rows in itertools.groupby(sorted(results, key=lambda r: str(group(r))), key=group):
    rows = list(rows)
    ce = [r for r in rows if suite.threat(r.attack).loss == "cross_entropy"]
    margins = [r for r in rows if suite.threat(r.attack).loss not in ("cross_entropy", "none",
                                                                      "decision")]
    for c, m in itertools.product(ce, margins):
      checks.append(not_above(f"{c.label} <= {m.label} (cross-entropy not masked)", c.label,
                              c.accuracy, m.label, m.accuracy, c.images))
  return checks


def gradients(stats: dict[str, float]) -> list[Check]:
  """Gradients through the defense are finite and not identically zero for any image."""
  return [Check("gradients finite", stats["finite"] == 1.0,
                f"{stats['finite']:.2%} of gradient entries finite"),
          Check("gradients nonzero", stats["nonzero_images"] == 1.0,
                f"{stats['nonzero_images']:.2%} of images have a nonzero gradient")]


def score_based(results: Sequence) -> list[Check]:
  """A score- or decision-based attack must not break images that every white-box attack left
  robust (AutoAttack's check, on its Square attack): where it does, the white-box attacks'
  gradients mislead them. Counted per image under the first draw, after all rows; allowed: one
  image or 1 % of them, whichever is more (AutoAttack warns at any)."""
  blind = [r for r in results if suite.threat(r.attack).access in ("score-based",
                                                                    "decision-based")]
  white = [r for r in results if suite.threat(r.attack).access == "white-box"]
  if not blind or not white:
    return []
  n = results[0].images
  robust_white = np.logical_and.reduce([r.correct[0] for r in white])
  # In a cascade an image that a white-box row broke is attacked by no later row and counts as
  # broken in it: robust_white is False there, so only images the blind rows attacked count.
  broken_blind = ~np.logical_and.reduce([r.correct[0] for r in blind])
  extra = int(np.sum(robust_white & broken_blind))
  allowed = max(1, int(0.01 * n))
  ok = extra <= allowed
  names = ", ".join(r.label for r in blind)
  return [Check("score-based attacks find nothing the white-box ones missed", ok,
                f"{names} broke {extra} of {n} images that every white-box attack left robust "
                f"({'<=' if ok else '>'} {allowed} allowed)")]


def outputs(logits: np.ndarray) -> list[Check]:
  """The network's outputs on clean images are finite logits, not probabilities (attacks on a
  softmax output see gradients that vanish as it saturates: AutoAttack refuses them too)."""
  finite = bool(np.isfinite(logits).all())
  probabilities = bool(np.all((logits >= 0) & (logits <= 1)) and
                       np.allclose(logits.sum(-1), 1.0, atol=1e-3))
  detail = ("non-finite outputs on clean images" if not finite else
            "the outputs are probabilities (rows in [0, 1] summing to 1): give the attacks "
            "logits" if probabilities else "finite, not probabilities")
  return [Check("outputs are finite logits", finite and not probabilities, detail)]


def randomness(declared: bool, detected: bool) -> list[Check]:
  """A defense whose draws differ must say so (`Defense.randomized`): otherwise it is attacked
  without EOT and judged under one draw, and its robustness is overstated."""
  ok = declared or not detected
  return [Check("randomness declared", ok,
                f"declared {'randomized' if declared else 'deterministic'}; two draws "
                f"{'differ' if detected else 'agree'}")]


def too_few(images: int, enough: int = 100) -> list[str]:
  """A warning when the sanity checks run on fewer than `enough` images: their noise
  allowance (two standard errors) is then wide enough to pass almost anything."""
  if images >= enough:
    return []
  return [f"the sanity checks ran on {images} images: with fewer than {enough} their noise "
          f"allowance is wide, and a pass means little"]
