"""The training loop: one for every defense and objective (the Flax ImageNet example's shape).

`train_and_evaluate` runs a whole experiment in two parts: `setup` (the classifier, its initial
state and the jitted steps, from the config, before any data is seen; benchmarks/train.py times
what it returns), then the loop: jit over a device mesh
(utils.parallel), the objective's pure step (training.objectives), orbax
checkpoints every N steps (resume after a kill ends bit-identical to an
uninterrupted run), metrics to TensorBoard and CSV, and after every epoch the
clean test accuracy through the defense under its inference rule.

What it feeds the objective depends on two flags, never on names:
  * defense.preprocesses and not objective.draws_in_step: cached draws of the
    defense, n per image (ME-Net's pure training, Algorithm 1; data.cache);
  * defense.preprocesses and objective.draws_in_step: the clean images, visited
    n times per epoch, each part with its level (the release's train_adv.py);
  * otherwise: the clean images.
The test set is judged through cached draws of the defense at its test level
(one per vote), drawn once from the run's seed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import logging

import menet_jax
from menet_jax import data, defenses
from menet_jax.data import cache as cache_lib
from menet_jax.data import input_pipeline
from menet_jax.defenses import Defense, majority_vote
from menet_jax.training import checkpoint, factories, metrics, objectives
from menet_jax.training import state as state_lib
from menet_jax.training.config import Config
from menet_jax.utils import parallel
from menet_jax.utils.atomic_write import atomic_write


def eval_step(apply_fn, variables, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Sums over a batch of k cached draws (votes) of each image.

  Args:
    apply_fn, variables: the classifier (apply_fn(variables, x, train=False) -> logits).
    batch: {"image": (B, k, H, W, C) uint8, "label": (B,), "weight": (B,) 0/1}.

  Returns:
    {"correct", "loss", "count"} summed over the weighted images; the loss is
    that of the first draw, the prediction the majority vote when k > 1.
  """
  chex.assert_rank(batch["image"], 5)
  b, k = batch["image"].shape[:2]
  chex.assert_shape([batch["label"], batch["weight"]], (b,))
  x = input_pipeline.to_float(batch["image"].reshape(b * k, *batch["image"].shape[2:]))
  logits = jnp.swapaxes(apply_fn(variables, x, train=False).reshape(b, k, -1), 0, 1)
  predicted = majority_vote(logits) if k > 1 else jnp.argmax(logits[0], -1)
  w = batch["weight"]
  return {"correct": jnp.sum(w * (predicted == batch["label"])),
          "loss": jnp.sum(w * state_lib.cross_entropy(logits[0], batch["label"])),
          "count": jnp.sum(w)}


class Keys(NamedTuple):
  """The run's PRNG keys, each folded in from its seed: the parameters, the training steps (one
  per step, folded in again with the step), and the defense's cached training and test draws."""
  init: jax.Array
  train: jax.Array
  draws_train: jax.Array
  draws_eval: jax.Array


def keys(seed: int) -> Keys:
  """The run's keys (`Keys`) from its seed."""
  root = jax.random.key(seed)
  return Keys(*(jax.random.fold_in(root, i) for i in range(4)))


@dataclasses.dataclass(frozen=True)
class Setup:
  """A run's classifier and its jitted steps, before any data is seen.

  Attributes:
    model: the classifier (factories.create_model).
    state: the objective's initial state, replicated over the mesh.
    step: (state, global batch, key) -> (state, metrics): the objective's step behind the
      defense, jitted.
    evaluate: (variables, global batch) -> sums: `eval_step`, jitted.
    learning_rate: step -> the learning rate of the optimizer's schedule.
  """
  model: nn.Module
  state: Any
  step: Callable[..., Any]
  evaluate: Callable[..., Any]
  learning_rate: optax.Schedule


def setup(config: Config, defense: Defense, objective: objectives.Objective,
          image_shape: tuple[int, int, int], steps_per_epoch: int, mesh: jax.sharding.Mesh,
          key: jax.Array) -> Setup:
  """The classifier, its initial state from `key`, and its jitted training and test steps.

  Args:
    config: the run's configuration (model, optimizer and schedule, augment).
    defense, objective: the run's, created from the config.
    image_shape: (H, W, C) of the training images.
    steps_per_epoch: shapes the learning-rate schedule (lr_boundaries are in epochs).
    mesh: the device mesh (utils.parallel.mesh); state and outputs are replicated over it.
    key: PRNG key of the initial parameters (`keys(seed).init`).
  """
  model = factories.create_model(config)
  tx = factories.optimizer(config, steps_per_epoch)
  replicated = parallel.replicated(mesh)
  state = jax.jit(functools.partial(objective.init, model=model, tx=tx, image_shape=image_shape),
                  out_shardings=replicated)(key)
  step = jax.jit(functools.partial(objective.step, defense=defenses.on_devices(defense, mesh),
                                   augment=config.augment),
                 out_shardings=(replicated, replicated))
  evaluate = jax.jit(functools.partial(eval_step, model.apply), out_shardings=replicated)
  return Setup(model, state, step, evaluate,
               factories.learning_rate_schedule(config, steps_per_epoch))


def _cache_dir(config: Config) -> Path:
  if config.cache_dir:
    return Path(config.cache_dir)
  return Path.home() / ".cache" / "menet_jax" / "preprocessed"


def _cached_draws(config: Config, defense: Defense, images: np.ndarray, split: str,
                  levels: np.ndarray, key: jax.Array, purpose: str, progress: bool) -> np.ndarray:
  """(n, N_host, H, W, C) uint8: the defense's draws at `levels` of this host's share."""
  shard = parallel.host_shard(len(images))
  manifest = {"name": f"{config.dataset}-{purpose}", "dataset": config.dataset, "split": split,
              "split_size": len(images), "purpose": purpose, "defense": defense.spec(),
              "seed": config.seed, "code_version": menet_jax.__version__,
              "process_index": jax.process_index(), "process_count": jax.process_count(),
              "shard": [int(shard[0]), int(shard[-1]) + 1],
              # The transform runs in float64 under x64 (cache.build): other draws. Only then
              # is it named, so that the caches of float32 runs keep their keys.
              **({"precision": "float64"} if jax.config.jax_enable_x64 else {})}
  return cache_lib.build(images=images[shard], indices=shard, levels=levels,
                         transform=defense.transform, key=key, manifest=manifest,
                         cache_dir=_cache_dir(config), progress=progress,
                         description=f"{purpose} draws")


def train_and_evaluate(config: Config, workdir: str | Path,
                       splits: tuple[tuple[np.ndarray, np.ndarray], ...] | None = None
                       ) -> tuple[Any, dict[str, Any]]:
  """Trains (or resumes) the run in `workdir`; returns the final state and metrics.

  Args:
    config: a validated configuration.
    workdir: the run directory, already prepared (training.run_dir.prepare).
    splits: ((train_images, train_labels), (test_images, test_labels)) as
      data.load returns them; loaded from config when None.
  """
  workdir = Path(workdir)
  mesh = parallel.mesh()
  local_batch = parallel.check_batch("batch_size", config.batch_size)
  local_eval_batch = parallel.check_batch("eval_batch_size", config.eval_batch_size)
  is_chief = parallel.is_chief()
  run_keys = keys(config.seed)

  if splits is None:
    splits = tuple(data.load(config.dataset, split, config.data_dir)
                   for split in (config.train_split, config.test_split))
  (train_images, train_labels), (test_images, test_labels) = splits
  image_shape = tuple(train_images.shape[1:])
  defense = defenses.create(config.defense)
  defense.check(image_shape)
  objective = objectives.create(config.objective)
  progress = config.progress and is_chief
  train_shard = parallel.host_shard(len(train_images))
  test_shard = parallel.host_shard(len(test_images))

  levels = np.asarray(defense.train_levels)
  if defense.preprocesses and not objective.draws_in_step:
    source = input_pipeline.TrainSource(
        _cached_draws(config, defense, train_images, config.train_split, levels, run_keys.draws_train,
                      "train", progress), train_labels[train_shard])
  elif defense.preprocesses:
    source = input_pipeline.TrainSource(train_images[train_shard][None], train_labels[train_shard],
                                        repeats=len(levels), levels=levels)
  else:
    source = input_pipeline.TrainSource(train_images[train_shard][None], train_labels[train_shard])
  if defense.preprocesses:
    eval_images = _cached_draws(config, defense, test_images, config.test_split,
                                np.full(defense.votes, defense.test_level), run_keys.draws_eval, "eval",
                                progress)
  else:
    eval_images = test_images[test_shard][None]
  eval_labels = test_labels[test_shard]

  steps_per_epoch = source.steps_per_epoch(local_batch)
  total_steps = config.epochs * steps_per_epoch
  checkpoint_every = config.checkpoint_every or steps_per_epoch
  unused = source.samples - steps_per_epoch * local_batch
  if unused:
    logging.info("%d of %d samples per process are left out of each epoch (incomplete last batch; "
                 "reshuffled every epoch)", unused, source.samples)
  # Every process runs as many eval batches as the largest share (host_shard) needs.
  largest_share = -(-len(test_images) // jax.process_count())
  eval_batches = -(-largest_share // local_eval_batch)

  run = setup(config, defense, objective, image_shape, steps_per_epoch, mesh, run_keys.init)
  model, state = run.model, run.state
  ckpts = checkpoint.Checkpoints(workdir / "checkpoints", config=config.identity(),
                                 keep=config.keep_checkpoints, normalize=Config.identity_of)
  resumed = ckpts.latest_step()
  if resumed is not None:
    state = ckpts.restore(state)
    logging.info("resumed %s at step %d", workdir, resumed)
  start = int(parallel.to_host(state.step))


  def evaluate() -> dict[str, float]:
    _, variables = objective.classifier(model, state)
    sums = None
    for batch in input_pipeline.eval_batches(eval_images, eval_labels, local_eval_batch,
                                             eval_batches):
      out = run.evaluate(variables, parallel.global_batch(mesh, batch))
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = parallel.to_host(sums)
    return {"test_accuracy": float(sums["correct"] / sums["count"]),
            "test_loss": float(sums["loss"] / sums["count"])}

  final: dict[str, Any] = {}
  with metrics.MetricWriter(workdir, enabled=is_chief,
                            resume_step=start if resumed is not None else None) as writer:
    step = start
    for epoch in range(start // steps_per_epoch, config.epochs):
      bar = tqdm.tqdm(total=steps_per_epoch, initial=step % steps_per_epoch, unit="step",
                      desc=f"epoch {epoch + 1}/{config.epochs}", dynamic_ncols=True,
                      disable=not progress)
      window, t0, seen = [], time.perf_counter(), 0
      for local in source.batches(seed=config.seed, epoch=epoch, local_batch=local_batch,
                                  process=jax.process_index(), start_step=step % steps_per_epoch):
        batch = parallel.global_batch(mesh, local)
        state, step_metrics = run.step(state, batch, jax.random.fold_in(run_keys.train, step))
        step += 1
        window.append(step_metrics)
        seen += config.batch_size
        bar.update(1)
        if step % config.log_every == 0 or step % steps_per_epoch == 0:
          summary = {k: float(np.mean([parallel.to_host(m[k]) for m in window])) for k in window[0]}
          elapsed = time.perf_counter() - t0
          summary.update(learning_rate=float(run.learning_rate(step - 1)), images_per_s=seen / elapsed,
                         images_per_s_per_device=seen / elapsed / jax.device_count())
          writer.write(step, {f"train_{k}" if k in ("loss", "accuracy") else k: v
                              for k, v in summary.items()})
          bar.set_postfix(loss=f"{summary['loss']:.3f}", acc=f"{summary['accuracy']:.3f}")
          window, t0, seen = [], time.perf_counter(), 0
        if step % checkpoint_every == 0 and step != total_steps:
          ckpts.save(step, state)
      bar.close()
      result = evaluate()
      writer.write(step, result)
      ckpts.save_best(step, state, result["test_accuracy"])
      logging.info("epoch %d/%d step %d: test accuracy %.4f (through %s)", epoch + 1,
                   config.epochs, step, result["test_accuracy"], defense.spec())
      final = dict(result, epoch=epoch + 1, step=step)
    if step != resumed:
      ckpts.save(step, state)
    ckpts.wait_until_finished()
    if not final:
      final = dict(evaluate(), epoch=config.epochs, step=step)
  best = ckpts.best()
  final.update(best_step=best[0] if best else None, best_test_accuracy=best[1] if best else None,
               defense=defense.describe(), objective=objective.spec(),
               test_images=len(test_images), train_images=len(train_images))
  ckpts.close()
  if is_chief:
    with atomic_write(workdir / "results.json") as tmp:
      tmp.write_text(json.dumps(final, indent=2, sort_keys=True))
  return state, final
