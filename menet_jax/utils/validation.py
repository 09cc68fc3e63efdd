"""Argument checks run at the public API boundary, before anything is traced.

Every public function of the library calls these on its raw arguments, so a bad
value fails with a `ValueError` that names the argument and the accepted range
instead of surfacing later as a shape error inside XLA or as silent NaNs.

Checks on array *values* (finiteness, range, 0/1 masks) need concrete data; when
a public function is itself called under a user's `jit`/`vmap`/`grad`, its
arrays are tracers and only the static checks (shapes, dtypes, parameters) run.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import numpy as np


def is_concrete(x: Any) -> bool:
  """True when `x` holds data (numpy or a committed jax array), not a tracer."""
  return not isinstance(x, jax.core.Tracer)


def _describe(value: Any) -> str:
  return repr(value) if not hasattr(value, "shape") else f"array of shape {value.shape}"


def real_number(name: str, value: Any) -> float:
  """`value` as a float; rejects bools, non-numbers and NaN/inf."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f"{name} must be a real number, got {_describe(value)}")
  value = float(value)
  if not math.isfinite(value):
    raise ValueError(f"{name} must be finite, got {value}")
  return value


def number_in(name: str, value: Any, lo: float, hi: float, *,
              lo_open: bool = False, hi_open: bool = False) -> float:
  """Checks lo <(=) value <(=) hi and returns it as a float; a traced scalar (an argument of a
  compiled function, checked by its caller before tracing) is returned as it is."""
  if not is_concrete(value) and getattr(value, "shape", None) == ():
    return value
  v = real_number(name, value)
  too_low = v <= lo if lo_open else v < lo
  too_high = v >= hi if hi_open else v > hi
  if too_low or too_high:
    interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    raise ValueError(f"{name} must be in {interval}, got {v}")
  return v


def integer_in(name: str, value: Any, lo: int, hi: float = math.inf) -> int:
  """Checks that `value` is an integer with lo <= value <= hi."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f"{name} must be an integer, got {_describe(value)}")
  value = int(value)
  if not lo <= value <= hi:
    accepted = f">= {lo}" if hi == math.inf else f"in [{lo}, {int(hi)}]"
    raise ValueError(f"{name} must be an integer {accepted}, got {value}")
  return value


def choice(name: str, value: Any, options: tuple[str, ...]) -> str:
  if value not in options:
    raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
  return value


def floating_array(name: str, x: Any, *, min_ndim: int) -> None:
  """Shape and dtype checks for a float array with at least `min_ndim` dims."""
  shape = getattr(x, "shape", None)
  dtype = getattr(x, "dtype", None)
  if shape is None or dtype is None:
    raise ValueError(f"{name} must be an array, got {type(x).__name__}")
  if len(shape) < min_ndim:
    raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {tuple(shape)}")
  if not np.issubdtype(dtype, np.floating):
    raise ValueError(f"{name} must have a floating dtype (float32 or float64), got {dtype}")
  if any(d == 0 for d in shape):
    raise ValueError(f"{name} must not be empty, got shape {tuple(shape)}")
  if is_concrete(x) and not np.all(np.isfinite(np.asarray(x))):
    raise ValueError(f"{name} contains NaN or inf values")


def values_in(name: str, x: Any, lo: float, hi: float) -> None:
  """For concrete `x`, checks that every entry lies in [lo, hi]."""
  if not is_concrete(x):
    return
  arr = np.asarray(x)
  lo_seen, hi_seen = float(arr.min()), float(arr.max())
  if lo_seen < lo or hi_seen > hi:
    raise ValueError(
        f"{name} must have values in [{lo}, {hi}], got values in [{lo_seen:.6g}, {hi_seen:.6g}]")


def matrices_and_mask(x: Any, mask: Any) -> None:
  """Checks a batch of matrices `x: (..., m, n)` and its observation mask."""
  floating_array("x", x, min_ndim=2)
  mshape = getattr(mask, "shape", None)
  if mshape is None:
    raise ValueError(f"mask must be an array, got {type(mask).__name__}")
  if tuple(mshape) != tuple(x.shape):
    raise ValueError(f"mask must have the shape of x {tuple(x.shape)}, got {tuple(mshape)}")
  mdtype = np.dtype(mask.dtype)
  if not (mdtype == np.bool_ or np.issubdtype(mdtype, np.number)):
    raise ValueError(f"mask must be boolean or numeric 0/1, got dtype {mdtype}")
  if is_concrete(mask) and mdtype != np.bool_:
    m = np.asarray(mask)
    if not np.all((m == 0) | (m == 1)):
      raise ValueError("mask must contain only 0 and 1 (or be boolean)")
