"""Batches for training and evaluation, and the data augmentation (in JAX).

Training samples: a set of `copies` versions of this process's N images
(`copies` = n cached draws of the defense, e.g. ME-Net's reconstructions of
Algorithm 1; or the clean images, visited `repeats` times per epoch with a
level each when the objective draws the defense itself, as the ME-Net
release's adversarial loader does), so an epoch is copies * repeats * N samples
in a fresh order. The order is a function of
(seed, epoch, process) only, so a resumed run sees exactly the batches the
interrupted one would have seen. The last incomplete batch of an epoch is not
used (the next epoch reshuffles), as in the Flax ImageNet example.

Evaluation: every image exactly once; the last batch is padded with copies of
the first image and those rows carry weight 0.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

PAD = 4  # pixels of zero padding before the random crop (He et al., 2016)


def to_float(images: jax.Array) -> jax.Array:
  """uint8 pixels -> [0, 1] in JAX's default float dtype: float32, or float64 when
  `jax_enable_x64` is on (a float64 reference run, e.g. tests/training/test_parallel.py).

  Args:
    images: (..., H, W, C) uint8.

  Returns:
    (..., H, W, C) float32 (float64 under x64), values k / 255.
  """
  return jnp.asarray(images).astype(jax.dtypes.canonicalize_dtype(jnp.float64)) / 255.0


def augment(key: jax.Array, images: jax.Array) -> jax.Array:
  """Zero-pad by 4, random crop back to size, random horizontal flip; per image.

  Args:
    key: PRNG key.
    images: (B, H, W, C) float.

  Returns:
    (B, H, W, C) augmented images.
  """
  b, h, w, c = images.shape
  k_crop, k_flip = jax.random.split(key)
  # 32-bit draws whatever jax_enable_x64 says, so that a float64 run crops and flips exactly as
  # the float32 run it is a reference for.
  offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * PAD + 1, dtype=jnp.int32)
  flips = jax.random.bernoulli(k_flip, jnp.float32(0.5), (b,))
  padded = jnp.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))

  def one(img, off, flip):
    crop = jax.lax.dynamic_slice(img, (off[0], off[1], jnp.int32(0)), (h, w, c))
    return jnp.where(flip, crop[:, ::-1], crop)

  return jax.vmap(one)(padded, offsets, flips)


@dataclasses.dataclass(frozen=True)
class TrainSource:
  """This process's training samples.

  Attributes:
    images: (copies, N, H, W, C) uint8 (may be a memmap).
    labels: (N,) int32.
    repeats: how many times each copy is visited per epoch.
    levels: (repeats,) the defense's level for each of an epoch's equal parts
      (ME-Net's adversarial training: p_k for the k-th part, the release's
      schedule), or None when the batches carry no level.
  """
  images: np.ndarray
  labels: np.ndarray
  repeats: int = 1
  levels: np.ndarray | None = None

  @property
  def samples(self) -> int:
    return self.images.shape[0] * self.images.shape[1] * self.repeats

  def steps_per_epoch(self, local_batch: int) -> int:
    steps = self.samples // local_batch
    if steps < 1:
      raise ValueError(f"the training set of this process has {self.samples} samples, fewer than "
                       f"its batch of {local_batch}; lower batch_size")
    return steps

  def batches(self, *, seed: int, epoch: int, local_batch: int, process: int,
              start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Yields {"image": (b, H, W, C) uint8, "label": (b,)} batches from `start_step`, with
    "level": (b,) float32 when `levels` is set."""
    copies, n = self.images.shape[:2]
    steps = self.steps_per_epoch(local_batch)
    order = np.random.default_rng([seed, epoch, process]).permutation(self.samples)
    for step in range(start_step, steps):
      sample = np.sort(order[step * local_batch:(step + 1) * local_batch])
      copy, image = (sample // n) % copies, sample % n
      # Sorted sample ids keep memmap reads close to sequential; the order of
      # the images inside a batch does not change the step.
      batch = {"image": self.images[copy, image], "label": self.labels[image]}
      if self.levels is not None:
        # The k-th of `repeats` equal parts of the epoch uses level k, as the ME-Net
        # release's mask_train_cnt does.
        part = min(step * self.repeats // steps, self.repeats - 1)
        batch["level"] = np.full(local_batch, self.levels[part], np.float32)
      yield batch


def eval_batches(images: np.ndarray, labels: np.ndarray, local_batch: int, num_batches: int
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Every image once, in order, padded to `num_batches` batches of `local_batch`.

  Args:
    images: (k, N, H, W, C) uint8: k versions of each image (k votes).
    labels: (N,) int32.
    local_batch: images per batch on this process.
    num_batches: batches to yield (the same on every process; >= ceil(N / local_batch)).

  Yields:
    {"image": (b, k, H, W, C) uint8, "label": (b,), "weight": (b,) float32}.
  """
  n = images.shape[1]
  if n == 0:
    raise ValueError("eval_batches needs at least one image on every process")
  if num_batches * local_batch < n:
    raise ValueError(f"num_batches={num_batches} of {local_batch} cannot hold {n} images")
  for i in range(num_batches):
    rows = np.arange(i * local_batch, (i + 1) * local_batch)
    valid = rows < n
    rows = np.where(valid, rows, 0)
    yield {"image": np.swapaxes(images[:, rows], 0, 1), "label": labels[rows],
           "weight": valid.astype(np.float32)}
