"""A one-line description of the machine and JAX set-up, recorded next to every measured number."""

from __future__ import annotations

import os
import platform

import jax


def describe() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  return (f"{cpu}, {os.cpu_count()} cores; JAX {jax.__version__} on {jax.default_backend()} "
          f"({len(devices)} x {', '.join(kinds)})")
