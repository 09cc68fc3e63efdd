"""Test-time defenses: batched JAX against their per-image references, in the same run.

  python -m benchmarks.ride --data_dir=../shared/data

RIDE: a full fit of every image (`--mnist_preset`, the release's MNIST budget K 200 x T 5 by
default; CIFAR-10 at `--cifar_k` x 5), menet_jax batched over `--batch` images (one jitted
call, compilation reported apart, median of `--rounds` calls), against the same algorithm in
PyTorch one image at a time as the release runs it (references/ride_torch.py, CPU,
`--torch_threads` threads), median seconds per image over `--ref_images` images. Rates are
images/s and images x Adam steps / s; the ratio is of images/s at the same K and T.

Convolution paths: the same fit at `--conv_k` x 5 steps with each of RIDE's convolution
paths (im2col + einsum, vmapped grouped convolution) and as a per-image loop (lax.map).

Median and TV: the defense on `--filter_images` CIFAR-10 images against scipy's
median_filter and scikit-image's denoise_tv_* called per image and channel.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import summary
from menet_jax import data, defenses
from menet_jax.defenses import ride
from menet_jax.utils import machine
from references import ride_torch

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data", "Offline datasets.")
_BATCH = flags.DEFINE_integer("batch", 32, "Images per batched RIDE call.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Timed batched calls (median).")
_REF_IMAGES = flags.DEFINE_integer("ref_images", 3, "Images of the per-image PyTorch loop.")
_MNIST_PRESET = flags.DEFINE_string("mnist_preset", "release_mnist", "RIDE preset on MNIST.")
_CIFAR_K = flags.DEFINE_integer("cifar_k", 100, "Steps per stage on CIFAR-10 (the paper: 2000).")
_CIFAR_BATCH = flags.DEFINE_integer("cifar_batch", 8, "Images per batched RIDE call, CIFAR-10.")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 2, "PyTorch intra-op threads.")
_FILTER_IMAGES = flags.DEFINE_integer("filter_images", 200, "Images for median / TV.")
_CONV_K = flags.DEFINE_integer("conv_k", 20, "Steps per stage of the convolution-path rows.")


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


def _ride_row(name: str, network: str, images: np.ndarray, k: int, t: int, batch: int) -> str:
  import torch  # noqa: PLC0415 - benchmark-only dependency
  torch.set_num_threads(_TORCH_THREADS.value)
  defense = defenses.create(f"ride(k={k}, t={t}, network={network})")
  compile_s, seconds = _time_batched(defense, images[:batch], _ROUNDS.value)
  ours = batch / seconds
  ref_times = []
  for i in range(_REF_IMAGES.value):
    start = time.perf_counter()
    ride_torch.ride(images[i], network=network, k=k, t=t, seed=i)
    ref_times.append(time.perf_counter() - start)
  theirs = 1 / statistics.median(ref_times)
  steps = k * t
  summary.record("ride", f"{name} K {k} x T {t}", ours * steps, "PyTorch per image",
                 theirs * steps, "img x steps/s")
  return (f"| {name} | {k} x {t} | {ours:.3g} ({ours * steps:.0f}) | {compile_s:.0f} | "
          f"{theirs:.3g} ({theirs * steps:.0f}) | {ours / theirs:.2f}x |")


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
  print(f"# machine: {machine.describe()}")
  mnist, _ = data.load("mnist", "test[:64]", _DATA_DIR.value)
  cifar, _ = data.load("cifar10", f"test[:{max(_FILTER_IMAGES.value, _CIFAR_BATCH.value)}]",
                       _DATA_DIR.value)
  mnist, cifar = mnist.astype(np.float32) / 255, cifar.astype(np.float32) / 255
  preset = defenses.create(f"ride(preset={_MNIST_PRESET.value})")
  rows = ["| data | K x T | menet_jax img/s (img x steps/s) | compile s | PyTorch per image img/s "
          "(img x steps/s) | ratio |", "|---|---|---|---|---|---|",
          _ride_row("MNIST", "mnist", mnist, preset.k, preset.t, _BATCH.value),
          _ride_row("CIFAR-10", "cifar", cifar, _CIFAR_K.value, 5, _CIFAR_BATCH.value)]
  print("\n".join(rows), flush=True)
  print(f"\n| data | images | img x steps/s: {' | '.join(ride.CONVS)} | per-image loop |\n"
        f"|---|---|{'---|' * (len(ride.CONVS) + 1)}")
  print("\n".join(_conv_rows({"MNIST": mnist[:_BATCH.value], "CIFAR-10": cifar[:_CIFAR_BATCH.value]},
                              _CONV_K.value)), flush=True)
  print("\n| defense | menet_jax img/s | scipy / scikit-image img/s | ratio |\n|---|---|---|---|")
  print("\n".join(_filter_rows(cifar[:_FILTER_IMAGES.value])))


if __name__ == "__main__":
  app.run(main)
