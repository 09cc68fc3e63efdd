"""Backward Pass Differentiable Approximation (Athalye, Carlini & Wagner, 2018).

A preprocessing defense g(x) that is non-differentiable, or whose gradient is
useless, is attacked by running g forward and replacing its vector-Jacobian
product by that of a differentiable h with h(x) ~ g(x). For ME-Net's
reconstruction the standard choice is h(x) = x: the backward pass is the identity.
"""

from __future__ import annotations

from typing import Callable

import jax


def bpda(f: Callable[..., jax.Array], approx: Callable[..., jax.Array] | None = None
         ) -> Callable[..., jax.Array]:
  """Wraps f so that its derivative with respect to the first argument is approximated.

  g = bpda(f) computes g(x, *args) = f(x, *args) and, in reverse mode,
  returns the cotangent unchanged (the VJP of the identity); f(x) must then have
  the shape and dtype of x. g = bpda(f, approx=h) uses the VJP of h(x, *args)
  at x instead. The other arguments (PRNG keys, masks, parameters) get zero
  cotangents. g works under jit, vmap and grad; forward-mode (jvp) is not
  defined, as for any custom VJP.

  Args:
    f: the function to attack, f(x, *args) -> array.
    approx: optional differentiable approximation h(x, *args) -> array of f's shape.

  Returns:
    g with g(x, *args) == f(x, *args).
  """
  if not callable(f):
    raise ValueError(f"f must be callable, got {type(f).__name__}")
  if approx is not None and not callable(approx):
    raise ValueError(f"approx must be callable or None, got {type(approx).__name__}")

  # The extra arguments travel as one pytree so that bwd can give them all a
  # zero cotangent (None) whatever their number and type (keys, ints, arrays).
  @jax.custom_vjp
  def g(x, args):
    return f(x, *args)

  def fwd(x, args):
    out = f(x, *args)
    if approx is None:
      if out.shape != x.shape or out.dtype != x.dtype:
        raise ValueError(
            "bpda(f) with the identity backward pass needs f(x) to have x's shape and dtype; "
            f"got {x.shape} {x.dtype} -> {out.shape} {out.dtype}. Pass approx= otherwise.")
      return out, None
    approx_out, vjp = jax.vjp(lambda x_: approx(x_, *args), x)
    if approx_out.shape != out.shape:
      raise ValueError(
          f"approx(x) must have the shape of f(x), got {approx_out.shape} and {out.shape}")
    return out, vjp

  def bwd(vjp, cotangent):
    return (cotangent if vjp is None else vjp(cotangent)[0], None)

  g.defvjp(fwd, bwd)

  def wrapped(x, *args):
    return g(x, args)

  wrapped.__wrapped__ = f
  wrapped.__doc__ = f"bpda({getattr(f, '__name__', 'f')}): forward f, approximate backward."
  return wrapped
