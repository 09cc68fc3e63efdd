"""Reconstructors by name (utils.registry), so that configuration chooses the method.

A reconstructor is `fn(x, mask, *, params...) -> estimate` on (..., m, n)
matrices; its keyword-only parameters and their defaults are declared in its
signature and nowhere else. Each is registered with `check(shape, **params)`,
which validates the values (ranges, a rank against the matrix size) without
running the method; `check_params` fills in the declared defaults first.
"""

from __future__ import annotations

from typing import Callable

import jax

from menet_jax.reconstruct import nuclear_norm, soft_impute, splic, tv_minimization, usvt
from menet_jax.utils.registry import Registry

Reconstructor = Callable[..., jax.Array]  # (x, mask, **params) -> estimate, all (..., m, n)

RECONSTRUCTORS = Registry("method")


def register(name: str, fn: Reconstructor, check: Callable[..., None]) -> None:
  """Adds `fn(x, mask, *, params...)` and its check `check(shape, *, params...)` as `name`."""
  RECONSTRUCTORS.register(name, fn, check=check)


def names() -> tuple[str, ...]:
  return RECONSTRUCTORS.names()


def get(name: str) -> Reconstructor:
  """The reconstructor registered as `name`, e.g. get("usvt")(x, mask, keep=0.8)."""
  return RECONSTRUCTORS.get(name)


def check_params(name: str, shape: tuple[int, ...], **params) -> dict:
  """Validates `params` for method `name` on matrices of `shape` without running it.

  Returns:
    Every parameter of the method, with its declared default where not given.
  """
  name, bound = RECONSTRUCTORS.bind(name, **params)
  RECONSTRUCTORS.entry(name).metadata["check"](shape, **bound)
  return bound


register("usvt", usvt.usvt, usvt.check_params)
register("soft_impute", soft_impute.soft_impute, soft_impute.check_params)
register("nuclear_norm", nuclear_norm.nuclear_norm, nuclear_norm.check_params)
register("splic", splic.splic, splic.check_params)
register("splic_alternating", splic.splic_alternating, splic.check_params)
register("tv_minimization", tv_minimization.tv_minimization, tv_minimization.check_params)
