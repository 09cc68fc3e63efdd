"""The Defense interface: Identity, component strings, per-device draws, the inference rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import defenses
from menet_jax.defenses import MENet
from menet_jax.utils import parallel


def test_identity_changes_nothing_and_is_not_randomized():
  d = defenses.create("identity")
  x = jnp.asarray(np.random.default_rng(0).random((3, 4, 4, 1)), jnp.float32)
  keys = jax.random.split(jax.random.key(0), 3)
  assert not d.randomized and not d.preprocesses and d.votes == 1
  np.testing.assert_array_equal(d.transform(keys, x, jnp.ones(3)), x)
  g = jax.grad(lambda a: jnp.sum(d.attack_view(keys, a, jnp.ones(3)) ** 2))(x)
  np.testing.assert_allclose(g, 2 * x)
  assert defenses.on_devices(d, parallel.mesh()) is d


def test_spec_creates_an_equal_defense():
  d = defenses.create("menet(method=usvt, keep=0.5, startp=0.4, endp=0.6, mask_num=2)")
  assert defenses.create(d.spec()) == d
  assert "threshold=keep" in d.spec()  # the method's defaults are written out
  voting = defenses.create(d.spec(), inference="vote", votes=3)
  assert voting.votes == 3 and defenses.create(voting.spec()) == voting


def test_predict_is_the_majority_of_votes_draws():
  d = MENet.create(method="usvt", startp=0.4, endp=0.6, mask_num=2, inference="vote", votes=5)
  x = jnp.asarray(np.random.default_rng(1).random((6, 8, 8, 3)), jnp.float32)
  w = jnp.asarray(np.random.default_rng(2).normal(size=(8 * 8 * 3, 4)), jnp.float32)
  net = lambda v: v.reshape(v.shape[0], -1) @ w
  key, indices = jax.random.key(3), jnp.arange(10, 16)
  keys = d.inference_keys(key, indices)
  level = jnp.full(6, d.test_level)
  logits = np.stack([np.asarray(net(d.transform(k, x, level))) for k in keys])
  votes = logits.argmax(-1)
  counts = np.stack([(votes == c).sum(0) for c in range(4)], -1)
  np.testing.assert_array_equal(d.predict(net, key, x, indices), counts.argmax(-1))
  # An image's draws come from its index, not from its place in the batch.
  np.testing.assert_array_equal(d.predict(net, key, x[2:4], indices[2:4]),
                                d.predict(net, key, x, indices)[2:4])


def test_a_defense_without_transform_cannot_be_made():
  class Nothing(defenses.Defense):
    pass
  with pytest.raises(TypeError, match="abstract"):
    Nothing()
