"""The keyed, resumable preprocessing cache: n draws of a defense per image, stored on disk.

ME-Net's training set (Algorithm 1 of the paper, n reconstructions per image)
is one such set; any defense's `transform` can fill one. For each image j and
each level l_i (ME-Net: the observation probability p_i), `build` stores
transform(k_ij, image_j / 255, l_i) as uint8, with the per-example key

    k_ij = fold_in(fold_in(key, i), indices[j])

where indices[j] is the image's global id in its split. Each entry depends only
on (key, i, indices[j], image, l_i), so the set does not depend on the batch
size, the number of devices or hosts, or where a build was interrupted.

Cache layout. Each set lives in its own directory

    cache_dir / f"{name}-{sha256(canonical JSON of the full manifest)[:16]}"

where `name` is manifest["name"] (default "me") and the full manifest is the
caller's manifest plus `levels`, `shape` (of the images), `key` (PRNG
implementation and key data), `inputs_sha256` (of the indices and image bytes)
and `format_version`. A complete set is

    data.npy       (n, N, H, W, C) uint8, .npy format
    manifest.json  the full manifest, written last

and while a build is in progress (or after it was interrupted)

    data.npy.partial      the output being filled, chunk by chunk (a .npy memmap)
    manifest.partial.json the full manifest of that build
    progress.json         {"completed": c}: rows [0, c) of data.npy.partial (in
                          flat (i, j) order, row = i * N + j) are final
    lock                  flock(2)ed while building; left in place afterwards

Crash safety. A set is trusted only if manifest.json exists and equals the
requested manifest. manifest.json is written (atomically, `atomic_write`) only
after data.npy.partial has been filled, flushed (msync) and renamed to
data.npy, so its presence implies a complete data.npy. A kill at any earlier
moment leaves no manifest.json, and then nothing in the directory is trusted as
a set: a lone data.npy is regenerated, a partial build resumed. Within a build,
progress.json is replaced (atomically) only after the rows it declares complete
have been flushed, so a kill at any moment leaves a progress.json that
understates, never overstates, the finished rows; a rerun with the same
arguments resumes at the first row it does not cover. When a build starts from
scratch, a stale progress.json is deleted before a new data.npy.partial is
created, so old progress never vouches for new zeros. These guarantees cover
the death of the process (an exception, Ctrl-C, SIGKILL); after a crash of the
machine itself they also need the file system to persist renames in order (the
data is msync'ed, the JSON files are not fsync'ed).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import math
import numbers
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging

from menet_jax.data import input_pipeline
from menet_jax.utils import dicts, parallel, validation
from menet_jax.utils.atomic_write import atomic_write

FORMAT_VERSION = 2
RESERVED_KEYS = ("format_version", "inputs_sha256", "key", "levels", "shape")

DATA = "data.npy"
MANIFEST = "manifest.json"
PARTIAL = "data.npy.partial"
PARTIAL_MANIFEST = "manifest.partial.json"
PROGRESS = "progress.json"
LOCK = "lock"

_NAME = re.compile(r"[A-Za-z0-9._-]+")
# Rows per block when hashing the images, so a memmapped split is never copied whole.
_HASH_ROWS = 4096


def build(*, images: np.ndarray, indices: np.ndarray, levels: Sequence[float], transform: Callable,
          key: jax.Array, manifest: Mapping[str, Any], cache_dir: str | os.PathLike,
          batch_size: int = 256, devices: Sequence[jax.Device] | None = None, progress: bool = True,
          description: str = "preprocessed set") -> np.ndarray:
  """The n draws of `transform` on every image, from the cache or generated into it.

  Entry [i, j] of the result is

      round(255 * clip(transform(k_ij, images[j] / 255, levels[i]), 0, 1))

  as uint8, with k_ij = fold_in(fold_in(key, i), indices[j]). Storing uint8
  (rounded half to even) rather than float32 makes the set 4x smaller; the
  quantisation error, at most 1/510, is below what an 8-bit image can show, and
  the ME-Net release also stored its reconstructions as uint8 (by truncation).

  A complete cache whose manifest equals the requested one is reused without
  calling `transform`. Otherwise the set is generated in chunks of
  `batch_size` (image, probability) pairs, each split across `devices` with
  `jax.shard_map`; an interrupted build resumes at its first unfinished chunk
  when called again with the same arguments (see the module docstring). The
  cache is keyed on the manifest, the key, the probabilities and a digest of
  the images and indices, never on `transform` itself: put everything that
  determines it (the defense's description, code version) in `manifest`.

  Multi-host runs: each host passes its own shard of the split with the global
  ids of those images, and gets its own cache directory (the inputs digest
  differs); together the shards hold exactly the entries a single host would
  compute for the whole split. Concurrent builds of the same set wait for each
  other through an flock(2) lock, so hosts sharing a file system build an
  identical set (e.g. an unsharded test split) once.

  Args:
    images: (N, H, W, C) uint8 images.
    indices: (N,) distinct integer ids in [0, 2**32) of `images` in their split.
    levels: the n levels l_1..l_n of the draws (ME-Net: observation probabilities), each
      in (0, 1].
    transform: jittable transform(keys, x, level) -> x_hat with `keys` (B,)
      typed PRNG keys (`jax.random.key`), x (B, H, W, C) float32 in [0, 1] and
      level (B,) float32; returns (B, H, W, C) floats in [0, 1] (a defense's
      `transform`). B is the slice of one device. A NaN or inf output raises
      FloatingPointError.
    key: a scalar typed PRNG key, `jax.random.key(seed)`.
    manifest: JSON-serialisable description of the set with string keys (the
      dataset, split, the defense's component string, seed, code version, host
      shard). manifest["name"], if present, names the cache directory
      ([A-Za-z0-9._-]+). Must not use the keys in `RESERVED_KEYS`, which
      `build` adds.
    cache_dir: directory holding the cache directories; created if absent.
    batch_size: (image, probability) pairs per chunk, >= 1; it sets memory use
      and how much work an interruption loses, not the result.
    devices: distinct local devices to split each chunk over; default
      `jax.local_devices()`.
    progress: show a tqdm bar (images processed, rate, ETA) on stderr.
    description: the label of the bar and of the log lines.

  Returns:
    (n, N, H, W, C) uint8, a read-only `np.memmap` of the cache's data.npy.

  Raises:
    ValueError: an argument is invalid (the message names it and the accepted
      range).
    RuntimeError: the cache directory holds a set with a different manifest
      (e.g. edited by hand), or a complete set whose data does not match its
      manifest; the message names the directory to delete.
    FloatingPointError: `transform` returned NaN or inf.
  """
  images, indices, levels = _check_arrays(images, indices, levels)
  if not callable(transform):
    raise ValueError(f"transform must be callable, got {type(transform).__name__}")
  _check_key(key)
  if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
    raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
  batch_size = int(batch_size)
  devices = _check_devices(devices)
  full = _full_manifest(manifest, images, indices, levels, key)
  out_shape = (len(levels),) + images.shape
  entry = Path(cache_dir) / f"{full.get('name', 'set')}-{_digest(full)}"

  data = _open_complete(entry, full, out_shape)
  if data is None:
    with _locked(entry, description):
      # Another process may have finished this set while we waited for the lock.
      data = _open_complete(entry, full, out_shape)
      if data is None:
        _generate(entry, full, images, indices, levels, transform, key, batch_size, devices,
                  progress, description)
        return _open_complete(entry, full, out_shape)
  logging.info("%s: reusing the cache at %s", description, entry)
  return data


def _check_arrays(images, indices, levels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.size == 0:
    raise ValueError(f"images must be a non-empty (N, H, W, C) uint8 array, got dtype "
                     f"{images.dtype} and shape {images.shape}")
  indices = np.asarray(indices)
  n_images = images.shape[0]
  if indices.shape != (n_images,) or not np.issubdtype(indices.dtype, np.integer):
    raise ValueError(f"indices must be ({n_images},) integers (one id per image), got dtype "
                     f"{indices.dtype} and shape {indices.shape}")
  if indices.min() < 0 or indices.max() >= 2**32:
    raise ValueError(f"indices must be in [0, 2**32), got values in [{indices.min()}, "
                     f"{indices.max()}]")
  if np.unique(indices).size != n_images:
    raise ValueError("indices must be distinct (one global id per image)")
  listed = np.asarray(levels, dtype=object)
  if listed.ndim != 1 or listed.size == 0:
    raise ValueError(f"levels must be a non-empty 1-D sequence of numbers, got {levels!r}")
  levels = np.array([validation.number_in(f"levels[{i}]", p, 0.0, 1.0, lo_open=True)
                     for i, p in enumerate(listed)])
  return images, indices.astype(np.uint32), levels


def _check_key(key) -> None:
  if not (isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
          and key.shape == ()):
    raise ValueError(f"key must be a scalar typed PRNG key, jax.random.key(seed); got "
                     f"{getattr(key, 'dtype', type(key).__name__)} of shape "
                     f"{getattr(key, 'shape', None)}")


def _check_devices(devices) -> tuple[jax.Device, ...]:
  devices = tuple(jax.local_devices() if devices is None else devices)
  if not devices or not all(isinstance(d, jax.Device) for d in devices):
    raise ValueError(f"devices must be a non-empty sequence of jax devices, got {devices!r}")
  if len(set(devices)) != len(devices):
    raise ValueError(f"devices must be distinct, got {devices!r}")
  local = set(jax.local_devices())
  if not set(devices) <= local:
    raise ValueError(f"devices must be local to this process ({sorted(local, key=str)}), "
                     f"got {devices!r}")
  return devices


def _full_manifest(manifest, images, indices, levels, key) -> dict[str, Any]:
  """The caller's manifest plus everything else the set depends on, as plain JSON values."""
  if not isinstance(manifest, Mapping) or not all(isinstance(k, str) for k in manifest):
    raise ValueError(f"manifest must be a mapping with string keys, got {manifest!r}")
  clash = sorted(set(manifest) & set(RESERVED_KEYS))
  if clash:
    raise ValueError(f"manifest must not set {clash}; build adds {list(RESERVED_KEYS)} itself")
  name = manifest.get("name", "set")
  if not isinstance(name, str) or not _NAME.fullmatch(name):
    raise ValueError(f"manifest['name'] must be a string of [A-Za-z0-9._-], got {name!r}")
  inputs = hashlib.sha256(indices.astype("<u4").tobytes())
  for start in range(0, images.shape[0], _HASH_ROWS):
    inputs.update(np.ascontiguousarray(images[start:start + _HASH_ROWS]).data)
  full = {
      **manifest,
      "format_version": FORMAT_VERSION,
      "inputs_sha256": inputs.hexdigest(),
      "key": {"impl": str(jax.random.key_impl(key)),
              "data": np.asarray(jax.random.key_data(key)).tolist()},
      "levels": levels.tolist(),
      "shape": list(images.shape),
  }
  try:
    # The round trip turns tuples, numpy scalars and arrays into what json.load gives back,
    # so the stored manifest compares equal to the requested one.
    return json.loads(_canonical(full))
  except (TypeError, ValueError) as e:
    raise ValueError(f"manifest must be JSON-serialisable (finite numbers, strings, lists, "
                     f"mappings): {e}") from e


def _canonical(obj) -> str:
  return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False,
                    default=_plain)


def _plain(obj):
  if isinstance(obj, (np.ndarray, np.generic)):
    return obj.tolist()
  raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _digest(full: dict[str, Any]) -> str:
  return hashlib.sha256(_canonical(full).encode()).hexdigest()[:16]


def _write_json(path: Path, obj) -> None:
  with atomic_write(path) as tmp:
    tmp.write_text(json.dumps(obj, sort_keys=True, indent=2) + "\n")


def _manifest_conflict(path: Path, stored, full) -> RuntimeError:
  differing = dicts.differences(stored, full, where="the cache", now="requested")
  return RuntimeError(f"{path} describes a different set than requested ({'; '.join(differing)}); "
                      f"it is not used. Delete {path.parent} to rebuild it.")


def _open_complete(entry: Path, full, out_shape) -> np.ndarray | None:
  """The complete set in `entry` as a read-only memmap, or None if there is none."""
  if not (entry / MANIFEST).is_file():
    return None
  stored = json.loads((entry / MANIFEST).read_text())
  if stored != full:
    raise _manifest_conflict(entry / MANIFEST, stored, full)
  try:
    data = np.load(entry / DATA, mmap_mode="r")
  except (OSError, ValueError) as e:
    raise RuntimeError(f"{entry / DATA} is missing or unreadable although {entry / MANIFEST} "
                       f"marks the set complete ({e}); delete {entry} to rebuild it.") from e
  if data.shape != out_shape or data.dtype != np.uint8:
    raise RuntimeError(f"{entry / DATA} holds {data.dtype} {data.shape}, its manifest promises "
                       f"uint8 {out_shape}; delete {entry} to rebuild it.")
  return data


@contextlib.contextmanager
def _locked(entry: Path, description: str) -> Iterator[None]:
  entry.mkdir(parents=True, exist_ok=True)
  with open(entry / LOCK, "a") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.info("%s: waiting for another process building %s", description, entry)
      fcntl.flock(f, fcntl.LOCK_EX)
    yield  # closing the file releases the lock


def _resume(entry: Path, full, out_shape) -> tuple[np.memmap, int] | None:
  """The partial build in `entry` and its number of finished rows, or None to start afresh."""
  if not (entry / PARTIAL_MANIFEST).is_file():
    return None
  stored = json.loads((entry / PARTIAL_MANIFEST).read_text())
  if stored != full:
    raise _manifest_conflict(entry / PARTIAL_MANIFEST, stored, full)
  try:
    data = np.load(entry / PARTIAL, mmap_mode="r+")
  except (OSError, ValueError):
    return None  # killed before the partial file existed, or while its header was written
  if data.shape != out_shape or data.dtype != np.uint8:
    return None
  try:
    completed = json.loads((entry / PROGRESS).read_text())["completed"]
  except FileNotFoundError:
    completed = 0  # killed before the first chunk was recorded
  if not isinstance(completed, int) or not 0 <= completed <= math.prod(out_shape[:2]):
    logging.warning("%s holds no valid row count (%r); starting afresh", entry / PROGRESS,
                    completed)
    return None
  return data, completed


def _generate(entry, full, images, indices, levels, transform, key, batch_size, devices,
              progress, description) -> None:
  n_levels, n_images = len(levels), images.shape[0]
  out_shape = (n_levels,) + images.shape
  total = n_levels * n_images
  resumed = _resume(entry, full, out_shape)
  if resumed is None:
    # Progress first: once the new partial file exists, no old row count may vouch for it.
    for name in (PROGRESS, PARTIAL, DATA):
      (entry / name).unlink(missing_ok=True)
    _write_json(entry / PARTIAL_MANIFEST, full)
    data, completed = np.lib.format.open_memmap(entry / PARTIAL, "w+", np.uint8, out_shape), 0
    logging.info("%s: generating %d draws into %s", description, total, entry)
  else:
    data, completed = resumed
    logging.info("%s: resuming at %d of %d draws in %s", description, completed, total,
                 entry)
  rows = data.reshape((total,) + images.shape[1:])  # row i * N + j is entry [i, j]

  mesh = parallel.mesh(devices)
  split = parallel.batch_sharding(mesh)
  run = _compiled(transform, devices)
  key = jax.device_put(key, parallel.replicated(mesh))
  levels32 = levels.astype(np.float32)

  def dispatch(start: int, stop: int):
    # Pad to a multiple of the device count by repeating the last pair: real inputs, so
    # `transform` sees nothing unusual; their outputs are dropped in `store`.
    flat = np.arange(start, stop)
    flat = np.pad(flat, (0, -len(flat) % len(devices)), mode="edge")
    i, j = np.divmod(flat, n_images)
    args = jax.device_put((i.astype(np.uint32), indices[j], images[j], levels32[i]), split)
    return run(key, *args)

  def store(start: int, stop: int, result) -> None:
    out, nonfinite = result
    nonfinite = int(np.sum(nonfinite))  # waits for the chunk, raising what it raised
    if nonfinite:
      raise FloatingPointError(
          f"transform returned {nonfinite} NaN or inf values in rows [{start}, {stop}) "
          f"(row = i * N + j); nothing from this chunk was stored")
    rows[start:stop] = np.asarray(out)[:stop - start]
    data.flush()
    _write_json(entry / PROGRESS, {"completed": stop})

  chunks = [(s, min(s + batch_size, total)) for s in range(completed, total, batch_size)]
  with tqdm.tqdm(total=total, initial=completed, unit="img", desc=description, file=sys.stderr,
                 disable=not progress, dynamic_ncols=True) as bar:
    # Chunk t + 1 is dispatched before chunk t is stored: where dispatch is asynchronous
    # (accelerators), the devices compute while the host writes.
    pending = None
    for chunk in chunks:
      result = dispatch(*chunk)
      if pending is not None:
        store(*pending)
        bar.update(pending[1] - pending[0])
      pending = (*chunk, result)
    if pending is not None:
      store(*pending)
      bar.update(pending[1] - pending[0])
  os.replace(entry / PARTIAL, entry / DATA)
  _write_json(entry / MANIFEST, full)
  # A kill before these leaves them beside a complete set, where nothing reads them.
  (entry / PROGRESS).unlink(missing_ok=True)
  (entry / PARTIAL_MANIFEST).unlink(missing_ok=True)


@functools.lru_cache(maxsize=8)
def _compiled(transform: Callable, devices: tuple[jax.Device, ...]) -> Callable:
  """The jitted chunk function; jit compiles once per chunk shape (full chunks and the tail)."""

  def chunk(key, draw_ids, image_ids, images, level):
    keys = jax.vmap(lambda i, j: jax.random.fold_in(jax.random.fold_in(key, i), j))(
        draw_ids, image_ids)
    # float32, or float64 under jax_enable_x64 (a float64 reference run quantises a float64
    # transform, so that its draws do not hinge on float32 rounding at a .5 of 1/255).
    x = input_pipeline.to_float(images)
    out = transform(keys, x, level)
    if out.shape != x.shape:
      raise ValueError(f"transform must return an array of the shape of x {x.shape}, got "
                       f"{out.shape}")
    # Counted before quantising: uint8 conversion would silently turn NaN into a pixel value.
    nonfinite = jnp.sum(~jnp.isfinite(out))[None]
    return jnp.round(jnp.clip(out, 0, 1) * 255).astype(jnp.uint8), nonfinite

  return jax.jit(parallel.per_device(chunk, parallel.mesh(devices),
                                     split=(False, True, True, True, True)))
