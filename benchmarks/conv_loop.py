"""Convolutions and their input gradients inside and outside a loop, lax against models.conv.

  python -m benchmarks.conv_loop

XLA:CPU runs a convolution whose kernel is read as (H, W, O, I), the form of JAX's input
gradient, on a slow path inside a while loop (docs/benchmarks.md, "Convolution gradients
inside loops"). Rows, each in microseconds per image and step, median of `--repeats`:

  conv <layout>      one 3x3 `--channels` -> `--channels` convolution and a tanh, `--steps`
                     times: launched step by step from Python, and inside `fori_loop`
  grad <conv>        a signed-gradient step on the input of three 3x3 convolutions with
                     ReLUs (16, 32, 64 channels, 32 x 32 x 3 images), with lax's convolution
                     or models.conv's, from Python and inside `fori_loop`
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax import lax

from benchmarks import summary
from menet_jax.models import conv
from menet_jax.utils import machine

_BATCH = flags.DEFINE_integer("batch_size", 250, "Images per call.")
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per call.")
_CHANNELS = flags.DEFINE_integer("channels", 16, "Channels of the single-convolution rows.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per row (median).")


def _per_image_step_us(step, x) -> tuple[float, float]:
  """(from Python, inside fori_loop): us per image and step of `step` applied `--steps` times."""
  n = _STEPS.value
  jitted = jax.jit(step)

  def from_python(a):
    for _ in range(n):
      a = jitted(a)
    return a

  in_loop = jax.jit(lambda a: lax.fori_loop(0, n, lambda i, b: step(b), a))
  rates = []
  for fn in (from_python, in_loop):
    fn(x).block_until_ready()
    times = []
    for _ in range(_REPEATS.value):
      t0 = time.perf_counter()
      fn(x).block_until_ready()
      times.append(time.perf_counter() - t0)
    rates.append(1e6 * float(np.median(times)) / (n * x.shape[0]))
  return rates[0], rates[1]


def main(argv):
  del argv
  print(f"# machine: {machine.describe()}")
  b, c = _BATCH.value, _CHANNELS.value
  rows = []
  x = jax.random.uniform(jax.random.key(0), (b, 32, 32, c))
  kernel = 0.1 * jax.random.normal(jax.random.key(1), (3, 3, c, c))
  for layout in ("HWIO", "HWOI"):
    step = lambda a, layout=layout: jnp.tanh(lax.conv_general_dilated(
        a, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", layout, "NHWC")))
    rows.append((f"conv {layout}", *_per_image_step_us(step, x)))

  images = jax.random.uniform(jax.random.key(2), (b, 32, 32, 3))
  kernels = [0.1 * jax.random.normal(jax.random.key(3 + i), (3, 3, cin, cout))
             for i, (cin, cout) in enumerate([(3, 16), (16, 32), (32, 64)])]
  for name, fn in (("lax", lax.conv_general_dilated), ("models.conv", conv.conv_general_dilated)):
    def loss(a, fn=fn):
      for k in kernels:
        a = jax.nn.relu(fn(a, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
      return jnp.sum(jnp.tanh(a))
    step = lambda a, loss=loss: jnp.clip(a + 0.01 * jnp.sign(jax.grad(loss)(a)), 0, 1)
    rows.append((f"grad {name}", *_per_image_step_us(step, images)))

  loops = {name: loop for name, _, loop in rows}
  summary.record("conv_loop", "input-gradient step in fori_loop", 1e6 / loops["grad models.conv"],
                 "lax's rule", 1e6 / loops["grad lax"], "img x steps/s")
  print(f"# {b} images, {_STEPS.value} steps per call, median of {_REPEATS.value} calls")
  print("| row | from Python us/img/step | inside fori_loop us/img/step | loop / Python |")
  print("|---|---|---|---|")
  for name, python, loop in rows:
    print(f"| {name} | {python:.1f} | {loop:.1f} | {loop / python:.2f} |")


if __name__ == "__main__":
  app.run(main)
