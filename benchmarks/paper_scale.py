"""The papers' runs at their real shapes, timed on whatever backend JAX finds.

  python -m benchmarks.paper_scale                  # the papers' shapes: an accelerator's job
  make bench-accelerator                            # the same, table into out/bench/
  python -m benchmarks.paper_scale --scale=small    # tiny shapes, CPU: the test suite runs it

Each workload runs in a process of its own, so that the peak memory it reports is its own:
the device's `memory_stats()["peak_bytes_in_use"]`, or on CPU, which keeps no device memory
statistics, the process's peak resident set ("host", JAX and its libraries included). Each
row gives the throughput, that peak and the projected wall time of the paper run the workload
belongs to (its size over the throughput; compilation and the input pipeline excluded):

  menet_build   ME-Net's training set (menet.flags: nuclear norm, mu 1, 10 masks per image):
                reconstructions/s of the defense's training draws on CIFAR-10-shaped images;
                the paper's set is 50,000 images x 10 masks.
  menet_pure    pure ME-Net trains a ResNet-18 on that set, a standard step at batch 256;
                menet.flags' 200 epochs of 500,000 images.
  menet_adv     ME-Net + PGD-7 (Table 4): one adversarial step, PGD-7 through the nuclear
                norm with BPDA, then the step on the reconstruction, ResNet-18 at batch 256;
                200 epochs of 500,000.
  ride_cifar10, ride_mnist
                RIDE at K = 2,000, T = 5 on a batch of images (its CIFAR-10 ResNet-18 and MNIST
                CNN do not enter: the fit is the cost). Table 2 attacks with BPDA-PGD-10, so
                each test image costs 12 fits (the clean pass, 10 steps, the final judgement);
                projected for a 10,000-image test set (the paper gives no count).
  attack        AutoAttack's standard ensemble (APGD-CE, APGD-T and FAB-T on 9 targets, Square
                at 5,000 queries) through the BPDA view of menet.flags' ME-Net, ResNet-18, on
                100 images,
                without the cascade (every attack on every image: an upper bound on the
                cascade, whose cost depends on the model's robustness), one draw per image;
                projected for the 10,000 test images.
  er            the ER-Classifier with PGD training (CIFAR-10: VGG19 encoder, eps 0.03, 7 steps
                of eps / 4) at batch 128; Table 1's CIFAR-10 row at 100 epochs (the notes'
                default; the paper gives none) of 50,000 images.

The networks are freshly initialised and the images random: throughput does not depend on
either, except the attack's (an untrained network is no harder to attack than a trained one
when every attack runs to its budget, as here). `--scale=small` keeps every workload but
shrinks its shapes (models, batches, K, budgets), attacks with two of the ensemble's four and
uses USVT for ME-Net, so that the whole
command runs in about a minute on a CPU; its projections still use the papers' run sizes, so
they mean nothing.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import train
from menet_jax import defenses, models
from menet_jax import evaluation as ev
from menet_jax.training.config import Config
from menet_jax.utils import machine, parallel

_SCALE = flags.DEFINE_enum("scale", "paper", ["paper", "small"],
                           "paper: the papers' shapes; small: tiny ones (CPU, the test suite).")
_WORKLOADS = flags.DEFINE_list("workloads", None, "Workloads to run (default: all).")
_OUT = flags.DEFINE_string("out", None, "Also write the table (.md) and rows (.json) here, "
                           "as OUT.md and OUT.json.")
_WORKLOAD = flags.DEFINE_string("workload", None, "Internal: run one workload in this process "
                                "and write its row to --row_file.")
_ROW_FILE = flags.DEFINE_string("row_file", None, "Internal: where --workload writes its row.")

CIFAR = (32, 32, 3)
MNIST = (28, 28, 1)


@dataclasses.dataclass(frozen=True)
class Scale:
  """The shapes of one setting of the benchmark."""
  me: tuple[tuple[str, object], ...]  # ME-Net's estimator: me_method, me_params
  cifar_model: str          # ME-Net's CIFAR-10 network
  er_model: str             # the ER-Classifier's CIFAR-10 network
  train_batch: int          # ME-Net's training batch
  er_batch: int
  masks: int                # ME-Net's masks per image
  build_images: int         # images per reconstruction call
  ride_k: int
  ride_t: int
  ride_images: int
  attack_images: int
  attacks: tuple[str, ...]
  repeats: int              # timed repeats (median)
  min_seconds: float        # each repeat runs at least this long


SCALES = {
    "paper": Scale(me=(("me_method", "nuclear_norm"), ("me_params", {"mu": 1.0})),
                   cifar_model="resnet18", er_model="er_cifar10", train_batch=256, er_batch=128,
                   masks=10, build_images=500, ride_k=2000, ride_t=5, ride_images=16,
                   attack_images=100, attacks=("standard",), repeats=3, min_seconds=5.0),
    "small": Scale(me=(("me_method", "usvt"), ("me_params", {"keep": 0.8})),
                   cifar_model="small_cnn", er_model="er_cifar10_small", train_batch=4,
                   er_batch=4, masks=2, build_images=4, ride_k=2, ride_t=2, ride_images=2,
                   attack_images=2,
                   # two of the ensemble's four (a gradient and a score-based one): each attack
                   # compiles apart, and the suite runs every attack elsewhere
                   attacks=("apgd_t(steps=2, targets=2)", "square(queries=4, rescale=False)"),
                   repeats=1, min_seconds=0.0),
}

# The paper runs' sizes (see the module docstring).
_CIFAR_TRAIN, _TEST_IMAGES = 50_000, 10_000
_MENET_EPOCHS, _ER_EPOCHS = 200, 100
_RIDE_FITS_PER_IMAGE = 12


@dataclasses.dataclass(frozen=True)
class Row:
  workload: str
  what: str
  rate: float               # items / s
  unit: str
  compile_s: float
  peak_bytes: int
  peak_kind: str            # "device" or "host"
  run: str                  # the paper run it projects
  run_items: float          # its size, in `unit`'s items
  error: str = ""

  @property
  def projected_s(self) -> float:
    return self.run_items / self.rate if self.rate > 0 else float("inf")


def _timed(fn: Callable[[int], object], scale: Scale) -> tuple[float, float]:
  """(seconds of the first call, median seconds per call after it); fn(i) must block."""
  start = time.perf_counter()
  fn(0)
  first = time.perf_counter() - start
  seconds = []
  for r in range(scale.repeats):
    start, calls = time.perf_counter(), 0
    while calls == 0 or time.perf_counter() - start < scale.min_seconds:
      fn(r + 1 + calls)
      calls += 1
    seconds.append((time.perf_counter() - start) / calls)
  return first, float(np.median(seconds))


def _random_images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def _menet_config(scale: Scale, mode: str, **changes) -> Config:
  return Config.for_dataset("cifar10", workdir="", mode=mode, model=scale.cifar_model,
                            batch_size=scale.train_batch, mask_num=scale.masks,
                            **dict(scale.me), **changes)


def _training_row(workload: str, what: str, config: Config, run: str, run_images: float,
                  scale: Scale) -> dict:
  defense = defenses.create(config.defense)
  rng = np.random.default_rng(0)
  local = parallel.check_batch("batch_size", config.batch_size)
  batches = [{"image": rng.integers(0, 256, (local, *CIFAR), dtype=np.uint8),
              "label": rng.integers(0, 10, local).astype(np.int32),
              "level": np.full(local, defense.test_level, np.float32)} for _ in range(2)]
  r = train.measure_training(config, CIFAR, batches, repeats=scale.repeats,
                             min_seconds=scale.min_seconds)
  return dict(workload=workload, what=what, rate=r["rate"], unit="images/s",
              compile_s=r["compile"], run=run, run_items=run_images)


def menet_build(scale: Scale) -> dict:
  defense = defenses.create(_menet_config(scale, "pure").defense)
  levels = defense.train_levels
  x = jnp.asarray(_random_images(scale.build_images, CIFAR))
  fn = jax.jit(defense.transform)

  def call(i):
    keys = jax.random.split(jax.random.key(i), len(x))
    jax.block_until_ready(fn(keys, x, jnp.full(len(x), levels[i % len(levels)], jnp.float32)))

  first, seconds = _timed(call, scale)
  return dict(workload="menet_build", what=f"{defense.spec()}, training draws",
              rate=len(x) / seconds, unit="reconstructions/s", compile_s=first - seconds,
              run=f"ME-Net's CIFAR-10 training set ({_CIFAR_TRAIN:,} x {len(levels)} masks)",
              run_items=_CIFAR_TRAIN * len(levels))


def menet_pure(scale: Scale) -> dict:
  config = _menet_config(scale, "pure")
  return _training_row("menet_pure", f"{config.model}, batch {config.batch_size}, standard step",
                       config, f"pure ME-Net, {_MENET_EPOCHS} epochs (menet.flags)",
                       _MENET_EPOCHS * _CIFAR_TRAIN * scale.masks, scale)


def menet_adv(scale: Scale) -> dict:
  config = _menet_config(scale, "adv")
  return _training_row("menet_adv", f"{config.model}, batch {config.batch_size}, "
                       f"{config.objective} through {config.defense}", config,
                       f"ME-Net + PGD-7, {_MENET_EPOCHS} epochs (menet.flags --mode=adv)",
                       _MENET_EPOCHS * _CIFAR_TRAIN * scale.masks, scale)


def _ride(workload: str, shape: tuple[int, ...], scale: Scale) -> dict:
  defense = defenses.RIDE(k=scale.ride_k, t=scale.ride_t)
  x = jnp.asarray(_random_images(scale.ride_images, shape))
  fn = jax.jit(defense.transform)

  def call(i):
    keys = jax.random.split(jax.random.key(i), len(x))
    jax.block_until_ready(fn(keys, x, None))

  first, seconds = _timed(call, scale)
  return dict(workload=workload, what=f"K {scale.ride_k} x T {scale.ride_t}, {len(x)} images "
              f"{'x'.join(map(str, shape))} per call", rate=len(x) / seconds, unit="images/s",
              compile_s=first - seconds,
              run=f"RIDE Table 2, BPDA-PGD-10 on {_TEST_IMAGES:,} test images",
              run_items=_RIDE_FITS_PER_IMAGE * _TEST_IMAGES)


def ride_cifar10(scale: Scale) -> dict:
  return _ride("ride_cifar10", CIFAR, scale)


def ride_mnist(scale: Scale) -> dict:
  return _ride("ride_mnist", MNIST, scale)


def attack(scale: Scale) -> dict:
  model = models.create(scale.cifar_model, num_classes=10)
  x = _random_images(scale.attack_images, CIFAR)
  y = np.arange(len(x), dtype=np.int32) % 10
  variables = model.init(jax.random.key(0), jnp.asarray(x[:1]), train=False)
  apply = lambda v, images: model.apply(v, images, train=False)
  defense = defenses.create(_menet_config(scale, "pure").defense)

  def call(i):
    ev.evaluate(apply, x, y, variables=variables, defense=defense, eps=8 / 255,
                attacks=scale.attacks, cascade=False, draws=1, seed=i,
                sanity_images=len(x), sanity_eps=(), progress=False, log=lambda _: None)

  first, seconds = _timed(call, scale)
  return dict(workload="attack", what=f"{', '.join(scale.attacks)} through "
              f"{defense.spec()} (BPDA), {scale.cifar_model}, {len(x)} images, no cascade",
              rate=len(x) / seconds, unit="images/s", compile_s=first - seconds,
              run=f"the ensemble on {_TEST_IMAGES:,} test images", run_items=_TEST_IMAGES)


def er(scale: Scale) -> dict:
  objective = "er(eps=0.03,step_size=0.0075,steps=7)"
  config = Config.for_dataset("cifar10", workdir="", mode="vanilla", model=scale.er_model,
                              objective=objective,
                              optimizer="adam", lr=1e-4, weight_decay=0.0, lr_boundaries=(),
                              augment=False, batch_size=scale.er_batch)
  return _training_row("er", f"{config.model}, batch {config.batch_size}, {objective}",
                       config, f"ER-Classifier Table 1 CIFAR-10, {_ER_EPOCHS} epochs",
                       _ER_EPOCHS * _CIFAR_TRAIN, scale)


WORKLOADS = {fn.__name__: fn for fn in (menet_build, menet_pure, menet_adv, ride_cifar10,
                                        ride_mnist, attack, er)}


def _peak() -> tuple[int, str]:
  stats = jax.local_devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host"  # Linux: KiB


def _run_here(name: str, scale: Scale) -> Row:
  fields = WORKLOADS[name](scale)
  peak, kind = _peak()
  return Row(**fields, peak_bytes=peak, peak_kind=kind)


def _run_apart(name: str, scale_name: str) -> Row:
  """Runs workload `name` in a child process (its peak memory its own); a failure is a row."""
  with tempfile.TemporaryDirectory() as tmp:
    row_file = Path(tmp) / "row.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.paper_scale", f"--scale={scale_name}",
                           f"--workload={name}", f"--row_file={row_file}"],
                          capture_output=True, text=True)
    if proc.returncode == 0 and row_file.exists():
      return Row(**json.loads(row_file.read_text()))
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
  return Row(workload=name, what="", rate=0.0, unit="", compile_s=0.0, peak_bytes=0,
             peak_kind="", run="", run_items=0.0, error=f"exit {proc.returncode}: {tail[0]}")


def _duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "-"
  for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
    if seconds >= size:
      return f"{seconds / size:.1f} {unit}"
  return f"{seconds:.1f} s"


def table(rows: list[Row]) -> str:
  out = ["| workload | what | throughput | compile s | peak memory | paper run | projected |",
         "|---|---|---|---|---|---|---|"]
  for r in rows:
    if r.error:
      out.append(f"| {r.workload} | failed: {r.error} | | | | | |")
      continue
    out.append(f"| {r.workload} | {r.what} | {r.rate:.4g} {r.unit} | {r.compile_s:.1f} "
               f"| {r.peak_bytes / 2**30:.2f} GiB ({r.peak_kind}) | {r.run} "
               f"| {_duration(r.projected_s)} |")
  return "\n".join(out)


def main(argv):
  del argv
  scale = SCALES[_SCALE.value]
  if _WORKLOAD.value:
    if _WORKLOAD.value not in WORKLOADS or not _ROW_FILE.value:
      raise app.UsageError(f"--workload takes one of {', '.join(WORKLOADS)}, with --row_file")
    Path(_ROW_FILE.value).write_text(json.dumps(dataclasses.asdict(_run_here(_WORKLOAD.value,
                                                                             scale))))
    return
  names = _WORKLOADS.value or list(WORKLOADS)
  unknown = sorted(set(names) - set(WORKLOADS))
  if unknown:
    raise app.UsageError(f"--workloads takes {', '.join(WORKLOADS)}; unknown: {unknown}")
  devices = jax.devices()
  header = (f"# machine: {machine.describe()}\n# {len(devices)} x {devices[0].device_kind}; "
            f"--scale={_SCALE.value}" + ("" if _SCALE.value == "paper" else
                                          " (shapes are not the papers': projections mean nothing)"))
  print(header + "\n", flush=True)
  rows = []
  for name in names:
    rows.append(_run_apart(name, _SCALE.value))
    print(table(rows[-1:]).splitlines()[-1], flush=True)
  text = header + "\n\n" + table(rows) + "\n"
  print("\n" + text)
  if _OUT.value:
    out = Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, content in ((".md", text),
                            (".json", json.dumps([dataclasses.asdict(r) for r in rows], indent=1))):
      tmp = out.with_name(out.name + suffix + ".tmp")
      tmp.write_text(content)
      tmp.replace(out.with_name(out.name + suffix))
  failed = [r.workload for r in rows if r.error]
  if failed:
    raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
  app.run(main)
