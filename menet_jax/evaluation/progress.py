"""Progress of an attack row: a bar with an ETA on a terminal, a log line every half minute
elsewhere (a batch job's log), nothing when switched off.

The bar counts images as their batches finish; within a batch it counts the network's forward
passes (a heartbeat from inside the compiled attack), so that a long batch shows that it moves
and how fast. The ETA comes from the batches done.

    with progress.Progress("apgd_ce-100", images=n, enabled=True) as p:
      ... p.forward() (from the compiled code) ... p.batch(images_in_batch) ...
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable

import tqdm

LOG_EVERY_S = 30.0


class Progress:
  """A row's progress; `forward` and `batch` are its two ticks."""

  def __init__(self, label: str, images: int, enabled: bool = True,
               log: Callable[[str], None] = print, every_s: float | None = None):
    self.label, self.images, self.enabled, self.log = label, images, enabled, log
    self.every_s = LOG_EVERY_S if every_s is None else every_s
    self.done = self.passes = 0
    self.start = self.last = time.perf_counter()
    self.lock = threading.Lock()  # the heartbeat arrives on XLA's callback thread
    self.bar = None
    if enabled and sys.stderr.isatty():
      self.bar = tqdm.tqdm(total=images, desc=f"{label:>20}", unit="img", leave=False)

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    if self.bar is not None:
      self.bar.close()

  def forward(self) -> None:
    """One forward pass of the network finished (called from inside the compiled attack)."""
    with self.lock:
      self.passes += 1
      self._report()

  def batch(self, images: int) -> None:
    """A batch of `images` images finished."""
    with self.lock:
      self.done += images
      if self.bar is not None:
        self.bar.update(images)
      self._report()

  def _report(self) -> None:
    if not self.enabled:
      return
    now = time.perf_counter()
    if self.bar is not None:
      self.bar.set_postfix_str(f"{self.passes} forward passes", refresh=False)
      return
    if now - self.last < self.every_s or self.done >= self.images:
      return
    self.last = now
    eta = (f", about {(now - self.start) / self.done * (self.images - self.done):.0f} s left"
           if self.done else "")
    self.log(f"{self.label:>20}  {self.done}/{self.images} images, {self.passes} forward passes, "
             f"{now - self.start:.0f} s{eta}")
