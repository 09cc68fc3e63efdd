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
import math
from typing import Sequence

# Weakest-to-strongest knowledge of the attacker: more knowledge must not give
# higher accuracy (issue: EOT <= BPDA <= gray-box <= transfer).
ORDER = ("bpda_eot", "bpda_pgd", "pgd", "transfer_pgd")
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


def eps_sweep(accuracy_by_eps: Sequence[tuple[float, float]], n: int) -> list[Check]:
  """Accuracy non-increasing in eps (within noise), and near zero at eps >= 0.5."""
  checks = []
  pairs = sorted(accuracy_by_eps)
  for (e0, a0), (e1, a1) in zip(pairs, pairs[1:]):
    checks.append(not_above("accuracy falls as eps grows", f"eps {e1:.4g}", a1,
                            f"eps {e0:.4g}", a0, n))
  for e, a in pairs:
    if e >= 0.5:
      ok = a <= NEAR_ZERO + 1 / n
      checks.append(Check("accuracy ~ 0 at eps 0.5", ok,
                          f"eps {e:.4g}: {a:.2%} ({'<=' if ok else '>'} {NEAR_ZERO:.0%})"))
  return checks


def steps_monotone(results: Sequence) -> list[Check]:
  """For each attack run at several step counts: more steps, no higher accuracy."""
  checks = []
  by_attack: dict[str, list] = {}
  for r in results:
    if r.steps is not None:
      by_attack.setdefault(r.attack, []).append(r)
  for attack, rows in by_attack.items():
    rows = sorted(rows, key=lambda r: r.steps)
    for r0, r1 in zip(rows, rows[1:]):
      checks.append(not_above(f"more steps do not help ({attack})", f"{r1.steps} steps",
                              r1.accuracy, f"{r0.steps} steps", r0.accuracy, r1.images))
  return checks


def attack_order(results: Sequence) -> list[Check]:
  """EOT <= BPDA <= gray-box <= transfer at equal steps, where both were run."""
  checks = []
  table = {(r.attack, r.steps): r for r in results}
  step_counts = sorted({r.steps for r in results if r.steps is not None})
  for steps in step_counts:
    present = [a for a in ORDER if (a, steps) in table]
    for strong, weak in zip(present, present[1:]):
      s, w = table[strong, steps], table[weak, steps]
      checks.append(not_above(f"{strong} <= {weak}", f"{strong}-{steps}", s.accuracy,
                              f"{weak}-{steps}", w.accuracy, s.images))
  return checks


def gradients(stats: dict[str, float]) -> list[Check]:
  """Gradients through the defense are finite and not identically zero for any image."""
  return [Check("gradients finite", stats["finite"] == 1.0,
                f"{stats['finite']:.2%} of gradient entries finite"),
          Check("gradients nonzero", stats["nonzero_images"] == 1.0,
                f"{stats['nonzero_images']:.2%} of images have a nonzero gradient")]
