"""Training: pure `train_step` / `eval_step`, and the loop that runs a whole experiment.

Modes (Section 2.3 and 3.3 of the paper):
  vanilla  SGD on clean images.
  pure     SGD on the ME training set: n reconstructions of every image
           (Algorithm 1), built once and cached (menet_jax.me_dataset).
  adv      ME-Net + PGD adversarial training. Each step draws fresh masks: the
           PGD attack runs through the ME layer with BPDA (identity backward),
           a new mask at every attack step, and the network is trained on the
           reconstruction of the adversarial image under one more fresh mask.
           As in the release (train_adv.py), an epoch visits the clean images n
           times and its k-th n-th part uses p_k.
  madry    PGD adversarial training without ME (Madry et al., 2018).
The attack in adv/madry uses the network in training mode (batch statistics,
as the release's net.train() does) but does not update the running statistics.

The loop (`train_and_evaluate`) follows the Flax ImageNet example: jit over a
device mesh (menet_jax.parallel), orbax checkpoints every N steps, metrics to
TensorBoard and CSV, clean accuracy through the defense after every epoch.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import logging
from flax.training import train_state
from jax.sharding import PartitionSpec

import menet_jax
from menet_jax import atomic_write, checkpoint, config as config_lib, data, input_pipeline
from menet_jax import me_dataset, metrics, models, parallel
from menet_jax.attacks import pgd
from menet_jax.defenses import MENet, majority_vote
from menet_jax.models import normalize

_NORMALIZATION_KEY = {"svhn_cropped": "svhn"}


class TrainState(train_state.TrainState):
  batch_stats: Any


def learning_rate_schedule(config: config_lib.Config, steps_per_epoch: int) -> optax.Schedule:
  """lr, multiplied by lr_decay at each epoch of lr_boundaries (Table 8's step decay)."""
  return optax.piecewise_constant_schedule(
      config.lr, {b * steps_per_epoch: config.lr_decay for b in config.lr_boundaries})


def optimizer(config: config_lib.Config, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD with momentum and coupled L2 weight decay on every parameter, as torch.optim.SGD."""
  return optax.chain(optax.add_decayed_weights(config.weight_decay),
                     optax.sgd(learning_rate_schedule(config, steps_per_epoch), config.momentum))


def create_model(config: config_lib.Config):
  mean, std = normalize.NORMALIZATION[_NORMALIZATION_KEY.get(config.dataset, config.dataset)]
  return models.create(config.model, num_classes=config.num_classes, mean=mean, std=std)


def create_train_state(key: jax.Array, model, tx: optax.GradientTransformation,
                       image_shape: tuple[int, int, int]) -> TrainState:
  """Initial parameters, BatchNorm statistics and optimizer state."""
  variables = model.init(key, jnp.zeros((2, *image_shape), jnp.float32), train=False)
  return TrainState.create(apply_fn=model.apply, params=variables["params"],
                           batch_stats=variables.get("batch_stats", {}), tx=tx)


def _logits(state: TrainState, params, x: jax.Array, *, train: bool):
  variables = {"params": params, "batch_stats": state.batch_stats}
  if train:
    return state.apply_fn(variables, x, train=True, mutable=["batch_stats"])
  return state.apply_fn(variables, x, train=False), None


def _xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def train_step(state: TrainState, batch: dict[str, jax.Array], key: jax.Array, *, mode: str,
               augment: bool, defense: MENet | None = None, adv_eps: float = 0.0,
               adv_step: float = 0.0, adv_steps: int = 1, reconstruct=None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on a global batch. Pure; jit it with the keyword arguments bound.

  Args:
    state: replicated TrainState.
    batch: {"image": (B, H, W, C) uint8, "label": (B,) int32, "p": (B,) float32
      observation probability (adv mode)}, sharded over the batch axis.
    key: PRNG key of this step (augmentation, PGD start, masks).
    mode: "vanilla", "pure", "adv" or "madry".
    augment: pad-4 random crop and horizontal flip.
    defense: the ME-Net defense (adv mode).
    adv_eps, adv_step, adv_steps: PGD of adversarial training.
    reconstruct: defense.reconstruct, possibly wrapped to run per device
      (parallel.per_device); defaults to defense.reconstruct.

  Returns:
    The new state and {"loss", "accuracy"} of the batch (means over the batch).
  """
  chex.assert_rank(batch["image"], 4)
  chex.assert_shape([batch["label"], batch["p"]], batch["image"].shape[:1])
  k_aug, k_pgd, k_mask = jax.random.split(key, 3)
  x = batch["image"].astype(jnp.float32) / 255.0
  labels = batch["label"]
  if augment:
    x = input_pipeline.augment(k_aug, x)

  if mode == "adv":
    recon = reconstruct or defense.reconstruct
    through_me = menet_jax.bpda(lambda xa, keys, p: recon(keys, xa, p))
    b = x.shape[0]

    def masks_at(t):
      return jax.random.split(jax.random.fold_in(k_mask, t), b)

    def attack_loss(xa, t):
      logits, _ = _logits(state, state.params, through_me(xa, masks_at(t), batch["p"]), train=True)
      return _xent(logits, labels)

    x = pgd(attack_loss, k_pgd, x, eps=adv_eps, step_size=adv_step, steps=adv_steps)
    x = jax.lax.stop_gradient(recon(masks_at(adv_steps), x, batch["p"]))
  elif mode == "madry":
    def attack_loss(xa, t):
      del t
      return _xent(_logits(state, state.params, xa, train=True)[0], labels)

    x = jax.lax.stop_gradient(
        pgd(attack_loss, k_pgd, x, eps=adv_eps, step_size=adv_step, steps=adv_steps))

  def loss_fn(params):
    logits, updates = _logits(state, params, x, train=True)
    return _xent(logits, labels).mean(), (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return state, {"loss": loss, "accuracy": accuracy}


def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Sums over a batch of k versions (votes) of each image.

  Args:
    batch: {"image": (B, k, H, W, C) uint8, "label": (B,), "weight": (B,) 0/1}.

  Returns:
    {"correct", "loss", "count"} summed over the weighted images; the loss is
    that of the first version, the prediction is the majority vote when k > 1.
  """
  chex.assert_rank(batch["image"], 5)
  b, k = batch["image"].shape[:2]
  chex.assert_shape([batch["label"], batch["weight"]], (b,))
  x = batch["image"].reshape(b * k, *batch["image"].shape[2:]).astype(jnp.float32) / 255.0
  logits = jnp.swapaxes(_logits(state, state.params, x, train=False)[0].reshape(b, k, -1), 0, 1)
  predicted = majority_vote(logits) if k > 1 else jnp.argmax(logits[0], -1)
  w = batch["weight"]
  return {"correct": jnp.sum(w * (predicted == batch["label"])),
          "loss": jnp.sum(w * _xent(logits[0], batch["label"])), "count": jnp.sum(w)}


def _me_manifest(config: config_lib.Config, split: str, defense: MENet, purpose: str,
                 shard: np.ndarray, split_size: int) -> dict[str, Any]:
  return {"name": f"{config.dataset}-{purpose}", "dataset": config.dataset, "split": split,
          "split_size": split_size, "purpose": purpose, "method": defense.method,
          "params": dict(defense.params), "layout": defense.layout, "startp": defense.startp,
          "endp": defense.endp, "n": defense.mask_num, "seed": config.seed,
          "code_version": menet_jax.__version__, "process_index": jax.process_index(),
          "process_count": jax.process_count(), "shard": [int(shard[0]), int(shard[-1]) + 1]}


def _cache_dir(config: config_lib.Config) -> Path:
  if config.cache_dir:
    return Path(config.cache_dir)
  return Path.home() / ".cache" / "menet_jax" / "me_sets"


def defense_for(config: config_lib.Config, image_shape: tuple[int, int, int]) -> MENet | None:
  if not config.uses_me:
    return None
  return MENet.create(method=config.me_method, startp=config.startp, endp=config.endp,
                     mask_num=config.mask_num, image_shape=image_shape, layout=config.me_channel,
                     inference=config.inference, votes=config.votes, **dict(config.me_params))


def train_and_evaluate(config: config_lib.Config, workdir: str | Path,
                       splits: tuple[tuple[np.ndarray, np.ndarray], ...] | None = None
                       ) -> tuple[TrainState, dict[str, Any]]:
  """Trains (or resumes) the run in `workdir`; returns the final state and metrics.

  Args:
    config: a validated configuration.
    workdir: the run directory, already prepared (menet_jax.run_dir.prepare).
    splits: ((train_images, train_labels), (test_images, test_labels)) as
      data.load returns them; loaded from config when None.
  """
  workdir = Path(workdir)
  mesh = parallel.mesh()
  local_batch = parallel.check_batch("batch_size", config.batch_size)
  local_eval_batch = parallel.check_batch("eval_batch_size", config.eval_batch_size)
  is_chief = jax.process_index() == 0
  root = jax.random.key(config.seed)
  k_init, k_train, k_me_train, k_me_eval = (jax.random.fold_in(root, i) for i in range(4))

  if splits is None:
    splits = tuple(data.load(config.dataset, split, config.data_dir)
                   for split in (config.train_split, config.test_split))
  (train_images, train_labels), (test_images, test_labels) = splits
  image_shape = tuple(train_images.shape[1:])
  train_shard = parallel.host_shard(len(train_images))
  test_shard = parallel.host_shard(len(test_images))
  defense = defense_for(config, image_shape)

  def me_set(images, shard, split, probs, key, purpose):
    return me_dataset.build(
        images=images[shard], indices=shard, probs=probs, reconstruct=defense.reconstruct,
        key=key, manifest=_me_manifest(config, split, defense, purpose, shard, len(images)),
        cache_dir=_cache_dir(config), progress=config.progress and is_chief,
        description=f"ME {purpose} set")

  if config.mode == "pure":
    source = input_pipeline.TrainSource(
        me_set(train_images, train_shard, config.train_split, defense.train_probs, k_me_train,
               "train"), train_labels[train_shard])
  elif config.mode == "adv":
    source = input_pipeline.TrainSource(train_images[train_shard][None], train_labels[train_shard],
                                        repeats=config.mask_num, probs=defense.train_probs)
  else:
    source = input_pipeline.TrainSource(train_images[train_shard][None], train_labels[train_shard])
  if defense is not None:
    eval_images = me_set(test_images, test_shard, config.test_split,
                         np.full(defense.votes, defense.mean_p), k_me_eval, "eval")
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

  model = create_model(config)
  tx = optimizer(config, steps_per_epoch)
  replicated = parallel.replicated(mesh)
  state = jax.jit(functools.partial(create_train_state, model=model, tx=tx,
                                    image_shape=image_shape),
                  out_shardings=replicated)(k_init)
  ckpts = checkpoint.Checkpoints(workdir / "checkpoints", config=config.identity(),
                                 keep=config.keep_checkpoints)
  resumed = ckpts.latest_step()
  if resumed is not None:
    state = ckpts.restore(state)
    logging.info("resumed %s at step %d", workdir, resumed)
  start = int(parallel.to_host(state.step))

  reconstruct = None
  if defense is not None:
    reconstruct = parallel.per_device(defense.reconstruct, mesh, nargs=3)
  step_fn = jax.jit(functools.partial(
      train_step, mode=config.mode, augment=config.augment, defense=defense,
      adv_eps=config.adv_eps, adv_step=config.adv_step, adv_steps=config.adv_steps,
      reconstruct=reconstruct), out_shardings=(replicated, replicated))
  eval_fn = jax.jit(eval_step, out_shardings=replicated)
  lr_fn = learning_rate_schedule(config, steps_per_epoch)

  def evaluate() -> dict[str, float]:
    sums = None
    for batch in input_pipeline.eval_batches(eval_images, eval_labels, local_eval_batch,
                                             eval_batches):
      out = eval_fn(state, parallel.global_batch(mesh, batch))
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
                      disable=not (config.progress and is_chief))
      window, t0, seen = [], time.perf_counter(), 0
      for local in source.batches(seed=config.seed, epoch=epoch, local_batch=local_batch,
                                  process=jax.process_index(), start_step=step % steps_per_epoch):
        batch = parallel.global_batch(mesh, local)
        state, step_metrics = step_fn(state, batch, jax.random.fold_in(k_train, step))
        step += 1
        window.append(step_metrics)
        seen += config.batch_size
        bar.update(1)
        if step % config.log_every == 0 or step % steps_per_epoch == 0:
          summary = {k: float(np.mean([parallel.to_host(m[k]) for m in window])) for k in window[0]}
          elapsed = time.perf_counter() - t0
          summary.update(learning_rate=float(lr_fn(step - 1)), images_per_s=seen / elapsed,
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
      logging.info("epoch %d/%d step %d: test accuracy %.4f (through the defense: %s)",
                   epoch + 1, config.epochs, step, result["test_accuracy"], defense is not None)
      final = dict(result, epoch=epoch + 1, step=step)
    if step != resumed:
      ckpts.save(step, state)
    ckpts.wait_until_finished()
    if not final:
      final = dict(evaluate(), epoch=config.epochs, step=step)
  best = ckpts.best()
  final.update(best_step=best[0] if best else None, best_test_accuracy=best[1] if best else None,
               defense=defense.describe() if defense is not None else None,
               test_images=len(test_images), train_images=len(train_images))
  ckpts.close()
  if is_chief:
    with atomic_write.atomic_write(workdir / "results.json") as tmp:
      tmp.write_text(json.dumps(final, indent=2, sort_keys=True))
  return state, final
