"""A one-line description of the machine and JAX set-up, recorded next to every measured number."""

from __future__ import annotations

import os
import platform

import jax


def cpu_model(cpuinfo: str | None = None) -> str:
  """The CPU model: its name, vendor, family / model / stepping and widest SIMD.

  A virtual machine often reports only a generic name ("AMD EPYC"); the
  family / model numbers still tell the microarchitecture apart (e.g. AMD
  family 25 model 17 is Zen 4), and the SIMD width decides which kernels XLA
  and the BLAS library pick, so results that depend on rounding can differ
  between two CPUs with the same name.

  Args:
    cpuinfo: the text of /proc/cpuinfo (read from the machine when None).
  """
  if cpuinfo is None:
    try:
      with open("/proc/cpuinfo") as f:
        cpuinfo = f.read()
    except OSError:
      return platform.processor() or platform.machine()
  fields: dict[str, str] = {}
  for line in cpuinfo.splitlines():
    if not line.strip():
      break  # the first processor's block describes them all
    key, _, value = line.partition(":")
    fields.setdefault(key.strip(), value.strip())
  name = fields.get("model name") or platform.processor() or platform.machine()
  ids = [fields[k] for k in ("vendor_id",) if k in fields]
  ids += [f"{label} {fields[k]}" for k, label in
          (("cpu family", "family"), ("model", "model"), ("stepping", "stepping")) if k in fields]
  flags = set(fields.get("flags", "").split())
  simd = next((label for flag, label in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"))
               if flag in flags), None)
  detail = ", ".join(filter(None, [" ".join(ids), simd]))
  return f"{name} ({detail})" if detail else name


def describe() -> str:
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  return (f"{cpu_model()}, {os.cpu_count()} cores; JAX {jax.__version__} on {jax.default_backend()} "
          f"({len(devices)} x {', '.join(kinds)})")
