"""Test-time defenses: batched JAX against their per-image references, in the same run.

  python -m benchmarks.ride --data_dir=../shared/data

RIDE: a full fit of every image (`--mnist_preset`, the release's MNIST budget K 200 x T 5 by
default; CIFAR-10 at `--cifar_k` x 5), menet_jax batched over `--batch` images (one jitted
call, compilation reported apart, median of `--rounds` calls), against the same algorithm in
PyTorch one image at a time as the release runs it (references/ride_torch.py, CPU,
`--torch_threads` threads), median seconds per image over `--ref_images` images, in a process of
its own after one untimed warm-up fit (the first fits in a process ran at half the later
ones' rate, and the same loop in a process that had imported JAX and TensorFlow ran at
0.5-0.9x). Rates are images/s and images x Adam steps / s; the ratio is of images/s at the
same K and T. RIDE fits `chunk_size` images at a time (the defense's default unless `--chunk`
is given), on one XLA device and, with `--cpu_devices` N > 1 (default: one per core), split
over N CPU devices (`defenses.on_devices`, as the evaluation runs it), N programs at once.
The reference loop gains nothing from its second thread (docs/benchmarks.md), so the N-device
row is also what N such loops in parallel processes would have to beat N-fold.
`--parts` picks the tables (fit, conv, filters).

Convolution paths: the same fit at `--conv_k` x 5 steps with each of RIDE's convolution
paths (im2col + einsum, vmapped grouped convolution) and as a per-image loop (lax.map).

Median and TV: the defense on `--filter_images` CIFAR-10 images against scipy's
median_filter and scikit-image's denoise_tv_* called per image and channel.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import summary
from menet_jax import data, defenses
from menet_jax.defenses import ride
from menet_jax.utils import machine, parallel

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data", "Offline datasets.")
_BATCH = flags.DEFINE_integer("batch", 32, "Images per batched RIDE call.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Timed batched calls (median).")
_REF_IMAGES = flags.DEFINE_integer("ref_images", 4, "Images of the per-image PyTorch loop.")
_MNIST_PRESET = flags.DEFINE_string("mnist_preset", "release_mnist", "RIDE preset on MNIST.")
_CIFAR_K = flags.DEFINE_integer("cifar_k", 100, "Steps per stage on CIFAR-10 (the paper: 2000).")
_CIFAR_BATCH = flags.DEFINE_integer("cifar_batch", 16, "Images per batched RIDE call, CIFAR-10.")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 2, "PyTorch intra-op threads.")
_FILTER_IMAGES = flags.DEFINE_integer("filter_images", 200, "Images for median / TV.")
_CONV_K = flags.DEFINE_integer("conv_k", 20, "Steps per stage of the convolution-path rows.")
_PARTS = flags.DEFINE_list("parts", ["fit", "conv", "filters"], "Tables to run.")
_CHUNK = flags.DEFINE_integer("chunk", None, "RIDE's chunk (images per vmapped fit); default: "
                              "the defense's own choice.")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", os.cpu_count(), "XLA devices of the CPU "
                                    "host (parallel.use_cpu_devices); 1: one device only.")


def _time_batched(defense, x: np.ndarray, rounds: int) -> tuple[float, float]:
  """(compile s, median s per call) of the jitted transform on the batch x."""
  keys = jax.random.split(jax.random.key(0), len(x))
  fn = jax.jit(defense.transform)
  start = time.perf_counter()
  jax.block_until_ready(fn(keys, jnp.asarray(x, jnp.float32), None))
  compile_s = time.perf_counter() - start
  times = []
  for r in range(rounds):
    keys = jax.random.split(jax.random.key(r + 1), len(x))
    start = time.perf_counter()
    jax.block_until_ready(fn(keys, jnp.asarray(x, jnp.float32), None))
    times.append(time.perf_counter() - start)
  return compile_s, statistics.median(times)


def _reference_rate(network: str, images: np.ndarray, k: int, t: int) -> tuple[float, list[float]]:
  """(median images/s, every image's seconds) of the per-image PyTorch loop, run in a fresh
  process (references/ride_torch.py's main)."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "images.npy")
    np.save(path, images[:_REF_IMAGES.value])
    done = subprocess.run([sys.executable, "-m", "references.ride_torch", path, network, str(k),
                           str(t), str(_TORCH_THREADS.value)], capture_output=True, text=True,
                          check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
  seconds = json.loads(done.stdout.strip().splitlines()[-1])
  return 1 / statistics.median(seconds), seconds


def _ride_rows(name: str, network: str, images: np.ndarray, k: int, t: int, batch: int,
               reference: float) -> list[str]:
  """One row on one device and, with several devices, one split over all of them; the chunk
  shown is the one each device fits its slice in."""
  chunk = "" if _CHUNK.value is None else f", chunk={_CHUNK.value}"
  defense = defenses.create(f"ride(k={k}, t={t}, network={network}{chunk})")
  steps, rows = k * t, []
  placements = {"1 device": (defense, batch)}  # the defense and the images of each device
  devices = jax.devices()[:math.gcd(jax.device_count(), batch)]  # each takes a whole slice
  if len(devices) > 1:
    placements[f"{len(devices)} devices"] = (
        defenses.on_devices(defense, parallel.mesh(devices)), batch // len(devices))
  for where, (placed, per_device) in placements.items():
    compile_s, seconds = _time_batched(placed, images[:batch], _ROUNDS.value)
    ours = batch / seconds
    summary.record("ride", f"{name} K {k} x T {t}, {where}", ours * steps, "PyTorch per image",
                   reference * steps, "img x steps/s")
    rows.append(f"| {name} | {k} x {t} | {where} | {batch} "
                f"({defense.chunk_size(images[:per_device])}) | {ours:.3g} ({ours * steps:.0f}) | "
                f"{compile_s:.0f} | {reference:.3g} ({reference * steps:.0f}) | "
                f"{ours / reference:.2f}x |")
  return rows


def _conv_rows(images: dict[str, np.ndarray], k: int) -> list[str]:
  """Image-steps/s of a RIDE fit (k x 5 steps) per convolution path, and of a per-image loop
  (lax.map over the images instead of vmap) with the default path."""
  rows = []
  for name, x in images.items():
    rates = {}
    for conv in (*ride.CONVS, "loop"):
      defense = defenses.create(f"ride(k={k}, t=5, conv={'im2col' if conv == 'loop' else conv})")
      if conv == "loop":
        defense = _Loop(defense)
      _, seconds = _time_batched(defense, x, _ROUNDS.value)
      rates[conv] = len(x) * k * 5 / seconds
    rows.append(f"| {name} | {len(x)} | " + " | ".join(f"{r:.0f}" for r in rates.values()) + " |")
  return rows


class _Loop:
  """A RIDE defense whose transform fits one image after another (lax.map), not all at once."""

  def __init__(self, defense):
    self.defense = defense

  def transform(self, keys, x, level):
    return jax.lax.map(lambda a: self.defense.fit(a[0], a[1])[0], (keys, x))


def _filter_rows(images: np.ndarray) -> list[str]:
  from scipy import ndimage  # noqa: PLC0415 - benchmark / test-only references
  from skimage.restoration import denoise_tv_bregman, denoise_tv_chambolle  # noqa: PLC0415

  refs = {
      "median(k=3)": lambda a: ndimage.median_filter(a, size=3, mode="constant", cval=0.0),
      "tv_bregman(weight=5.0)": lambda a: denoise_tv_bregman(a, weight=5.0),
      "tv_chambolle(weight=0.1)": lambda a: denoise_tv_chambolle(a, weight=0.1),
  }
  rows = []
  for spec, ref in refs.items():
    _, seconds = _time_batched(defenses.create(spec), images, _ROUNDS.value)
    start = time.perf_counter()
    for image in images[:50]:
      for c in range(image.shape[-1]):
        ref(image[..., c].astype(np.float64))
    ref_rate = 50 / (time.perf_counter() - start)
    summary.record("ride (filters)", spec, len(images) / seconds, "scipy / scikit-image",
                   ref_rate, "img/s")
    rows.append(f"| {spec} | {len(images) / seconds:.0f} | {ref_rate:.0f} | "
                f"{len(images) / seconds / ref_rate:.2g}x |")
  return rows


def main(argv):
  del argv
  parallel.use_cpu_devices(_CPU_DEVICES.value)
  print(f"# machine: {machine.describe()}")
  mnist, _ = data.load("mnist", "test[:64]", _DATA_DIR.value)
  cifar, _ = data.load("cifar10", f"test[:{max(_FILTER_IMAGES.value, _CIFAR_BATCH.value)}]",
                       _DATA_DIR.value)
  mnist, cifar = mnist.astype(np.float32) / 255, cifar.astype(np.float32) / 255
  if "fit" in _PARTS.value:
    preset = defenses.create(f"ride(preset={_MNIST_PRESET.value})")
    ref_mnist, ref_mnist_s = _reference_rate("mnist", mnist, preset.k, preset.t)
    ref_cifar, ref_cifar_s = _reference_rate("cifar", cifar, _CIFAR_K.value, 5)
    print(f"PyTorch seconds per image: MNIST {[round(a, 2) for a in ref_mnist_s]}, "
          f"CIFAR-10 {[round(a, 2) for a in ref_cifar_s]}", flush=True)
    rows = [("| data | K x T | menet_jax on | images (chunk) | menet_jax img/s (img x steps/s) | "
             "compile s | PyTorch per image img/s (img x steps/s) | ratio |"),
            "|---|---|---|---|---|---|---|---|",
            *_ride_rows("MNIST", "mnist", mnist, preset.k, preset.t, _BATCH.value, ref_mnist),
            *_ride_rows("CIFAR-10", "cifar", cifar, _CIFAR_K.value, 5, _CIFAR_BATCH.value,
                        ref_cifar)]
    print("\n".join(rows), flush=True)
  if "conv" in _PARTS.value:
    print(f"\n| data | images | img x steps/s: {' | '.join(ride.CONVS)} | per-image loop |\n"
          f"|---|---|{'---|' * (len(ride.CONVS) + 1)}")
    print("\n".join(_conv_rows({"MNIST": mnist[:_BATCH.value],
                                "CIFAR-10": cifar[:_CIFAR_BATCH.value]}, _CONV_K.value)),
          flush=True)
  if "filters" in _PARTS.value:
    print("\n| defense | menet_jax img/s | scipy / scikit-image img/s | ratio |\n|---|---|---|---|")
    print("\n".join(_filter_rows(cifar[:_FILTER_IMAGES.value])))


if __name__ == "__main__":
  app.run(main)
