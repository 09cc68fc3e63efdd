import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import masks
from menet_jax.defenses import MENet, majority_vote
from references import matrices as references


def _defense(image_shape=(8, 8, 3), **kw):
  args = dict(method="usvt", startp=0.4, endp=0.6, mask_num=5, keep=0.5)
  args.update(kw)
  d = MENet.create(**args)
  d.check(image_shape)
  return d


def test_schedule_and_mean_p_follow_the_paper():
  d = _defense()
  np.testing.assert_allclose(d.train_levels, [0.40, 0.44, 0.48, 0.52, 0.56])
  assert d.test_level == pytest.approx(0.48)


def test_reconstruct_matches_numpy_usvt_per_image_with_its_own_mask():
  d = _defense()
  rng = np.random.default_rng(0)
  images = rng.random((4, 8, 8, 3)).astype(np.float32)
  keys = jax.random.split(jax.random.key(1), 4)
  p = np.array([0.4, 0.5, 0.6, 0.7], np.float32)
  got = np.asarray(d.transform(keys, images, p))
  for j in range(4):
    mask = np.asarray(masks.image_mask(keys[j], (1, 8, 8, 3), float(p[j]), "concat"))[0]
    x = np.concatenate([images[j, :, :, c] for c in range(3)], axis=1).astype(np.float64) * 2 - 1
    est = (np.clip(references.usvt(x, mask, keep=0.5), -1, 1) + 1) / 2
    want = np.stack([est[:, 8 * c:8 * (c + 1)] for c in range(3)], axis=-1)
    np.testing.assert_allclose(got[j], want, atol=5e-5)


def test_each_image_depends_only_on_its_own_key():
  d = _defense()
  images = np.random.default_rng(1).random((6, 8, 8, 3)).astype(np.float32)
  keys = jax.random.split(jax.random.key(2), 6)
  whole = np.asarray(d.transform(keys, images, 0.5))
  part = np.asarray(d.transform(keys[2:4], images[2:4], 0.5))
  np.testing.assert_array_equal(whole[2:4], part)


def test_differentiable_has_identity_backward():
  d = _defense()
  images = jnp.asarray(np.random.default_rng(2).random((2, 8, 8, 3)), jnp.float32)
  keys = jax.random.split(jax.random.key(0), 2)
  w = jnp.arange(images.size, dtype=jnp.float32).reshape(images.shape)
  level = jnp.full(2, 0.5)
  grad = jax.grad(lambda x: jnp.sum(w * d.attack_view(keys, x, level)))(images)
  np.testing.assert_array_equal(np.asarray(grad), np.asarray(w))
  np.testing.assert_array_equal(np.asarray(d.attack_view(keys, images, level)),
                                np.asarray(d.transform(keys, images, 0.5)))


def test_majority_vote_against_counting():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(7, 50, 4)).astype(np.float32)
  labels = logits.argmax(-1)
  counts = np.stack([(labels == c).sum(0) for c in range(4)], -1)
  np.testing.assert_array_equal(np.asarray(majority_vote(jnp.asarray(logits))), counts.argmax(-1))
  tie = np.zeros((2, 1, 3), np.float32)
  tie[0, 0, 2] = tie[1, 0, 1] = 1  # one vote each for labels 2 and 1
  assert int(majority_vote(jnp.asarray(tie))[0]) == 1


@pytest.mark.parametrize("kw, match", [
    (dict(method="nope"), "unknown method 'nope'"),
    (dict(startp=0.0), "startp"),
    (dict(startp=0.7, endp=0.6), "endp must be >= startp"),
    (dict(layout="rows"), "layout"),
    (dict(inference="best"), "inference"),
    (dict(votes=0, inference="vote"), "votes"),
    (dict(keep=0.01), "keep must retain"),
    (dict(image_shape=(8, 8)), "image_shape"),
])
def test_bad_configuration_is_refused(kw, match):
  with pytest.raises(ValueError, match=match):
    _defense(**kw)


@pytest.mark.parametrize("method, params", [("soft_impute", {}), ("nuclear_norm", {"mu": 1.0})])
def test_iterative_methods_run_per_device(method, params):
  # shard_map (defenses.on_devices, data.cache) around the solvers' while loops.
  from menet_jax.utils import parallel
  d = MENet.create(method=method, startp=0.4, endp=0.6, mask_num=2, **params)
  images = np.random.default_rng(4).random((4, 8, 8, 3)).astype(np.float32)
  keys = jax.random.split(jax.random.key(5), 4)
  p = jnp.full(4, 0.5)
  per_device = jax.jit(parallel.per_device(d.transform, parallel.mesh(), split=(True,) * 3))
  np.testing.assert_allclose(np.asarray(per_device(keys, images, p)),
                             np.asarray(d.transform(keys, images, p)), atol=1e-6)
