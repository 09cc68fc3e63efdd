"""Median and TV denoising against scipy and scikit-image (float64, per-channel 2-D calls)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from skimage.restoration import denoise_tv_bregman, denoise_tv_chambolle

from menet_jax import defenses

KEYS = jax.random.split(jax.random.key(0), 2)


def _images(shape=(2, 13, 17, 3), seed=0):
  return np.random.default_rng(seed).random(shape)


def _per_channel(fn, x):
  return np.stack([np.stack([fn(x[b, ..., c]) for c in range(x.shape[-1])], -1)
                   for b in range(x.shape[0])])


@pytest.mark.parametrize("k, padding, mode", [(1, "zero", "constant"), (3, "zero", "constant"),
                                              (5, "zero", "constant"), (3, "reflect", "mirror"),
                                              (7, "reflect", "mirror")])
def test_median_matches_scipy(k, padding, mode):
  x = _images()
  d = defenses.create(f"median(k={k}, padding={padding})")
  got = np.asarray(d.transform(KEYS, jnp.asarray(x, jnp.float32), jnp.ones(2)))
  ref = _per_channel(lambda a: ndimage.median_filter(a, size=k, mode=mode, cval=0.0), x)
  np.testing.assert_allclose(got, ref, atol=1e-6)  # float32 of the same inputs: exact values


@pytest.mark.parametrize("weight, isotropic", [(5.0, True), (0.5, True), (0.1, True),
                                               (10.0, False), (1.0, False)])
def test_bregman_matches_scikit_image(weight, isotropic):
  x = _images()
  with jax.enable_x64(True):
    d = defenses.create(f"tv_bregman(weight={weight}, isotropic={isotropic})")
    got = np.asarray(d.transform(KEYS, jnp.asarray(x), jnp.ones(2)))
  ref = _per_channel(lambda a: denoise_tv_bregman(a, weight=weight, isotropic=isotropic), x)
  np.testing.assert_allclose(got, ref, atol=1e-6)


@pytest.mark.parametrize("weight, joint", [(0.1, False), (0.5, False), (1.5, False), (0.3, True)])
def test_chambolle_matches_scikit_image(weight, joint):
  x = _images()
  with jax.enable_x64(True):
    d = defenses.create(f"tv_chambolle(weight={weight}, joint={joint})")
    got = np.asarray(d.transform(KEYS, jnp.asarray(x), jnp.ones(2)))
  if joint:  # scikit-image's channel_axis=None: one (H, W, C) volume
    ref = np.stack([denoise_tv_chambolle(x[b], weight=weight) for b in range(2)])
  else:
    ref = _per_channel(lambda a: denoise_tv_chambolle(a, weight=weight), x)
  np.testing.assert_allclose(got, ref, atol=1e-6)


def test_each_plane_stops_on_its_own_and_does_not_depend_on_its_batch():
  x = _images((3, 12, 12, 2), seed=1)
  x[1] = 0.5  # a constant image: converges at once, while the others run on
  for spec in ("tv_bregman(weight=0.5)", "tv_chambolle(weight=0.4)"):
    with jax.enable_x64(True):
      d = defenses.create(spec)
      keys = jax.random.split(jax.random.key(0), 3)
      whole = np.asarray(d.transform(keys, jnp.asarray(x), jnp.ones(3)))
      alone = np.asarray(d.transform(keys[2:], jnp.asarray(x[2:]), jnp.ones(1)))
    np.testing.assert_allclose(whole[2:], alone, atol=1e-12)
    np.testing.assert_allclose(whole[1], 0.5, atol=1e-12)


@pytest.mark.parametrize("spec, match", [
    ("median(k=4)", "k must be odd"), ("median(k=3, padding=edge)", "padding must be one of"),
    ("tv_bregman(weight=0)", "weight must be in"), ("tv_chambolle(max_iters=0)", "max_iters"),
])
def test_bad_parameters_are_refused(spec, match):
  with pytest.raises(ValueError, match=match):
    defenses.create(spec)


def test_filters_are_deterministic_and_attacked_through_bpda():
  x = jnp.asarray(_images((2, 8, 8, 1), seed=2), jnp.float32)
  for spec in ("median(k=3)", "tv_bregman(weight=2.0)", "tv_chambolle(weight=0.2)"):
    d = defenses.create(spec)
    assert not d.randomized and d.spec().startswith(spec.split("(")[0])
    g = jax.grad(lambda a: jnp.sum(d.attack_view(KEYS, a, jnp.ones(2)) ** 2))(x)
    # BPDA identity: the cotangent of sum(out^2) is 2 out, passed through unchanged.
    np.testing.assert_allclose(g, 2 * d.transform(KEYS, x, jnp.ones(2)), rtol=1e-6)


@pytest.mark.parametrize("n", [1, 3, 9, 25, 49, 81, 121])
def test_the_sorting_network_finds_the_median(n):
  from menet_jax.defenses.median import median_of, sorting_network
  size = 1 << (n - 1).bit_length()
  # The 0-1 principle: a comparator network sorts every input if it sorts every 0/1 input;
  # random 0/1 and real inputs (with ties) exercise it here.
  rng = np.random.default_rng(n)
  values = rng.integers(0, 2 if n > 9 else 4, (n, 500)).astype(np.float32)
  got = np.asarray(median_of([jnp.asarray(v) for v in values]))
  np.testing.assert_array_equal(got, np.sort(values, axis=0)[n // 2])
  assert all(a < b < size for a, b in sorting_network(size))


def test_the_exact_median_view_passes_the_gradient_to_the_median_pixel():
  rng = np.random.default_rng(5)
  x = rng.uniform(0.5, 1.0, (1, 7, 6, 2))  # no ties; the zero padding is below every pixel
  w = rng.normal(size=x.shape)
  d = defenses.create("median(k=3)")
  g = np.asarray(jax.grad(lambda a: jnp.sum(w * d.view("exact", None, a, None)))(
      jnp.asarray(x, jnp.float32)))
  ref = np.zeros_like(x)
  padded = np.pad(x[0], ((1, 1), (1, 1), (0, 0)))
  for i, j, c in np.ndindex(x.shape[1:]):
    a, b = divmod(int(np.argsort(padded[i:i + 3, j:j + 3, c].ravel())[4]), 3)
    if 0 <= i + a - 1 < 7 and 0 <= j + b - 1 < 6:  # a median taken from the padding has no input
      ref[0, i + a - 1, j + b - 1, c] += w[0, i, j, c]
  np.testing.assert_allclose(g, ref, atol=1e-6)
  assert np.any(ref == 0) and np.any(ref != 0)
  bpda = jax.grad(lambda a: jnp.sum(w * d.view("bpda", None, a, None)))(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(bpda, w, rtol=1e-6)
