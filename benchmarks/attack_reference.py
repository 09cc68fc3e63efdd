"""menet_jax's APGD-CE, APGD-T, FAB-T and Square against the PyTorch reference (torchattacks,
AutoAttack's standard budgets) on the same trained network and images: robust accuracy of each,
the paired difference per attack with its sampling noise, and the worst case over the four.

The reference's per-image flags come from `python -m references.autoattack_torch` (a port of the
same Flax weights; its logits are checked against the Flax ones there). This script runs the
JAX attacks on every image (no cascade, so each attack's accuracy stands alone), and compares:

    d = acc_jax - acc_ref,   se(d) = sqrt(b + c - (b - c)^2 / n) / n

with b, c the images robust in one only (the paired standard error; McNemar's counts). An
attack agrees with the reference within noise when |d| <= 2 se(d) + 1 / n.

    python -m references.autoattack_torch --workdir=RUN --data_dir=../shared/data \\
      --images=500 --eps=0.3 --out=out/reference_torch.npz
    python -m benchmarks.attack_reference --workdir=RUN --data_dir=../shared/data \\
      --images=500 --eps=0.3 --reference=out/reference_torch.npz --out=docs/eval/reference/x.md

Under l2, both commands take `--norm=l2`, and the same eps (in pixel units).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from absl import app, flags

from menet_jax import attacks, data, evaluation
from menet_jax.utils import machine
from menet_jax.utils.atomic_write import atomic_write

# The JAX row of each reference attack, at AutoAttack's standard budgets.
ROWS = {"apgd_ce": "apgd_ce(steps=100)", "apgd_t": "apgd_t(steps=100, targets=9)",
        "fab_t": "fab_t(steps=100, targets=9)", "square": "square(queries=5000, rescale=False)"}

_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run (its bare classifier).",
                               required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Local dataset files.")
_IMAGES = flags.DEFINE_integer("images", 500, "The first N images of the run's test split.")
_NORM = flags.DEFINE_enum("norm", "linf", list(attacks.NORMS), "The threat model's norm.")
_EPS = flags.DEFINE_float("eps", 0.3, "Radius in `norm`, in pixel units.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the JAX attacks.")
_REFERENCE = flags.DEFINE_string("reference", None, "The reference's per-image flags (.npz of "
                                 "references.autoattack_torch, its .json beside it).",
                                 required=True)
_ATTACKS = flags.DEFINE_list("attacks", list(ROWS), "Attacks to compare.")
_OUT = flags.DEFINE_string("out", None, "Markdown report (stdout only when unset).")


def paired(ours: np.ndarray, theirs: np.ndarray) -> dict[str, float]:
  """Accuracies, their difference and its paired standard error, on the same n images."""
  n = len(ours)
  b, c = int(np.sum(ours & ~theirs)), int(np.sum(~ours & theirs))
  d = (b - c) / n
  se = math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n
  return {"ours": float(ours.mean()), "theirs": float(theirs.mean()), "diff": d, "se": se,
          "only_ours": b, "only_theirs": c, "agree": abs(d) <= 2 * se + 1 / n}


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments {argv[1:]}")
  unknown = sorted(set(_ATTACKS.value) - set(ROWS))
  if unknown:
    raise SystemExit(f"unknown attacks {unknown}; choose from {', '.join(ROWS)}")
  ref_path = Path(_REFERENCE.value)
  ref_meta = json.loads(ref_path.with_suffix(".json").read_text())
  with np.load(ref_path) as f:
    ref = {k: f[k] for k in f.files}
  ref_norm = ref_meta.get("norm", "linf")  # references written before --norm ran l-inf
  if (ref_meta["images"] != _IMAGES.value or abs(ref_meta["eps"] - _EPS.value) > 1e-12
      or ref_norm != _NORM.value):
    raise SystemExit(f"the reference ran {ref_meta['images']} images at {ref_norm} eps "
                     f"{ref_meta['eps']}, not {_IMAGES.value} at {_NORM.value} eps {_EPS.value}")
  restored = evaluation.load(_WORKDIR.value)
  bare = restored.with_defense(evaluation.target.as_defense(None))
  config = restored.config
  images, labels = data.load(config.dataset, config.test_split, _DATA_DIR.value)
  x = images[:_IMAGES.value].astype(np.float32) / 255.0
  y = labels[:_IMAGES.value]
  names = list(_ATTACKS.value)
  result = evaluation.evaluate(bare, x, y, eps=_EPS.value, norm=_NORM.value,
                               attacks=[ROWS[a] for a in names], cascade=False, sanity_eps=(),
                               seed=_SEED.value)
  rows = {r["attack"]: r for r in result.record["results"]}
  verdict = {r["attack"]: result.verdicts[r["spec"]][0] for r in result.record["results"]}
  lines = [f"# menet_jax's attacks against torchattacks on `{config.model}`", "",
           f"- run: `{_WORKDIR.value}`, checkpoint step {restored.step}; the bare classifier "
           f"(run's defense `{config.defense}` not applied)",
           f"- images: the first {len(x)} of {config.dataset} `{config.test_split}`; "
           f"{'l2' if _NORM.value == 'l2' else 'l-inf'} eps {_EPS.value:g}; clean accuracy "
           f"{rows['clean']['accuracy']:.2%}",
           f"- reference: torch {ref_meta['versions']['torch']}, torchattacks "
           f"{ref_meta['versions']['torchattacks']}, `{ref_path.name}` (logits agree to "
           f"{ref_meta['logit_agreement']['max_rel_diff']:.2g} of their scale)",
           f"- machine: {machine.describe()}",
           f"- command: `python -m benchmarks.attack_reference {' '.join(sys.argv[1:])}`", "",
           "| attack | menet_jax | reference | difference | paired se | robust only in ours / "
           "only in theirs | within noise | menet_jax s | reference s |",
           "|---|---|---|---|---|---|---|---|---|"]
  ours_all, theirs_all = np.ones(len(x), bool), np.ones(len(x), bool)
  for a in names:
    p = paired(verdict[a], ref[a])
    ours_all &= verdict[a]
    theirs_all &= ref[a]
    lines.append(f"| {a} (`{rows[a]['spec']}`) | {p['ours']:.2%} | {p['theirs']:.2%} | "
                 f"{p['diff']:+.2%} | {p['se']:.2%} | {p['only_ours']} / {p['only_theirs']} | "
                 f"{'yes' if p['agree'] else '**no**'} | {rows[a]['wall_s']:.0f} | "
                 f"{ref_meta['seconds'][a]:.0f} |")
  p = paired(ours_all, theirs_all)
  lines.append(f"| worst case over these | {p['ours']:.2%} | {p['theirs']:.2%} | "
               f"{p['diff']:+.2%} | {p['se']:.2%} | {p['only_ours']} / {p['only_theirs']} | "
               f"{'yes' if p['agree'] else '**no**'} | | |")
  if "autoattack_standard" in ref:
    lines += ["", f"The reference's AutoAttack cascade (standard version, budgets as above): "
                  f"{ref['autoattack_standard'].mean():.2%}."]
  text = "\n".join(lines) + "\n"
  print(text)
  if _OUT.value:
    with atomic_write(_OUT.value) as tmp:
      tmp.write_text(text)


if __name__ == "__main__":
  app.run(main)
