"""What the evaluation's two savings are worth on a real evaluation, measured in one run:

1. The cascade (AutoAttack's way): each attack of a preset only on the images that the attacks
   before it left robust, against every attack on every image. Same worst case (checked here
   image by image where it must hold: the verdicts of the cascade's worst case are compared
   with the full run's), less time: the ratio of the attack rows' wall times.
2. One compilation per attack: the BPDA-PGD sanity sweep at its five radii with eps and step
   size as arguments of one compiled attack, against a compilation per radius (the runner's
   cache emptied before each), as before this change.

    python -m benchmarks.evaluation --workdir=runs/mnist_madry_cpu --data_dir=../shared/data \\
      --images=200 --eps=0.3
"""

from __future__ import annotations

import time
from typing import Sequence

import jax
import numpy as np
from absl import app, flags

from benchmarks import summary
from menet_jax import data, evaluation
from menet_jax.evaluation import runner
from menet_jax.utils import machine

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run.", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Local dataset files.")
_IMAGES = flags.DEFINE_integer("images", 200, "The first N images of the run's test split.")
_EPS = flags.DEFINE_float("eps", 0.3, "l-inf radius.")
_ATTACKS = flags.DEFINE_list("attacks", ["standard"], "The evaluation's attacks.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments {argv[1:]}")
  target = evaluation.load(_WORKDIR.value)
  config = target.config
  images, labels = data.load(config.dataset, config.test_split, _DATA_DIR.value)
  x, y = images[:_IMAGES.value].astype(np.float32) / 255.0, labels[:_IMAGES.value]
  print(f"# machine: {machine.describe()}")
  print(f"# {config.model} of {_WORKDIR.value}, {len(x)} images, eps {_EPS.value:g}, attacks "
        f"{','.join(_ATTACKS.value)}\n")
  common = dict(eps=_EPS.value, attacks=_ATTACKS.value, sanity_eps=(), progress=False,
                log=lambda line: None)
  runs = {}
  for cascade in (True, False):
    runner._CACHE.clear()
    runs[cascade] = evaluation.evaluate(target, x, y, cascade=cascade, **common)
  same = np.array_equal(runs[True].verdicts["worst_case"], runs[False].verdicts["worst_case"])
  wall = {c: sum(r["wall_s"] for r in runs[c].record["results"]) for c in runs}
  print("| attack | full s | cascade s | images attacked |\n|---|---|---|---|")
  for full_row, cascade_row in zip(runs[False].record["results"], runs[True].record["results"]):
    print(f"| {full_row['label']} | {full_row['wall_s']:.1f} | {cascade_row['wall_s']:.1f} | "
          f"{cascade_row['attacked']} of {full_row['attacked']} |")
  print(f"| all | {wall[False]:.1f} | {wall[True]:.1f} | |\n")
  print(f"worst case: full {runs[False].worst_case['accuracy']:.2%}, cascade "
        f"{runs[True].worst_case['accuracy']:.2%} (per-image verdicts "
        f"{'identical' if same else 'differ: the attacks depend on their batch'}); cascade "
        f"speed-up {wall[False] / wall[True]:.2f}x\n")
  summary.record("evaluation", "cascade", 1 / wall[True], "every attack on every image",
                 1 / wall[False], "evaluations/s")

  # The sweep: five radii of one attack on the same images.
  m = min(100, len(x))
  plan = evaluation.EvalConfig(eps=_EPS.value, attacks=("clean",), sanity_images=m,
                               progress=False).checked(x.shape[1:], False)
  radii = plan.sanity_eps
  times = {}
  for shared in (True, False):
    runner._CACHE.clear()
    t0 = time.perf_counter()
    for e in radii:
      if not shared:
        runner._CACHE.clear()
      runner.run_attack(target, None, x[:m], y[:m], spec="bpda_pgd(steps=20)", eps=e,
                        step_size=max(plan.step_size, 2.5 * e / 20), restarts=1, draws=1,
                        attack_key=jax.random.key(0), eval_key=jax.random.key(1),
                        batch_size=m)
    times[shared] = time.perf_counter() - t0
  print(f"sanity sweep (bpda_pgd-20 at {len(radii)} radii, {m} images): one compilation "
        f"{times[True]:.1f} s, one per radius {times[False]:.1f} s: "
        f"{times[False] / times[True]:.2f}x")
  summary.record("evaluation", "sweep compiled once", 1 / times[True], "compiled per radius",
                 1 / times[False], "sweeps/s")


if __name__ == "__main__":
  app.run(main)
