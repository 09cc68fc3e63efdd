"""The evaluation runner: a trained model, a list of named attacks, robust accuracy.

An image counts as robust under an attack only if the *final* adversarial
example is classified correctly by the randomized defense, under the
defense's inference rule (one mask at mean p, or a majority vote over k masks),
with randomness the attacker never saw. With `restarts` > 1 an image must
survive every restart. Each adversarial example is judged under `draws`
independent draws of the defense's randomness: `accuracy` is the first draw
(the number a single deployment would show), `mean_over_draws` the average over
the draws, `robust_all_draws` the fraction of images correct in every draw.

Randomness: restart r of attack `name` at `steps` on the batch that starts at
image i uses the key fold_in(attack_key, crc32(name), steps, i, r) (nested
fold_ins), so the attack depends on the batch size; the defense's draw d
for image j (mask v of a vote) uses fold_in(eval_key, d, v, j) (`MENet.inference_keys`),
so the judgement does not depend on the batch size and the same seeds replay
the same evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import menet_jax
from menet_jax import attack_suite, checkpoint, config as config_lib, parallel, sanity, train
from menet_jax import validation
from menet_jax.attacks import cross_entropy
from menet_jax.defenses import MENet, majority_vote

CHECKPOINTS = ("last", "best")


@dataclasses.dataclass(frozen=True)
class Model:
  """A trained classifier and the defense in front of it.

  Attributes:
    apply_fn: flax apply, (variables, x, train=False) -> logits.
    variables: {"params", "batch_stats"}.
    defense: the ME-Net preprocessing, or None for an undefended model.
    config: the run's configuration.
    checkpoint: the restored checkpoint directory, and its step.
  """
  apply_fn: Callable[..., jax.Array]
  variables: Any
  defense: MENet | None
  config: config_lib.Config
  checkpoint: str
  step: int


def read_config(workdir: str | Path) -> config_lib.Config:
  """The configuration of the trained run in `workdir` (its config.json).

  Raises:
    FileNotFoundError: workdir holds no run.
  """
  config_file = Path(workdir) / "config.json"
  if not config_file.is_file():
    raise FileNotFoundError(f"no trained run in {workdir}: {config_file} does not exist")
  return config_lib.Config.from_json(json.loads(config_file.read_text()))


def load(workdir: str | Path, image_shape: tuple[int, int, int], which: str = "last", *,
         inference: str | None = None, votes: int | None = None) -> Model:
  """Restores a trained run's model (and its defense) from its run directory.

  Args:
    workdir: a run directory written by the training runner (config.json and
      checkpoints/).
    image_shape: (H, W, C) of the images the model takes.
    which: "last" (the final checkpoint) or "best" (the best test accuracy:
      selected on the test set, so biased upwards; "last" is the honest choice).
    inference, votes: override the run's inference rule ("mean" or "vote", votes >= 1).

  Raises:
    FileNotFoundError: no run or no checkpoint of that kind in workdir.
  """
  validation.choice("checkpoint", which, CHECKPOINTS)
  workdir = Path(workdir)
  config = read_config(workdir)
  overrides = {k: v for k, v in dict(inference=inference, votes=votes).items() if v is not None}
  config = dataclasses.replace(config, **overrides)
  config.validate()
  ckpt_dir = workdir / "checkpoints" / which
  if not ckpt_dir.is_dir() or not any(p.name.isdigit() for p in ckpt_dir.iterdir()):
    raise FileNotFoundError(f"no {which!r} checkpoint in {ckpt_dir}")
  model = train.create_model(config)
  state = train.create_train_state(jax.random.key(0), model, train.optimizer(config, 1),
                                   tuple(image_shape))
  # Inference and votes do not change what training computed.
  ckpts = checkpoint.Checkpoints(workdir / "checkpoints", config=config.identity(),
                                 keep=config.keep_checkpoints, ignore=("inference", "votes"))
  try:
    state = ckpts.restore(state) if which == "last" else ckpts.restore_best(state)
    step = int(state.step)
  finally:
    ckpts.close()
  return Model(apply_fn=state.apply_fn,
               variables={"params": state.params, "batch_stats": state.batch_stats},
               defense=train.defense_for(config, tuple(image_shape)), config=config,
               checkpoint=str(ckpt_dir.absolute() / str(step)), step=step)


def _reconstructor(defense: MENet) -> Callable[..., jax.Array]:
  if jax.device_count() == 1:
    return defense.reconstruct
  return parallel.per_device(defense.reconstruct, parallel.mesh(), nargs=3)


def context(model: Model, variables, source: Model | None, source_variables,
            params: attack_suite.Params) -> attack_suite.Context:
  """The attack context of `model` with explicit variables (so jit sees them as arguments)."""
  def network(x):
    return model.apply_fn(variables, x, train=False)

  defense = model.defense
  if defense is None:
    preprocess = lambda x, key: x
    through = defended = lambda x, key: network(x)
  else:
    recon = _reconstructor(defense)

    def preprocess(x, key):
      return recon(jax.random.split(key, x.shape[0]), x, jnp.full(x.shape[:1], defense.mean_p))

    differentiable = menet_jax.bpda(preprocess)
    defended = lambda x, key: network(preprocess(x, key))
    through = lambda x, key: network(differentiable(x, key))
  source_net = None
  if source is not None:
    source_net = lambda x: source.apply_fn(source_variables, x, train=False)
  return attack_suite.Context(network=network, defended=defended, through=through,
                              preprocess=preprocess, source=source_net, params=params,
                              randomized=defense is not None)


def predict(model: Model, variables, x: jax.Array, indices: jax.Array, key: jax.Array,
            draws: int) -> jax.Array:
  """(draws, B) labels of the defended model under `draws` independent draws.

  Each draw follows the inference rule: one mask at mean p, or the majority
  vote over `votes` masks; image j's masks depend on (key, draw, j) only.
  """
  net = lambda v: model.apply_fn(variables, v, train=False)
  if model.defense is None:
    return jnp.broadcast_to(jnp.argmax(net(x), -1), (draws, x.shape[0]))
  defense = model.defense
  recon = _reconstructor(defense)
  p = jnp.full(x.shape[:1], defense.mean_p)

  def one_draw(d):
    keys = defense.inference_keys(jax.random.fold_in(key, d), indices)  # (votes, B)
    logits = jax.lax.map(lambda k: net(recon(k, x, p)), keys)
    return majority_vote(logits) if defense.votes > 1 else jnp.argmax(logits[0], -1)

  return jax.lax.map(one_draw, jnp.arange(draws))


@dataclasses.dataclass(frozen=True)
class Result:
  """One row of the table: an attack at a number of steps."""
  attack: str
  threat: str
  steps: int | None
  accuracy: float
  mean_over_draws: float
  robust_all_draws: float
  images: int
  max_linf: float
  wall_s: float
  description: str


def _attack_batch(variables, source_variables, key, x, y, indices, eval_key, *, model, source,
                  params, attack, steps, restarts, draws):
  ctx = context(model, variables, source, source_variables, params)

  def one_restart(r):
    x_adv = attack.fn(ctx, jax.random.fold_in(key, r), x, y, steps)
    correct = predict(model, variables, x_adv, indices, eval_key, draws) == y
    return correct, jnp.max(jnp.abs(x_adv - x))

  correct, linf = jax.lax.map(one_restart, jnp.arange(restarts))
  return jnp.all(correct, axis=0), jnp.max(linf)


def run_attack(model: Model, source: Model | None, images: np.ndarray, labels: np.ndarray, *,
               name: str, steps: int | None, params: attack_suite.Params, restarts: int,
               draws: int, attack_key: jax.Array, eval_key: jax.Array, batch_size: int,
               indices: np.ndarray | None = None) -> Result:
  """Attacks every image and judges the final examples under the defense.

  Args:
    model, source: the target and the independently trained copy (or None).
    images: (N, H, W, C) float32 in [0, 1]; labels: (N,) int.
    name: a registered attack; steps: its iterations (iterative attacks).
    params: attack parameters; restarts >= 1 (deterministic attacks run once); draws >= 1.
    attack_key, eval_key: PRNG keys of the attacker and of the defense's judgement.
    batch_size: images per batch (the last batch is padded and the padding ignored).
    indices: (N,) the images' indices in their split (default arange(N)).
  """
  attack = attack_suite.get(name)
  if attack.needs_source and source is None:
    raise ValueError(f"attack {name!r} needs the independently trained copy (--source_workdir)")
  restarts = validation.integer_in("restarts", restarts, 1)
  if not attack.random:
    restarts = 1  # a deterministic attack gives the same example every restart
  draws = validation.integer_in("draws", draws, 1)
  batch_size = validation.integer_in("batch_size", batch_size, 1)
  if attack.iterative:
    steps = validation.integer_in("steps", steps, 1)
  else:
    steps = None
  n = len(images)
  indices = np.arange(n) if indices is None else np.asarray(indices)
  fn = jax.jit(functools.partial(
      _attack_batch, model=model, source=source, params=params, attack=attack,
      steps=steps or 0, restarts=restarts, draws=draws))
  key = jax.random.fold_in(jax.random.fold_in(attack_key, zlib.crc32(name.encode())), steps or 0)
  source_vars = source.variables if source is not None else None
  t0 = time.perf_counter()
  correct, linf = [], 0.0
  for start in range(0, n, batch_size):
    rows = np.arange(start, start + batch_size)
    valid = rows < n
    rows = np.where(valid, rows, n - 1)
    c, l = fn(model.variables, source_vars, jax.random.fold_in(key, start),
              jnp.asarray(images[rows], jnp.float32), jnp.asarray(labels[rows], jnp.int32),
              jnp.asarray(indices[rows]), eval_key)
    correct.append(np.asarray(c)[:, valid])
    linf = max(linf, float(l))
  correct = np.concatenate(correct, axis=1)  # (draws, N)
  return Result(attack=name, threat=attack.threat, steps=steps,
                accuracy=float(correct[0].mean()), mean_over_draws=float(correct.mean()),
                robust_all_draws=float(correct.all(0).mean()), images=n, max_linf=linf,
                wall_s=time.perf_counter() - t0, description=attack.description)


def gradient_check(model: Model, images: np.ndarray, labels: np.ndarray, key: jax.Array
                   ) -> dict[str, float]:
  """The BPDA gradient of the cross-entropy through the defense at clean images.

  Returns:
    {"finite": fraction of finite entries, "nonzero_images": fraction of images
    whose gradient is not identically zero}.
  """
  ctx = context(model, model.variables, None, None, attack_suite.Params())
  y = jnp.asarray(labels, jnp.int32)
  g = jax.jit(jax.grad(lambda x: jnp.sum(cross_entropy(ctx.through(x, key), y))))(
      jnp.asarray(images, jnp.float32))
  g = np.asarray(g).reshape(len(images), -1)
  return {"finite": float(np.isfinite(g).mean()),
          "nonzero_images": float(np.any(g != 0, axis=1).mean())}


def parse_attacks(specs: Sequence[str], default_steps: Sequence[int]
                  ) -> list[tuple[str, int | None]]:
  """`name` or `name@s1/s2/...` entries -> [(name, steps)] rows, validated before any work.

  Iterative attacks run at each of `default_steps` unless their entry names
  its own steps; the others run once.
  """
  rows = []
  for spec in specs:
    name, _, steps_text = spec.partition("@")
    attack = attack_suite.get(name)
    if steps_text and not attack.iterative:
      raise ValueError(f"attack {name!r} does not take steps (its budget has its own flag), "
                       f"got {spec!r}")
    try:
      steps = [int(s) for s in steps_text.split("/")] if steps_text else list(default_steps)
    except ValueError:
      raise ValueError(f"steps in {spec!r} must be integers, e.g. pgd@7/20/40") from None
    if attack.iterative:
      rows += [(name, validation.integer_in(f"steps of {name}", s, 1)) for s in steps]
    else:
      rows.append((name, None))
  if not rows:
    raise ValueError("attacks must name at least one attack")
  return rows


def evaluate(model: Model, source: Model | None, images: np.ndarray, labels: np.ndarray, *,
             rows: Sequence[tuple[str, int | None]], params: attack_suite.Params, restarts: int,
             draws: int, seed: int, batch_size: int, sanity_eps: Sequence[float],
             sanity_images: int, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs the attack rows and the sanity checks; returns everything a report needs.

  Args:
    rows: (attack, steps) pairs, from `parse_attacks`.
    seed: the evaluation's seed (attacker: fold_in(seed, 0); judgement: fold_in(seed, 1)).
    sanity_eps: radii of the BPDA-PGD sweep (empty: no sweep); it runs on the
      first `sanity_images` images at the largest step count of `rows` (or 20),
      step max(step_size, 2.5 eps / steps) (Madry et al.'s rule, so that large
      radii are reachable).
  """
  params = params.validate()
  root = jax.random.key(validation.integer_in("seed", seed, 0))
  attack_key, eval_key = jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)
  common = dict(restarts=restarts, draws=draws, attack_key=attack_key, eval_key=eval_key,
                batch_size=batch_size)
  t0 = time.perf_counter()
  results = []
  for name, steps in rows:
    r = run_attack(model, source, images, labels, name=name, steps=steps, params=params, **common)
    log(f"{name:>16} {'' if steps is None else steps:>6}  accuracy {r.accuracy:7.2%}  "
        f"mean over {draws} draws {r.mean_over_draws:7.2%}  robust in all {r.robust_all_draws:7.2%}"
        f"  ({r.wall_s:.1f} s)")
    results.append(r)

  m = validation.integer_in("sanity_images", sanity_images, 1, len(images))
  grads = gradient_check(model, images[:m], labels[:m], jax.random.fold_in(root, 2))
  checks = sanity.gradients(grads)
  sweep = []
  sweep_steps = max([s for _, s in rows if s is not None], default=20)
  for eps in sanity_eps:
    eps = validation.number_in("sanity_eps", eps, 0.0, 1.0)
    p = dataclasses.replace(params, eps=eps,
                            step_size=max(params.step_size, 2.5 * eps / sweep_steps))
    r = run_attack(model, source, images[:m], labels[:m], name="bpda_pgd", steps=sweep_steps,
                   params=p, **common)
    log(f"  sanity sweep: bpda_pgd-{sweep_steps} eps {eps:.4g}: {r.accuracy:.2%}")
    sweep.append((eps, r.accuracy))
  checks += sanity.eps_sweep(sweep, m) + sanity.attack_order(results) + \
      sanity.steps_monotone(results)
  return {"results": [dataclasses.asdict(r) for r in results],
          "sanity": {"checks": [dataclasses.asdict(c) for c in checks],
                     "eps_sweep": {"attack": "bpda_pgd", "steps": sweep_steps, "images": m,
                                   "accuracy": [{"eps": e, "accuracy": a} for e, a in sweep]},
                     "gradients": grads},
          "params": dataclasses.asdict(params), "restarts": restarts, "draws": draws,
          "seed": seed, "images": len(images), "batch_size": batch_size,
          "wall_s": time.perf_counter() - t0}
