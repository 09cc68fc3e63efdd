"""models.conv: the same values and derivatives as lax.conv_general_dilated under JAX's own
differentiation rules, and an input gradient without the (H, W, O, I) kernel inside loops."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from menet_jax.models import conv

DN = ("NHWC", "HWIO", "NHWC")
# float32 sums of at most 5 x 5 x 3 products of unit-scale numbers, in possibly different orders.
TOL = dict(rtol=1e-5, atol=1e-5)


def _loss(fn, **kw):
  return lambda x, k: jnp.sum(jnp.sin(fn(x, k, dimension_numbers=DN, **kw)))


def test_value_and_gradients_equal_laxs():
  # Strides, windows and paddings (symmetric, asymmetric, SAME on an even and an odd side)
  # where the transpose's padding formula can go wrong; a dilated kernel at stride 1.
  x = jax.random.normal(jax.random.key(0), (2, 8, 11, 3))
  for window, stride, padding in itertools.product(
      [1, 3, 4], [1, 2, 3], ["SAME", "VALID", ((1, 1), (1, 1)), ((2, 0), (0, 1))]):
    k = jax.random.normal(jax.random.key(window), (window, window, 3, 4))
    dilation = 2 if stride == 1 else 1
    kw = dict(window_strides=(stride, stride), padding=padding, rhs_dilation=(dilation, dilation))
    case = (window, stride, padding)
    np.testing.assert_allclose(conv.conv_general_dilated(x, k, dimension_numbers=DN, **kw),
                               lax.conv_general_dilated(x, k, dimension_numbers=DN, **kw),
                               err_msg=str(case), **TOL)
    ours = jax.grad(_loss(conv.conv_general_dilated, **kw), (0, 1))(x, k)
    theirs = jax.grad(_loss(lax.conv_general_dilated, **kw), (0, 1))(x, k)
    for a, b in zip(ours, theirs, strict=True):
      np.testing.assert_allclose(a, b, err_msg=str(case), **TOL)


def test_second_order_and_the_unhandled_forms_equal_laxs():
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 4))
  k = jax.random.normal(jax.random.key(1), (3, 3, 4, 4))

  def penalty(fn):  # a gradient penalty: the kernel gradient of |d loss / d x|^2
    inner = lambda kk, xx: jax.grad(_loss(fn, window_strides=(2, 2), padding="SAME"))(xx, kk)
    return jax.grad(lambda kk: jnp.sum(inner(kk, x) ** 2))(k)

  np.testing.assert_allclose(penalty(conv.conv_general_dilated), penalty(lax.conv_general_dilated),
                             rtol=1e-4, atol=1e-4)
  # Grouped features and a dilated input take lax's own path.
  for kw, kernel in ((dict(feature_group_count=2), k[:, :, :2]), (dict(lhs_dilation=(2, 2)), k)):
    kw.update(window_strides=(1, 1), padding=((1, 1), (1, 1)))
    ours = jax.grad(_loss(conv.conv_general_dilated, **kw), (0, 1))(x, kernel)
    theirs = jax.grad(_loss(lax.conv_general_dilated, **kw), (0, 1))(x, kernel)
    for a, b in zip(ours, theirs, strict=True):
      np.testing.assert_allclose(a, b, **TOL)


def test_input_gradient_in_a_loop_uses_no_transposed_kernel_layout():
  # The slow form on XLA:CPU is a convolution whose kernel is read as (H, W, O, I) ("01oi").
  k = jax.random.normal(jax.random.key(1), (3, 3, 8, 8))

  def steps(fn):
    grad = jax.grad(_loss(fn, window_strides=(1, 1), padding="SAME"))
    return jax.jit(lambda x, kk: lax.fori_loop(0, 3, lambda i, xa: xa - 0.1 * grad(xa, kk), x))

  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 8))
  hlo = lambda fn: steps(fn).lower(x, k).compile().as_text()
  assert "01oi" in hlo(lax.conv_general_dilated)  # the form this module exists to avoid
  assert "01oi" not in hlo(conv.conv_general_dilated)
  np.testing.assert_allclose(steps(conv.conv_general_dilated)(x, k),
                             steps(lax.conv_general_dilated)(x, k), **TOL)


def test_conv_is_flax_conv_with_the_same_parameters():
  import flax.linen as nn
  x = jnp.ones((1, 6, 6, 3))
  ours = conv.Conv(5, (3, 3), strides=2, padding=1).init(jax.random.key(0), x)
  theirs = nn.Conv(5, (3, 3), strides=2, padding=1).init(jax.random.key(0), x)
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
    np.testing.assert_array_equal(a, b)
