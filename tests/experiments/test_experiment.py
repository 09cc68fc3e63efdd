"""The command line: flagfiles, configuration defaults and every bad-input path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags

from experiments import main as experiment
from menet_jax import defenses
from menet_jax.training import config as config_lib
from menet_jax.training import objectives, run_dir
from tests import watchdog
from tests.conftest import CIFAR_TEST, DATA_DIR

REPO = Path(__file__).resolve().parents[2]
FLAGFILES = sorted((REPO / "experiments" / "flags").glob("*.flags")) + [REPO / "menet.flags"]


def _parse(argv, dataset="cifar10"):
  fv = flags.FlagValues()
  experiment.define_flags(dataset, fv)
  fv(["prog", *argv])
  return experiment.config_from_flags(fv)


@pytest.mark.parametrize("path", FLAGFILES, ids=lambda p: p.name)
def test_every_flagfile_is_a_valid_configuration(path):
  config = _parse([f"--flagfile={path}"])
  assert config.workdir
  # The name of a paper configuration says what it runs.
  name = path.stem
  if name.startswith(("cifar10", "mnist", "svhn", "tiny_imagenet")) and name != "quick":
    assert name.split("_")[0] in config.dataset
    # ... its mode, or for a combination the paper has no name for, its objective.
    mode = config.mode if config.mode != "custom" else config.objective.split("(")[0]
    assert f"_{mode}" in name
  # A paper configuration is a short file over a base that holds what its neighbours share.
  lines = [l for l in path.read_text().splitlines() if l.startswith("--")]
  if path.parent.name == "flags" and name != "quick":
    assert lines[0].startswith("--flagfile=experiments/flags/base/") and len(lines) <= 8


def test_no_flagfile_is_a_copy_of_another_but_for_p_dataset_or_workdir():
  # A p range or a dataset is an override of one base on the command line, not a new file.
  overrides = ("--startp", "--endp", "--dataset", "--workdir")
  seen = {}
  for path in sorted((REPO / "experiments" / "flags").rglob("*.flags")) + [REPO / "menet.flags"]:
    lines = frozenset(l for l in path.read_text().splitlines()
                      if l.startswith("--") and l.split("=")[0] not in overrides)
    assert lines not in seen, f"{path.name} repeats {seen[lines]} but for {overrides}"
    seen[lines] = path.name


def test_flagfiles_include_bases_that_exist():
  for path in FLAGFILES:
    for line in path.read_text().splitlines():
      if line.startswith("--flagfile="):
        assert (REPO / line.split("=", 1)[1]).is_file(), (path, line)


def test_menet_flags_is_the_papers_cifar10_nuclear_norm_run():
  c = _parse([f"--flagfile={REPO / 'menet.flags'}"])
  d = defenses.create(c.defense)
  assert (c.dataset, c.model, c.mode, c.epochs) == ("cifar10", "resnet18", "pure", 200)
  assert (d.method, dict(d.params)["mu"], d.startp, d.endp, d.mask_num, d.layout) == (
      "nuclear_norm", 1.0, 0.8, 1.0, 10, "concat")
  assert (c.lr, c.lr_boundaries, c.momentum, c.augment) == (0.1, (100, 150), 0.9, True)


@pytest.mark.parametrize("dataset, model, lr, epochs, bounds, augment, eps, steps", [
    ("cifar10", "resnet18", 0.1, 200, (100, 150), True, 8 / 255, 7),
    ("mnist", "lenet", 0.01, 200, (100, 150), False, 0.3, 40),
    ("svhn_cropped", "resnet18", 0.01, 200, (100, 150), True, 8 / 255, 7),
    ("tiny_imagenet", "densenet121", 0.1, 90, (30, 60), True, 8 / 255, 7),
])
def test_table_8_defaults(dataset, model, lr, epochs, bounds, augment, eps, steps):
  c = _parse(["--workdir=w", "--mode=adv"], dataset=dataset)
  assert (c.model, c.lr, c.epochs, c.lr_boundaries, c.augment) == (model, lr, epochs, bounds, augment)
  objective = objectives.create(c.objective)
  assert (objective.eps, objective.steps) == (pytest.approx(eps), steps)


def test_flags_override_defaults_and_me_params_parse():
  c = _parse(["--workdir=w", "--lr=0.05", "--lr_boundaries=3,5", "--me_method=usvt",
              "--me_params=keep=0.5", "--noaugment"])
  assert (c.lr, c.lr_boundaries, c.augment) == (0.05, (3, 5), False)
  assert dict(defenses.create(c.defense).params)["keep"] == 0.5
  # The paper's estimator by default (L107), the nuclear norm at the release's mu = 1.
  d = defenses.create(_parse(["--workdir=w"]).defense)
  assert (d.method, dict(d.params)["mu"]) == ("nuclear_norm", 1.0)


def test_defense_and_objective_flags_set_any_combination():
  c = _parse(["--workdir=w", "--defense=menet(method=usvt, startp=0.4, endp=0.6, mask_num=2)",
              "--objective=pgd_at(eps=0.1, steps=3)"])
  assert c.mode == "adv"
  assert objectives.create(c.objective).step_size == pytest.approx(2 / 255)
  # Defaults written out or left implicit: the same run.
  same = _parse(["--workdir=w", "--mode=adv", "--me_method=usvt", "--startp=0.4", "--endp=0.6",
                 "--mask_num=2", "--adv_eps=0.1", "--adv_steps=3"])
  assert same.identity() == c.identity()


@pytest.mark.parametrize("argv, match", [
    (["--me_params=keep"], "me_params entries must be name=value"),
    (["--startp=0.9", "--endp=0.5"], "endp must be >= startp"),
    (["--lr_boundaries=5,3"], "strictly increasing"),
    (["--epochs=0"], "epochs"),
    (["--inference=vote", "--votes=0"], "votes"),
    (["--defense=menet(method=usvt, kep=1)"], "method 'usvt' has no argument 'kep'; it takes keep"),
    (["--defense=nope"], "unknown defense 'nope'; known: identity, median, menet"),
    (["--objective=pgd_at(epss=1)"], "objective 'pgd_at' has no argument 'epss'; it takes eps"),
    (["--objective=pgd_at(steps=0)"], "steps must be an integer >= 1"),
])
def test_bad_values_are_refused(argv, match):
  with pytest.raises(ValueError, match=match):
    _parse(["--workdir=w", *argv])


def _run(args, tmp_path, devices=1, entry="cifar10"):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=watchdog.xla_flags(devices))
  return subprocess.run([sys.executable, "-m", f"experiments.{entry}", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def _error_lines(proc):
  return [l for l in proc.stderr.splitlines() if "error" in l.lower()]


@pytest.mark.parametrize("args, match", [
    (["--mode=sgd"], "value should be one of"),
    (["--flagfile=/nonexistent/run.flags"], "/nonexistent/run.flags"),
    (["--dataset=tiny_imagenet"], "this entry point runs cifar10, but the flags ask for "
                                  "tiny_imagenet; use python -m experiments.main --dataset=tiny_imagenet"),
    (["--batch_size=6"], "batch_size must be divisible by the number of devices (4)"),
    # --cpu_devices replaces the 4 CPU devices of XLA_FLAGS before JAX starts.
    (["--cpu_devices=3", "--batch_size=128"],
     "batch_size must be divisible by the number of devices (3), got 128"),
    (["--cpu_devices=0"], "cpu_devices must be an integer >= 1, got 0"),
    (["--mode=eval", "--eval_batch_size=6"],
     "eval_batch_size must be divisible by the number of local devices (4), got 6"),
    (["--defense=menet(method=usvt, kep=1)"], "method 'usvt' has no argument 'kep'"),
])
def test_cli_errors_are_one_line_and_create_nothing(tmp_path, args, match):
  workdir = tmp_path / "run"
  proc = _run([f"--workdir={workdir}", f"--data_dir={tmp_path}", "--cache_dir", str(tmp_path),
               *args], tmp_path, devices=4)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert match in proc.stderr, proc.stderr[-2000:]
  lines = _error_lines(proc)
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
  assert not workdir.exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run")]


def test_a_missing_dataset_is_one_error_line(tmp_path):
  proc = _run([f"--workdir={tmp_path / 'run'}", f"--data_dir={tmp_path}"], tmp_path,
              entry="tiny_imagenet")
  assert proc.returncode == 2
  assert "dataset 'tiny_imagenet' split 'train' not found" in proc.stderr
  assert len(_error_lines(proc)) == 1, proc.stderr[-2000:]


def test_an_entry_point_runs_only_its_dataset(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run([sys.executable, "-m", "experiments.mnist",
                         f"--flagfile={REPO / 'experiments' / 'flags' / 'quick.flags'}",
                         f"--workdir={workdir}"], cwd=REPO, capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2
  assert "this entry point runs mnist, but the flags ask for cifar10" in proc.stderr
  assert len(_error_lines(proc)) == 1, proc.stderr[-2000:]
  assert not workdir.exists()


def test_a_directory_of_another_run_is_refused(tmp_path):
  # The run directory is checked after the data are read; without the offline CIFAR-10 the
  # loader would go to TFDS instead.
  if not CIFAR_TEST.is_file():
    pytest.skip(f"CIFAR-10 test batch not found at {CIFAR_TEST}")
  workdir = tmp_path / "run"
  other = config_lib.Config.for_dataset("cifar10", workdir=str(workdir), model="small_cnn")
  run_dir.prepare(other)
  before = sorted(p.name for p in workdir.iterdir())
  proc = _run([f"--workdir={workdir}", f"--data_dir={DATA_DIR}", "--model=resnet18",
               "--mode=vanilla", "--train_split=train[:64]", "--test_split=test[:64]"], tmp_path)
  assert proc.returncode == 2
  assert "holds a different run" in proc.stderr and "model: 'small_cnn'" in proc.stderr
  assert len(_error_lines(proc)) == 1, proc.stderr[-2000:]
  assert sorted(p.name for p in workdir.iterdir()) == before


def test_run_dir_is_created_whole_and_resumed_only_by_the_same_config(tmp_path):
  c = config_lib.Config.for_dataset("mnist", workdir=str(tmp_path / "r"), model="small_cnn")
  path, existed = run_dir.prepare(c)
  assert not existed and json.loads((path / "config.json").read_text())["model"] == "small_cnn"
  assert (path / "flags").read_text().startswith("--dataset=mnist")
  # Where things are may change between restarts; what is computed may not.
  moved = config_lib.Config.for_dataset("mnist", workdir=str(path), model="small_cnn",
                                        data_dir="/elsewhere", progress=False)
  assert run_dir.prepare(moved) == (path, True)
  with pytest.raises(run_dir.RunMismatch, match="seed: 0 in the directory, 1 now"):
    run_dir.prepare(config_lib.Config.for_dataset("mnist", workdir=str(path), model="small_cnn",
                                                  seed=1))
  stray = tmp_path / "stray"
  stray.mkdir()
  (stray / "notes.txt").write_text("x")
  with pytest.raises(run_dir.RunMismatch, match="not a menet_jax run"):
    run_dir.prepare(config_lib.Config.for_dataset("mnist", workdir=str(stray)))
  # The flags file reproduces the configuration.
  assert _parse([f"--flagfile={path / 'flags'}"], dataset="mnist").identity() == c.identity()
