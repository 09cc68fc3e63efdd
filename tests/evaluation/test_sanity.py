"""The gradient-masking checks: what they flag, ordered by threat model (not by name)."""

import numpy as np

from menet_jax.evaluation import runner, sanity, suite


def _row(spec, accuracy, n=500):
  name, params = suite.ATTACKS.bind(spec)
  correct = np.zeros((1, n), bool)
  correct[0, :round(accuracy * n)] = True
  return runner.Row(spec=suite.format_spec(name, params), attack=name,
                    label=runner.label(suite.format_spec(name, params)),
                    threat=suite.threat(name).access, steps=params.get("steps"), eps=0.03,
                    norm="linf", correct=correct, max_linf=0.0, max_l2=0.0, wall_s=0.0,
                    description="")


def test_sanity_checks_flag_what_they_should():
  n = 500
  assert all(c.passed for c in sanity.eps_sweep([(0, 0.6), (8 / 255, 0.3), (0.5, 0.0)], n))
  failed = [c for c in sanity.eps_sweep([(0, 0.6), (8 / 255, 0.7), (0.5, 0.3)], n)
            if not c.passed]
  assert {c.name for c in failed} == {"accuracy falls as eps grows", "accuracy ~ 0 at eps 0.5"}
  good = [_row("bpda_eot(steps=7, samples=10)", 0.2), _row("bpda_pgd(steps=7)", 0.3),
          _row("pgd(steps=7)", 0.5), _row("transfer_pgd(steps=7)", 0.8),
          _row("pgd(steps=20)", 0.45)]
  checks = sanity.attack_order(good, randomized=True)
  assert sorted(c.name for c in checks) == ["bpda_eot-7 <= bpda_pgd-7", "bpda_pgd-7 <= pgd-7",
                                            "pgd-7 <= transfer_pgd-7"]
  assert all(c.passed for c in checks + sanity.steps_monotone(good))
  bad = [_row("bpda_eot(steps=7, samples=10)", 0.5), _row("bpda_pgd(steps=7)", 0.3),
         _row("pgd(steps=20)", 0.7), _row("pgd(steps=7)", 0.5)]
  assert [c.name for c in sanity.attack_order(bad, randomized=True) if not c.passed] == [
      "bpda_eot-7 <= bpda_pgd-7"]
  assert [c.passed for c in sanity.steps_monotone(bad)] == [False]
  # Different optimisers or losses are not ordered against each other.
  assert sanity.attack_order([_row("apgd_dlr(steps=7)", 0.9), _row("pgd(steps=7)", 0.1)],
                             randomized=True) == []
  # Cross-entropy above a margin loss (same optimiser, access and steps) is flagged; the
  # other way round is not.
  rows = [_row("pgd(steps=7)", 0.5), _row("cw20(steps=7)", 0.2), _row("apgd_ce(steps=7)", 0.2),
          _row("apgd_dlr(steps=7)", 0.4), _row("pgd(steps=20)", 0.5)]
  assert sorted((c.name, c.passed) for c in sanity.loss_order(rows)) == [
      ("apgd_ce-7 <= apgd_dlr-7 (cross-entropy not masked)", True),
      ("pgd-7 <= cw20-7 (cross-entropy not masked)", False)]
  # Within noise is not a failure: 2 standard errors of the difference on n images.
  assert sanity.not_above("x", "a", 0.52, "b", 0.50, n).passed
  assert not sanity.not_above("x", "a", 0.60, "b", 0.50, n).passed
  assert [c.passed for c in sanity.gradients({"finite": 1.0, "nonzero_images": 0.9})] == [True,
                                                                                          False]
