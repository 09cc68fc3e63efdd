"""Reconstructors by name, so that configuration chooses the method (as big_vision's registry)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from menet_jax.reconstruct import nuclear_norm, soft_impute, splic, usvt

Reconstructor = Callable[..., jax.Array]  # (x, mask, **params) -> estimate, all (..., m, n)


@dataclasses.dataclass(frozen=True)
class _Entry:
  fn: Reconstructor
  check_params: Callable[..., None]  # (matrix shape, **params) -> None, raises ValueError


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, fn: Reconstructor, check_params: Callable[..., None]) -> None:
  """Adds a reconstructor `fn(x, mask, **params)` and its parameter check under `name`."""
  if name in _REGISTRY:
    raise ValueError(f"a reconstructor named {name!r} is already registered")
  _REGISTRY[name] = _Entry(fn, check_params)


def names() -> tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


def _entry(name: str) -> _Entry:
  if name not in _REGISTRY:
    raise ValueError(f"method must be one of {', '.join(map(repr, names()))}; got {name!r}")
  return _REGISTRY[name]


def get(name: str) -> Reconstructor:
  """The reconstructor registered as `name`, e.g. get("usvt")(x, mask, keep=0.8)."""
  return _entry(name).fn


def check_params(name: str, shape: tuple[int, ...], **params) -> None:
  """Validates `params` for method `name` on matrices of `shape` without running it."""
  entry = _entry(name)
  try:
    entry.check_params(shape, **params)
  except TypeError as e:  # unknown or missing keyword
    raise ValueError(f"invalid parameters for method {name!r}: {e}") from None


register("usvt", usvt.usvt, usvt.check_params)
register("soft_impute", soft_impute.soft_impute, soft_impute.check_params)
register("nuclear_norm", nuclear_norm.nuclear_norm, nuclear_norm.check_params)
register("splic", splic.splic, splic.check_params)
register("splic_alternating", splic.splic_alternating, splic.check_params)
