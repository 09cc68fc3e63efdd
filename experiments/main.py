"""The absl main of experiments/<dataset>.py (cifar10, mnist, fashion_mnist, svhn,
tiny_imagenet), and of `python -m experiments.main --dataset=NAME` for any registered dataset (a
project's own with --import): flags -> library calls -> results.

Training (--mode=vanilla|pure|adv|madry, or --defense and --objective as
component strings): flags -> training.config.Config (Table 8 defaults for the
dataset, then the flags given) -> checks (config, data, run directory) ->
training.loop.train_and_evaluate. Every check runs before the run directory is
created.

Evaluation (--mode=eval): the trained run in --workdir (its config.json and
checkpoint; the training flags of a flagfile are not used) -> the attacks of
--attacks -> <workdir>/eval/<eval_name>.{json,npz,md}. Finished attack rows are
kept in <workdir>/eval/<eval_name>.rows/, so the same command after a kill
resumes where it stopped.

--only_check_args runs every check of the two without training, attacking or
writing anything, prints one `ok:` line and exits 0. --help (--helpshort) lists
the project's flags by group; --helpfull adds those of absl and the libraries.

Exit status: 2 and one `error:` line on stderr for any bad command line (an
unknown flag, a bad flag value, a missing flagfile or --workdir, a positional
argument, an unknown component), a missing dataset or checkpoint, or a directory
of another run; 1 when a sanity check of the evaluation failed (the report is
still written) unless --allow_failed_checks; 0 otherwise, --help included.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import logging as std_logging
import math
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

import jax
import numpy as np
from absl import app, flags, logging

from menet_jax import data, defenses, evaluation, models
from menet_jax.evaluation import report, suite
from menet_jax.reconstruct import masks, registry
from menet_jax.training import config as config_lib
from menet_jax.training import loop, objectives, run_dir
from menet_jax.training.checkpoint import CheckpointMismatch
from menet_jax.utils import machine, parallel, plugins, validation
from menet_jax.utils.registry import split_list

FLAGS = flags.FLAGS
# The dataset this entry point runs (experiments/<dataset>.py sets it).
_ENTRY_DATASET: list[str] = []
# --help's groups, (title, flag names) in order; define_flags fills it.
_HELP_GROUPS: list[tuple[str, list[str]]] = []
# What the library raises for bad input: one `error:` line, exit status 2.
_INPUT_ERRORS = (ValueError, FileNotFoundError, CheckpointMismatch)


class _RadiusParser(flags.FloatParser):
  """A float flag that also takes a fraction, 8/255, as papers write radii and step sizes."""

  def __init__(self) -> None:
    super().__init__()
    self.syntactic_help = "a number or a fraction such as 8/255"

  def convert(self, argument: float | str) -> float:
    """The value of a number or of a fraction a/b."""
    try:
      if isinstance(argument, str) and "/" in argument:
        numerator, denominator = argument.split("/")
        return float(numerator) / float(denominator)
      return super().convert(argument)
    except (ValueError, ZeroDivisionError):
      raise ValueError(f"expected {self.syntactic_help}, got {argument!r}") from None


class _RadiusListParser(flags.ListParser):
  """A comma-separated list of radii, each a number or a fraction (0,2/255,8/255)."""

  def parse(self, argument: str | list) -> list[float]:
    """The radii of a comma-separated string (empty entries are skipped) or of a list."""
    return [_RadiusParser().parse(item) for item in super().parse(argument) if item != ""]


def _define_radius(name: str, default: float | None, help_text: str, fv: dict[str, Any]) -> None:
  flags.DEFINE(_RadiusParser(), name, default, help_text, **fv)


def _known(names: tuple[str, ...] | list[str]) -> str:
  return "known: " + ", ".join(names)


def define_flags(dataset: str | None, flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the experiment flags for the entry point of `dataset` (None: any, --dataset), in
  --help's groups."""
  _ENTRY_DATASET[:] = [dataset] if dataset else []
  fv = dict(flag_values=flag_values)
  groups = []
  for title, define in (("run and data", _define_run_flags),
                        ("defense and objective", _define_defense_flags),
                        ("training", _define_training_flags),
                        ("evaluation (--mode=eval)", _define_eval_flags),
                        ("devices and processes", _define_device_flags)):
    before = set(flag_values)
    define(dataset, fv)
    groups.append((title, [name for name in flag_values if name not in before]))
  _HELP_GROUPS[:] = groups


def _by_dataset(value: Callable[[data.Dataset], Any]) -> str:
  """"value (datasets), ..." of each registered dataset's value, for a flag's help; a dataset
  without one (None) is named as having none."""
  groups: dict[Any, list[str]] = {}
  for name in data.names():
    groups.setdefault(value(data.dataset(name)), []).append(name)
  return ", ".join(f"{'none' if v is None else v} ({', '.join(names)})"
                   for v, names in groups.items())


def _config_defaults() -> dict[str, Any]:
  """Config's field defaults: the flags of a run's settings show them and leave them to it."""
  return {f.name: f.default for f in dataclasses.fields(config_lib.Config)
          if f.default is not dataclasses.MISSING}


def _define_run_flags(dataset: str, fv: dict[str, Any]) -> None:
  flags.DEFINE_enum("mode", "pure", list(config_lib.MODES) + ["eval"],
                    "A shorthand that expands to --defense and --objective (with the ME-Net and "
                    "PGD flags below; training.config.combination): vanilla = identity + "
                    "standard, pure = menet + standard, adv = menet + pgd_at, madry = identity "
                    "+ pgd_at; --defense / --objective override its parts. eval attacks the "
                    "trained run in --workdir.", **fv)
  if dataset is None:
    flags.DEFINE_string("dataset", None, "A registered dataset (menet_jax.data; a plug-in of "
                        "--import may add one), required to train; known: "
                        + ", ".join(data.names()) + ".", **fv)
  else:
    flags.DEFINE_string("dataset", dataset, f"Dataset; this entry point runs {dataset} only.",
                        **fv)
  flags.DEFINE_string("workdir", None, "Run directory (required): created, or resumed if it "
                      "holds this run; with --mode=eval, the trained run.", required=True, **fv)
  flags.DEFINE_string("data_dir", None, "Local dataset files (see menet_jax.data); "
                      "default $MENET_DATA_DIR, then tensorflow-datasets.", **fv)
  flags.DEFINE_bool("download", False, "Let tensorflow-datasets download a missing dataset into "
                    "--data_dir (default: TFDS's own folder); without it a missing dataset is "
                    "an error.", **fv)
  flags.DEFINE_string("cache_dir", None, "Cache of preprocessed training sets "
                      "(default ~/.cache/menet_jax).", **fv)
  flags.DEFINE_string("train_split", None, "Training split, TFDS syntax, e.g. train[:80%].", **fv)
  flags.DEFINE_string("test_split", None, "Test split, e.g. test.", **fv)
  run = _config_defaults()
  flags.DEFINE_integer("seed", None, "Seed of every random draw of the run (default: "
                       f"{run['seed']}).", **fv)
  flags.DEFINE_integer("log_every", None, "Steps between metric writes (default: "
                       f"{run['log_every']}).", **fv)
  flags.DEFINE_bool("progress", None, "Progress bars on the console (a log line every half "
                    f"minute when not on a terminal; default: {run['progress']}).", **fv)
  flags.DEFINE_multi_string("import", [], "Plug-in module registering defenses, attacks, models "
                            "or objectives: a dotted name on sys.path or a .py file "
                            "(repeatable). A run records them; evaluating it imports them.",
                            **fv)


def _define_defense_flags(dataset: str, fv: dict[str, Any]) -> None:
  del dataset  # the same flags for every dataset
  flags.DEFINE_string("defense", None, "Defense as a component string, e.g. "
                      "'menet(method=usvt,keep=0.8,startp=0.4,endp=0.6,mask_num=10)' (overrides "
                      "--mode's); with --mode=eval, the defense put in front of the trained "
                      f"classifier instead of its own; {_known(defenses.names())}.", **fv)
  flags.DEFINE_string("objective", None, "Training objective as a component string, e.g. "
                      "'pgd_at(eps=0.0314,step_size=0.0078,steps=7)' (overrides --mode's); "
                      f"{_known(objectives.names())}.", **fv)
  flags.DEFINE_enum("me_method", config_lib.ME_METHOD, list(registry.names()),
                    "--mode's ME (matrix estimation) method; the paper's default, the nuclear "
                    "norm (the release's is usvt with --me_params=keep=0.8).", **fv)
  flags.DEFINE_list("me_params", [], "ME method parameters as name=value, e.g. keep=0.8 or mu=1.",
                    **fv)
  menet = defenses.DEFENSES.defaults("menet")  # their defaults: MENet.create's, read here
  flags.DEFINE_enum("layout", None, list(masks.LAYOUTS), "Matrix layout of the channels "
                    f"(default: {menet['layout']}).", **fv)
  flags.DEFINE_float("startp", None, "First mask observation probability (default: "
                     f"{menet['startp']}).", **fv)
  flags.DEFINE_float("endp", None, "Mask probabilities run from startp towards endp (default: "
                     f"{menet['endp']}).", **fv)
  flags.DEFINE_integer("mask_num", None, "Masks (reconstructions) per training image, n "
                       f"(default: {menet['mask_num']}).", **fv)
  flags.DEFINE_enum("inference", None, ["mean", "vote"], "One mask at mean p, or a majority "
                    f"vote over --votes masks (default: {menet['inference']}).", **fv)
  flags.DEFINE_integer("votes", None, "Masks per test image for --inference=vote (default: "
                       f"{menet['votes']}).", **fv)
  _define_radius("adv_eps", None, "--mode's PGD radius (default per dataset); with --mode=eval "
                 "the default --eps.", fv)
  _define_radius("adv_step", None, "--mode's PGD step size.", fv)
  flags.DEFINE_integer("adv_steps", None, "--mode's PGD steps (default: the dataset's, "
                       f"{_by_dataset(lambda d: d.pgd['steps'])}).", **fv)


def _define_training_flags(dataset: str, fv: dict[str, Any]) -> None:
  del dataset  # Table 8's defaults per dataset are filled in by config_from_flags
  flags.DEFINE_string("model", None, "Classifier, a registered name or a component string "
                      f"(default: Table 8); {_known(models.names())}.", **fv)
  flags.DEFINE_integer("num_classes", None, "Classes (default: the dataset's).", **fv)
  flags.DEFINE_integer("epochs", None, "Epochs (default: Table 8).", **fv)
  run = _config_defaults()
  flags.DEFINE_integer("batch_size", None, "Global batch size (all devices, all hosts; default: "
                       f"{run['batch_size']}).", **fv)
  flags.DEFINE_float("lr", None, "Learning rate (default: Table 8).", **fv)
  flags.DEFINE_list("lr_boundaries", None, "Epochs at which lr is multiplied by lr_decay.", **fv)
  flags.DEFINE_float("lr_decay", None, f"Step decay factor (default: {run['lr_decay']}).", **fv)
  flags.DEFINE_float("momentum", None, f"SGD momentum (default: {run['momentum']}).", **fv)
  flags.DEFINE_enum("optimizer", None, list(config_lib.OPTIMIZERS),
                    "sgd (momentum) or adam (PyTorch's defaults); default: the dataset's, "
                    f"{_by_dataset(lambda d: d.training and d.training.optimizer)}.", **fv)
  flags.DEFINE_float("weight_decay", None, "L2 weight decay; default: the dataset's, "
                     f"{_by_dataset(lambda d: d.training and d.training.weight_decay)}.", **fv)
  flags.DEFINE_bool("augment", None, "Pad-4 crop + flip; default: the dataset's, "
                    f"{_by_dataset(lambda d: d.training and d.training.augment)}.", **fv)
  flags.DEFINE_integer("checkpoint_every", None, "Checkpoint every N steps (0: every epoch; "
                       f"default: {run['checkpoint_every']}).", **fv)
  flags.DEFINE_integer("keep_checkpoints", None, "Most recent checkpoints kept (default: "
                       f"{run['keep_checkpoints']}).", **fv)
  flags.DEFINE_integer("eval_batch_size", None, "Global batch size of the test-set evaluation "
                       f"(default: {run['eval_batch_size']}) and of --mode=eval (default: "
                       f"{evaluation.EvalConfig().batch_size}).", **fv)


def _define_eval_flags(dataset: str, fv: dict[str, Any]) -> None:
  del dataset  # the dataset is the trained run's
  defaults = evaluation.EvalConfig()
  flags.DEFINE_string("attacks", ",".join(defaults.attacks),
                      "Comma-separated attacks, each name, name(k=v,...) or name@s1/s2 (steps), "
                      "or a preset: auto (AutoAttack's rand version for a randomized defense, "
                      "standard otherwise), standard, rand; "
                      f"{_known(suite.names())}.", **fv)
  flags.DEFINE_list("attack_steps", [str(s) for s in defaults.attack_steps],
                    "Steps of the iterative attacks whose entry sets none.", **fv)
  flags.DEFINE_integer("eval_images", 1000, "The first N images of the test split.", **fv)
  flags.DEFINE_enum("norm", defaults.norm, ["linf", "l2"], "The threat model's norm.", **fv)
  _define_radius("eps", None, "Radius in --norm; l-inf default: the dataset's PGD eps; l2 "
                 "(pixel units, |x_adv - x|_2 with pixels in [0, 1]) has no default.", fv)
  _define_radius("step_size", None, "Default step of the attacks (default: the dataset's PGD "
                 "step; under l2, eps / 4).", fv)
  flags.DEFINE_integer("restarts", defaults.restarts, "Random restarts (robust = survives all).",
                       **fv)
  flags.DEFINE_integer("defense_draws", defaults.draws,
                       "Draws of a randomized defense's randomness judging each example (a "
                       "deterministic defense is judged once).", **fv)
  flags.DEFINE_bool("cascade", defaults.cascade, "Attack each image only while it is still "
                    "robust, as AutoAttack does (default: on for a preset).", **fv)
  flags.DEFINE_string("source_workdir", None,
                      "Run directory of the independently trained copy (transfer_*).", **fv)
  flags.DEFINE_enum("checkpoint", "last", ["last", "best"], "Which checkpoint.", **fv)
  flags.DEFINE_integer("eval_seed", defaults.seed, "Seed of the attacks and the defense's draws.",
                       **fv)
  flags.DEFINE_string("eval_name", "eval", "Report name, <workdir>/eval/<name>.md.", **fv)
  flags.DEFINE(_RadiusListParser(), "sanity_eps", defaults.sanity_eps,
               "Radii of the BPDA-PGD sanity sweep in --norm, each a number or a fraction "
               "(default: 0, eps/4, eps, 2 eps and half the largest distance, those within "
               "reach; an empty value: none).",
               serializer=flags.ListSerializer(","), **fv)
  flags.DEFINE(_RadiusListParser(), "curve_eps", list(defaults.curve_eps),
               "More radii at which every attack runs again, for the report's curves of "
               "accuracy against eps (e.g. 2/255,4/255,16/255).",
               serializer=flags.ListSerializer(","), **fv)
  flags.DEFINE_integer("sanity_images", defaults.sanity_images,
                       "Images of the sanity checks (at most --eval_images are used).", **fv)
  flags.DEFINE_bool("allow_failed_checks", False,
                    "Exit 0 even when a sanity check fails (the report says so).", **fv)


def _define_device_flags(dataset: str, fv: dict[str, Any]) -> None:
  del dataset  # the same flags for every dataset
  flags.DEFINE_integer("cpu_devices", None, "Split a CPU host into N XLA devices, so that "
                       "per-image defense work and batch slices run N at once (e.g. the number "
                       "of cores; batches must be divisible by N). Default: JAX's (one).", **fv)
  flags.DEFINE_bool("distributed", False, "Multi-process run: call jax.distributed.initialize.",
                    **fv)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).", **fv)
  flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).", **fv)
  flags.DEFINE_integer("process_id", None, "This process's index (multi-process).", **fv)


def _parse_params(items: list[str]) -> dict[str, Any]:
  params = {}
  for item in items:
    name, sep, value = item.partition("=")
    if not sep or not name:
      raise ValueError(f"me_params entries must be name=value, got {item!r}")
    try:
      params[name] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      raise ValueError(f"me_params: {name} must be a number or literal, got {value!r}") from None
  return params


def _check_dataset(dataset: str | None) -> None:
  """`dataset` (the flags' or the evaluated run's) is the one this command runs: the entry
  point's (experiments/<dataset>.py), or with experiments.main --dataset's where it is given."""
  entry = _ENTRY_DATASET[0] if _ENTRY_DATASET else FLAGS.dataset
  if entry is None or dataset in (None, entry):
    return
  if _ENTRY_DATASET:
    data.dataset(dataset)  # a name that is not registered is that error, not this one
    raise ValueError(f"this entry point runs {entry}, but the flags ask for {dataset}; use "
                     f"python -m experiments.main --dataset={dataset}")
  raise ValueError(f"--dataset is {entry}, but the run in --workdir is a {dataset} run")


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> config_lib.Config:
  """The validated Config that parsed flags describe (Table 8 defaults for unset ones)."""
  fv = flag_values
  if fv.dataset is None:
    raise ValueError(f"--dataset is required to train: one of {', '.join(data.names())}")
  fields = ("workdir", "data_dir", "cache_dir", "train_split", "test_split", "model",
            "num_classes", "epochs", "batch_size", "lr", "lr_decay", "momentum", "optimizer",
            "weight_decay", "augment", "seed", "checkpoint_every", "keep_checkpoints",
            "eval_batch_size", "log_every", "progress")
  values = {name: fv[name].value for name in fields}
  values["imports"] = tuple(fv["import"].value)
  if fv.lr_boundaries is not None:
    try:
      values["lr_boundaries"] = tuple(int(b) for b in fv.lr_boundaries if b)
    except ValueError:
      raise ValueError(f"lr_boundaries must be integers (epochs), got {fv.lr_boundaries}") \
          from None
  defense, objective = config_lib.combination(
      fv.mode, fv.dataset, me_method=fv.me_method, me_params=_parse_params(fv.me_params),
      layout=fv.layout, startp=fv.startp, endp=fv.endp, mask_num=fv.mask_num,
      inference=fv.inference, votes=fv.votes, adv_eps=fv.adv_eps, adv_step=fv.adv_step,
      adv_steps=fv.adv_steps)
  values["defense"] = fv.defense or defense
  values["objective"] = fv.objective or objective
  config = config_lib.Config.for_dataset(fv.dataset, **values)
  config.validate()
  return config


def _numbers(name: str, items: list[str], kind: type) -> list:
  try:
    return [kind(v) for v in items if v]
  except ValueError:
    raise ValueError(f"{name} must be {kind.__name__}s, got {items}") from None


@dataclasses.dataclass(frozen=True)
class _EvalPlan:
  """What --mode=eval will do, every part of it checked; nothing loaded or run yet."""
  config: config_lib.Config  # the trained run's
  plan: evaluation.Plan
  split: str
  data_dir: str | None
  defense_overrides: dict[str, Any]


def _eval_plan() -> _EvalPlan:
  """The evaluation the flags ask for, validated before any data or checkpoint is read."""
  defaults = evaluation.EvalConfig()
  batch_size = defaults.batch_size if FLAGS.eval_batch_size is None else FLAGS.eval_batch_size
  validation.integer_in("eval_images", FLAGS.eval_images, 1)
  validation.integer_in("eval_batch_size", batch_size, 1)
  # Each process attacks its own batches on its own devices (no collectives inside a batch).
  if batch_size % jax.local_device_count():
    raise ValueError(f"eval_batch_size must be divisible by the number of local devices "
                     f"({jax.local_device_count()}), got {batch_size}")
  if FLAGS.norm == "l2" and FLAGS.eps is None:
    raise ValueError("--norm=l2 needs --eps (pixel units, e.g. 3.92 = 0.005 x 784 on MNIST)")
  evaluation.load_plugins(FLAGS.workdir)  # the run's plug-ins may define the attacks named
  # What can be checked before the run is read: the attack entries (for either kind of
  # defense, where a preset depends on it), the steps, the radii's signs.
  steps = [validation.integer_in("attack_steps", s, 1)
           for s in _numbers("attack_steps", FLAGS.attack_steps, int)]
  for randomized in (False, True):
    suite.parse_attacks(split_list(FLAGS.attacks), steps, FLAGS.norm, randomized)
  for e in FLAGS.sanity_eps or ():
    validation.number_in("sanity_eps", e, 0.0, 1.0 if FLAGS.norm == "linf" else math.inf)
  config = evaluation.read_config(FLAGS.workdir)  # imports the plug-ins the run recorded
  _check_dataset(config.dataset)
  pgd = config_lib.pgd_defaults(config.dataset)
  overrides = {k: FLAGS[k].value for k in ("inference", "votes") if FLAGS[k].present}
  # The defense in front of the classifier, built (not run) so that a bad component string
  # fails here and not after the data and the checkpoint are read.
  defense = defenses.create(FLAGS.defense if FLAGS["defense"].present else config.defense,
                            **overrides)
  defense.check(config.image_shape())
  settings = evaluation.EvalConfig(
      attacks=tuple(split_list(FLAGS.attacks)), norm=FLAGS.norm,
      eps=FLAGS.eps if FLAGS.eps is not None else pgd["eps"],
      step_size=FLAGS.step_size if FLAGS.step_size is not None else
      (pgd["step_size"] if FLAGS.norm == "linf" else None),
      attack_steps=tuple(steps),
      restarts=FLAGS.restarts, draws=FLAGS.defense_draws, seed=FLAGS.eval_seed,
      batch_size=batch_size,
      sanity_eps=None if FLAGS.sanity_eps is None else tuple(FLAGS.sanity_eps),
      sanity_images=FLAGS.sanity_images, curve_eps=tuple(FLAGS.curve_eps),
      cascade=FLAGS.cascade,
      progress=defaults.progress if FLAGS.progress is None else FLAGS.progress)
  plan = settings.checked(config.image_shape(), defense.randomized)
  if FLAGS.source_workdir:
    source = evaluation.read_config(FLAGS.source_workdir)
    if source.dataset != config.dataset:
      raise ValueError(f"source_workdir holds a {source.dataset} model, the target a "
                       f"{config.dataset} one")
  return _EvalPlan(config=config, plan=plan, split=FLAGS.test_split or config.test_split,
                   data_dir=FLAGS.data_dir or config.data_dir, defense_overrides=overrides)


def run_eval() -> tuple[dict[str, Any], list[str]]:
  """Attacks the trained run in --workdir, writes the report; returns it and its failed checks."""
  checked = _eval_plan()
  config, split, plan = checked.config, checked.split, checked.plan
  # The split is found and read once, and only its first n images are decoded.
  opened = data.open_split(config.dataset, split, checked.data_dir, download=FLAGS.download)
  n = validation.integer_in("eval_images", FLAGS.eval_images, 1, opened.size)
  images, labels = opened.read(n)
  images = images.astype(np.float32) / 255.0
  restored = evaluation.load(FLAGS.workdir, FLAGS.checkpoint,
                             defense=FLAGS.defense if FLAGS["defense"].present else None,
                             **checked.defense_overrides)
  source = evaluation.load(FLAGS.source_workdir, FLAGS.checkpoint) if FLAGS.source_workdir \
      else None
  settings = {"run": str(Path(FLAGS.workdir).absolute()), "checkpoint": restored.checkpoint,
              "split": split, "images": n, "seed": plan.seed, "restarts": plan.restarts,
              "draws": plan.draws, "batch_size": plan.batch_size,
              "defense": restored.defense.spec(),
              "source": source.checkpoint if source else None}
  store = evaluation.RowStore(Path(FLAGS.workdir) / "eval" / f"{FLAGS.eval_name}.rows", settings)
  chief = parallel.is_chief()
  record, verdicts = evaluation.run(restored, source, images, labels, plan, store=store,
                                    log=print if chief else lambda _: None)
  failed = report.failed_checks(record)
  if not chief:  # every process holds the whole result; the chief writes and prints it
    return record, failed
  record.update(
      run=str(FLAGS.workdir), checkpoint=restored.checkpoint, step=restored.step,
      model=config.model, split=split, source=source.checkpoint if source else None,
      machine=machine.describe(),
      command=" ".join([f"python -m experiments.{Path(sys.argv[0]).stem}", *sys.argv[1:]]),
      config=restored.config.to_json())
  paths = report.write(record, verdicts, Path(FLAGS.workdir) / "eval", FLAGS.eval_name)
  print(report.markdown(record))
  if failed:
    print("\n".join(["", "!" * 72, f"SANITY CHECKS FAILED ({len(failed)}): the robustness above "
                      "may be gradient masking, not robustness.", *failed, "!" * 72]),
          file=sys.stderr)
  print(f"report: {paths['md']}  figure: {paths['png']}  record: {paths['json']}  "
        f"verdicts: {paths['npz']}  ({len(store.reused)} rows reused, {len(store.computed)} "
        "computed)")
  return record, failed


def _training_config() -> config_lib.Config:
  """The training run's Config, with the batch sizes checked against the devices."""
  config = config_from_flags()
  parallel.check_batch("batch_size", config.batch_size)
  parallel.check_batch("eval_batch_size", config.eval_batch_size)
  return config


def run() -> dict[str, Any]:
  """Builds the config from flags, checks it, and trains (or evaluates, --mode=eval)."""
  _check_dataset(FLAGS.dataset)
  if FLAGS.distributed:
    parallel.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if FLAGS.mode == "eval":
    record, failed = run_eval()
    if failed and not FLAGS.allow_failed_checks:
      sys.exit(1)
    return record
  config = _training_config()
  splits = tuple(data.load(config.dataset, split, config.data_dir, download=FLAGS.download)
                 for split in (config.train_split, config.test_split))
  chief = parallel.is_chief()
  if chief:
    workdir, resumed = run_dir.prepare(config)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415
    multihost_utils.sync_global_devices("menet_jax run directory")
  if not chief:
    workdir, resumed = run_dir.prepare(config, create=False)
  logging.info("%s run in %s", "resuming" if resumed else "new", workdir)
  _, result = loop.train_and_evaluate(config, workdir, splits)
  if chief:
    print(json.dumps(result, indent=2, sort_keys=True))
    print(f"results: {workdir / 'results.json'}  metrics: {workdir / 'metrics.csv'}  "
          f"tensorboard --logdir {workdir / 'tensorboard'}")
  return result


def _check_data(dataset: str, splits: list[str], data_dir: str | None) -> str:
  """Reads every split of `dataset`; says which ones --download would fetch.

  Raises:
    FileNotFoundError: a split is missing and --download is not given.
  """
  missing = []
  for split in splits:
    try:
      # Never download here: a check writes nothing (and decodes no image it need not).
      data.count(dataset, split, data_dir)
    except FileNotFoundError:
      if not FLAGS.download:
        raise
      missing.append(split)
  return f"{', '.join(missing)} to download" if missing else "data found"


def _workdir_state(config: config_lib.Config) -> str:
  """'new' or 'resumed': what training would do with --workdir; creates nothing.

  Raises:
    run_dir.RunMismatch: the directory holds another run, or files that are not a run.
  """
  workdir = Path(config.workdir)
  if not workdir.exists() or (workdir.is_dir() and not any(workdir.iterdir())):
    return "new"
  # create=False: run_dir's own checks of an existing directory, without its creation.
  run_dir.prepare(config, create=False)
  return "resumed"


def check() -> str:
  """--only_check_args: every check of `run` that needs no training, attack or write.

  Returns:
    A one-line summary of what the command would do.
  """
  _check_dataset(FLAGS.dataset)
  if FLAGS.mode == "eval":
    plan = _eval_plan()
    found = _check_data(plan.config.dataset, [plan.split], plan.data_dir)
    return (f"--mode=eval of the {plan.config.model} run in {FLAGS.workdir} on "
            f"{plan.config.dataset} {plan.split} ({found}): {', '.join(plan.plan.rows)}; "
            f"{plan.plan.norm} eps {plan.plan.eps:.6g}")
  config = _training_config()
  state = _workdir_state(config)
  found = _check_data(config.dataset, [config.train_split, config.test_split], config.data_dir)
  return (f"{config.dataset} {config.train_split}/{config.test_split} ({found}), "
          f"{config.model}, defense {config.defense}, objective {config.objective}, "
          f"{config.epochs} epochs; {state} run directory {config.workdir}")


class _QuietCheckpointer(std_logging.Filter):
  """Drops orbax's INFO lines (several per save), keeps its warnings and errors."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def _fail(message: object) -> NoReturn:
  """Bad input: one `error:` line on stderr, exit status 2 (1 is a failed sanity check)."""
  # absl's messages and the library's may hold newlines; the contract is one line.
  print("error: " + " ".join(str(message).split()), file=sys.stderr)
  sys.exit(2)


def _refuse_arguments(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]} (every setting is a --flag)")


def _use_devices() -> None:
  # Before anything runs on JAX: the number of CPU devices is fixed when its backend starts.
  if FLAGS.cpu_devices is not None:
    parallel.use_cpu_devices(FLAGS.cpu_devices)


def main(argv: list[str]) -> None:
  """absl main: runs the command; bad input ends in one `error:` line and exit status 2."""
  logging.get_absl_handler().addFilter(_QuietCheckpointer())
  _refuse_arguments(argv)
  try:
    _use_devices()
    run()
  except _INPUT_ERRORS as e:
    _fail(e)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flags_parser: a bad command line is one `error:` line and exit status 2.

  With --only_check_args it runs `check` and exits: 0 after one `ok:` line, or 2.
  """
  try:
    argv = FLAGS(argv)
  except flags.CantOpenFlagFileError as e:
    _fail(str(e).removeprefix("ERROR:: "))  # absl's prefix, not this program's error format
  except flags.Error as e:
    _fail(e)
  _refuse_arguments(argv)
  try:  # before anything reads a component string: plug-ins register components
    plugins.load(FLAGS["import"].value)
  except ValueError as e:
    _fail(f"--import: {e}")
  if FLAGS.only_check_args:
    try:
      _use_devices()
      summary = check()
    except _INPUT_ERRORS as e:
      _fail(e)
    print(f"ok: {summary}")
    sys.exit(0)
  return argv


class _HelpFlag(flags.BooleanFlag):
  """--help, --helpshort: the project's flags by group; --helpfull: every module's. Exit 0."""

  def __init__(self, name: str, short_name: str | None, full: bool) -> None:
    what = "the flags of the project, absl and the libraries" if full else "the project's flags"
    # allow_override: takes the place of absl's flag of the same name, which exits 1.
    super().__init__(name, False, f"show {what} and exit", short_name=short_name,
                     allow_override=True)
    self._full = full

  def parse(self, argument: str | bool) -> None:
    """Prints the help and exits when the flag is set."""
    if self._parse(argument):
      print(sys.modules["__main__"].__doc__ or "")
      print(FLAGS.get_help() if self._full else help_text())
      sys.exit(0)


def help_text(flag_values: flags.FlagValues = FLAGS) -> str:
  """The project's flags, by group, each with its help and default (--help)."""
  lines = []
  for title, names in _HELP_GROUPS:
    lines += ["", f"{title}:"]
    for name in names:
      flag = flag_values[name]
      text = f"--{'[no]' if flag.boolean else ''}{name}: {flag.help}"
      if flag.default not in (None, []):
        text += f" (default: {flag.default_as_str})"
      lines.append(flags.text_wrap(text, indent="      ", firstline_indent="  "))
  lines += ["", flags.text_wrap(
      "--flagfile=FILE reads flags from FILE (which may include others; later flags override "
      "earlier ones). --only_check_args checks the flags, the components, the run directory and "
      "the data without running or writing anything. --helpfull lists the flags of absl and the "
      "libraries too. Exit status: 2 and one `error:` line for bad input, 1 for a failed sanity "
      "check of --mode=eval.")]
  return "\n".join(lines)


def cli(dataset: str | None = None) -> None:
  """The command line of experiments/<dataset>.py (`dataset`), or of python -m experiments.main
  for any registered dataset (None: --dataset names it): its flags, --help, the checks, `main`."""
  define_flags(dataset)
  app.define_help_flags()  # absl's, which ours then replace (and app.run does not redefine)
  for name, short_name, full in (("help", "?", False), ("helpshort", None, False),
                                 ("helpfull", None, True)):
    flags.DEFINE_flag(_HelpFlag(name, short_name, full))
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  cli()
