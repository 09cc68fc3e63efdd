"""Runs a Python child process under a watchdog: a hang fails the test instead of CI.

The child gets its own session (process group); if it has not exited after
`timeout` seconds the whole group is killed with SIGKILL and the test fails
with the tail of the child's output. The number of CPU devices is fixed when
JAX starts, so tests that need several devices run their code this way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import pytest

REPO = Path(__file__).resolve().parents[1]


def xla_flags(devices: int = 1) -> str:
  """This process's XLA_FLAGS (the suite's, conftest.py) with `devices` CPU devices."""
  return " ".join(filter(None, [os.environ.get("XLA_FLAGS"),
                                f"--xla_force_host_platform_device_count={devices}"]))


def env(devices: int = 1) -> dict[str, str]:
  """The environment of a child with `devices` CPU devices that imports this checkout."""
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(devices),
              PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def start(args: Sequence[str], devices: int = 1) -> subprocess.Popen:
  """Starts `python args...` in the repository root, stdout and stderr merged."""
  return subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, env=env(devices),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)


def finish(procs: Sequence[subprocess.Popen], timeout: float, what: str) -> list[str]:
  """Waits for every child (all within `timeout` s in total); returns their outputs.

  Fails the test, after killing every child's process group, if any child is
  still running at the deadline ("hung") or exited with a non-zero status.
  Outputs are read from all children before either is judged, so that when one
  fails the others' logs say why.
  """
  deadline = time.monotonic() + timeout
  outs, hung = [], []
  for proc in procs:
    try:
      outs.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
      hung.append(proc)
      os.killpg(proc.pid, signal.SIGKILL)
      outs.append(proc.communicate()[0])
  logs = "\n\n".join(f"process {i}:\n{out[-3000:]}" for i, out in enumerate(outs))
  if hung:
    for proc in procs:
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"{what} hung: no exit within {timeout:.0f} s (killed)\n{logs}")
  if any(proc.returncode for proc in procs):
    pytest.fail(f"{what} failed\n{logs}")
  return outs


def run(args: Sequence[str], *, devices: int = 1, timeout: float, what: str) -> str:
  """One child, `start` + `finish`; returns its output."""
  return finish([start(args, devices)], timeout, what)[0]


def free_port() -> int:
  """A TCP port on localhost that nothing listens on now (a jax.distributed coordinator's)."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]
