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
from menet_jax.defenses.base import EXACT
from menet_jax.evaluation import progress as progress_lib
from menet_jax.evaluation import sanity, suite
from menet_jax.evaluation.config import Plan
from menet_jax.evaluation.target import Target
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
    correct: (draws, N) bool, image j correct under draw d (and every restart); an image the
      row did not attack (a cascade's) counts as not correct.
    max_linf, max_l2: largest |x_adv - x| in either norm (max_l2 None in rows stored before
      it was kept); wall_s: seconds it took when computed.
    attacked: how many of the N images the row attacked (fewer than N in a cascade).
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
  attacked: int | None = None

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
    out.update(accuracy=self.accuracy, interval95=list(wilson(self.accuracy, self.images)),
               mean_over_draws=self.mean_over_draws, robust_all_draws=self.robust_all_draws,
               images=self.images)
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
    """The stored row `what` ({"correct", "max_linf", "max_l2", "wall_s"}), or None. With
    several processes the chief reads it and every process gets the chief's answer."""
    found = self._read(what) if parallel.is_chief() else None
    if jax.process_count() > 1:
      header = parallel.from_chief(np.array(
          [found is not None, *(found["correct"].shape if found else (0, 0))], np.int64))
      if not header[0]:
        return None
      numbers = [np.nan if found is None or found.get(k) is None else found[k]
                 for k in ("max_linf", "max_l2", "wall_s")]
      correct, numbers = parallel.from_chief(
          (found["correct"] if found else np.zeros(header[1:], bool), np.array(numbers)))
      found = dict(correct=correct, max_linf=float(numbers[0]),
                   max_l2=None if np.isnan(numbers[1]) else float(numbers[1]),
                   wall_s=float(numbers[2]))
    if found is not None:
      self.reused.append(what["spec"])
    return found

  def _read(self, what: dict[str, Any]) -> dict[str, Any] | None:
    key, full = self._key(what)
    meta, arrays = self.directory / f"{key}.json", self.directory / f"{key}.npz"
    if not (meta.is_file() and arrays.is_file()):
      return None
    stored = json.loads(meta.read_text())
    if stored.get("what") != full:
      return None
    with np.load(arrays) as f:
      correct = f["correct"]
    return dict(stored["result"], correct=correct)

  def put(self, what: dict[str, Any], correct: np.ndarray, result: dict[str, Any]) -> None:
    """Keeps a finished row (on the chief only: every process holds the same verdicts)."""
    self.computed.append(what["spec"])
    if not parallel.is_chief():
      return
    key, full = self._key(what)
    buffer = io.BytesIO()
    np.savez(buffer, correct=correct)
    with atomic_write(self.directory / f"{key}.npz") as tmp:
      tmp.write_bytes(buffer.getvalue())
    with atomic_write(self.directory / f"{key}.json") as tmp:
      tmp.write_text(json.dumps({"what": full, "result": result}, sort_keys=True, indent=1))


def _placed(defense: Defense) -> Defense:
  """The defense with its draws split over this process's devices (one process evaluates)."""
  return defenses.on_devices(defense, parallel.mesh(jax.local_devices()))


def context(target: Target, variables: Any, source: Target | None, source_variables: Any,
            *, eps: float, step_size: float, norm: str = "linf",
            heartbeat: Callable[[], None] | None = None) -> suite.Context:
  """The attack context of `target` behind its defense, with explicit variables so that jit
  sees them as arguments. The defense's draws run per device. `heartbeat`, if given, is called
  (from the compiled code) after every forward pass of the target's network."""
  network = target.network(variables)
  if heartbeat is not None:
    bare = network

    def network(x):
      logits = bare(x)
      jax.debug.callback(heartbeat)
      return logits
  defense = target.defense
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


def _attack_batch(variables, source_variables, key, x, y, indices, eval_key, eps, step_size, *,
                  target, source, spec, restarts, draws, norm, heartbeat):
  ctx = context(target, variables, source, source_variables, eps=eps, step_size=step_size,
                norm=norm, heartbeat=heartbeat)
  attack = suite.ATTACKS.lookup(spec)
  placed = _placed(target.defense)

  def one_restart(r):
    x_adv = attack(ctx, jax.random.fold_in(key, r), x, y)
    labels = jax.lax.map(lambda d: placed.predict(ctx.network, jax.random.fold_in(eval_key, d),
                                                  x_adv, indices), jnp.arange(draws))
    d = (x_adv - x).reshape(x.shape[0], -1)
    return labels == y, jnp.max(jnp.abs(d)), jnp.max(jnp.linalg.norm(d, axis=1))

  correct, linf, l2 = jax.lax.map(one_restart, jnp.arange(restarts))
  return jnp.all(correct, axis=0), jnp.max(linf), jnp.max(l2)


# The rows being computed (innermost last): where the compiled attacks' heartbeat goes.
_ACTIVE: list[progress_lib.Progress] = []
# Compiled attack batches, by network, defense and row, so that rows that differ only in eps and
# step size (the sanity sweep's radii) share one compilation. An entry keeps the network
# functions and the defense (not the variables, which are the compiled function's arguments),
# so the ids in its key cannot be reused while it is cached.
_CACHE: dict[tuple, Callable] = {}
_CACHE_SIZE = 64


def _heartbeat() -> None:
  if _ACTIVE:
    _ACTIVE[-1].forward()


def _compiled(target: Target, source: Target | None, *, spec: str, restarts: int, draws: int,
              norm: str, progress: bool) -> Callable:
  """The jitted `_attack_batch` of one row; eps and step size are its arguments."""
  target = dataclasses.replace(target, variables=None)
  source = dataclasses.replace(source, variables=None) if source is not None else None
  key = (id(target.apply_fn), id(target.defense), source and id(source.apply_fn), spec,
         restarts, draws, norm, progress)
  if key not in _CACHE:
    if len(_CACHE) >= _CACHE_SIZE:
      _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = jax.jit(functools.partial(
        _attack_batch, target=target, source=source, spec=spec, restarts=restarts, draws=draws,
        norm=norm, heartbeat=_heartbeat if progress else None))
  return _CACHE[key]


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


def run_attack(target: Target, source: Target | None, images: np.ndarray,
               labels: np.ndarray, *, spec: str, eps: float, step_size: float, restarts: int,
               draws: int, attack_key: jax.Array, eval_key: jax.Array, batch_size: int,
               indices: np.ndarray | None = None,
               store: RowStore | None = None, norm: str = "linf",
               subset: np.ndarray | None = None, progress: bool = False,
               log: Callable[[str], None] = print) -> Row:
  """Attacks every image (or those in `subset`) and judges the final examples under the
  defense.

  Args:
    target, source: the classifier behind the defense to attack and judge through, and the
      independently trained copy (or None).
    images: (N, H, W, C) float32 in [0, 1]; labels: (N,) int.
    spec: an attack's component string (`suite.parse_attacks` gives canonical ones).
    eps, step_size: the threat model's radius and default step, in `norm`; under l2 in pixel
      units (|x_adv - x|_2 with pixels in [0, 1]), at most sqrt(pixels).
    restarts: >= 1 (deterministic attacks run once); draws: >= 1 draws judging each example.
    attack_key, eval_key: PRNG keys of the attacker and of the defense's judgement.
    batch_size: images per batch (the last batch is padded and the padding ignored).
    indices: (N,) the images' indices in their split (default arange(N)).
    store: where finished rows are kept (and read back instead of recomputed).
    norm: the threat model's norm, "linf" or "l2".
    subset: (N,) bool, the images to attack (default all); the others are not attacked and
      count as not correct (the cascade attacks only the images that earlier rows left
      robust). Batch b's attack key is fold_in(key, index of its first image), so an image
      attacked alone (batch_size 1) meets the same attack whatever the subset.
    progress: show a progress bar (a log line every half minute when not on a terminal).
  """
  defense = target.defense
  name, params, threat = check_attack(spec, defense, has_source=source is not None, norm=norm)
  spec = suite.format_spec(name, params)
  restarts = validation.integer_in("restarts", restarts, 1)
  if not threat.random:
    restarts = 1  # a deterministic attack gives the same example every restart
  draws = validation.integer_in("draws", draws, 1) if defense.randomized else 1
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
  n = len(images)
  attacked = np.ones(n, bool) if subset is None else np.asarray(subset, bool)
  if attacked.shape != (n,):
    raise ValueError(f"subset must be a (N,) = ({n},) bool mask, got shape {attacked.shape}")
  what = {"spec": spec, "eps": eps, "step_size": step_size, "images": n,
          **({"norm": norm} if norm != "linf" else {}),
          **({"subset": hashlib.sha256(np.packbits(attacked).tobytes()).hexdigest()[:20]}
             if subset is not None else {})}
  row["attacked"] = int(attacked.sum())
  stored = store.get(what) if store is not None else None
  if stored is not None:
    return Row(**row, correct=stored["correct"], max_linf=stored["max_linf"],
               max_l2=stored.get("max_l2"), wall_s=stored["wall_s"])

  indices = np.arange(n) if indices is None else np.asarray(indices)
  chosen = np.flatnonzero(attacked)
  key = jax.random.fold_in(attack_key, zlib.crc32(spec.encode()))
  source_vars = source.variables if source is not None else None
  t0 = time.perf_counter()
  correct, linf, l2 = np.zeros((draws, n), bool), 0.0, 0.0
  fn = _compiled(target, source, spec=spec, restarts=restarts, draws=draws, norm=norm,
                 progress=progress)
  # The batches are those of one process; with several, each attacks its share of them, so
  # that every image meets the same attack whatever the number of processes.
  mine = parallel.host_share(list(_batches(len(chosen), _fitted(len(chosen), batch_size))))

  def arguments(at):
    rows = chosen[at]
    return (target.variables, source_vars, jax.random.fold_in(key, int(indices[rows[0]])),
            jnp.asarray(images[rows], jnp.float32), jnp.asarray(labels[rows], jnp.int32),
            jnp.asarray(indices[rows]), eval_key, jnp.float32(eps), jnp.float32(step_size))

  shown = progress and parallel.is_chief()
  # The forward passes per batch, read off the traced program (jit reuses the trace).
  per_batch = progress_lib.calls(jax.make_jaxpr(fn)(*arguments(mine[0][1]))) \
      if shown and mine else None
  with progress_lib.Progress(row["label"], sum(int(v.sum()) for _, _, v in mine),
                             enabled=shown, log=log,
                             passes=per_batch and per_batch * len(mine)) as bar:
    _ACTIVE.append(bar)
    try:
      for _, at, valid in mine:
        rows = chosen[at]
        c, batch_linf, batch_l2 = fn(*arguments(at))
        correct[:, rows[valid]] = np.asarray(c)[:, valid]
        linf, l2 = max(linf, float(batch_linf)), max(l2, float(batch_l2))
        bar.batch(int(valid.sum()))
    finally:
      _ACTIVE.pop()
  # Each process filled the verdicts of its own images; every process gets them all.
  correct = parallel.across_processes(correct, np.any)
  linf, l2, wall_s = parallel.across_processes(
      np.array([linf, l2, time.perf_counter() - t0]), np.max)
  result = Row(**row, correct=correct, max_linf=float(linf), max_l2=float(l2),
               wall_s=float(wall_s))
  if store is not None:
    store.put(what, correct, {"max_linf": result.max_linf, "max_l2": result.max_l2,
                              "wall_s": result.wall_s})
  return result


def _input_gradient(target: Target, images: np.ndarray, labels: np.ndarray, key: jax.Array,
                    view: str, per_image: bool = False) -> np.ndarray:
  """(N, D): the gradient of the cross-entropy through view `view` of the defense, one draw.

  per_image: one image per device at a time (the batch from image i drawn with fold_in(key, i)),
  so that memory is that of one image: an exact view through a per-image optimisation (RIDE's
  "exact") keeps every step's state of every image it differentiates at once. Otherwise all
  images in one batch. Batches are padded to a multiple of the local device count, over which
  the defense's draws are split.
  """
  ctx = context(target, target.variables, None, None, eps=0.0, step_size=1.0)
  grad = jax.jit(jax.grad(lambda x, y, k: jnp.sum(cross_entropy(ctx.through(x, k, view), y))))
  n, devices = len(images), jax.local_device_count()
  size = devices if per_image else -(-n // devices) * devices
  batches = list(_batches(n, size))
  out = np.zeros((n, int(np.prod(images.shape[1:]))), np.float32)
  # One image at a time, each process takes its share (the sum below adds zeros elsewhere).
  for start, rows, valid in parallel.host_share(batches) if per_image else batches:
    g = grad(jnp.asarray(images[rows], jnp.float32), jnp.asarray(labels[rows], jnp.int32),
             jax.random.fold_in(key, start) if per_image else key)
    out[rows[valid]] = np.asarray(g).reshape(size, -1)[valid]
  return parallel.across_processes(out, np.sum) if per_image else out


def _fitted(n: int, batch_size: int) -> int:
  """The batch size for n images: `batch_size`, or for fewer images (a cascade's last rows) the
  next power of two that holds them, rounded up to the local devices, so that a few images are
  not padded to a whole batch and only a few shapes are ever compiled."""
  devices = jax.local_device_count()
  size = 1 << max(n - 1, 0).bit_length()
  return min(batch_size, -(-size // devices) * devices)


def _batches(n: int, size: int):
  """(start, rows, valid) of the batches of `size` rows covering range(n): the last batch is
  padded with row n - 1, and `valid` (size,) marks the rows that are not padding."""
  for start in range(0, n, size):
    rows = np.arange(start, start + size)
    valid = rows < n
    yield start, np.where(valid, rows, n - 1), valid


def gradient_check(target: Target, images: np.ndarray, labels: np.ndarray, key: jax.Array
                   ) -> dict[str, float]:
  """The gradient of the cross-entropy through the defense's attack view at clean images.

  Returns:
    {"finite": fraction of finite entries, "nonzero_images": fraction of images
    whose gradient is not identically zero}.
  """
  g = _input_gradient(target, images, labels, key, "bpda")
  return {"finite": float(np.isfinite(g).mean()),
          "nonzero_images": float(np.any(g != 0, axis=1).mean())}


def gradient_agreement(target: Target, images: np.ndarray, labels: np.ndarray,
                       key: jax.Array) -> dict[str, Any]:
  """How well each approximate view follows the exact gradient, where the defense offers one.

  For a defense with an "exact" view (the true gradient through its whole computation),
  the cosine between that gradient and each other view's, per image, under the same draw;
  computed one image at a time, whose memory the exact view needs.

  Returns:
    {view: {"mean": mean cosine, "min": smallest}} ({} when there is no exact view).
  """
  defense = target.defense
  if EXACT not in defense.views:
    return {}
  grads = {v: _input_gradient(target, images, labels, key, v, per_image=True)
           for v in defense.views}
  exact = grads.pop(EXACT)

  def cosine(a, b):
    return np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                         np.finfo(np.float32).tiny)
  cosines = {v: cosine(g, exact) for v, g in grads.items()}
  return {v: {"mean": float(c.mean()), "min": float(c.min())} for v, c in cosines.items()}


def run(target: Target, source: Target | None, images: np.ndarray, labels: np.ndarray,
        plan: Plan, *, store: RowStore | None = None, log: Callable[[str], None] = print
        ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Runs the attack rows, the worst case over them and the sanity checks.

  A "clean" row comes first whether asked for or not: every report gives the defense's clean
  accuracy beside its robust ones (and, through its wall time, what the defense costs). In a
  cascade (`plan.cascade`) each row attacks only the images that every earlier row left
  correct under some draw; the worst case is the full run's (exactly so where an image's attack
  does not depend on its batch: batch_size 1, or batch-independent attacks), and each row's
  accuracy counts the images it did not attack as broken.

  The sanity sweep (`plan.sanity_eps`, BPDA-PGD) runs on the first `sanity_images` images at
  the largest step count of the rows (or 20), step max(step_size, 2.5 eps / steps) (Madry et
  al.'s rule, so that large radii are reachable); its "accuracy ~ 0" check is at half the
  largest distance (mid-grey from anywhere).

  Args:
    target, source: the classifier behind its defense, and the independently trained copy of
      the transfer attacks (or None).
    images: (N, H, W, C) float32 in [0, 1]; labels: (N,) int.
    plan: `EvalConfig.checked(...)`: the rows, radius, step, draws, seed, ...
    store: keeps finished rows (sweep rows included) for a rerun to resume from.
    log: where the table's lines go as the rows finish.

  Returns:
    (record, verdicts): the JSON-serialisable record a report needs, and each
    row's (draws, N) verdicts by its canonical string, "worst_case" among them.
  """
  root = jax.random.key(plan.seed)
  attack_key, eval_key = jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)
  defense = target.defense
  draws = plan.draws
  common = dict(restarts=plan.restarts, draws=draws, attack_key=attack_key, eval_key=eval_key,
                batch_size=plan.batch_size, store=store, norm=plan.norm,
                progress=plan.progress, log=log)
  for spec in plan.rows:  # every row's arguments, before the first one runs
    check_attack(spec, defense, has_source=source is not None, norm=plan.norm)
  largest = max_radius(plan.norm, images.shape[1:])
  m = min(plan.sanity_images, len(images))
  def attack_rows(specs: Sequence[str], eps: float, step_size: float, start: np.ndarray
                  ) -> tuple[list[Row], np.ndarray]:
    """Every row at one radius (a cascade if the plan is one), the images of `start` (draws, N)
    counted as robust so far; the rows and their worst case."""
    rows, worst = [], start.copy()
    for spec in specs:
      subset = worst.any(0) if plan.cascade and spec != "clean" else None
      r = run_attack(target, source, images, labels, spec=spec, eps=eps, step_size=step_size,
                     subset=subset, **common)
      worst = worst & r.correct
      reused = store is not None and store.reused and store.reused[-1] == r.spec
      attacked = f", {r.attacked} attacked" if subset is not None else ""
      at = f" (eps {eps:.4g})" if eps != plan.eps else ""
      log(f"{r.label:>20}  accuracy {r.accuracy:7.2%}" +
          (f"  mean over {draws} draws {r.mean_over_draws:7.2%}  robust in all "
           f"{r.robust_all_draws:7.2%}" if draws > 1 else "") +
          (f"  worst so far {worst[0].mean():7.2%}" if plan.cascade else "") +
          f"  ({'reused' if reused else f'{r.wall_s:.1f} s'}{attacked}){at}")
      rows.append(r)
    return rows, worst

  results, worst = attack_rows(plan.rows, plan.eps, plan.step_size,
                               np.ones((draws, len(images)), bool))
  curve, curve_rows, curve_verdicts = [], [], {}
  for e in plan.curve_eps:  # the same attacks at more radii, for the figure
    step = plan.step_size * e / plan.eps if plan.eps > 0 and e > 0 else plan.step_size
    rows_e, worst_e = attack_rows([s for s in plan.rows if s != "clean"], e, step,
                                  results[0].correct)
    curve.append({"eps": e, "results": [{"label": r.label, "accuracy": r.accuracy,
                                         "interval95": list(wilson(r.accuracy, r.images))}
                                        for r in rows_e],
                  "worst_case": summary(worst_e)})
    curve_rows += rows_e
    curve_verdicts.update({f"{r.spec}@{e:g}": r.correct for r in rows_e})
    curve_verdicts[f"worst_case@{e:g}"] = worst_e
  worst_summary = summary(worst)
  log(f"{'worst case':>20}  accuracy {worst_summary['accuracy']:7.2%}  "
      f"[{worst_summary['interval95'][0]:.2%}, {worst_summary['interval95'][1]:.2%}]" +
      (f"  robust in all {worst_summary['robust_all_draws']:7.2%}" if draws > 1 else ""))

  k_grad, k_agree, k_random = (jax.random.fold_in(root, i) for i in (2, 3, 4))
  grads = gradient_check(target, images[:m], labels[:m], k_grad)
  checks = sanity.gradients(grads) + sanity.outputs(_clean_logits(target, images[:m])) + \
      sanity.randomness(defense.randomized, detect_randomness(target, images[:m], k_random))
  steps = [r.steps for r in results if r.steps is not None]
  sweep_steps = max(steps, default=20)
  sweep, sweep_rows = [], []
  for e in plan.sanity_eps:
    r = run_attack(target, source, images[:m], labels[:m], spec=f"bpda_pgd(steps={sweep_steps})",
                   eps=e, step_size=max(plan.step_size, 2.5 * e / sweep_steps), **common)
    log(f"  sanity sweep: bpda_pgd-{sweep_steps} eps {e:.4g}: {r.accuracy:.2%}")
    sweep.append((e, r.accuracy))
    sweep_rows.append(r)
  checks += sanity.eps_sweep(sweep, m, unbounded=0.5 * largest) + \
      sanity.score_based(results)
  if not plan.cascade:  # a cascade's rows see different images: only the worst case compares
    checks += sanity.attack_order(results, defense.randomized) + sanity.loss_order(results) + \
        sanity.steps_monotone(results)
  warnings = sanity.too_few(m) if plan.sanity_eps else []
  agreement = gradient_agreement(target, images[:m], labels[:m], k_agree)
  for view, cos in agreement.items():
    log(f"  gradient agreement: {view} against {EXACT}, cosine mean {cos['mean']:.3f} "
        f"min {cos['min']:.3f}")
  verdicts = {r.spec: r.correct for r in results}
  verdicts["worst_case"] = worst
  verdicts.update(curve_verdicts)
  record = {"results": [r.summary() for r in results], "worst_case": worst_summary,
            "sanity": {"checks": [dataclasses.asdict(c) for c in checks], "warnings": warnings,
                       "eps_sweep": {"attack": "bpda_pgd", "steps": sweep_steps, "images": m,
                                     "accuracy": [{"eps": e, "accuracy": a,
                                                   "interval95": list(wilson(a, m))}
                                                  for e, a in sweep]},
                       "gradients": grads, "gradient_agreement": agreement},
            "curve": curve,
            "eps": plan.eps, "eps_as_given": plan.config.eps, "norm": plan.norm,
            "step_size": plan.step_size, "restarts": plan.restarts, "draws": draws,
            "cascade": plan.cascade, "seed": plan.seed, "images": len(images),
            "processes": jax.process_count(),
            "pixels": int(np.prod(images.shape[1:])), "batch_size": plan.batch_size,
            "defense": defense.describe(), "defense_spec": _spec_or_none(defense),
            # The attacks' own times, kept with their rows: a resumed evaluation reports the
            # times of the rows as they were computed.
            "wall_s": sum(r.wall_s for r in results + sweep_rows + curve_rows)}
  return record, verdicts


def _spec_or_none(defense: Defense) -> str | None:
  try:
    return defense.spec()
  except ValueError:  # a defense class that was never registered
    return None


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
  """The 95 % Wilson score interval of a proportion p observed on n images."""
  if n == 0:
    return 0.0, 1.0
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  return float(max(centre - half, 0.0)), float(min(centre + half, 1.0))


def summary(correct: np.ndarray) -> dict[str, Any]:
  """(draws, N) verdicts -> accuracy under the first draw with its 95 % interval, the mean over
  draws, the fraction robust in every draw, N."""
  n = correct.shape[1]
  accuracy = float(correct[0].mean())
  return {"accuracy": accuracy, "interval95": list(wilson(accuracy, n)),
          "mean_over_draws": float(correct.mean()), "robust_all_draws": float(correct.all(0).mean()),
          "images": n}


def _clean_logits(target: Target, images: np.ndarray) -> np.ndarray:
  """(M, classes) the network's outputs on clean images (without the defense)."""
  return np.asarray(jax.jit(target.apply_fn)(target.variables, jnp.asarray(images, jnp.float32)))


def detect_randomness(target: Target, images: np.ndarray, key: jax.Array) -> bool:
  """Whether two draws of the defense (different keys) on the same images differ."""
  defense = target.defense
  if not defense.preprocesses:
    return False
  x = jnp.asarray(images[:8], jnp.float32)
  level = jnp.full(x.shape[:1], defense.test_level, jnp.float32)
  draw = jax.jit(lambda k: defense.transform(jax.random.split(k, x.shape[0]), x, level))
  a, b = draw(jax.random.fold_in(key, 0)), draw(jax.random.fold_in(key, 1))
  return bool(jnp.any(a != b))
