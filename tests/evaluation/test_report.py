"""Reports: the table over runs."""

from menet_jax.evaluation import report


def test_combined_table_aligns_runs_by_attack_and_steps():
  def record(run, rows, worst, failed=False):
    results = [dict(attack=a, steps=s, label=a if s is None else f"{a}-{s}", accuracy=acc,
                    robust_all_draws=rob) for a, s, acc, rob in rows]
    checks = [dict(name="c", passed=not failed, detail="d")]
    return dict(run=run, defense={"defense": "identity"}, images=500, results=results,
                worst_case=dict(accuracy=worst, robust_all_draws=worst),
                sanity=dict(checks=checks))
  table = report.combined([
      record("runs/a", [("clean", None, 0.7, 0.7), ("pgd", 7, 0.1, 0.1)], 0.1),
      record("runs/b", [("pgd", 7, 0.5, 0.25), ("pgd", 20, 0.4, 0.2)], 0.3, True)])
  lines = table.splitlines()
  assert lines[0] == "| run | defense | images | clean | pgd-7 | pgd-20 | worst case | sanity |"
  assert lines[2] == "| a | identity | 500 | 70.0% | 10.0% | — | 10.0% | all passed |"
  assert lines[3] == ("| b | identity | 500 | — | 50.0% (25.0%) | 40.0% (20.0%) | 30.0% "
                      "| **1 failed** |")
