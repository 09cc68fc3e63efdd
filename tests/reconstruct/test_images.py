import jax
import jax.numpy as jnp
import numpy as np
import pytest

import menet_jax
from menet_jax import masks, reconstruct
from references import matrices as references


def _release_usvt_pipeline(images, mask, layout, keep=0.8):
  """train_pure.py's usvt(): scale to [-1, 1], concat channels, estimate, clip, scale back."""
  n, h, w, c = images.shape
  out = np.empty_like(images, dtype=np.float64)
  x = images.astype(np.float64) * 2 - 1
  for i in range(n):
    if layout == "concat":
      mat = np.concatenate([x[i, :, :, ch] for ch in range(c)], axis=1)
      est = np.clip(references.usvt(mat, mask[i], keep=keep), -1, 1)
      out[i] = np.stack([est[:, ch * w:(ch + 1) * w] for ch in range(c)], axis=-1)
    else:
      for ch in range(c):
        out[i, :, :, ch] = np.clip(references.usvt(x[i, :, :, ch], mask[i, ch], keep=keep), -1, 1)
  return (out + 1) / 2


@pytest.mark.parametrize("shape,layout", [((3, 7, 5, 3), "concat"), ((2, 9, 6, 1), "concat"),
                                          ((2, 8, 8, 3), "separate")])
def test_matches_release_pipeline(rng, shape, layout):
  images = rng.uniform(0, 1, shape).astype(np.float32)
  key = jax.random.key(5)
  out = np.asarray(menet_jax.reconstruct_images(key, images, method="usvt", p=0.6, layout=layout))
  mask = np.asarray(masks.image_mask(key, shape, 0.6, layout))
  np.testing.assert_allclose(out, _release_usvt_pipeline(images, mask, layout), atol=1e-4)


@pytest.mark.parametrize("method,params", [
    ("usvt", {}), ("soft_impute", {}), ("nuclear_norm", {}), ("splic", {"rank": 7}),
    ("splic_alternating", {"rank": 7, "max_outer": 3}),
])
@pytest.mark.parametrize("shape", [(2, 28, 28, 1), (2, 32, 32, 3)])
def test_every_method_on_mnist_and_cifar_shapes(rng, method, params, shape):
  images = rng.uniform(0, 1, shape).astype(np.float32)
  key = jax.random.key(0)
  out = menet_jax.reconstruct_images(key, images, method=method, p=0.5, **params)
  assert out.shape == shape and out.dtype == jnp.float32
  assert float(out.min()) >= 0 and float(out.max()) <= 1
  np.testing.assert_array_equal(out, menet_jax.reconstruct_images(key, images, method=method, p=0.5,
                                                                  **params))


def test_per_image_p_and_full_observation(rng):
  images = rng.uniform(0, 1, (3, 10, 10, 3)).astype(np.float32)
  out = np.asarray(menet_jax.reconstruct_images(jax.random.key(1), images, method="soft_impute",
                                                p=np.array([1.0, 1.0, 0.5])))
  np.testing.assert_allclose(out[:2], images[:2], atol=1e-6)  # nothing dropped, nothing imputed
  assert np.abs(out[2] - images[2]).max() > 1e-3


def test_same_key_same_output_other_key_other_output(rng):
  images = rng.uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
  a = menet_jax.reconstruct_images(jax.random.key(1), images, method="usvt", p=0.5)
  b = menet_jax.reconstruct_images(jax.random.key(2), images, method="usvt", p=0.5)
  assert not np.allclose(a, b)


def test_registry_names():
  assert set(reconstruct.names()) >= {"usvt", "soft_impute", "nuclear_norm", "splic"}
  assert reconstruct.get("usvt") is reconstruct.usvt
