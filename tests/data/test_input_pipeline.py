import jax
import numpy as np
import pytest

from menet_jax.data import input_pipeline


def _numpy_augment(images, offsets, flips):
  """Reference: torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip, by hand."""
  b, h, w, c = images.shape
  padded = np.zeros((b, h + 8, w + 8, c), images.dtype)
  padded[:, 4:4 + h, 4:4 + w] = images
  out = np.stack([padded[i, o[0]:o[0] + h, o[1]:o[1] + w] for i, o in enumerate(offsets)])
  return np.where(flips[:, None, None, None], out[:, :, ::-1], out)


def test_augment_is_pad_crop_flip():
  images = np.random.default_rng(0).random((16, 8, 6, 3)).astype(np.float32)
  key = jax.random.key(3)
  got = np.asarray(input_pipeline.augment(key, images))
  # Recover the draws the same way augment makes them, then apply the reference.
  k_crop, k_flip = jax.random.split(key)
  offsets = np.asarray(jax.random.randint(k_crop, (16, 2), 0, 9))
  flips = np.asarray(jax.random.bernoulli(k_flip, 0.5, (16,)))
  np.testing.assert_array_equal(got, _numpy_augment(images, offsets, flips))
  assert 0 < flips.sum() < 16 and len(set(map(tuple, offsets))) > 1


def _source(copies=2, n=10, repeats=1, levels=None):
  images = np.arange(copies * n, dtype=np.uint8).reshape(copies, n, 1, 1, 1)
  images = np.broadcast_to(images, (copies, n, 2, 2, 1)).copy()
  return input_pipeline.TrainSource(images, np.arange(n, dtype=np.int32), repeats, levels)


def test_epoch_visits_every_sample_once_when_batches_divide():
  source = _source()
  batches = list(source.batches(seed=0, epoch=0, local_batch=4, process=0))
  assert len(batches) == source.steps_per_epoch(4) == 5
  seen = np.concatenate([b["image"][:, 0, 0, 0] for b in batches])
  np.testing.assert_array_equal(np.sort(seen), np.arange(20))
  for b in batches:  # labels follow their image, whichever copy
    np.testing.assert_array_equal(b["label"], b["image"][:, 0, 0, 0] % 10)


def test_order_depends_on_seed_and_epoch_and_resumes_exactly():
  source = _source()
  def ids(**kw):
    return [tuple(b["image"][:, 0, 0, 0]) for b in source.batches(local_batch=4, process=0, **kw)]
  full = ids(seed=1, epoch=2)
  assert ids(seed=1, epoch=2, start_step=3) == full[3:]
  assert ids(seed=1, epoch=3) != full and ids(seed=2, epoch=2) != full


def test_levels_schedule_uses_level_k_in_the_kth_part_of_the_epoch():
  levels = np.array([0.4, 0.5])
  source = _source(copies=1, n=8, repeats=2, levels=levels)
  ps = [b["level"][0] for b in source.batches(seed=0, epoch=0, local_batch=4, process=0)]
  np.testing.assert_allclose(ps, [0.4, 0.4, 0.5, 0.5])


def test_too_small_training_set_is_an_error():
  with pytest.raises(ValueError, match="lower batch_size"):
    _source(copies=1, n=3).steps_per_epoch(8)


def test_eval_batches_cover_each_image_once_with_zero_weight_padding():
  images = np.arange(2 * 5, dtype=np.uint8).reshape(2, 5, 1, 1, 1)
  labels = np.arange(5, dtype=np.int32)
  batches = list(input_pipeline.eval_batches(images, labels, local_batch=2, num_batches=4))
  weights = np.concatenate([b["weight"] for b in batches])
  np.testing.assert_array_equal(weights, [1, 1, 1, 1, 1, 0, 0, 0])
  got = np.concatenate([b["label"] for b in batches])[weights == 1]
  np.testing.assert_array_equal(got, labels)
  assert batches[0]["image"].shape == (2, 2, 1, 1, 1)  # (b, k, H, W, C)
  np.testing.assert_array_equal(batches[0]["image"][1, :, 0, 0, 0], [1, 6])
  with pytest.raises(ValueError, match="cannot hold"):
    list(input_pipeline.eval_batches(images, labels, local_batch=2, num_batches=2))
