"""Per-example losses that attacks ascend, on logits (B, classes) and labels (B,).

    cross_entropy:  -log softmax(z)_y
    cw_margin:      min(max_{j != y} z_j - z_y, kappa)   (Carlini & Wagner's f_6, as Madry et al.
                    use it under l-inf: the attack stops pushing once the best wrong logit
                    leads by the confidence kappa)
    dlr:            -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12)   (Croce & Hein, 2020;
                    z_pi sorted in decreasing order; invariant to shifts and scalings of z)
    dlr_targeted:   -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)   (the same paper's
                    targeted version, towards class t)

All are larger when the example is closer to being misclassified.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """(B, C), (B,) -> (B,) softmax cross-entropy."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _true_and_best_other(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
  true = jnp.sum(jnp.where(one_hot, logits, 0.0), -1)
  other = jnp.max(jnp.where(one_hot, -jnp.inf, logits), -1)
  return true, other


def cw_margin(logits: jax.Array, labels: jax.Array, kappa: float = 0.0) -> jax.Array:
  """(B, C), (B,) -> (B,) min(max_{j != y} z_j - z_y, kappa)."""
  true, other = _true_and_best_other(logits, labels)
  return jnp.minimum(other - true, kappa)


def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """(B, C), (B,) -> (B,) max_{j != y} z_j - z_y: positive iff misclassified."""
  true, other = _true_and_best_other(logits, labels)
  return other - true


def dlr(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """(B, C >= 3), (B,) -> (B,) the difference-of-logits ratio loss."""
  if logits.shape[-1] < 3:
    raise ValueError(f"dlr needs at least 3 classes, got logits of shape {logits.shape}")
  true, other = _true_and_best_other(logits, labels)
  top = jnp.sort(logits, -1)
  return -(true - other) / (top[..., -1] - top[..., -3] + 1e-12)


def dlr_targeted(logits: jax.Array, labels: jax.Array, targets: jax.Array) -> jax.Array:
  """(B, C >= 4), (B,), (B,) -> (B,) the targeted difference-of-logits ratio loss."""
  if logits.shape[-1] < 4:
    raise ValueError(f"dlr_targeted needs at least 4 classes, got logits of shape {logits.shape}")
  pick = lambda c: jnp.take_along_axis(logits, c[:, None].astype(jnp.int32), -1)[:, 0]
  top = jnp.sort(logits, -1)
  return -(pick(labels) - pick(targets)) / (top[..., -1] - 0.5 * (top[..., -3] + top[..., -4])
                                            + 1e-12)


LOSSES = {"ce": cross_entropy, "cw": cw_margin, "dlr": dlr, "margin": margin}
