"""The absl main shared by experiments/{cifar10,mnist,svhn,tiny_imagenet}.py.

Training (--mode=vanilla|pure|adv|madry): flags -> Config (Table 8 defaults
for the dataset, then the flags given) -> checks (config, data, run directory)
-> train.train_and_evaluate. Every check runs before the run directory is
created.

Evaluation (--mode=eval): the trained run in --workdir (its config.json and
checkpoint; the training flags of a flagfile are not used) -> the attacks of
--attacks -> <workdir>/eval/<eval_name>.{json,md} (menet_jax.evaluation).

A bad flag, a missing dataset or checkpoint, or a directory of another run
ends with one `error:` line and exit status 2.
"""

from __future__ import annotations

import ast
import json
import logging as std_logging
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import flags, logging

from menet_jax import attack_suite
from menet_jax import config as config_lib
from menet_jax import data, parallel, run_dir, validation
from menet_jax.checkpoint import CheckpointMismatch
from menet_jax.reconstruct import registry

FLAGS = flags.FLAGS


def define_flags(dataset: str, flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the experiment flags; `dataset` is the entry point's default."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_enum("dataset", dataset, list(config_lib.DATASET_DEFAULTS), "Dataset.", **fv)
  flags.DEFINE_string("workdir", None, "Run directory (created, or resumed if it holds this run).",
                      required=True, **fv)
  flags.DEFINE_string("data_dir", None, "Local dataset files (see menet_jax.data); "
                      "default $MENET_DATA_DIR, then tensorflow-datasets.", **fv)
  flags.DEFINE_string("cache_dir", None, "ME training set cache (default ~/.cache/menet_jax).",
                      **fv)
  flags.DEFINE_string("train_split", None, "Training split, TFDS syntax, e.g. train[:80%].", **fv)
  flags.DEFINE_string("test_split", None, "Test split, e.g. test.", **fv)
  flags.DEFINE_enum("model", None, list(config_lib.MODELS), "Classifier (default: Table 8).", **fv)
  flags.DEFINE_integer("num_classes", None, "Classes (default: the dataset's).", **fv)
  flags.DEFINE_enum("mode", "pure", list(config_lib.MODES) + ["eval"],
                    "vanilla | pure (ME-Net SGD) | adv (ME-Net + PGD) | madry (PGD) | "
                    "eval (attack the trained run in --workdir).", **fv)
  flags.DEFINE_enum("me_method", "usvt", list(registry.names()), "Matrix estimation method.",
                    **fv)
  flags.DEFINE_list("me_params", [], "Method parameters as name=value, e.g. keep=0.8 or mu=1.",
                    **fv)
  flags.DEFINE_enum("me_channel", "concat", ["concat", "separate"], "Matrix layout of RGB.", **fv)
  flags.DEFINE_float("startp", 0.8, "First mask observation probability.", **fv)
  flags.DEFINE_float("endp", 1.0, "Mask probabilities run from startp towards endp.", **fv)
  flags.DEFINE_integer("mask_num", 10, "Masks (reconstructions) per training image, n.", **fv)
  flags.DEFINE_enum("inference", "mean", ["mean", "vote"],
                    "One mask at mean p, or a majority vote over --votes masks.", **fv)
  flags.DEFINE_integer("votes", 10, "Masks per test image for --inference=vote.", **fv)
  flags.DEFINE_integer("epochs", None, "Epochs (default: Table 8).", **fv)
  flags.DEFINE_integer("batch_size", 256, "Global batch size (all devices, all hosts).", **fv)
  flags.DEFINE_float("lr", None, "Learning rate (default: Table 8).", **fv)
  flags.DEFINE_list("lr_boundaries", None, "Epochs at which lr is multiplied by lr_decay.", **fv)
  flags.DEFINE_float("lr_decay", None, "Step decay factor (0.1).", **fv)
  flags.DEFINE_float("momentum", None, "SGD momentum (0.9).", **fv)
  flags.DEFINE_float("weight_decay", None, "L2 weight decay (1e-4, the release's).", **fv)
  flags.DEFINE_bool("augment", None, "Pad-4 crop + flip (default: Table 8; off for MNIST).", **fv)
  flags.DEFINE_float("adv_eps", None, "PGD radius for adv/madry training (default per dataset).",
                     **fv)
  flags.DEFINE_float("adv_step", None, "PGD step size.", **fv)
  flags.DEFINE_integer("adv_steps", None, "PGD steps (7; 40 for MNIST).", **fv)
  flags.DEFINE_integer("seed", 0, "Seed of every random draw of the run.", **fv)
  flags.DEFINE_integer("checkpoint_every", 0, "Checkpoint every N steps (0: every epoch).", **fv)
  flags.DEFINE_integer("keep_checkpoints", 3, "Most recent checkpoints kept.", **fv)
  flags.DEFINE_integer("eval_batch_size", 500, "Global evaluation batch size.", **fv)
  flags.DEFINE_integer("log_every", 50, "Steps between metric writes.", **fv)
  flags.DEFINE_bool("progress", True, "Progress bars on the console.", **fv)
  flags.DEFINE_bool("distributed", False, "Multi-process run: call jax.distributed.initialize.",
                    **fv)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).", **fv)
  flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).", **fv)
  flags.DEFINE_integer("process_id", None, "This process's index (multi-process).", **fv)
  _define_eval_flags(fv)


def _define_eval_flags(fv: dict[str, Any]) -> None:
  d = attack_suite.Params()
  flags.DEFINE_list("attacks", ["clean", "pgd", "bpda_pgd"],
                    "eval: attacks to run, name or name@steps/steps; known: "
                    + ", ".join(attack_suite.names()), **fv)
  flags.DEFINE_list("attack_steps", ["7", "20", "40"], "eval: steps of the iterative attacks.",
                    **fv)
  flags.DEFINE_integer("eval_images", 1000, "eval: the first N images of the test split.", **fv)
  flags.DEFINE_float("eps", None, "eval: l-inf radius (default: the dataset's adv_eps).", **fv)
  flags.DEFINE_float("step_size", None, "eval: PGD step (default: the dataset's adv_step).",
                     **fv)
  flags.DEFINE_integer("restarts", 1, "eval: random restarts (robust = survives all).", **fv)
  flags.DEFINE_integer("defense_draws", 10,
                       "eval: draws of the defense's randomness judging each example.", **fv)
  flags.DEFINE_integer("eot_samples", d.eot_samples, "eval: EOT draws per step (R).", **fv)
  flags.DEFINE_float("eot_step_size", None,
                     "eval: EOT step (default: --step_size; the published EOT evaluation of "
                     "ME-Net used 5 eps / 200 with bpda_eot@200).", **fv)
  flags.DEFINE_integer("eot_chunk", d.eot_chunk, "eval: EOT draws evaluated at once.", **fv)
  flags.DEFINE_integer("apgd_samples", d.apgd_samples, "eval: draws per APGD step.", **fv)
  flags.DEFINE_integer("projected_rank", d.projected_rank, "eval: projected BPDA's k.", **fv)
  flags.DEFINE_integer("spsa_samples", d.spsa_samples, "eval: SPSA directions per step.", **fv)
  flags.DEFINE_integer("spsa_steps", d.spsa_steps, "eval: SPSA steps.", **fv)
  flags.DEFINE_integer("boundary_steps", d.boundary_steps, "eval: Boundary attack steps.", **fv)
  flags.DEFINE_string("source_workdir", None,
                      "eval: run directory of the independently trained copy (transfer_*).", **fv)
  flags.DEFINE_enum("checkpoint", "last", ["last", "best"], "eval: which checkpoint.", **fv)
  flags.DEFINE_integer("eval_seed", 0, "eval: seed of the attacks and the defense's draws.", **fv)
  flags.DEFINE_string("eval_name", "eval", "eval: report name, <workdir>/eval/<name>.md.", **fv)
  flags.DEFINE_list("sanity_eps", ["0", "0.0078431", "0.0313725", "0.0627451", "0.5"],
                    "eval: radii of the BPDA-PGD sanity sweep (empty: none).", **fv)
  flags.DEFINE_integer("sanity_images", 100,
                       "eval: images of the sanity checks (at most --eval_images are used).",
                       **fv)


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


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> config_lib.Config:
  """The validated Config that parsed flags describe (Table 8 defaults for unset ones)."""
  fields = ("workdir", "data_dir", "cache_dir", "train_split", "test_split", "model",
            "num_classes", "mode", "me_method", "me_channel", "startp", "endp", "mask_num",
            "inference", "votes", "epochs", "batch_size", "lr", "lr_decay", "momentum",
            "weight_decay", "augment", "adv_eps", "adv_step", "adv_steps", "seed",
            "checkpoint_every", "keep_checkpoints", "eval_batch_size", "log_every", "progress")
  fv = flag_values
  values = {name: fv[name].value for name in fields}
  values["me_params"] = _parse_params(fv.me_params)
  if fv.lr_boundaries is not None:
    try:
      values["lr_boundaries"] = tuple(int(b) for b in fv.lr_boundaries if b)
    except ValueError:
      raise ValueError(f"lr_boundaries must be integers (epochs), got {fv.lr_boundaries}") \
          from None
  config = config_lib.Config.for_dataset(fv.dataset, **values)
  config.validate()
  return config


def _numbers(name: str, items: list[str], kind: type) -> list:
  try:
    return [kind(v) for v in items if v]
  except ValueError:
    raise ValueError(f"{name} must be {kind.__name__}s, got {items}") from None


def run_eval() -> dict[str, Any]:
  """Attacks the trained run in --workdir and writes the report."""
  from menet_jax import evaluation, machine, report  # after flag parsing: keeps --help fast

  if FLAGS.distributed or jax.process_count() > 1:
    raise ValueError("--mode=eval runs in one process (on all of its local devices)")
  steps = [validation.integer_in("attack_steps", s, 1)
           for s in _numbers("attack_steps", FLAGS.attack_steps, int)]
  rows = evaluation.parse_attacks(FLAGS.attacks, steps)
  sanity_eps = [validation.number_in("sanity_eps", e, 0.0, 1.0)
                for e in _numbers("sanity_eps", FLAGS.sanity_eps, float)]
  for name in ("eval_images", "sanity_images", "restarts", "defense_draws", "eval_batch_size"):
    validation.integer_in(name, FLAGS[name].value, 1)
  config = evaluation.read_config(FLAGS.workdir)
  eps = FLAGS.eps if FLAGS.eps is not None else config.adv_eps
  step_size = FLAGS.step_size if FLAGS.step_size is not None else config.adv_step
  params = attack_suite.Params(
      eps=eps, step_size=step_size, eot_samples=FLAGS.eot_samples,
      eot_step_size=FLAGS.eot_step_size if FLAGS.eot_step_size is not None else step_size,
      eot_chunk=FLAGS.eot_chunk, apgd_samples=FLAGS.apgd_samples,
      projected_rank=FLAGS.projected_rank, spsa_samples=FLAGS.spsa_samples,
      spsa_steps=FLAGS.spsa_steps, boundary_steps=FLAGS.boundary_steps,
      layout=config.me_channel).validate()
  split = FLAGS.test_split or config.test_split
  images, labels = data.load(config.dataset, split, FLAGS.data_dir or config.data_dir)
  n = validation.integer_in("eval_images", FLAGS.eval_images, 1, len(images))
  images, labels = images[:n].astype(np.float32) / 255.0, labels[:n]
  model = evaluation.load(
      FLAGS.workdir, images.shape[1:], FLAGS.checkpoint,
      inference=FLAGS.inference if FLAGS["inference"].present else None,
      votes=FLAGS.votes if FLAGS["votes"].present else None)
  source = None
  if FLAGS.source_workdir:
    source = evaluation.load(FLAGS.source_workdir, images.shape[1:], FLAGS.checkpoint)
    if source.config.dataset != config.dataset:
      raise ValueError(f"source_workdir holds a {source.config.dataset} model, the target a "
                       f"{config.dataset} one")
  record = evaluation.evaluate(
      model, source, images, labels, rows=rows, params=params, restarts=FLAGS.restarts,
      draws=FLAGS.defense_draws, seed=FLAGS.eval_seed, batch_size=FLAGS.eval_batch_size,
      sanity_eps=sanity_eps, sanity_images=min(FLAGS.sanity_images, n))
  record.update(
      run=str(FLAGS.workdir), checkpoint=model.checkpoint, step=model.step, model=config.model,
      defense=model.defense.describe() if model.defense else None, split=split,
      source=source.checkpoint if source else None, machine=machine.describe(),
      command=" ".join([f"python -m experiments.{Path(sys.argv[0]).stem}", *sys.argv[1:]]),
      config=model.config.to_json())
  paths = report.write(record, Path(FLAGS.workdir) / "eval", FLAGS.eval_name)
  print(report.markdown(record))
  failed = report.failed_checks(record)
  if failed:
    print("\n".join(["", "!" * 72, f"SANITY CHECKS FAILED ({len(failed)}): the robustness above "
                      "may be gradient masking, not robustness.", *failed, "!" * 72]),
          file=sys.stderr)
  print(f"report: {paths[1]}  record: {paths[0]}")
  return record


def run() -> dict[str, Any]:
  """Builds the config from flags, checks it, and trains (or evaluates, --mode=eval)."""
  from menet_jax import train  # after flag parsing: keeps --help fast

  if FLAGS.mode == "eval":
    return run_eval()
  if FLAGS.distributed:
    parallel.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  config = config_from_flags()
  parallel.check_batch("batch_size", config.batch_size)
  parallel.check_batch("eval_batch_size", config.eval_batch_size)
  splits = tuple(data.load(config.dataset, split, config.data_dir)
                 for split in (config.train_split, config.test_split))
  chief = jax.process_index() == 0
  if chief:
    workdir, resumed = run_dir.prepare(config)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("menet_jax run directory")
  if not chief:
    workdir, resumed = run_dir.prepare(config, create=False)
  logging.info("%s run in %s", "resuming" if resumed else "new", workdir)
  _, result = train.train_and_evaluate(config, workdir, splits)
  if chief:
    print(json.dumps(result, indent=2, sort_keys=True))
    print(f"results: {workdir / 'results.json'}  metrics: {workdir / 'metrics.csv'}  "
          f"tensorboard --logdir {workdir / 'tensorboard'}")
  return result


class _QuietCheckpointer(std_logging.Filter):
  """Drops orbax's INFO lines (several per save), keeps its warnings and errors."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv: list[str]) -> None:
  logging.get_absl_handler().addFilter(_QuietCheckpointer())
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  try:
    run()
  except (ValueError, FileNotFoundError, CheckpointMismatch) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
