"""Progress of an attack row: a bar with an ETA on a terminal, a log line every half minute
elsewhere (a batch job's log), nothing when switched off.

The row counts the network's forward passes (a heartbeat from inside the compiled attack) and
the images as their batches finish. How many passes a batch makes is read off the compiled
program (`calls`: the heartbeats in its jaxpr, times the trip counts of the loops around them),
so the ETA moves with every step, also in a row of one batch; where a pass sits in a loop of
unknown length (a while loop), the ETA comes from the batches done.

    with progress.Progress("apgd_ce-100", images=n, passes=calls(jaxpr) * batches) as p:
      ... p.forward() (from the compiled code) ... p.batch(images_in_batch) ...
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable

import tqdm
from jax.extend.core import ClosedJaxpr, Jaxpr

LOG_EVERY_S = 30.0


def calls(jaxpr: ClosedJaxpr | Jaxpr,
          primitive: str = "debug_callback") -> int | None:
  """How many times `primitive` runs when `jaxpr` runs once: its equations, counted through
  every sub-program, times the length of each scan around them and the size of each shard_map's
  mesh; None if one sits in a while loop (its trip count is only known at run time) or in
  branches of a cond that run it a different number of times."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == primitive:
      total += 1
      continue
    subs = [calls(p, primitive) for v in eqn.params.values()
            for p in (v if isinstance(v, (tuple, list)) else (v,))
            if isinstance(p, (ClosedJaxpr, Jaxpr))]
    if None in subs:
      return None
    if name == "while":
      if any(subs):
        return None
    elif name == "cond":
      if len(set(subs)) > 1:
        return None
      total += subs[0] if subs else 0
    elif name == "scan":
      total += eqn.params["length"] * sum(subs)
    elif name == "shard_map":
      total += eqn.params["mesh"].size * sum(subs)
    else:
      total += sum(subs)
  return total


class Progress:
  """A row's progress; `forward` and `batch` are its two ticks.

  Args:
    label: the row's name; images: how many it attacks.
    passes: how many forward passes the row makes in all, if known (`calls`).
    enabled: report at all; log: where the lines go when stderr is not a terminal.
  """

  def __init__(self, label: str, images: int, enabled: bool = True,
               log: Callable[[str], None] = print, every_s: float | None = None,
               passes: int | None = None):
    self.label, self.images, self.enabled, self.log = label, images, enabled, log
    self.every_s = LOG_EVERY_S if every_s is None else every_s
    self.total = passes or None
    self.done = self.passes = 0
    self.start = self.last = time.perf_counter()
    self.first = None  # the first pass's time: compilation comes before it, not in the rate
    self.lock = threading.Lock()  # the heartbeat arrives on XLA's callback thread
    self.bar = None
    if enabled and sys.stderr.isatty():
      self.bar = (tqdm.tqdm(total=self.total, desc=f"{label:>20}", unit="pass", leave=False)
                  if self.total else
                  tqdm.tqdm(total=images, desc=f"{label:>20}", unit="img", leave=False))

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    if self.bar is not None:
      self.bar.close()

  def forward(self) -> None:
    """One forward pass of the network finished (called from inside the compiled attack)."""
    with self.lock:
      self.passes += 1
      if self.first is None:
        self.first = time.perf_counter()
      if self.bar is not None and self.total:
        self.bar.update(1)
      self._report()

  def batch(self, images: int) -> None:
    """A batch of `images` images finished."""
    with self.lock:
      self.done += images
      if self.bar is not None and not self.total:
        self.bar.update(images)
      self._report()

  def eta(self, now: float) -> float | None:
    """Seconds left: from the rate of forward passes where their total is known, else from the
    images done; None before there is a rate."""
    if self.total and self.first is not None and self.passes > 1:
      return (now - self.first) / (self.passes - 1) * (self.total - self.passes)
    if self.done:
      return (now - self.start) / self.done * (self.images - self.done)
    return None

  def _report(self) -> None:
    if not self.enabled:
      return
    now = time.perf_counter()
    if self.bar is not None:
      self.bar.set_postfix_str(f"{self.done}/{self.images} images" if self.total else
                               f"{self.passes} forward passes", refresh=False)
      return
    if now - self.last < self.every_s or self.done >= self.images:
      return
    self.last = now
    eta = self.eta(now)
    passes = f"{self.passes}/{self.total}" if self.total else f"{self.passes}"
    self.log(f"{self.label:>20}  {self.done}/{self.images} images, {passes} forward passes, "
             f"{now - self.start:.0f} s" + (f", about {eta:.0f} s left" if eta is not None else ""))
