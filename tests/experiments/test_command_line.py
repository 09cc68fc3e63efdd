"""The command line's contract: one `error:` line and exit status 2 for any bad command line,
--help with the project's flags and components, --only_check_args that checks without writing,
radii written as fractions."""

import subprocess
import sys

import pytest
from absl import flags

from experiments import main as experiment
from menet_jax.training import config as config_lib
from menet_jax.training import objectives, run_dir
from tests import watchdog


def _run(args, entry="cifar10"):
  """(returncode, stdout, stderr) of python -m experiments.<entry> args."""
  proc = subprocess.run([sys.executable, "-m", f"experiments.{entry}", *map(str, args)],
                        cwd=watchdog.REPO, env=watchdog.env(), capture_output=True, text=True,
                        timeout=120)
  return proc.returncode, proc.stdout, proc.stderr


def _tree(path):
  return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _fv(argv):
  fv = flags.FlagValues()
  experiment.define_flags("cifar10", fv)
  fv(["prog", *argv])
  return fv


def test_radii_may_be_written_as_fractions():
  fv = _fv(["--workdir=w", "--eps=8/255", "--step_size=0.5/255", "--sanity_eps=0,2/255,0.5",
            "--mode=adv", "--adv_eps=8/255", "--adv_step=2/255"])
  assert (fv.eps, fv.step_size, fv.sanity_eps) == (8 / 255, 0.5 / 255, [0.0, 2 / 255, 0.5])
  # The configuration (config.json) holds the number, not the fraction.
  objective = objectives.create(experiment.config_from_flags(fv).objective)
  assert (objective.eps, objective.step_size) == (8 / 255, 2 / 255)
  assert _fv(["--workdir=w", "--eps=0.03"]).eps == 0.03
  for bad in ("8/0", "8/2x5", "1/2/3", "eight"):
    with pytest.raises(flags.IllegalFlagValueError,
                       match=f"flag --eps={bad}: expected a number or a fraction such as 8/255"):
      _fv(["--workdir=w", f"--eps={bad}"])


def test_help_groups_every_flag_once():
  fv = flags.FlagValues()
  experiment.define_flags("cifar10", fv)
  text = experiment.help_text(fv)
  names = [name for _, group in experiment._HELP_GROUPS for name in group]
  assert sorted(names) == sorted(fv) and len(set(names)) == len(names)
  for name in names:
    assert f"--{name}:" in text or f"--[no]{name}:" in text, name


def test_help_lists_the_projects_flags_and_components():
  code, out, err = _run(["--help"])
  assert code == 0, err[-2000:]
  for group in ("run and data:", "defense and objective:", "training:", "evaluation",
                "devices and processes:"):
    assert f"\n{group}" in out, group
  assert "--workdir:" in out and "--defense:" in out and "--[no]download:" in out
  # The stock components, as a fresh process registers them (other test modules of this
  # process register toy ones).
  stock = subprocess.run(
      [sys.executable, "-c", "from experiments import main as m; print(*m.defenses.names(), "
       "*m.models.names(), *m.objectives.names(), *m.suite.names())"],
      cwd=watchdog.REPO, env=watchdog.env(), capture_output=True, text=True, timeout=120,
      check=True).stdout.split()
  assert "menet" in stock and "pgd" in stock
  for name in stock:
    assert name in out, name
  # Not the libraries' flags (those are --helpfull's).
  for other in ("--test_srcdir", "--chex_n_cpu_devices", "--logtostderr", "--run_with_pdb"):
    assert other not in out, other


def test_bad_command_lines_are_one_error_line_and_exit_2(tmp_path):
  workdir = tmp_path / "run"
  other = tmp_path / "other"
  run_dir.prepare(config_lib.Config.for_dataset("cifar10", workdir=str(other), model="small_cnn"))
  w = f"--workdir={workdir}"
  cases = [
      ([w, "--eval_imgs=8"], "Unknown command line flag 'eval_imgs'. Did you mean: eval_images ?"),
      ([w, "--mode=evall"], "flag --mode=evall: value should be one of <vanilla|pure|adv|"),
      ([w, "--eps=8/2x5"], "flag --eps=8/2x5: expected a number or a fraction such as 8/255"),
      ([w, "--sanity_eps=0,1/0"], "flag --sanity_eps=0,1/0: expected a number or a fraction"),
      ([w, "--batch_size=abc"], "flag --batch_size=abc: invalid literal for int()"),
      ([w, f"--flagfile={tmp_path / 'none.flags'}"],
       f"Unable to open flagfile: [Errno 2] No such file or directory: '{tmp_path}/none.flags'"),
      (["--mode=eval"], "Flag --workdir must have a value other than None"),
      ([w, "train"], "unexpected arguments ['train']"),
      ([w, "--only_check_args", "--mode=eval", "--attacks=clean,pgdd"],
       "unknown attack 'pgdd'; known: apgd_ce"),
      ([w, "--only_check_args", "--mode=eval"], f"no trained run in {workdir}"),
      ([f"--workdir={other}", "--only_check_args", "--model=resnet18"],
       "model: 'small_cnn' in the directory, 'resnet18' now); use another --workdir"),
      ([w, "--only_check_args", f"--data_dir={tmp_path / 'nodata'}"],
       "dataset 'cifar10' split 'train' not found"),
  ]
  before = _tree(tmp_path)
  for args, match in cases:
    code, out, err = _run(args)
    lines = err.splitlines()
    assert (code, len(lines)) == (2, 1), (args, code, err[-2000:])
    assert lines[0].startswith("error: ") and match in lines[0], (args, lines[0])
    assert not out, (args, out)
  assert _tree(tmp_path) == before


def test_only_check_args_checks_without_writing(tmp_path):
  trained = tmp_path / "trained"
  run_dir.prepare(config_lib.Config.for_dataset("cifar10", workdir=str(trained),
                                                model="small_cnn"))
  # --download: the missing data would be fetched by the run, and are not by the check.
  data = [f"--data_dir={tmp_path / 'nodata'}", "--download"]
  before = _tree(tmp_path)
  train = _run([f"--workdir={tmp_path / 'new' / 'run'}", "--only_check_args", "--mode=adv",
                "--adv_eps=8/255", *data])
  evaluate = _run([f"--workdir={trained}", "--only_check_args", "--mode=eval", "--eps=4/255",
                   "--attacks=clean,pgd@5", *data])
  for code, out, err in (train, evaluate):
    assert code == 0, err[-2000:]
    assert out.startswith("ok: ") and len(out.splitlines()) == 1, out
  assert "(train, test to download)" in train[1] and "new run directory" in train[1]
  assert "eps=0.0313725" in train[1]
  assert "clean, pgd(step_size=None,steps=5)" in evaluate[1] and "linf eps 0.0156863" in evaluate[1]
  assert _tree(tmp_path) == before


def test_every_flag_default_is_its_components():
  # Parameters are declared once: a flag of a run setting or of ME-Net's defense leaves its
  # default to the Config (or the dataset, or MENet.create), and an evaluation flag's default is
  # EvalConfig's, read from there.
  import dataclasses

  from menet_jax import defenses, evaluation

  fv = flags.FlagValues()
  experiment.define_flags("cifar10", fv)
  fields = [f.name for f in dataclasses.fields(config_lib.Config)]
  menet = defenses.DEFENSES.defaults("menet")
  for name in [*fields, *menet]:
    if name in fv and name != "dataset":  # the entry point's dataset
      assert fv[name].default is None, (name, fv[name].default)
  ev = evaluation.EvalConfig()
  for flag, field in (("attacks", "attacks"), ("attack_steps", "attack_steps"), ("norm", "norm"),
                      ("restarts", "restarts"), ("defense_draws", "draws"),
                      ("eval_seed", "seed"), ("cascade", "cascade"),
                      ("sanity_images", "sanity_images"), ("sanity_eps", "sanity_eps"),
                      ("curve_eps", "curve_eps")):
    value = fv[flag].default
    expected = getattr(ev, field)
    if flag == "attacks":
      value = tuple(value.split(","))
    elif isinstance(expected, tuple):
      value = tuple(type(expected[0])(v) for v in value) if expected else tuple(value)
    assert value == expected, (flag, value, expected)
  assert fv["me_method"].default == config_lib.ME_METHOD
  # The help still says what each default is.
  assert f"(default: {menet['startp']})" in fv["startp"].help
  assert "default: 256" in fv["batch_size"].help
