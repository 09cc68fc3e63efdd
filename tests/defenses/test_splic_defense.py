"""SPLIC as a defense (SPLIC section 3.4) against the numpy reference of Algorithm 1."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import defenses
from menet_jax.reconstruct import masks
from references import matrices as references


def test_splic_defense_is_alternated_splic_on_half_the_pixels():
  d = defenses.create("splic(rank=2, draws=3)")
  assert d.randomized
  np.testing.assert_array_equal(d.train_levels, [0.5, 0.5, 0.5])  # 3 draws, all at p = 0.5
  assert d.test_level == 0.5
  x = np.random.default_rng(0).uniform(0, 1, (2, 6, 6, 3))
  keys = jax.random.split(jax.random.key(0), 2)
  with jax.enable_x64(True):
    out = np.asarray(jax.jit(d.transform)(keys, jnp.asarray(x), jnp.full(2, 0.5)))
    for i in range(2):
      # The anchors are the image's own p = 0.5 mask over the concat matrix [R | G | B].
      mask = np.asarray(masks.image_mask(keys[i], (1, 6, 6, 3), 0.5, "concat")[0])
      mat = (2 * x[i] - 1).transpose(0, 2, 1).reshape(6, 18)
      est = references.splic(references.splic(mat, mask, 2), ~mask, 2)  # anchors, then swapped
      ref = (np.clip(est, -1, 1).reshape(6, 3, 6).transpose(0, 2, 1) + 1) / 2
      np.testing.assert_allclose(out[i], ref, atol=1e-8)
  assert not np.allclose(out, x, atol=1e-2)


def test_splic_defense_takes_the_solver():
  # 16 x 48 concat matrices, rank 2: the tracked block (10 columns) is smaller than 16.
  x = np.random.default_rng(1).uniform(0, 1, (2, 16, 16, 3))
  keys = jax.random.split(jax.random.key(0), 2)
  outs = {}
  for solver in ("eigh", "subspace"):
    d = defenses.create(f"splic(rank=2, solver={solver})")
    assert dict(d.params)["solver"] == solver
    with jax.enable_x64(True):
      outs[solver] = np.asarray(jax.jit(d.transform)(keys, jnp.asarray(x), jnp.full(2, 0.5)))
  # The routes agree to the subspace's approximation error, a property of the algorithm, not of
  # rounding: in float64 (rounding ~1e-15) the CPU cannot move it. It is about 6e-7 on these
  # noise images, whose flat spectra are the hardest case for a tracked subspace. A wrong route
  # (another rank, entries not anchored) differs by O(0.1).
  assert np.abs(outs["subspace"] - outs["eigh"]).max() < 1e-4
  with pytest.raises(ValueError, match="solver must be one of"):
    defenses.create("splic(solver=lanczos)").check((16, 16, 3))
