"""How far training on N devices drifts from training on one, step by step, in float32 and float64.

  python -m experiments.device_drift --data_dir=../shared/data [--devices=4 --mode=vanilla]

Trains the same short run four times, each in a process of its own (the device count is fixed
when JAX starts): float32 and float64 (jax_enable_x64 and the model's compute dtype float64, so
every parameter, activation, gradient and optimizer state is float64), each on 1 and on
--devices CPU devices. The run is tests/train_worker.py's: the small CNN on CIFAR-10 test[:128]
in batches of 16 (8 steps; pure: 2 USVT reconstructions of each image), SGD lr 0.05; a
checkpoint after every step. It prints, per step, the
largest difference over all parameters and batch statistics between 1 and N devices in each
dtype, and between each float32 run and the float64 1-device run (docs/numerics.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from absl import app, flags

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where CIFAR-10 is (e.g. ../shared/data).")
_DEVICES = flags.DEFINE_integer("devices", 4, "CPU devices of the N-device runs.", lower_bound=2)
_MODE = flags.DEFINE_enum("mode", "vanilla", ["vanilla", "pure"], "What the runs train.")
_IMAGES = flags.DEFINE_integer("images", 128, "Training images (batches of 16).", lower_bound=16)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the four runs go (default: a temporary "
                               "folder, removed afterwards).")
# Set in the children this script starts: the dtype, run directory and device count of a run.
_CHILD = flags.DEFINE_string("child", None, "(internal) float32 or float64: train one run.")
_RUN = flags.DEFINE_string("run", None, "(internal) the child's run directory.")
_CHILD_DEVICES = flags.DEFINE_integer("child_devices", 1, "(internal) the child's devices.")

BATCH = 16
MASKS = 2  # pure mode trains on MASKS reconstructions of every image


def _step_count() -> int:
  return _IMAGES.value * (MASKS if _MODE.value == "pure" else 1) // BATCH


def _config(workdir: str):
  from menet_jax.training.config import Config  # noqa: PLC0415 - after the child's x64 switch

  steps = _step_count()
  model = "small_cnn(dtype=float64)" if _CHILD.value == "float64" else "small_cnn"
  return Config.for_dataset(
      "cifar10", mode=_MODE.value, workdir=workdir, data_dir=_DATA_DIR.value,
      cache_dir=workdir + "-cache", train_split=f"test[:{_IMAGES.value}]",
      test_split=f"test[{_IMAGES.value}:{_IMAGES.value + 16}]", model=model, me_method="usvt",
      startp=0.4, endp=0.6, mask_num=MASKS, epochs=1, batch_size=BATCH, eval_batch_size=8, lr=0.05,
      progress=False, log_every=steps, checkpoint_every=1, keep_checkpoints=steps)


def _train() -> None:
  """The child: one run, a checkpoint after every step."""
  import jax  # noqa: PLC0415 - x64 and the devices must be set before JAX computes anything

  from menet_jax.utils import parallel  # noqa: PLC0415

  jax.config.update("jax_enable_x64", _CHILD.value == "float64")
  parallel.use_cpu_devices(_CHILD_DEVICES.value)
  from menet_jax.training import loop, run_dir  # noqa: PLC0415

  config = _config(_RUN.value)
  config.validate()
  run_dir.prepare(config)
  loop.train_and_evaluate(config, _RUN.value)


def _steps(workdir: Path) -> dict[int, dict[str, "np.ndarray"]]:
  """{step: {variable path: float64 array}} of every checkpoint of a run."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from menet_jax.training import checkpoint  # noqa: PLC0415
  from menet_jax.training.config import Config  # noqa: PLC0415

  config = Config.from_json(json.loads((workdir / "config.json").read_text()))
  ckpts = checkpoint.Checkpoints(workdir / "checkpoints", config=config.identity(),
                                 keep=config.keep_checkpoints, normalize=Config.identity_of)
  out = {}
  for step in range(1, _step_count() + 1):
    _, tree = ckpts.restore_tree(step)
    out[step] = {jax.tree_util.keystr(path): np.asarray(leaf, np.float64)
                 for path, leaf in jax.tree_util.tree_leaves_with_path(
                     {"params": tree["params"], "batch_stats": tree["batch_stats"]})}
  ckpts.close()
  return out


def main(argv: list[str]) -> None:
  del argv
  if _CHILD.value:
    _train()
    return
  import jax  # noqa: PLC0415

  jax.config.update("jax_enable_x64", True)  # restores the float64 runs as they were saved
  from menet_jax.utils import machine  # noqa: PLC0415

  with tempfile.TemporaryDirectory() as tmp:
    root = Path(_WORKDIR.value or tmp).absolute()
    runs = {}
    for dtype in ("float32", "float64"):
      for devices in (1, _DEVICES.value):
        run = root / f"{dtype}-{devices}"
        subprocess.run([sys.executable, "-m", "experiments.device_drift", f"--child={dtype}",
                        f"--run={run}", f"--child_devices={devices}", f"--mode={_MODE.value}",
                        f"--images={_IMAGES.value}", f"--data_dir={_DATA_DIR.value}"],
                       check=True, timeout=600)
        runs[dtype, devices] = _steps(run)
    n = _DEVICES.value
    diff = lambda a, b: max(float(abs(a[k] - b[k]).max()) for k in a)
    print(f"{_MODE.value} training, largest difference over parameters and batch statistics")
    print(f"| step | float32: 1 vs {n} devices | float64: 1 vs {n} | float32 1 device vs "
          f"float64 | float32 {n} devices vs float64 |")
    print("|---|---|---|---|---|")
    for step in runs["float32", 1]:
      ref = runs["float64", 1][step]
      print(f"| {step} | {diff(runs['float32', 1][step], runs['float32', n][step]):.2e} | "
            f"{diff(ref, runs['float64', n][step]):.2e} | "
            f"{diff(runs['float32', 1][step], ref):.2e} | "
            f"{diff(runs['float32', n][step], ref):.2e} |")
    print(f"\nmachine: {machine.describe()}")


if __name__ == "__main__":
  app.run(main)
