"""Data parallelism over every device of every host: one mesh axis, "data".

Training uses `jax.jit` over a `NamedSharding` mesh rather than `jax.pmap`: in
the JAX pinned here (0.10) pmap is documented as the "old way" and is itself
implemented with jit and shard_map. With jit the program is written for the
global batch; XLA splits it over devices, so gradient averaging and the
BatchNorm statistics are over the global batch by construction (synchronised
BatchNorm), and the result does not depend on the device count up to
floating-point reduction order.

Multi-host: every process runs the same program (`jax.distributed.initialize`),
reads only its own shard of the data and contributes its local slice of each
global batch (`jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from menet_jax.utils import validation

AXIS = "data"


def use_cpu_devices(n: int) -> None:
  """Splits this host's CPU into n XLA devices (`jax_num_cpu_devices`); call it before JAX runs
  anything.

  One XLA:CPU program runs its operations one after another, each spread over the host's
  threads; small operations (the 28 x 28 convolutions of a RIDE fit on MNIST) leave cores idle:
  a second core sped that fit up 1.35x. With n devices the per-device work of `per_device`
  (defense transforms, ME builds) and the slices of a sharded batch run as n programs at once
  (docs/benchmarks.md, RIDE: 1.3-1.6x on MNIST with 2 devices on 2 cores). Only the CPU
  backend is split; batches must then be divisible by n (`check_batch`).
  """
  validation.integer_in("cpu_devices", n, 1)
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError as e:  # JAX's own message: a backend has started
    raise ValueError(f"cpu_devices must be set before JAX runs anything ({e})") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins a multi-process run (`jax.distributed.initialize`).

  On TPU pods and SLURM/Open MPI clusters JAX finds the arguments itself; on
  other machines (or for CPU processes on one machine) pass all three.
  """
  # CPU processes need a collectives backend for cross-process all-reduces; the
  # setting only concerns the CPU client, so GPU and TPU runs are unaffected.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  logging.info("process %d of %d, %d local of %d devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes)."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), (AXIS,))


def batch_sharding(m: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh."""
  return NamedSharding(m, PartitionSpec(AXIS))


def replicated(m: Mesh) -> NamedSharding:
  return NamedSharding(m, PartitionSpec())


def check_batch(name: str, batch_size: int) -> int:
  """The per-process batch for a global `batch_size`, which every device must share evenly."""
  devices, processes = jax.device_count(), jax.process_count()
  if batch_size % devices:
    raise ValueError(f"{name} must be divisible by the number of devices ({devices}), "
                     f"got {batch_size}")
  return batch_size // processes


def host_shard(n: int) -> np.ndarray:
  """The indices of an n-item split that this process reads: a contiguous 1/P share.

  The first n % P processes get one item more, so every item is read by exactly
  one process.
  """
  return np.array_split(np.arange(n), jax.process_count())[jax.process_index()]


def global_batch(m: Mesh, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Assembles each process's local slices into global arrays sharded over the mesh."""
  sharding = batch_sharding(m)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def per_device(fn: Callable[..., Any], m: Mesh, split: Sequence[bool]) -> Callable[..., Any]:
  """fn(*args) run by each device on its slice of the batch (shard_map).

  For per-example computations such as the ME reconstruction: the iterative
  solvers' while loops then stay local to a device instead of being
  partitioned by XLA. This is the one place the library wraps shard_map.

  Args:
    fn: the per-device function.
    m: the device mesh (`mesh()`, or one over some local devices).
    split: for each argument, whether it is split along its leading (batch)
      axis (True) or replicated (False). Every output is split.
  """
  specs = tuple(PartitionSpec(AXIS) if s else PartitionSpec() for s in split)
  # check_vma=False: fn has no collectives, and the solvers' while loops start from
  # carries that do not depend on the inputs, which the varying-axes check rejects
  # in lax.cond ("cond branches must have equal output types").
  return jax.shard_map(fn, mesh=m, in_specs=specs, out_specs=PartitionSpec(AXIS),
                       check_vma=False)


def to_host(x: Any) -> Any:
  """A replicated pytree as numpy on this host (works for multi-host arrays too)."""
  def one(a):
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
      a = a.addressable_data(0)
    return np.asarray(a)
  return jax.tree.map(one, x)


def is_chief() -> bool:
  """Whether this is process 0, the one that writes files and prints."""
  return jax.process_index() == 0


def host_share(items: Sequence[Any]) -> list[Any]:
  """This process's contiguous share of `items` (`host_shard`): with P processes each takes
  about 1/P of them, every item is taken by exactly one process."""
  return [items[i] for i in host_shard(len(items))]


def across_processes(x: Any, reduce: Callable[..., np.ndarray]) -> Any:
  """Combines each process's copy of a pytree of arrays, leaf by leaf: `reduce(stacked, axis=0)`
  over the (P, ...) stack of the processes' copies (e.g. `np.any` of verdicts that each process
  filled for its own images). Every leaf must have the same shape on every process; with one
  process, x comes back as numpy (no collective runs)."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, x)
  from jax.experimental import multihost_utils  # noqa: PLC0415 (multi-process only)
  return jax.tree.map(lambda a: reduce(a, axis=0), multihost_utils.process_allgather(x))


def from_chief(x: Any) -> Any:
  """Process 0's copy of a pytree of arrays, on every process (as numpy); the other processes'
  leaves give only the shapes and dtypes, which must match the chief's."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, x)
  from jax.experimental import multihost_utils  # noqa: PLC0415 (multi-process only)
  return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(x))
