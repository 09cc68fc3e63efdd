"""data.cache.build: values, independence of batch size / devices / shards, the cache, crashes."""

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import masks, reconstruct
from menet_jax.data import cache
from references import matrices as references
from tests import watchdog
from tests.conftest import CIFAR_TEST, DATA_DIR

REPO = Path(__file__).resolve().parents[2]
PROBS = (0.5, 0.7, 0.9)
KEY_SEED = 0


def mix(keys, x, p):
  """p x + (1 - p) u with u ~ U[0, 1) from each example's key: depends on keys, x and p."""
  u = jax.vmap(jax.random.uniform)(keys)
  p = p[:, None, None, None]
  return p * x + (1 - p) * u[:, None, None, None]


def uniform(keys, x, p):
  del p
  return jnp.broadcast_to(jax.vmap(jax.random.uniform)(keys)[:, None, None, None], x.shape)


def usvt_concat(keys, x, p):
  """The ME-Net pipeline per example: mask_k with p, USVT (keep 0.8) on [-1, 1], clip, to [0, 1]."""
  def one(k, image, prob):
    shape = (1,) + image.shape
    mats = masks.to_matrices(2 * image[None] - 1, "concat")
    est = jnp.clip(reconstruct.usvt(mats, masks.image_mask(k, shape, prob, "concat")), -1, 1)
    return masks.from_matrices((est + 1) / 2, "concat", image.shape[-1])[0]
  return jax.vmap(one)(keys, x, p)


def with_callback(fn, callback):
  """`fn` with a host `callback(p)` run on every chunk slice; its result is used so XLA keeps it."""
  def wrapped(keys, x, p):
    zero = jax.pure_callback(lambda q: (callback(q), np.zeros_like(q))[1],
                             jax.ShapeDtypeStruct(p.shape, p.dtype), p)
    return fn(keys, x, p + zero)
  return wrapped


def counting(fn):
  """(`fn` that counts the examples it reconstructs, the count as a one-element list)."""
  count = [0]
  def add(p):
    count[0] += p.shape[0]
  return with_callback(fn, add), count


def small_images(n=6, shape=(8, 8, 3)):
  return np.random.default_rng(0).integers(0, 256, (n,) + shape, dtype=np.uint8)


def build_small(cache_dir, **overrides):
  """A small set: 6 random 8x8x3 images with scattered global ids, 3 probabilities."""
  images = small_images()
  args = dict(images=images, indices=10 + 3 * np.arange(len(images)), levels=PROBS,
              transform=mix, key=jax.random.key(KEY_SEED),
              manifest={"name": "small", "method": "mix"}, cache_dir=cache_dir, batch_size=4,
              progress=False)
  args.update(overrides)
  return cache.build(**args)


def entry_dirs(cache_dir):
  return sorted(p for p in Path(cache_dir).iterdir() if p.is_dir())


def key_ij(i, index):
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(KEY_SEED), i), index)


def run_with_devices(devices, script, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=watchdog.xla_flags(devices),
             PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)


def test_keys_are_folded_from_mask_and_global_index(tmp_path):
  out = build_small(tmp_path, transform=uniform)
  indices = 10 + 3 * np.arange(6)
  expected = np.array([[np.round(np.float32(jax.random.uniform(key_ij(i, idx))) * np.float32(255))
                        for idx in indices] for i in range(len(PROBS))])
  assert out.dtype == np.uint8 and out.shape == (3, 6, 8, 8, 3)
  np.testing.assert_array_equal(out, np.broadcast_to(expected[..., None, None, None], out.shape))


def test_matches_per_image_numpy_usvt(tmp_path):
  if CIFAR_TEST.is_file():
    from menet_jax import data
    images, _ = data.load("cifar10", "test[:3]", DATA_DIR)
  else:  # the values are what matters here, not where the images come from
    images = small_images(3)
  indices, probs = np.array([7, 0, 42]), (0.6, 0.8)
  out = cache.build(images=images, indices=indices, levels=probs, transform=usvt_concat,
                         key=jax.random.key(KEY_SEED), manifest={"method": "usvt"},
                         cache_dir=tmp_path, batch_size=6, progress=False)
  n, h, w, c = images.shape
  expected = np.empty(out.shape, np.float64)
  for i, p in enumerate(probs):
    for j, idx in enumerate(indices):
      mask = np.asarray(masks.image_mask(key_ij(i, idx), (1, h, w, c), np.float32(p), "concat"))[0]
      x = images[j].astype(np.float64) / 255 * 2 - 1
      mat = np.concatenate([x[..., ch] for ch in range(c)], axis=1)
      est = (np.clip(references.usvt(mat, mask, keep=0.8), -1, 1) + 1) / 2
      expected[i, j] = np.stack([est[:, ch * w:(ch + 1) * w] for ch in range(c)], axis=-1)
  expected = np.round(expected * 255)
  diff = np.abs(out.astype(np.float64) - expected)
  # float32 against float64: only values within ~1e-4 of a rounding boundary may differ by a step.
  assert diff.max() <= 1 and np.mean(diff > 0) < 0.01


def test_independent_of_batch_size_and_host_shards(tmp_path):
  full = build_small(tmp_path / "full", batch_size=64)
  for batch_size in (1, 4, 7):
    np.testing.assert_array_equal(build_small(tmp_path / f"b{batch_size}", batch_size=batch_size),
                                  full)
  # A host passes only its shard, with the global ids: it gets the columns of the full set.
  images, indices = small_images(), 10 + 3 * np.arange(6)
  shard = build_small(tmp_path / "shard", images=images[2:5], indices=indices[2:5])
  np.testing.assert_array_equal(shard, full[:, 2:5])


TWO_DEVICES = """
import sys, jax
from tests.data import test_cache as t
sizes = []
def rec(keys, x, p):
  sizes.append(x.shape[0])  # at trace time: the slice one device reconstructs
  return t.mix(keys, x, p)
out = t.build_small(sys.argv[1], transform=rec, batch_size=5)
print(jax.local_device_count(), ",".join(map(str, sorted(set(sizes)))), out.filename)
"""


def test_same_on_two_devices_as_on_one(tmp_path):
  run = run_with_devices(2, TWO_DEVICES, tmp_path / "two")
  assert run.returncode == 0, run.stderr
  devices, sizes, path = run.stdout.split(maxsplit=2)
  # 18 pairs in chunks of 5: each chunk padded to 6 (3 per device), the tail of 3 padded to 4.
  assert devices == "2" and sizes == "2,3"
  np.testing.assert_array_equal(np.load(path.strip()), build_small(tmp_path / "one", batch_size=5))


def test_interrupted_build_resumes_without_recomputing(tmp_path, capsys):
  total = 3 * 6

  def fail_after_two_chunks(p):
    fail_after_two_chunks.calls += 1
    if fail_after_two_chunks.calls > 2:
      raise RuntimeError("interrupted")
  fail_after_two_chunks.calls = 0

  with pytest.raises(Exception, match="interrupted"):
    build_small(tmp_path / "cache", transform=with_callback(mix, fail_after_two_chunks))
  (entry,) = entry_dirs(tmp_path / "cache")
  assert not (entry / "manifest.json").exists() and not (entry / "data.npy").exists()
  completed = json.loads((entry / "progress.json").read_text())["completed"]
  # Chunks of 4; the third fails. The second may be lost with it: it is stored while the third
  # runs, and a backend that runs the third at dispatch raises before the second is stored.
  assert completed in (4, 8)

  resumed_fn, count = counting(mix)
  capsys.readouterr()
  out = build_small(tmp_path / "cache", transform=resumed_fn, progress=True)
  assert count[0] == total - completed
  assert f"{completed}/{total}" in capsys.readouterr().err  # the bar starts where the build stopped
  np.testing.assert_array_equal(out, build_small(tmp_path / "uninterrupted"))
  assert sorted(p.name for p in entry.iterdir()) == ["data.npy", "lock", "manifest.json"]


KILLED = """
import os, signal, sys, jax
from tests.data import test_cache as t
calls = [0]
def kill_in_third_chunk(p):
  calls[0] += 1
  if calls[0] > 2 * jax.local_device_count():
    os.kill(os.getpid(), signal.SIGKILL)
t.build_small(sys.argv[1], transform=t.with_callback(t.mix, kill_in_third_chunk))
"""


def test_sigkilled_build_is_not_trusted_and_resumes_on_another_device_count(tmp_path):
  run = run_with_devices(2, KILLED, tmp_path / "cache")
  assert run.returncode == -signal.SIGKILL, run.stderr
  (entry,) = entry_dirs(tmp_path / "cache")
  assert not (entry / "manifest.json").exists()
  completed = json.loads((entry / "progress.json").read_text())["completed"]
  assert completed in (4, 8)  # the kill may land before chunk 2 is stored

  resumed_fn, count = counting(mix)
  out = build_small(tmp_path / "cache", transform=resumed_fn)
  assert count[0] == 3 * 6 - completed
  np.testing.assert_array_equal(out, build_small(tmp_path / "uninterrupted"))


def test_reuse_and_cache_keys(tmp_path, caplog):
  first = np.array(build_small(tmp_path))
  fn, count = counting(mix)
  with caplog.at_level(logging.INFO):
    again = build_small(tmp_path, transform=fn)
  assert count[0] == 0 and "reusing the cache at" in caplog.text
  assert isinstance(again, np.memmap) and not again.flags.writeable
  np.testing.assert_array_equal(again, first)

  changes = [dict(manifest={"name": "small", "method": "other"}), dict(key=jax.random.key(1)),
             dict(levels=(0.5, 0.7, 0.8)), dict(images=small_images()[::-1].copy()),
             dict(indices=np.arange(6))]
  for change in changes:
    before = count[0]
    build_small(tmp_path, transform=fn, **change)
    assert count[0] - before == 18, change
  assert len(entry_dirs(tmp_path)) == 1 + len(changes)
  assert all(p.name.startswith("small-") for p in entry_dirs(tmp_path))


def test_data_without_manifest_is_not_trusted(tmp_path):
  expected = np.array(build_small(tmp_path))
  (entry,) = entry_dirs(tmp_path)
  (entry / "manifest.json").unlink()  # a crash between the rename and the manifest
  data = np.load(entry / "data.npy", mmap_mode="r+")
  data[:] = 0
  data.flush()
  del data
  fn, count = counting(mix)
  np.testing.assert_array_equal(build_small(tmp_path, transform=fn), expected)
  assert count[0] == 18


def test_foreign_manifest_in_the_directory_raises(tmp_path):
  build_small(tmp_path)
  (entry,) = entry_dirs(tmp_path)
  stored = json.loads((entry / "manifest.json").read_text())
  (entry / "manifest.json").write_text(json.dumps({**stored, "method": "edited"}))
  with pytest.raises(RuntimeError, match="method: 'edited' in the cache, 'mix' requested"):
    build_small(tmp_path)


def test_nonfinite_reconstruction_raises_and_stores_nothing(tmp_path):
  with pytest.raises(FloatingPointError, match="NaN or inf"):
    build_small(tmp_path, transform=lambda keys, x, p: x * jnp.nan)
  (entry,) = entry_dirs(tmp_path)
  assert not (entry / "manifest.json").exists() and not (entry / "progress.json").exists()


@pytest.mark.parametrize("override,match", [
    (dict(images=small_images().astype(np.float32)), "images must be"),
    (dict(images=small_images()[0]), "images must be"),
    (dict(indices=np.arange(5)), "indices must be"),
    (dict(indices=np.array([0, 1, 2, 3, 4, 4])), "indices must be distinct"),
    (dict(indices=np.arange(6) - 1), r"indices must be in \[0, 2\*\*32\)"),
    (dict(indices=np.linspace(0, 1, 6)), "indices must be"),
    (dict(levels=()), "levels must be"),
    (dict(levels=(0.5, 0.0)), r"levels\[1\] must be in \(0.0, 1.0\]"),
    (dict(levels=(1.5,)), r"levels\[0\] must be in"),
    (dict(transform=None), "transform must be callable"),
    (dict(transform=lambda keys, x, p: x[:, :4]), "transform must return"),
    (dict(key=jax.random.PRNGKey(0)), "key must be a scalar typed PRNG key"),
    (dict(key=jax.random.split(jax.random.key(0))), "key must be a scalar typed PRNG key"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(batch_size=2.0), "batch_size must be an integer >= 1"),
    (dict(devices=[]), "devices must be"),
    (dict(manifest={"levels": [0.5]}), "manifest must not set"),
    (dict(manifest={"name": "../escape"}), r"manifest\['name'\]"),
    (dict(manifest={"seed": object()}), "manifest must be JSON-serialisable"),
    (dict(manifest={"startp": float("nan")}), "manifest must be JSON-serialisable"),
    (dict(manifest=[("name", "x")]), "manifest must be a mapping"),
])
def test_bad_arguments_raise(tmp_path, override, match):
  with pytest.raises(ValueError, match=match):
    build_small(tmp_path, **override)
