"""The evaluation runner: attack parsing, robust accuracy under the defense's
draws, the sanity checks, reports, and the command line's errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import attack_suite, evaluation, models, report, run_dir, sanity, train
from menet_jax import config as config_lib
from menet_jax.defenses import MENet

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"


def test_parse_attacks_expands_steps_and_refuses_unknown_names():
  rows = evaluation.parse_attacks(["clean", "pgd", "bpda_eot@200", "spsa"], [7, 20])
  assert rows == [("clean", None), ("pgd", 7), ("pgd", 20), ("bpda_eot", 200), ("spsa", None)]
  with pytest.raises(ValueError, match="unknown attack 'pgdd'; known: .*bpda_eot"):
    evaluation.parse_attacks(["pgdd"], [7])
  with pytest.raises(ValueError, match="does not take steps"):
    evaluation.parse_attacks(["clean@5"], [7])
  with pytest.raises(ValueError, match="steps of pgd must be an integer >= 1"):
    evaluation.parse_attacks(["pgd@0"], [7])
  with pytest.raises(ValueError, match="eps must be in"):
    attack_suite.Params(eps=-0.1).validate()


def test_sanity_checks_flag_what_they_should():
  n = 500
  assert all(c.passed for c in sanity.eps_sweep([(0, 0.6), (8 / 255, 0.3), (0.5, 0.0)], n))
  failed = [c for c in sanity.eps_sweep([(0, 0.6), (8 / 255, 0.7), (0.5, 0.3)], n)
            if not c.passed]
  assert {c.name for c in failed} == {"accuracy falls as eps grows", "accuracy ~ 0 at eps 0.5"}
  row = lambda a, s, acc: evaluation.Result(a, "", s, acc, acc, acc, n, 0.0, 0.0, "")
  good = [row("bpda_eot", 7, 0.2), row("bpda_pgd", 7, 0.3), row("pgd", 7, 0.5),
          row("transfer_pgd", 7, 0.8), row("pgd", 20, 0.45)]
  assert all(c.passed for c in sanity.attack_order(good) + sanity.steps_monotone(good))
  bad = [row("bpda_eot", 7, 0.5), row("bpda_pgd", 7, 0.3), row("pgd", 20, 0.7), row("pgd", 7, 0.5)]
  assert [c.name for c in sanity.attack_order(bad) if not c.passed] == ["bpda_eot <= bpda_pgd"]
  assert [c.passed for c in sanity.steps_monotone(bad)] == [False]
  # Within noise is not a failure: 2 standard errors of the difference on n images.
  assert sanity.not_above("x", "a", 0.52, "b", 0.50, n).passed
  assert not sanity.not_above("x", "a", 0.60, "b", 0.50, n).passed
  assert [c.passed for c in sanity.gradients({"finite": 1.0, "nonzero_images": 0.9})] == [True,
                                                                                          False]


def _small_cnn(defense=None):
  model = models.create("small_cnn", num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)
  config = config_lib.Config.for_dataset("cifar10", workdir="w", model="small_cnn")
  return evaluation.Model(apply_fn=model.apply, variables=variables, defense=defense,
                          config=config, checkpoint="", step=0)


def test_run_attack_judges_final_examples_under_the_defense():
  x = np.asarray(jax.random.uniform(jax.random.key(1), (12, 16, 16, 3)))
  vanilla = _small_cnn()
  logits = vanilla.apply_fn(vanilla.variables, x, train=False)
  y = np.array(jnp.argmax(logits, -1))
  y[:4] = (y[:4] + 1) % 10  # 8 of 12 correct
  common = dict(params=attack_suite.Params(eps=0.3, step_size=0.05), restarts=2, draws=3,
                attack_key=jax.random.key(0), eval_key=jax.random.key(1), batch_size=5)
  clean = evaluation.run_attack(vanilla, None, x, y, name="clean", steps=None, **common)
  # An undefended model is deterministic: every draw agrees, and padding is ignored.
  assert (clean.accuracy, clean.mean_over_draws, clean.robust_all_draws) == (8 / 12,) * 3
  assert clean.max_linf == 0.0
  attacked = evaluation.run_attack(vanilla, None, x, y, name="bpda_pgd", steps=10, **common)
  assert attacked.accuracy == 0.0 and attacked.max_linf <= 0.3 + 1e-6
  # Restart r uses the same key whatever the number of restarts, so a second restart can only
  # remove images from the robust set (robust = survives every restart).
  weak = dict(common, params=attack_suite.Params(eps=0.004, step_size=0.002))
  one = evaluation.run_attack(vanilla, None, x, y, name="pgd", steps=2, **dict(weak, restarts=1))
  four = evaluation.run_attack(vanilla, None, x, y, name="pgd", steps=2, **dict(weak, restarts=4))
  assert four.accuracy <= one.accuracy <= clean.accuracy
  with pytest.raises(ValueError, match="restarts must be an integer >= 1"):
    evaluation.run_attack(vanilla, None, x, y, name="clean", steps=None, **dict(common, restarts=0))
  with pytest.raises(ValueError, match="needs the independently trained copy"):
    evaluation.run_attack(vanilla, None, x, y, name="transfer_pgd", steps=2, **common)

  defense = MENet.create(method="usvt", startp=0.3, endp=0.5, mask_num=2, image_shape=(16, 16, 3))
  defended = _small_cnn(defense)
  r = evaluation.run_attack(defended, None, x, y, name="clean", steps=None, **common)
  # The randomized defense: robust in every draw <= mean over draws, first draw in between bounds.
  assert r.robust_all_draws <= r.mean_over_draws <= 1.0
  assert r.robust_all_draws <= r.accuracy
  # Judgement keys are tied to image indices: the batch size does not change the verdict.
  r2 = evaluation.run_attack(defended, None, x, y, name="clean", steps=None,
                             **dict(common, batch_size=12))
  assert (r.accuracy, r.mean_over_draws, r.robust_all_draws) == \
      (r2.accuracy, r2.mean_over_draws, r2.robust_all_draws)


def test_load_refuses_missing_runs_and_checkpoints(tmp_path):
  with pytest.raises(FileNotFoundError, match="no trained run in"):
    evaluation.load(tmp_path / "nowhere", (32, 32, 3))
  config = config_lib.Config.for_dataset("cifar10", workdir=str(tmp_path / "r"), model="small_cnn")
  run_dir.prepare(config)
  with pytest.raises(FileNotFoundError, match="no 'best' checkpoint in"):
    evaluation.load(tmp_path / "r", (32, 32, 3), "best")
  with pytest.raises(ValueError, match="checkpoint must be one of"):
    evaluation.load(tmp_path / "r", (32, 32, 3), "first")


def _cli(args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "experiments.cifar10", "--mode=eval", *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("args, match", [
    (["--attacks=clean,pgdd"], "error: unknown attack 'pgdd'"),
    (["--attack_steps=0"], "error: attack_steps must be an integer >= 1"),
    (["--attack_steps=7.5"], "error: attack_steps must be ints"),
    (["--sanity_eps=-1"], "error: sanity_eps must be in [0.0, 1.0]"),
    ([], "error: no trained run in"),
])
def test_eval_cli_errors(tmp_path, args, match):
  proc = _cli([f"--workdir={tmp_path / 'none'}", *args])
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert match in proc.stderr, proc.stderr[-2000:]
  assert not (tmp_path / "none").exists()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  if not (DATA_DIR / "cifar10").is_dir():
    pytest.skip(f"CIFAR-10 not found in {DATA_DIR}")
  root = tmp_path_factory.mktemp("eval")
  config = config_lib.Config.for_dataset(
      "cifar10", workdir=str(root / "run"), data_dir=str(DATA_DIR), cache_dir=str(root / "cache"),
      train_split="train[:64]", test_split="test[:16]", model="small_cnn", mode="pure",
      me_params={"keep": 0.8}, startp=0.4, endp=0.6, mask_num=1, epochs=1, batch_size=32,
      eval_batch_size=16, progress=False)
  workdir, _ = run_dir.prepare(config)
  train.train_and_evaluate(config, workdir)
  return workdir


def test_eval_cli_writes_the_report_of_a_trained_run(trained_run):
  proc = _cli([f"--workdir={trained_run}", f"--source_workdir={trained_run}",
               "--attacks=clean,pgd,bpda_pgd,bpda_eot,approx_input,projected_bpda,transfer_fgsm",
               "--attack_steps=2", "--eval_images=8", "--eot_samples=2", "--defense_draws=2",
               "--sanity_eps=0,0.5", "--sanity_images=8", "--eval_batch_size=8",
               "--eval_name=t"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads((trained_run / "eval" / "t.json").read_text())
  md = (trained_run / "eval" / "t.md").read_text()
  assert [(r["attack"], r["steps"]) for r in record["results"]] == [
      ("clean", None), ("pgd", 2), ("bpda_pgd", 2), ("bpda_eot", 2), ("approx_input", 2),
      ("projected_bpda", 2), ("transfer_fgsm", None)]
  assert record["images"] == 8 and record["step"] == 2 and record["defense"]["mean_p"] == 0.4
  assert record["checkpoint"].endswith("checkpoints/last/2")
  eps = record["params"]["eps"]
  assert all(r["max_linf"] <= eps + 1e-6 for r in record["results"])
  assert [a["eps"] for a in record["sanity"]["eps_sweep"]["accuracy"]] == [0.0, 0.5]
  assert record["sanity"]["gradients"]["finite"] == 1.0
  assert "| clean | pgd-2 | bpda_pgd-2 |" in md and "## Sanity checks" in md
  assert f"report: {trained_run / 'eval' / 't.md'}" in proc.stdout
  assert not [p for p in (trained_run / "eval").iterdir() if p.name.startswith(".")]


def test_every_registered_attack_runs_through_a_defense_within_eps():
  defense = MENet.create(method="usvt", startp=0.5, endp=0.5, mask_num=1, image_shape=(16, 16, 3))
  target = _small_cnn(defense)
  x = np.asarray(jax.random.uniform(jax.random.key(2), (4, 16, 16, 3)))
  y = np.arange(4)
  params = attack_suite.Params(eps=0.05, step_size=0.02, eot_samples=2, eot_chunk=2,
                               apgd_samples=2, projected_rank=2, spsa_samples=4, spsa_steps=2,
                               boundary_steps=3)
  for name in attack_suite.names():
    r = evaluation.run_attack(target, _small_cnn(), x, y, name=name, steps=2, params=params,
                              restarts=1, draws=2, attack_key=jax.random.key(0),
                              eval_key=jax.random.key(1), batch_size=4)
    assert r.max_linf <= 0.05 + 1e-6, name
    assert 0.0 <= r.robust_all_draws <= r.mean_over_draws <= 1.0, name
    assert r.steps == (2 if attack_suite.get(name).iterative else None)


def test_combined_table_aligns_runs_by_attack_and_steps():
  def record(run, rows, failed=False):
    results = [dict(attack=a, steps=s, accuracy=acc, robust_all_draws=rob) for a, s, acc, rob in rows]
    checks = [dict(name="c", passed=not failed, detail="d")]
    return dict(run=run, defense=None, images=500, results=results, sanity=dict(checks=checks))
  table = report.combined([record("runs/a", [("clean", None, 0.7, 0.7), ("pgd", 7, 0.1, 0.1)]),
                           record("runs/b", [("pgd", 7, 0.5, 0.25), ("pgd", 20, 0.4, 0.2)], True)])
  lines = table.splitlines()
  assert lines[0] == "| run | defense | images | clean | pgd-7 | pgd-20 | sanity |"
  assert lines[2] == "| a | none | 500 | 70.0% | 10.0% | — | all passed |"
  assert lines[3] == "| b | none | 500 | — | 50.0% (25.0%) | 40.0% (20.0%) | **1 failed** |"
