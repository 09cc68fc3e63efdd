"""`python -m experiments.cifar10 --mode=eval`: errors, the report, resume after a kill, the
exit status of failed sanity checks."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from menet_jax.evaluation import restore
from menet_jax.training import loop, run_dir
from menet_jax.training.config import Config
from tests.conftest import CIFAR_TEST, DATA_DIR
from tests import watchdog
from tests.watchdog import REPO

ATTACKS = ["--attacks=clean,pgd,bpda_pgd,bpda_eot(samples=2),approx_input,projected_bpda,"
           "transfer_fgsm"]
# A one-epoch model on 8 images with 2-step attacks is about the report, not about robustness:
# its sweep may well leave an image at eps 0.5, so a failed check must not stop these runs.
SETTINGS = ["--attack_steps=2", "--eval_images=8", "--defense_draws=2", "--sanity_eps=0,0.5",
            "--sanity_images=8", "--eval_batch_size=8", "--allow_failed_checks"]


def _cli(args, entry="experiments.cifar10"):
  return subprocess.run([sys.executable, "-m", entry, "--mode=eval", *args], cwd=REPO,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                        timeout=600)


@pytest.mark.parametrize("args, match", [
    (["--attacks=clean,pgdd"], "error: unknown attack 'pgdd'; known: apgd_ce"),
    (["--attacks=bpda_eot(sampels=3)"], "error: attack 'bpda_eot' has no argument 'sampels'; "
                                        "it takes steps, samples, step_size, chunk, view"),
    (["--attack_steps=0"], "error: attack_steps must be an integer >= 1"),
    (["--attack_steps=7.5"], "error: attack_steps must be ints"),
    (["--sanity_eps=-1"], "error: sanity_eps must be in [0.0, 1.0]"),
    (["--norm=l2"], "error: --norm=l2 needs --eps"),
    (["--norm=l2", "--eps=1", "--attacks=clean,spsa"],
     "error: attack 'spsa' runs under the linf threat model only, not norm='l2'"),
    ([], "error: no trained run in"),
])
def test_eval_cli_errors(tmp_path, args, match):
  proc = _cli([f"--workdir={tmp_path / 'none'}", *args])
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert match in proc.stderr, proc.stderr[-2000:]
  assert len([l for l in proc.stderr.splitlines() if "error" in l.lower()]) == 1
  assert not (tmp_path / "none").exists()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  if not CIFAR_TEST.is_file():
    pytest.skip(f"CIFAR-10 test batch not found at {CIFAR_TEST}")
  root = tmp_path_factory.mktemp("eval")
  config = Config.for_dataset(
      "cifar10", mode="pure", workdir=str(root / "run"), data_dir=str(DATA_DIR),
      cache_dir=str(root / "cache"), train_split="train[:64]", test_split="test[:16]",
      model="small_cnn", me_method="usvt", me_params={"keep": 0.8}, startp=0.4, endp=0.6,
      mask_num=1, epochs=1, batch_size=32, eval_batch_size=16, progress=False)
  workdir, _ = run_dir.prepare(config)
  loop.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope="module")
def evaluated(trained_run):
  """The uninterrupted evaluation: (its process, record, verdicts)."""
  proc = _cli([f"--workdir={trained_run}", f"--source_workdir={trained_run}", *ATTACKS, *SETTINGS,
               "--eval_name=t"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads((trained_run / "eval" / "t.json").read_text())
  with np.load(trained_run / "eval" / "t.npz") as f:
    verdicts = dict(f)
  return proc, record, verdicts


def test_restore_builds_the_classifier_without_an_optimizer(trained_run):
  restored = restore.load(trained_run)
  assert set(restored.variables) == {"params", "batch_stats"} and restored.step == 2
  assert restored.defense.spec() == restored.config.defense
  with pytest.raises(FileNotFoundError, match="no trained run in"):
    restore.load(trained_run.parent / "nowhere")
  with pytest.raises(FileNotFoundError, match="no 'best' checkpoint in"):
    restore.load(_empty_run(trained_run.parent / "empty"), "best")
  with pytest.raises(ValueError, match="checkpoint must be one of"):
    restore.load(trained_run, "first")


def _empty_run(path):
  run_dir.prepare(Config.for_dataset("cifar10", workdir=str(path), model="small_cnn"))
  return path


def test_eval_cli_writes_the_report_and_per_image_verdicts(trained_run, evaluated):
  proc, record, verdicts = evaluated
  md = (trained_run / "eval" / "t.md").read_text()
  assert [r["label"] for r in record["results"]] == [
      "clean", "pgd-2", "bpda_pgd-2", "bpda_eot-2", "approx_input-2", "projected_bpda-2",
      "transfer_fgsm"]
  assert record["images"] == 8 and record["step"] == 2 and record["defense"]["mean_p"] == 0.4
  assert record["checkpoint"].endswith("checkpoints/last/2")
  assert all(r["max_linf"] <= record["eps"] + 1e-6 for r in record["results"])
  assert [a["eps"] for a in record["sanity"]["eps_sweep"]["accuracy"]] == [0.0, 0.5]
  assert record["sanity"]["gradients"]["finite"] == 1.0
  # Per image and draw, for every row; the worst case is their AND.
  rows = [verdicts[r["spec"]] for r in record["results"]]
  assert all(v.shape == (2, 8) and v.dtype == bool for v in rows)
  np.testing.assert_array_equal(verdicts["worst_case"], np.logical_and.reduce(rows))
  assert record["worst_case"]["accuracy"] == verdicts["worst_case"][0].mean()
  assert "| clean | pgd-2 | bpda_pgd-2 |" in md and "| worst case |" in md
  assert "## Sanity checks" in md
  assert f"report: {trained_run / 'eval' / 't.md'}" in proc.stdout
  assert "0 rows reused, 9 computed" in proc.stdout  # 7 attacks and 2 sweep radii
  assert not [p for p in (trained_run / "eval").iterdir() if p.name.startswith(".")]


def test_killed_evaluation_resumes_without_recomputing_a_row(trained_run, evaluated):
  _, record, verdicts = evaluated
  args = [sys.executable, "-m", "experiments.cifar10", "--mode=eval", f"--workdir={trained_run}",
          f"--source_workdir={trained_run}", *ATTACKS, *SETTINGS, "--eval_name=k"]
  proc = subprocess.Popen(args, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  rows = trained_run / "eval" / "k.rows"
  # A row being written is a hidden temporary file until its rename; a kill can leave it behind.
  done = lambda: [p for p in rows.glob("*.json") if not p.name.startswith(".")]
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if rows.is_dir() and done():
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the evaluation ended before it could be killed"
  finished = len(done())
  assert 1 <= finished < 9
  assert not (trained_run / "eval" / "k.json").exists()
  mtimes = {p.name: p.stat().st_mtime_ns for p in rows.iterdir()}

  resumed = subprocess.run(args, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                           capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"{finished} rows reused, {9 - finished} computed" in resumed.stdout
  assert all(rows.joinpath(n).stat().st_mtime_ns == t for n, t in mtimes.items())
  again = json.loads((trained_run / "eval" / "k.json").read_text())
  # The same results as the uninterrupted evaluation (rows are keyed by what determines them,
  # not by the report's name, so the same settings give the same verdicts).
  assert again["results"] == [dict(r, wall_s=again_r["wall_s"])
                              for r, again_r in zip(record["results"], again["results"])]
  with np.load(trained_run / "eval" / "k.npz") as f:
    for key, value in verdicts.items():
      np.testing.assert_array_equal(f[key], value)


# The command line with one more defense, registered by this script: its attack view stops
# the gradient, the textbook case of gradient masking that the sanity checks exist to catch.
MASKED = """
import dataclasses, sys
import jax
from absl import app
from experiments import main
from menet_jax import defenses

@defenses.register("masked")
@dataclasses.dataclass(frozen=True)
class Masked(defenses.Defense):
  def transform(self, keys, x, level):
    return x

  def attack_view(self, keys, x, level):
    return jax.lax.stop_gradient(x)

main.define_flags("cifar10")
app.run(main.main)
"""


def test_a_failed_sanity_check_fails_the_command_unless_allowed(trained_run):
  args = [f"--workdir={trained_run}", "--mode=eval", "--defense=masked", "--attacks=clean",
          "--eval_images=8", "--sanity_eps=0,0.5", "--sanity_images=8", "--eval_batch_size=8",
          "--defense_draws=1", "--attack_steps=2", "--eval_name=f"]

  def run(*extra):
    return subprocess.run([sys.executable, "-c", MASKED, *args, *extra], cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                          text=True, timeout=600)

  failed = run()
  assert failed.returncode == 1, failed.stderr[-3000:]
  assert "SANITY CHECKS FAILED" in failed.stderr and "gradients nonzero: 0.00%" in failed.stderr
  record = json.loads((trained_run / "eval" / "f.json").read_text())
  assert record["defense"] == {"defense": "masked"}
  allowed = run("--allow_failed_checks")
  assert allowed.returncode == 0, allowed.stderr[-3000:]
  assert "SANITY CHECKS FAILED" in allowed.stderr


def test_any_defense_in_front_of_a_trained_classifier(trained_run):
  # The run was trained behind ME-Net; evaluation puts a test-time defense there instead.
  proc = _cli([f"--workdir={trained_run}", "--defense=median(k=3, padding=reflect)",
               "--attacks=clean,bpda_pgd", *SETTINGS, "--eval_name=median"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads((trained_run / "eval" / "median.json").read_text())
  assert record["defense"] == {"defense": "median", "k": 3, "padding": "reflect"}
  assert [r["label"] for r in record["results"]] == ["clean", "bpda_pgd-2"]
  assert "defense cost: the clean row" in (trained_run / "eval" / "median.md").read_text()
  bad = _cli([f"--workdir={trained_run}", "--defense=median(k=3)",
              "--attacks=bpda_pgd(view=frozen)", *SETTINGS, "--eval_name=bad"])
  assert bad.returncode == 2
  assert "offers bpda" in bad.stderr


def test_l2_evaluation_reports_pixel_and_per_pixel_radii(trained_run):
  proc = _cli([f"--workdir={trained_run}", "--norm=l2", "--eps=0.5", "--eval_name=l2",
               "--attacks=clean,pgd,cw_l2(steps=3,binary_steps=2)", "--attack_steps=2", "--eval_images=4", "--defense_draws=1",
               "--sanity_images=4", "--eval_batch_size=4", "--allow_failed_checks"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads((trained_run / "eval" / "l2.json").read_text())
  assert record["norm"] == "l2" and record["pixels"] == 32 * 32 * 3
  assert all(r["max_l2"] <= 0.5 + 1e-5 for r in record["results"])
  # The default sweep: 0, eps / 4, eps, 2 eps and half the largest distance, sqrt(3072) / 2.
  sweep = [a["eps"] for a in record["sanity"]["eps_sweep"]["accuracy"]]
  np.testing.assert_allclose(sweep, [0.0, 0.125, 0.5, 1.0, 0.5 * np.sqrt(3072)], rtol=1e-6)
  md = (trained_run / "eval" / "l2.md").read_text()
  assert f"l2 eps 0.5 (|x_adv - x|_2, pixels in [0, 1]; {0.5 / 3072:.4g} per pixel" in md
  assert "accuracy ~ 0 at eps 27.71" in md


def test_two_cpu_devices_give_the_one_device_verdicts(trained_run):
  # --cpu_devices=2 splits every batch's defense draws over two devices: the restored
  # variables must sit on both, and batches that do not divide (5 images in batches of 4,
  # 3 sanity images, the per-image gradients of RIDE's exact view) are padded. Per-image work
  # does not depend on where it runs, so the verdicts are the one-device ones.
  settings = ["--defense=ride(k=2, t=1)", "--attacks=clean,bpda_pgd", "--attack_steps=2",
              "--eval_images=5", "--eval_batch_size=4", "--defense_draws=1", "--sanity_eps=0,0.5",
              "--sanity_images=3", "--allow_failed_checks"]
  verdicts = {}
  for devices in (1, 2):
    proc = _cli([f"--workdir={trained_run}", *settings, f"--eval_name=devices{devices}",
                 f"--cpu_devices={devices}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((trained_run / "eval" / f"devices{devices}.json").read_text())
    assert f"{devices} x cpu" in record["machine"] or devices == 1, record["machine"]
    assert record["sanity"]["gradient_agreement"], record["sanity"]
    with np.load(trained_run / "eval" / f"devices{devices}.npz") as f:
      verdicts[devices] = dict(f)
  assert sorted(verdicts[1]) == sorted(verdicts[2])
  for name, one in verdicts[1].items():
    np.testing.assert_array_equal(verdicts[2][name], one, err_msg=name)


# A plug-in: a defense and an attack in a file outside the package, registered when imported.
PLUGIN = """
import dataclasses
import jax
import jax.numpy as jnp
from menet_jax import defenses
from menet_jax.evaluation import suite

@defenses.register("quantize")
@dataclasses.dataclass(frozen=True)
class Quantize(defenses.Defense):
  levels: int = 4

  def transform(self, keys, x, level):
    return jnp.round(x * (self.levels - 1)) / (self.levels - 1)

@suite.register("sign_noise", threat=suite.Threat("none", "noise", random=True),
                description="uniform random signs at the radius")
def _sign_noise(ctx, key, x, y):
  return jnp.clip(x + ctx.eps * jax.random.rademacher(key, x.shape, x.dtype), 0, 1)
"""


def test_a_run_trained_behind_a_plug_in_is_evaluated_by_the_stock_command(tmp_path):
  if not CIFAR_TEST.is_file():
    pytest.skip(f"CIFAR-10 test batch not found at {CIFAR_TEST}")
  plugin = tmp_path / "my_plugin.py"
  plugin.write_text(PLUGIN)
  workdir = tmp_path / "run"
  train = subprocess.run(
      [sys.executable, "-m", "experiments.cifar10", f"--import={plugin}", f"--workdir={workdir}",
       f"--data_dir={DATA_DIR}", f"--cache_dir={tmp_path / 'cache'}", "--mode=vanilla",
       "--defense=quantize(levels=4)", "--model=small_cnn", "--train_split=train[:32]",
       "--test_split=test[:8]", "--epochs=1", "--batch_size=16", "--eval_batch_size=8",
       "--noprogress"], cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=600)
  assert train.returncode == 0, train.stderr[-3000:]
  assert json.loads((workdir / "config.json").read_text())["imports"] == [str(plugin)]
  # No --import here: the run recorded its plug-in, which defines the defense and the attack.
  proc = _cli([f"--workdir={workdir}", "--attacks=clean,sign_noise,bpda_pgd", "--attack_steps=2",
               "--eval_images=8", "--sanity_eps=0,0.5", "--sanity_images=8",
               "--eval_batch_size=8", "--allow_failed_checks", "--eval_name=p"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads((workdir / "eval" / "p.json").read_text())
  assert record["defense"] == {"defense": "quantize", "levels": 4}
  assert [r["label"] for r in record["results"]] == ["clean", "sign_noise", "bpda_pgd-2"]
  assert record["draws"] == 1  # a deterministic defense is judged once
  assert (workdir / "eval" / "p.png").stat().st_size > 0
  # The report's replay command works as written.
  command = record["command"].split()
  assert command[:3] == ["python", "-m", "experiments.cifar10"]
  replay = subprocess.run([sys.executable, *command[1:]], cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                          text=True, timeout=600)
  assert replay.returncode == 0, replay.stderr[-3000:]
  assert "(5 rows reused, 0 computed)" in replay.stdout  # 3 attacks, 2 sweep radii
  missing = _cli([f"--workdir={workdir}", "--import=no_such_plugin_module"])
  assert missing.returncode == 2 and "--import: import 'no_such_plugin_module'" in missing.stderr


def test_two_processes_give_the_one_process_verdicts(trained_run):
  # Two jax.distributed processes split every row's batches (6 images in batches of 2: 2 + 1
  # batches; the per-image gradients of median's exact view likewise) and gather the verdicts;
  # the report is the one-process one. A rerun of the two processes under the one-process
  # evaluation's name reads every row back from the chief's store.
  settings = [f"--workdir={trained_run}", "--defense=median(k=3)",
              "--attacks=clean,bpda_pgd,apgd_ce,square(queries=8)", "--attack_steps=2",
              "--eval_images=6", "--eval_batch_size=2", "--sanity_eps=0,0.5",
              "--sanity_images=3", "--cascade", "--allow_failed_checks"]
  cli = [sys.executable, "-m", "experiments.cifar10", "--mode=eval", *settings]

  def two(name):
    port = watchdog.free_port()
    procs = [watchdog.start([*cli[1:], f"--eval_name={name}", "--distributed",
                             f"--coordinator_address=localhost:{port}", "--num_processes=2",
                             f"--process_id={i}"]) for i in range(2)]
    return watchdog.finish(procs, 300, "two-process evaluation")

  one = _cli([*settings, "--eval_name=one"])
  assert one.returncode == 0, one.stderr[-3000:]
  assert "0 rows reused, 6 computed" in one.stdout  # 4 attacks and 2 sweep radii
  chief, other = two("two")
  assert "0 rows reused, 6 computed" in chief and "report:" not in other
  chief, _ = two("one")
  assert "6 rows reused, 0 computed" in chief
  records, verdicts = {}, {}
  for name in ("one", "two"):
    records[name] = json.loads((trained_run / "eval" / f"{name}.json").read_text())
    with np.load(trained_run / "eval" / f"{name}.npz") as f:
      verdicts[name] = dict(f)
  assert records["two"]["processes"] == 2 and records["one"]["processes"] == 2  # the rerun's
  assert records["one"]["sanity"]["gradient_agreement"] == \
      records["two"]["sanity"]["gradient_agreement"]
  assert sorted(verdicts["one"]) == sorted(verdicts["two"])
  for name, expected in verdicts["one"].items():
    np.testing.assert_array_equal(verdicts["two"][name], expected, err_msg=name)
