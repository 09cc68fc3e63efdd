"""Reconstructors by name, so that configuration chooses the method (as big_vision's registry)."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

import jax

from menet_jax.reconstruct import nuclear_norm, soft_impute, splic, usvt

Reconstructor = Callable[..., jax.Array]  # (x, mask, **params) -> estimate, all (..., m, n)


@dataclasses.dataclass(frozen=True)
class _Entry:
  fn: Reconstructor
  check_params: Callable[..., None]  # (shape, *, param=default, ...) -> None, raises ValueError


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, fn: Reconstructor, check_params: Callable[..., None]) -> None:
  """Adds a reconstructor `fn(x, mask, **params)` and its parameter check under `name`.

  `check_params(shape, *, param=default, ...)` takes the matrix shape and the
  method's parameters as keyword-only arguments (their names are what
  `reconstruct_images` accepts) and raises ValueError for unusable values.
  """
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
  signature = inspect.signature(entry.check_params)
  accepted = [p for p in signature.parameters.values() if p.kind == p.KEYWORD_ONLY]
  unknown = sorted(set(params) - {p.name for p in accepted})
  missing = [p.name for p in accepted if p.default is p.empty and p.name not in params]
  if unknown or missing:
    problem = f"unknown {', '.join(unknown)}" if unknown else f"missing {', '.join(missing)}"
    raise ValueError(f"invalid parameters for method {name!r}: {problem}; it takes "
                     f"{', '.join(p.name for p in accepted)}")
  entry.check_params(shape, **params)


register("usvt", usvt.usvt, usvt.check_params)
register("soft_impute", soft_impute.soft_impute, soft_impute.check_params)
register("nuclear_norm", nuclear_norm.nuclear_norm, nuclear_norm.check_params)
register("splic", splic.splic, splic.check_params)
register("splic_alternating", splic.splic_alternating, splic.check_params)
