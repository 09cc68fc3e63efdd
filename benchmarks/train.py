"""Training throughput of menet_jax, and the time to build ME training sets.

  python -m benchmarks.train --data_dir=../shared/data

Part 1, training steps. For each model (`--models`) and mode (`--modes`) the
script builds the training state and the jitted step with `training.loop.setup`, the set-up of
`training.loop.train_and_evaluate` (the objective's `init` and step, jitted with replicated
out_shardings over the 1-D mesh of all devices, `utils.parallel.mesh`), with the CIFAR-10
settings of `Config.for_dataset("cifar10", mode=...)` (Table 8: SGD with
momentum 0.9, weight decay 1e-4, pad-4 crop and flip augmentation). Modes:

  vanilla  one SGD step on the clean batch.
  adv      ME-Net adversarial training: PGD-7 (eps 8/255, step 2/255) through the
           ME layer with BPDA, a fresh mask at every attack step, then the SGD
           step on the reconstruction of the adversarial batch (`--adv_method`,
           USVT by default, at the config's default schedule p in [0.8, 1.0);
           the batch uses its mean p).

Batches are CIFAR-10-shaped (`--batch_size` global images of 32 x 32 x 3
uint8, random labels): random pixels by default, CIFAR-10 test images with
`--real_data`. Every step goes through `parallel.global_batch` from host numpy
and gets its own key, as in the training loop; the host does no shuffling or
other input work. The step is compiled ahead of time (`step_fn.lower(...).compile()`,
the executable that calling `step_fn` would run), and that time (tracing,
lowering, XLA compilation) is reported apart. After
`--warmup` steps, each of `--repeats` repeats runs blocks of `--steps` steps,
waiting for the state (`jax.block_until_ready`) after each block, until the
repeat has run for at least `--min_seconds`; a repeat's rate is its images
over its wall time, and the table gives the median repeat, also divided by
`jax.device_count()`.

Part 2, ME training sets. For each method (`--build_methods`, default
parameters, concat layout) `data.cache.build` reconstructs the first
`--num_images` CIFAR-10 test images under one mask each (probs = [`--p`]), so
the time is per reconstruction, including the host side of a build (uint8
quantisation, writing the memmapped .npy and its progress file). Each build
goes to a fresh directory under a temporary cache dir, deleted at the end.
`data.cache` keeps its jitted chunk function per (transform, devices) and
jit compiles once per chunk shape, so a first build of the next
`--build_batch` + (N mod `--build_batch`) test images (the same chunk shapes;
N images when N <= `--build_batch`) compiles it. The table gives the median of
`--build_repeats` builds after it as seconds per 1,000 images and images/s,
that first build's time, and as the compile time an estimate: that time less
what its images take at the measured rate.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags, logging

from menet_jax import data, defenses
from menet_jax.data import cache
from menet_jax.reconstruct import registry
from menet_jax.training import loop, objectives
from menet_jax.training.config import Config
from menet_jax.utils import machine, parallel

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data",
                                "Directory with cifar-10-batches-py (part 2, and --real_data).")
_MODELS = flags.DEFINE_list("models", ["small_cnn", "resnet18"], "Models to train (part 1).")
_MODES = flags.DEFINE_list("modes", ["vanilla", "adv"], "Training modes: vanilla, adv (part 1).")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Global batch of a training step.")
_STEPS = flags.DEFINE_integer("steps", 1, "Steps per timed block (then the state is awaited).")
_MIN_SECONDS = flags.DEFINE_float("min_seconds", 2.0, "Each repeat runs blocks until this long.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats; the median is reported.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps after compilation.")
_REAL = flags.DEFINE_bool("real_data", False, "Train on CIFAR-10 test images instead of noise.")
_ADV_METHOD = flags.DEFINE_string("adv_method", "usvt", "ME method of the adv mode.")
_BUILD_METHODS = flags.DEFINE_list("build_methods", ["usvt", "soft_impute", "nuclear_norm"],
                                   "ME methods of the training-set builds (part 2; empty: skip).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 1000, "CIFAR-10 test images per timed build.")
_BUILD_BATCH = flags.DEFINE_integer("build_batch", 256, "data.cache.build batch_size.")
_BUILD_REPEATS = flags.DEFINE_integer("build_repeats", 1, "Timed builds per method (median).")
_P = flags.DEFINE_float("p", 0.5, "Observation probability of the build's one mask.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the data, parameters and masks.")

IMAGE_SHAPE = (32, 32, 3)
_STEPS_PER_EPOCH = 100  # only shapes the learning-rate schedule, which costs the same anyway


def _host_batches(n: int, batch_size: int, rng: np.random.Generator, p: float) -> list[dict]:
  if _REAL.value:
    images, labels = data.load("cifar10", f"test[:{n * batch_size}]", _DATA_DIR.value)
    if len(images) < n * batch_size:
      raise ValueError(f"--real_data needs {n * batch_size} test images, found {len(images)}")
  else:
    images = rng.integers(0, 256, (n * batch_size, *IMAGE_SHAPE), dtype=np.uint8)
    labels = rng.integers(0, 10, n * batch_size).astype(np.int32)
  return [{"image": images[i * batch_size:(i + 1) * batch_size],
           "label": labels[i * batch_size:(i + 1) * batch_size].astype(np.int32),
           "level": np.full(batch_size, p, np.float32)} for i in range(n)]


def _measure_training(model_name: str, mode: str) -> dict:
  """Compile seconds and images/s (median repeat) of one model and mode."""
  config = Config.for_dataset("cifar10", workdir="", model=model_name, mode=mode,
                              batch_size=_BATCH.value, me_method=_ADV_METHOD.value,
                              seed=_SEED.value)
  defense = defenses.create(config.defense)
  host_batches = _host_batches(4, parallel.check_batch("batch_size", config.batch_size),
                               np.random.default_rng(config.seed), defense.test_level)
  return measure_training(config, IMAGE_SHAPE, host_batches, warmup=_WARMUP.value,
                          repeats=_REPEATS.value, min_seconds=_MIN_SECONDS.value,
                          steps=_STEPS.value)


def measure_training(config: Config, image_shape: tuple[int, int, int], host_batches: list[dict],
                     *, warmup: int = 1, repeats: int = 3, min_seconds: float = 2.0,
                     steps: int = 1) -> dict:
  """Times the training step of `config` as `training.loop.train_and_evaluate` sets it up.

  Args:
    config: the run's configuration (its defense, objective, model, optimizer, batch size).
    image_shape: (H, W, C) of the images.
    host_batches: this process's batches ("image" (b, H, W, C) uint8, "label", "level"),
      cycled through.
    warmup: untimed steps after compilation; repeats: timed repeats (median reported), each
      running blocks of `steps` steps (then the state is awaited) for at least `min_seconds`.

  Returns:
    compile (s), rate and per_device (images/s of the median repeat), steps (per repeat),
    spread (slowest and fastest repeat), p (the batches' level) and the defense.
  """
  config.validate()
  mesh = parallel.mesh()
  defense = defenses.create(config.defense)
  objective = objectives.create(config.objective)
  run_keys = loop.keys(config.seed)
  run = loop.setup(config, defense, objective, image_shape, _STEPS_PER_EPOCH, mesh, run_keys.init)
  state, step_fn, k_train = run.state, run.step, run_keys.train

  start = time.perf_counter()
  compiled = step_fn.lower(state, parallel.global_batch(mesh, host_batches[0]),
                           jax.random.fold_in(k_train, 0)).compile()
  compile_seconds = time.perf_counter() - start

  step = 0

  def run_steps(n: int):
    nonlocal state, step
    for _ in range(n):
      batch = parallel.global_batch(mesh, host_batches[step % len(host_batches)])
      state, _ = compiled(state, batch, jax.random.fold_in(k_train, step))
      step += 1
    jax.block_until_ready(state)

  run_steps(warmup)
  rates, steps_timed = [], []
  for _ in range(repeats):
    start, n = time.perf_counter(), 0
    while n == 0 or time.perf_counter() - start < min_seconds:
      run_steps(steps)
      n += steps
    rates.append(n * config.batch_size / (time.perf_counter() - start))
    steps_timed.append(n)
  rate = statistics.median(rates)
  return {"compile": compile_seconds, "rate": rate, "per_device": rate / jax.device_count(),
          "steps": steps_timed, "spread": (min(rates), max(rates)),
          "p": float(host_batches[0]["level"][0]), "defense": defense}


def _build_seconds(images: np.ndarray, transform, method: str, cache_dir: Path, tag: str) -> float:
  start = time.perf_counter()
  cache.build(images=images, indices=np.arange(len(images)), levels=[_P.value],
              transform=transform, key=jax.random.key(_SEED.value),
              manifest={"name": f"{method}-{tag}", "method": method},
              cache_dir=cache_dir / tag, batch_size=_BUILD_BATCH.value, progress=False)
  return time.perf_counter() - start


def _measure_build(method: str, images: np.ndarray, warm_images: np.ndarray,
                   cache_dir: Path) -> dict:
  defense = defenses.MENet.create(method=method, startp=_P.value, endp=_P.value, mask_num=1)
  transform = defense.transform  # one object, so the cache's compiled function is reused
  first = _build_seconds(warm_images, transform, method, cache_dir, "warmup")
  timed = [_build_seconds(images, transform, method, cache_dir, f"run{r}")
           for r in range(_BUILD_REPEATS.value)]
  seconds = statistics.median(timed)
  rate = len(images) / seconds
  return {"compile": max(first - len(warm_images) / rate, 0.0), "first": first,
          "per_1000": seconds * 1000 / len(images), "rate": rate}


def main(argv):
  del argv
  for mode in _MODES.value:
    if mode not in ("vanilla", "adv"):
      raise app.UsageError(f"--modes takes vanilla and adv, got {mode!r}")
  for name in _BUILD_METHODS.value:
    if name not in registry.names():
      raise app.UsageError(f"--build_methods takes {registry.names()}, got {name!r}")
  devices = jax.devices()
  failed = []
  print(f"# machine: {machine.describe()}")
  print(f"# jax.devices(): {len(devices)} x {devices[0].platform} "
        f"({', '.join(sorted({d.device_kind for d in devices}))})\n")

  if _MODELS.value and _MODES.value:
    source = "CIFAR-10 test images" if _REAL.value else "random uint8 images"
    print(f"## Training steps: global batch {_BATCH.value} of 32 x 32 x 3 {source}, "
          f"{jax.device_count()} device(s); median of {_REPEATS.value} repeats of >= "
          f"{_MIN_SECONDS.value} s in blocks of {_STEPS.value} steps, after {_WARMUP.value} "
          f"warm-up step(s)\n", flush=True)
    rows = ["| model | mode | images/s | images/s per device | ms/step | compile s "
            "| steps per repeat | spread of repeats (img/s) |", "|---|---|---|---|---|---|---|---|"]
    for model_name in _MODELS.value:
      for mode in _MODES.value:
        try:
          r = _measure_training(model_name, mode)
        except Exception as e:  # pylint: disable=broad-except
          logging.exception("training %s %s failed", model_name, mode)
          failed.append(f"{model_name} {mode}")
          rows.append(f"| {model_name} | {mode} | failed: {type(e).__name__} (traceback above) "
                      "| | | | | |")
          print(rows[-1], flush=True)
          continue
        label = mode if not r["defense"].preprocesses else (
            f"adv ({r['defense'].method}, PGD-7 BPDA, p {r['p']:.2f})")
        rows.append(f"| {model_name} | {label} | {r['rate']:.1f} | {r['per_device']:.1f} "
                    f"| {1000 * _BATCH.value / r['rate']:.0f} | {r['compile']:.1f} "
                    f"| {', '.join(map(str, r['steps']))} "
                    f"| {r['spread'][0]:.1f}–{r['spread'][1]:.1f} |")
        print(rows[-1], flush=True)
    print("\n" + "\n".join(rows) + "\n", flush=True)

  if _BUILD_METHODS.value:
    n = _NUM_IMAGES.value
    b = _BUILD_BATCH.value
    warm_n = b + n % b if n > b else n
    images, _ = data.load("cifar10", f"test[:{n + warm_n}]", _DATA_DIR.value)
    if len(images) < n + warm_n:
      raise ValueError(f"need {n + warm_n} CIFAR-10 test images, found {len(images)}")
    timed_images, warm_images = images[:n], images[n:n + warm_n]
    print(f"## ME training-set builds: {n} CIFAR-10 test images, one mask each at p = {_P.value}, "
          f"concat layout, default parameters, data.cache.build batch_size {b} over "
          f"{jax.local_device_count()} device(s); median of {_BUILD_REPEATS.value} build(s)\n",
          flush=True)
    rows = ["| method | s per 1,000 images | images/s | compile s (est.) | first build s (n) |",
            "|---|---|---|---|---|"]
    cache_dir = Path(tempfile.mkdtemp(prefix="menet_bench_me_"))
    try:
      for method in _BUILD_METHODS.value:
        try:
          r = _measure_build(method, timed_images, warm_images, cache_dir)
        except Exception as e:  # pylint: disable=broad-except
          # One method's failure should not lose the others' numbers; the run still fails below.
          logging.exception("build with %s failed", method)
          failed.append(method)
          rows.append(f"| {method} | failed: {type(e).__name__} (traceback above) | | | |")
        else:
          rows.append(f"| {method} | {r['per_1000']:.2f} | {r['rate']:.1f} | {r['compile']:.1f} "
                      f"| {r['first']:.1f} ({warm_n}) |")
        print(rows[-1], flush=True)
    finally:
      shutil.rmtree(cache_dir, ignore_errors=True)
    print("\n" + "\n".join(rows))
  if failed:
    raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
  app.run(main)
