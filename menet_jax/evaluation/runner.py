"""The evaluation runner: a classifier, its defense, a list of attacks, per-image verdicts.

An image counts as robust under an attack only if the *final* adversarial
example is classified correctly by the defended model under the defense's
inference rule (`Defense.predict`: one draw, or a majority vote), with
randomness the attacker never saw. With `restarts` > 1 an image must survive
every restart. Each adversarial example is judged under `draws` independent
draws of the defense: the runner keeps, per attack and image, correct or not
under each draw (`Row.correct`, (draws, N)). A row reports the first draw
(`accuracy`, what one deployment would show), the mean over draws, and the
fraction of images correct in every draw; the worst case over attacks counts
an image as robust only if every attack failed on it (AutoAttack's number).

Resumable: with a `RowStore`, every finished row is written to disk at once
(atomically) under a key of everything that determines it, and a rerun with
the same settings reads it back instead of computing it again.

Randomness: restart r of an attack (its canonical string s) on the batch that
starts at image i uses fold_in(attack_key, crc32(s), i, r) (nested fold_ins),
so the attack depends on the batch size; the defense's draw d for image j uses
fold_in(eval_key, d) and the image's index (`Defense.inference_keys`), so the
judgement does not depend on the batch size, and the same seeds replay the
same evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from menet_jax import defenses
from menet_jax.attacks import cross_entropy, max_radius
from menet_jax.defenses import Defense
from menet_jax.evaluation import sanity, suite
from menet_jax.evaluation.restore import Restored
from menet_jax.utils import parallel, validation
from menet_jax.utils.atomic_write import atomic_write
from menet_jax.utils.registry import parse


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of the table: an attack with its parameters, and its verdicts.

  Attributes:
    spec: the attack's canonical component string; attack: its name.
    label: short name for tables ("bpda_eot-200").
    threat: the attacker's access; steps: its steps, if it takes any.
    eps: the radius the row was run at, in `norm` ("linf" or "l2").
    correct: (draws, N) bool, image j correct under draw d (and every restart).
    max_linf, max_l2: largest |x_adv - x| in either norm (max_l2 None in rows stored before
      it was kept); wall_s: seconds it took when computed.
  """
  spec: str
  attack: str
  label: str
  threat: str
  steps: int | None
  eps: float
  norm: str
  correct: np.ndarray
  max_linf: float
  max_l2: float | None
  wall_s: float
  description: str

  @property
  def accuracy(self) -> float:
    return float(self.correct[0].mean())

  @property
  def mean_over_draws(self) -> float:
    return float(self.correct.mean())

  @property
  def robust_all_draws(self) -> float:
    return float(self.correct.all(0).mean())

  @property
  def images(self) -> int:
    return self.correct.shape[1]

  def summary(self) -> dict[str, Any]:
    """The row without its verdicts, as the JSON record stores it."""
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "correct"}
    out.update(accuracy=self.accuracy, mean_over_draws=self.mean_over_draws,
               robust_all_draws=self.robust_all_draws, images=self.images)
    return out


def label(spec: str) -> str:
  """A row's short name: "bpda_pgd-10"; a non-default gradient view in brackets,
  "bpda_pgd[frozen]-10"."""
  name, params = parse(spec)
  short = name if params.get("view", "bpda") == "bpda" else f"{name}[{params['view']}]"
  if params.get("steps") is None or not suite.threat(name).iterative:
    return short
  return f"{short}-{params['steps']}"


def worst_case(rows: Sequence[Row]) -> np.ndarray:
  """(draws, N): image j robust under draw d only if it is correct in every row."""
  return np.logical_and.reduce([r.correct for r in rows])


class RowStore:
  """Finished rows on disk, keyed by everything that determines them.

  Each row is `<directory>/<key>.npz` (its verdicts) and `<key>.json` (what it
  is), written through a temporary file and renamed, the JSON last; a row is
  read back only if both are there and the JSON matches. `settings` (the run,
  checkpoint, images, seeds, draws, restarts, batch size, defense) are part of
  every key, so rows of another evaluation are never taken for this one's.
  """

  def __init__(self, directory: str | Path, settings: dict[str, Any]):
    self.directory = Path(directory)
    self.settings = json.loads(json.dumps(settings, sort_keys=True))
    self.reused: list[str] = []
    self.computed: list[str] = []

  def _key(self, what: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    full = {"settings": self.settings, **what}
    text = json.dumps(full, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20], json.loads(text)

  def get(self, what: dict[str, Any]) -> dict[str, Any] | None:
    key, full = self._key(what)
    meta, arrays = self.directory / f"{key}.json", self.directory / f"{key}.npz"
    if not (meta.is_file() and arrays.is_file()):
      return None
    stored = json.loads(meta.read_text())
    if stored.get("what") != full:
      return None
    with np.load(arrays) as f:
      correct = f["correct"]
    self.reused.append(what["spec"])
    return dict(stored["result"], correct=correct)

  def put(self, what: dict[str, Any], correct: np.ndarray, result: dict[str, Any]) -> None:
    key, full = self._key(what)
    buffer = io.BytesIO()
    np.savez(buffer, correct=correct)
    with atomic_write(self.directory / f"{key}.npz") as tmp:
      tmp.write_bytes(buffer.getvalue())
    with atomic_write(self.directory / f"{key}.json") as tmp:
      tmp.write_text(json.dumps({"what": full, "result": result}, sort_keys=True, indent=1))
    self.computed.append(what["spec"])


def _placed(defense: Defense) -> Defense:
  """The defense with its draws split over this process's devices (one process evaluates)."""
  return defenses.on_devices(defense, parallel.mesh(jax.local_devices()))


def context(restored: Restored, variables: Any, source: Restored | None, source_variables: Any,
            *, eps: float, step_size: float, defense: Defense | None = None,
            norm: str = "linf") -> suite.Context:
  """The attack context of `restored` behind `defense` (default its own), with explicit
  variables so that jit sees them as arguments. The defense's draws run per device."""
  network = restored.network(variables)
  defense = defense or restored.defense
  placed = _placed(defense)

  def level(x):
    return jnp.full(x.shape[:1], defense.test_level, jnp.float32)

  def preprocess(x, key):
    return placed.transform(jax.random.split(key, x.shape[0]), x, level(x))

  def through(x, key, view="bpda"):
    return network(placed.view(view, jax.random.split(key, x.shape[0]), x, level(x)))

  source_net = source.network(source_variables) if source is not None else None
  return suite.Context(network=network, defended=lambda x, key: network(preprocess(x, key)),
                       through=through, preprocess=preprocess, source=source_net,
                       defense=defense, eps=eps, step_size=step_size, norm=norm)


def _attack_batch(variables, source_variables, key, x, y, indices, eval_key, *, restored, source,
                  defense, spec, eps, step_size, restarts, draws, norm):
  ctx = context(restored, variables, source, source_variables, eps=eps, step_size=step_size,
                defense=defense, norm=norm)
  attack = suite.ATTACKS.lookup(spec)
  placed = _placed(defense)

  def one_restart(r):
    x_adv = attack(ctx, jax.random.fold_in(key, r), x, y)
    labels = jax.lax.map(lambda d: placed.predict(ctx.network, jax.random.fold_in(eval_key, d),
                                                  x_adv, indices), jnp.arange(draws))
    d = (x_adv - x).reshape(x.shape[0], -1)
    return labels == y, jnp.max(jnp.abs(d)), jnp.max(jnp.linalg.norm(d, axis=1))

  correct, linf, l2 = jax.lax.map(one_restart, jnp.arange(restarts))
  return jnp.all(correct, axis=0), jnp.max(linf), jnp.max(l2)


def check_attack(spec: str, defense: Defense, *, has_source: bool, norm: str = "linf"
                 ) -> tuple[str, dict[str, Any], suite.Threat]:
  """(name, parameters, threat model) of an attack string that can run against `defense`.

  Raises ValueError, before anything runs, for an unknown attack or argument, a transfer attack
  without a source model, a gradient view that the defense does not offer, or an attack that
  does not run under `norm`.
  """
  name, params = suite.ATTACKS.bind(spec)
  threat = suite.threat(name)
  suite.check_norm(name, norm)
  if threat.needs_source and not has_source:
    raise ValueError(f"attack {name!r} needs the independently trained copy (--source_workdir)")
  if params.get("view", "bpda") not in defense.views:
    raise ValueError(f"attack {name!r} asks for the {params['view']!r} view of the defense's "
                     f"gradient; {defense.spec()} offers {', '.join(defense.views)}")
  return name, params, threat


def run_attack(restored: Restored, source: Restored | None, images: np.ndarray,
               labels: np.ndarray, *, spec: str, eps: float, step_size: float, restarts: int,
               draws: int, attack_key: jax.Array, eval_key: jax.Array, batch_size: int,
               defense: Defense | None = None, indices: np.ndarray | None = None,
               store: RowStore | None = None, norm: str = "linf") -> Row:
  """Attacks every image and judges the final examples under the defense.

  Args:
    restored, source: the target and the independently trained copy (or None).
    images: (N, H, W, C) float32 in [0, 1]; labels: (N,) int.
    spec: an attack's component string (`suite.parse_attacks` gives canonical ones).
    eps, step_size: the threat model's radius and default step, in `norm`; under l2 in pixel
      units (|x_adv - x|_2 with pixels in [0, 1]), at most sqrt(pixels).
    restarts: >= 1 (deterministic attacks run once); draws: >= 1 draws judging each example.
    attack_key, eval_key: PRNG keys of the attacker and of the defense's judgement.
    batch_size: images per batch (the last batch is padded and the padding ignored).
    defense: the defense to attack and judge through (default: the run's).
    indices: (N,) the images' indices in their split (default arange(N)).
    store: where finished rows are kept (and read back instead of recomputed).
    norm: the threat model's norm, "linf" or "l2".
  """
  defense = defense or restored.defense
  name, params, threat = check_attack(spec, defense, has_source=source is not None, norm=norm)
  spec = suite.format_spec(name, params)
  restarts = validation.integer_in("restarts", restarts, 1)
  if not threat.random:
    restarts = 1  # a deterministic attack gives the same example every restart
  draws = validation.integer_in("draws", draws, 1)
  batch_size = validation.integer_in("batch_size", batch_size, 1)
  largest = max_radius(norm, images.shape[1:])
  eps = validation.number_in("eps", eps, 0.0, largest)
  step_size = validation.number_in("step_size", step_size, 0.0, largest, lo_open=True)
  row = dict(spec=spec, attack=name, label=label(spec), threat=threat.access,
             steps=params.get("steps") if threat.iterative else None, eps=eps, norm=norm,
             description=suite.description(name))
  # The images of this call: the sanity sweep attacks a prefix of the evaluation's images.
  # The norm enters the key only where it is not l-inf, so rows stored before l2 existed stay
  # valid.
  what = {"spec": spec, "eps": eps, "step_size": step_size, "images": len(images),
          **({"norm": norm} if norm != "linf" else {})}
  stored = store.get(what) if store is not None else None
  if stored is not None:
    return Row(**row, correct=stored["correct"], max_linf=stored["max_linf"],
               max_l2=stored.get("max_l2"), wall_s=stored["wall_s"])

  n = len(images)
  indices = np.arange(n) if indices is None else np.asarray(indices)
  fn = jax.jit(functools.partial(
      _attack_batch, restored=restored, source=source, defense=defense, spec=spec, eps=eps,
      step_size=step_size, restarts=restarts, draws=draws, norm=norm))
  key = jax.random.fold_in(attack_key, zlib.crc32(spec.encode()))
  source_vars = source.variables if source is not None else None
  t0 = time.perf_counter()
  correct, linf, l2 = [], 0.0, 0.0
  for start, rows, valid in _batches(n, batch_size):
    c, batch_linf, batch_l2 = fn(
        restored.variables, source_vars, jax.random.fold_in(key, start),
        jnp.asarray(images[rows], jnp.float32), jnp.asarray(labels[rows], jnp.int32),
        jnp.asarray(indices[rows]), eval_key)
    correct.append(np.asarray(c)[:, valid])
    linf, l2 = max(linf, float(batch_linf)), max(l2, float(batch_l2))
  correct = np.concatenate(correct, axis=1)  # (draws, N)
  result = Row(**row, correct=correct, max_linf=linf, max_l2=l2, wall_s=time.perf_counter() - t0)
  if store is not None:
    store.put(what, correct, {"max_linf": linf, "max_l2": l2, "wall_s": result.wall_s})
  return result


def _input_gradient(restored: Restored, images: np.ndarray, labels: np.ndarray, key: jax.Array,
                    defense: Defense | None, view: str, per_image: bool = False) -> np.ndarray:
  """(N, D): the gradient of the cross-entropy through view `view` of the defense, one draw.

  per_image: one image per device at a time (the batch from image i drawn with fold_in(key, i)),
  so that memory is that of one image: an exact view through a per-image optimisation (RIDE's
  "unrolled") keeps every step's state of every image it differentiates at once. Otherwise all
  images in one batch. Batches are padded to a multiple of the local device count, over which
  the defense's draws are split.
  """
  ctx = context(restored, restored.variables, None, None, eps=0.0, step_size=1.0, defense=defense)
  grad = jax.jit(jax.grad(lambda x, y, k: jnp.sum(cross_entropy(ctx.through(x, k, view), y))))
  n, devices = len(images), jax.local_device_count()
  size = devices if per_image else -(-n // devices) * devices
  out = []
  for start, rows, valid in _batches(n, size):
    g = grad(jnp.asarray(images[rows], jnp.float32), jnp.asarray(labels[rows], jnp.int32),
             jax.random.fold_in(key, start) if per_image else key)
    out.append(np.asarray(g).reshape(size, -1)[valid])
  return np.concatenate(out)


def _batches(n: int, size: int):
  """(start, rows, valid) of the batches of `size` rows covering range(n): the last batch is
  padded with row n - 1, and `valid` (size,) marks the rows that are not padding."""
  for start in range(0, n, size):
    rows = np.arange(start, start + size)
    valid = rows < n
    yield start, np.where(valid, rows, n - 1), valid


def gradient_check(restored: Restored, images: np.ndarray, labels: np.ndarray, key: jax.Array,
                   defense: Defense | None = None) -> dict[str, float]:
  """The gradient of the cross-entropy through the defense's attack view at clean images.

  Returns:
    {"finite": fraction of finite entries, "nonzero_images": fraction of images
    whose gradient is not identically zero}.
  """
  g = _input_gradient(restored, images, labels, key, defense, "bpda")
  return {"finite": float(np.isfinite(g).mean()),
          "nonzero_images": float(np.any(g != 0, axis=1).mean())}


def gradient_agreement(restored: Restored, images: np.ndarray, labels: np.ndarray,
                       key: jax.Array, defense: Defense | None = None) -> dict[str, Any]:
  """How well each approximate view follows the exact gradient, where the defense offers one.

  For a defense with an "unrolled" view (the exact gradient through its whole computation),
  the cosine between that gradient and each other view's, per image, under the same draw;
  computed one image at a time, whose memory the exact view needs.

  Returns:
    {view: {"mean": mean cosine, "min": smallest}} ({} when there is no exact view).
  """
  defense = defense or restored.defense
  if "unrolled" not in defense.views:
    return {}
  grads = {v: _input_gradient(restored, images, labels, key, defense, v, per_image=True)
           for v in defense.views}
  exact = grads.pop("unrolled")

  def cosine(a, b):
    return np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                         np.finfo(np.float32).tiny)
  cosines = {v: cosine(g, exact) for v, g in grads.items()}
  return {v: {"mean": float(c.mean()), "min": float(c.min())} for v, c in cosines.items()}


def evaluate(restored: Restored, source: Restored | None, images: np.ndarray,
             labels: np.ndarray, *, rows: Sequence[str], eps: float, step_size: float,
             restarts: int, draws: int, seed: int, batch_size: int, sanity_eps: Sequence[float],
             sanity_images: int, defense: Defense | None = None, store: RowStore | None = None,
             log: Callable[[str], None] = print, norm: str = "linf"
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Runs the attack rows, the worst case over them and the sanity checks.

  A "clean" row comes first whether asked for or not: every report gives the defense's clean
  accuracy beside its robust ones (and, through its wall time, what the defense costs).

  Args:
    rows: canonical attack strings, from `suite.parse_attacks`.
    eps, step_size: the threat model's radius and the attacks' default step, in `norm`.
    seed: the evaluation's seed (attacker: fold_in(seed, 0); judgement: fold_in(seed, 1)).
    sanity_eps: radii of the BPDA-PGD sweep (empty: no sweep); it runs on the
      first `sanity_images` images at the largest step count of `rows` (or 20),
      step max(step_size, 2.5 eps / steps) (Madry et al.'s rule, so that large
      radii are reachable).
    defense: the defense to attack and judge through (default: the run's).
    store: keeps finished rows (sweep rows included) for a rerun to resume from.
    norm: the threat model's norm, "linf" or "l2" (pixel units); the sweep's radii are in it
      and its "accuracy ~ 0" check is at half the largest distance (mid-grey from anywhere).

  Returns:
    (record, verdicts): the JSON-serialisable record a report needs, and each
    row's (draws, N) verdicts by its canonical string, "worst_case" among them.
  """
  root = jax.random.key(validation.integer_in("seed", seed, 0))
  attack_key, eval_key = jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)
  defense = defense or restored.defense
  common = dict(restarts=restarts, draws=draws, attack_key=attack_key, eval_key=eval_key,
                batch_size=batch_size, defense=defense, store=store, norm=norm)
  rows = list(rows) if "clean" in rows else ["clean", *rows]
  for spec in rows:  # every row's arguments, before the first one runs
    check_attack(spec, defense, has_source=source is not None, norm=norm)
  largest = max_radius(norm, images.shape[1:])
  m = validation.integer_in("sanity_images", sanity_images, 1, len(images))
  results = []
  for spec in rows:
    r = run_attack(restored, source, images, labels, spec=spec, eps=eps, step_size=step_size,
                   **common)
    reused = store is not None and store.reused and store.reused[-1] == r.spec
    log(f"{r.label:>20}  accuracy {r.accuracy:7.2%}  mean over {draws} draws "
        f"{r.mean_over_draws:7.2%}  robust in all {r.robust_all_draws:7.2%}  "
        f"({'reused' if reused else f'{r.wall_s:.1f} s'})")
    results.append(r)
  worst = worst_case(results)
  worst_summary = {"accuracy": float(worst[0].mean()), "mean_over_draws": float(worst.mean()),
                   "robust_all_draws": float(worst.all(0).mean()), "images": worst.shape[1]}
  log(f"{'worst case':>20}  accuracy {worst_summary['accuracy']:7.2%}  robust in all "
      f"{worst_summary['robust_all_draws']:7.2%}")

  grads = gradient_check(restored, images[:m], labels[:m], jax.random.fold_in(root, 2),
                         defense=defense)
  checks = sanity.gradients(grads)
  steps = [r.steps for r in results if r.steps is not None]
  sweep_steps = max(steps, default=20)
  sweep, sweep_rows = [], []
  for e in sanity_eps:
    e = validation.number_in("sanity_eps", e, 0.0, largest)
    r = run_attack(restored, source, images[:m], labels[:m], spec=f"bpda_pgd(steps={sweep_steps})",
                   eps=e, step_size=max(step_size, 2.5 * e / sweep_steps), **common)
    log(f"  sanity sweep: bpda_pgd-{sweep_steps} eps {e:.4g}: {r.accuracy:.2%}")
    sweep.append((e, r.accuracy))
    sweep_rows.append(r)
  checks += sanity.eps_sweep(sweep, m, unbounded=0.5 * largest) + \
      sanity.attack_order(results, defense.randomized) + sanity.loss_order(results) + \
      sanity.steps_monotone(results)
  agreement = gradient_agreement(restored, images[:m], labels[:m], jax.random.fold_in(root, 3),
                                 defense=defense)
  for view, cos in agreement.items():
    log(f"  gradient agreement: {view} against unrolled, cosine mean {cos['mean']:.3f} "
        f"min {cos['min']:.3f}")
  verdicts = {r.spec: r.correct for r in results}
  verdicts["worst_case"] = worst
  record = {"results": [r.summary() for r in results], "worst_case": worst_summary,
            "sanity": {"checks": [dataclasses.asdict(c) for c in checks],
                       "eps_sweep": {"attack": "bpda_pgd", "steps": sweep_steps, "images": m,
                                     "accuracy": [{"eps": e, "accuracy": a} for e, a in sweep]},
                       "gradients": grads, "gradient_agreement": agreement},
            "eps": eps, "norm": norm, "step_size": step_size, "restarts": restarts,
            "draws": draws,
            "seed": seed, "images": len(images), "pixels": int(np.prod(images.shape[1:])),
            "batch_size": batch_size,
            "defense": defense.describe(),
            # The attacks' own times, kept with their rows: a resumed evaluation reports the
            # times of the rows as they were computed.
            "wall_s": sum(r.wall_s for r in results + sweep_rows)}
  return record, verdicts
