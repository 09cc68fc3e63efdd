"""`Conv`: flax's convolution with an input gradient that XLA:CPU runs fast inside loops.

JAX differentiates a channels-last convolution (kernel (H, W, I, O)) with respect to its
input by a convolution of the output gradient with the kernel read as (H, W, O, I),
flipped in space. Inside a while loop (an attack's step loop, the inner PGD of
adversarial training) XLA:CPU runs that kernel layout about 12x slower than the
(H, W, I, O) form (measured with jaxlib 0.10.2 on a 2-core AMD EPYC: 768 against 62 us
per image for a 3x3, 16 -> 16 convolution on 32 x 32 images; the same convolution
outside a loop runs at the fast rate, because XLA then folds the layout change into
the constant or the kernel). The small CNN's input gradient inside a 10-step PGD loop
took 2.4-3x as long as the same steps launched one by one from Python.

`conv_general_dilated` here computes the same convolution, and on CPU the same input
gradient as one in the forward form (other platforms keep JAX's rule):

    dL/dx = conv(dL/dy dilated by the strides, flip_HW(K) with I and O swapped)
            (stride 1, padding from the forward padding, as JAX's transpose rule)

with the flipped kernel materialised behind `lax.optimization_barrier`, so that XLA
cannot fold the transpose back into the convolution. The kernel gradient is JAX's own.
Convolutions other than channels-last with ungrouped features and an undilated input
(the models here use none) go to `lax.conv_general_dilated` unchanged.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def _channels_last(ndim: int) -> lax.ConvDimensionNumbers:
  spatial = tuple(range(1, ndim - 1))
  return lax.ConvDimensionNumbers(lhs_spec=(0, ndim - 1, *spatial),
                                  rhs_spec=(ndim - 1, ndim - 2, *range(ndim - 2)),
                                  out_spec=(0, ndim - 1, *spatial))


def _dilate(shape: Sequence[int], dilation: Sequence[int]) -> np.ndarray:
  shape, dilation = np.asarray(shape), np.asarray(dilation)
  return np.where(shape == 0, 0, 1 + dilation * (shape - 1))


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers=None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision=None,
                         preferred_element_type=None) -> jax.Array:
  """`lax.conv_general_dilated`'s value and signature; the input gradient as above.

  lhs: (N, *spatial, C_in); rhs: (*window, C_in, C_out) for the fast path.
  """
  nd = lhs.ndim - 2
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  plain = functools.partial(
      lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, batch_group_count=batch_group_count,
      precision=precision, preferred_element_type=preferred_element_type)
  if (dn != _channels_last(lhs.ndim) or feature_group_count != 1 or batch_group_count != 1
      or (lhs_dilation is not None and any(d != 1 for d in lhs_dilation))):
    return plain()
  strides = tuple(int(s) for s in window_strides)
  rhs_dilation = tuple(int(d) for d in (rhs_dilation or (1,) * nd))
  if isinstance(padding, str):
    window = _dilate(rhs.shape[:nd], rhs_dilation)
    padding = lax.padtype_to_pads(lhs.shape[1:-1], window, strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _conv(lhs, rhs, strides, padding, rhs_dilation, precision, preferred_element_type)


def _forward(lhs, rhs, strides, padding, rhs_dilation, precision, preferred):
  return lax.conv_general_dilated(lhs, rhs, strides, padding, rhs_dilation=rhs_dilation,
                                  dimension_numbers=_channels_last(lhs.ndim),
                                  precision=precision, preferred_element_type=preferred)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv(lhs, rhs, strides, padding, rhs_dilation, precision, preferred):
  return _forward(lhs, rhs, strides, padding, rhs_dilation, precision, preferred)


def _conv_fwd(lhs, rhs, strides, padding, rhs_dilation, precision, preferred):
  return _forward(lhs, rhs, strides, padding, rhs_dilation, precision, preferred), (lhs, rhs)


def _conv_bwd(strides, padding, rhs_dilation, precision, preferred, residuals, g):
  lhs, rhs = residuals
  nd = lhs.ndim - 2
  conv = lambda a, k: _forward(a, k, strides, padding, rhs_dilation, precision, preferred)
  # JAX's own cotangents; on CPU the input one is unused and compiled away.
  d_lhs_jax, d_rhs = jax.vjp(conv, lhs, rhs)[1](g)

  def forward_form(g, rhs):  # the input gradient as a forward-form convolution (CPU)
    window = _dilate(rhs.shape[:nd], rhs_dilation)
    before = window - np.array([lo for lo, _ in padding]) - 1
    after = (_dilate(lhs.shape[1:-1], (1,) * nd) + window - 1
             - _dilate(g.shape[1:-1], strides) - before)
    flipped = lax.optimization_barrier(jnp.swapaxes(jnp.flip(rhs, tuple(range(nd))), -1, -2))
    return lax.conv_general_dilated(
        g, flipped, (1,) * nd, tuple(zip(before.tolist(), after.tolist())), lhs_dilation=strides,
        rhs_dilation=rhs_dilation, dimension_numbers=_channels_last(lhs.ndim),
        precision=precision, preferred_element_type=preferred).astype(lhs.dtype)

  # GPUs and TPUs keep JAX's own rule: their compilers map it to their backward-data kernels,
  # which a forward convolution of a dilated input behind a barrier would not match.
  d_lhs = lax.platform_dependent(g, rhs, cpu=forward_form, default=lambda g, rhs: d_lhs_jax)
  return d_lhs, d_rhs.astype(rhs.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)

# flax's nn.Conv with the convolution above; parameters, names and values are nn.Conv's.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
