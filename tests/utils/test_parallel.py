"""utils.parallel's CPU split; what the device count changes is tests/training/test_parallel.py."""

import jax
import jax.numpy as jnp
import pytest

from menet_jax.utils import parallel
from tests import watchdog

SPLIT = """
from menet_jax.utils import parallel
parallel.use_cpu_devices(3)
import jax, jax.numpy as jnp
assert jax.device_count() == 3, jax.devices()
x = jnp.arange(6.0)
out = jax.jit(parallel.per_device(lambda a: 2 * a, parallel.mesh(), split=(True,)))(x)
assert {s.device.id for s in out.addressable_shards} == {0, 1, 2}
assert out.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0], out
print("ok")
"""


def test_use_cpu_devices_splits_the_host_before_jax_starts():
  out = watchdog.finish([watchdog.start(["-c", SPLIT])], 120, "use_cpu_devices")[0]
  assert out.strip().endswith("ok"), out[-2000:]


@pytest.mark.parametrize("n, match", [(0, "cpu_devices must be an integer >= 1, got 0"),
                                      (2, "cpu_devices must be set before JAX runs anything")])
def test_use_cpu_devices_refuses_bad_counts_and_a_started_backend(n, match):
  jnp.zeros(1).block_until_ready()  # this process's backend has started
  with pytest.raises(ValueError, match=match):
    parallel.use_cpu_devices(n)
  assert jax.device_count() >= 1
