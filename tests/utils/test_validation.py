"""Every bad input raises a ValueError that names the argument."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import menet_jax
from menet_jax import reconstruct

X = np.random.default_rng(0).uniform(-1, 1, (2, 8, 12)).astype(np.float32)
MASK = np.random.default_rng(1).random((2, 8, 12)) < 0.5
IMAGES = np.random.default_rng(2).uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
KEY = jax.random.key(0)


def _with(array, index, value):
  out = np.array(array)
  out[index] = value
  return out


@pytest.mark.parametrize("name", ["usvt", "soft_impute", "nuclear_norm", "splic"])
@pytest.mark.parametrize("x,mask,match", [
    (_with(X, (0, 0, 0), np.nan), MASK, "x contains NaN or inf"),
    (_with(X, (1, 2, 3), np.inf), MASK, "x contains NaN or inf"),
    (X, MASK[:, :, :5], "mask must have the shape of x"),
    (X[0, 0], MASK[0, 0], "x must have at least 2 dimensions"),
    (X.astype(np.int32), MASK, "x must have a floating dtype"),
    (X, MASK * 2.0, "mask must contain only 0 and 1"),
    (np.zeros((2, 0, 3), np.float32), np.zeros((2, 0, 3), bool), "x must not be empty"),
])
def test_reconstructor_array_checks(name, x, mask, match):
  params = {"rank": 2} if name == "splic" else {}
  with pytest.raises(ValueError, match=match):
    reconstruct.get(name)(x, mask, **params)


@pytest.mark.parametrize("name,params,match", [
    ("usvt", dict(keep=0.0), "keep must be in"),
    ("usvt", dict(keep=1.5), "keep must be in"),
    ("usvt", dict(keep=0.05), "keep must retain at least one"),
    ("usvt", dict(threshold="median"), "threshold must be one of"),
    ("usvt", dict(eta=0.0), "eta must be in"),
    ("soft_impute", dict(shrinkage=-1.0), "shrinkage must be in"),
    ("soft_impute", dict(max_iters=0), "max_iters must be an integer >= 1"),
    ("soft_impute", dict(max_iters=10.5), "max_iters must be an integer"),
    ("soft_impute", dict(tol=-1e-3), "tol must be in"),
    ("nuclear_norm", dict(mu=0.0), "mu must be in"),
    ("nuclear_norm", dict(mu=float("inf")), "mu must be finite"),
    ("splic", dict(rank=0), r"rank must be an integer in \[1, 8\]"),
    ("splic", dict(rank=9), r"rank must be an integer in \[1, 8\]"),
    ("splic", dict(rank=2, rho=1.0), "rho must be in"),
    ("splic", dict(rank=2, step=0.0), "step must be in"),
    ("splic", dict(rank=2, inner=0), "inner must be an integer"),
    ("splic", dict(rank=2, lam=-0.1), "lam must be in"),
    ("splic", dict(rank=2, delta0=0.0), "delta0 must be in"),
    ("splic", dict(rank=2, solver="lanczos"), "solver must be one of"),
])
def test_reconstructor_parameter_checks(name, params, match):
  with pytest.raises(ValueError, match=match):
    reconstruct.get(name)(X, MASK, **params)


def test_universal_threshold_needs_unit_range():
  with pytest.raises(ValueError, match=r"x must have values in \[-1.0, 1.0\]"):
    reconstruct.usvt(X * 3, MASK, threshold="universal")


@pytest.mark.parametrize("images,kwargs,match", [
    (_with(IMAGES, (0, 1, 1, 1), 1.5), {}, r"images must have values in \[0.0, 1.0\]"),
    (_with(IMAGES, (0, 1, 1, 1), -0.1), {}, r"images must have values in \[0.0, 1.0\]"),
    (_with(IMAGES, (0, 1, 1, 1), np.nan), {}, "images contains NaN or inf"),
    ((IMAGES * 255).astype(np.uint8), {}, "images must have a floating dtype"),
    (IMAGES[0], {}, "images must have at least 4 dimensions"),
    (IMAGES[None], {}, r"images must have shape \(N, H, W, C\)"),
    (IMAGES, dict(method="pca"), "unknown method 'pca'; known: nuclear_norm, soft_impute"),
    (IMAGES, dict(layout="stacked"), "layout must be one of"),
    (IMAGES, dict(p=0.0), r"p must be in \(0.0, 1.0\]"),
    (IMAGES, dict(p=1.2), r"p must be in \(0.0, 1.0\]"),
    (IMAGES, dict(p=np.array([0.5, 0.5, 0.5])), r"p must be a scalar or have shape \(2,\)"),
    (IMAGES, dict(p=np.array([0.5, 0.0])), r"p must be in \(0, 1\]"),
    (IMAGES, dict(rank=3), "method 'usvt' has no argument 'rank'; it takes keep, threshold, eta"),
    (IMAGES, dict(method="splic"), "method 'splic' needs rank"),
    (IMAGES, dict(keep="0.5"), "method 'usvt': keep must be float, got '0.5'"),
    (IMAGES, dict(method="splic", rank=40), r"rank must be an integer in \[1, 8\]"),
])
def test_reconstruct_images_checks(images, kwargs, match):
  kwargs = {"method": "usvt", "p": 0.5, **kwargs}
  with pytest.raises(ValueError, match=match):
    menet_jax.reconstruct_images(KEY, images, **kwargs)


def test_unknown_method_in_registry():
  with pytest.raises(ValueError, match="unknown method 'svd'; known: nuclear_norm"):
    reconstruct.get("svd")
  with pytest.raises(ValueError, match="already registered"):
    reconstruct.register("usvt", reconstruct.usvt, lambda shape: None)


def test_registered_method_is_usable_by_name(rng):
  def scale(x, mask, *, factor=2.0):
    return x * factor

  def check(shape, *, factor):
    if factor <= 0:
      raise ValueError(f"factor must be > 0, got {factor}")

  reconstruct.register("test_scale", scale, check)
  try:
    images = rng.uniform(0.2, 0.3, (1, 4, 4, 1)).astype(np.float32)
    out = menet_jax.reconstruct_images(KEY, images, method="test_scale", p=1.0, factor=1.0)
    np.testing.assert_allclose(out, images, atol=1e-6)
    with pytest.raises(ValueError, match="factor must be > 0"):
      menet_jax.reconstruct_images(KEY, images, method="test_scale", p=1.0, factor=-1.0)
  finally:
    reconstruct.RECONSTRUCTORS.unregister("test_scale")


def test_checks_run_before_tracing(monkeypatch):
  # A bad argument is rejected before the jitted implementation is even called.
  usvt_module = importlib.import_module("menet_jax.reconstruct.usvt")
  images_module = importlib.import_module("menet_jax.reconstruct.images")
  calls = []
  monkeypatch.setattr(usvt_module, "_usvt", lambda *a, **k: calls.append("usvt"))
  monkeypatch.setattr(images_module, "_pipeline", lambda *a, **k: calls.append("pipeline"))
  with pytest.raises(ValueError, match="keep"):
    reconstruct.usvt(X, MASK, keep=2.0)
  with pytest.raises(ValueError, match="rank"):
    menet_jax.reconstruct_images(KEY, IMAGES, method="splic", p=0.5, rank=0)
  assert calls == []


def test_traced_inputs_skip_value_checks_but_keep_static_ones():
  f = jax.jit(lambda x, m: reconstruct.usvt(x, m, keep=0.5))
  assert f(jnp.asarray(X), jnp.asarray(MASK)).shape == X.shape
  with pytest.raises(ValueError, match="mask must have the shape of x"):
    jax.jit(lambda x, m: reconstruct.usvt(x, m))(jnp.asarray(X), jnp.asarray(MASK[:, :4]))
