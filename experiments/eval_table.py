"""One table over several evaluation records (<workdir>/eval/<name>.json), and with
--figure=FILE.png their clean and worst-case accuracies side by side (95 % intervals).

  python -m experiments.eval_table runs/a/eval/cpu.json runs/b/eval/cpu.json
  python -m experiments.eval_table --figure=out/compare.png runs/a/eval/cpu.json ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from menet_jax.evaluation import curves, report

USAGE = "usage: python -m experiments.eval_table [--figure=FILE.png] RECORD.json [RECORD.json ...]"


def main(argv: list[str]) -> None:
  figure = None
  paths = []
  for arg in argv[1:]:
    if arg.startswith("--figure="):
      figure = arg.split("=", 1)[1]
    elif arg.startswith("-"):
      sys.exit(f"error: unknown option {arg}\n{USAGE}")
    else:
      paths.append(arg)
  if not paths or figure == "":
    sys.exit(USAGE)
  records = []
  for path in paths:
    try:
      with open(path) as f:
        records.append(json.load(f))
    except (OSError, json.JSONDecodeError) as e:
      sys.exit(f"error: cannot read the evaluation record {path}: {e}")
  print(report.combined(records), end="")
  if figure:
    names = [Path(r.get("run") or p).name or p for r, p in zip(records, paths)]
    print(f"figure: {curves.compare(records, names, figure)}")


if __name__ == "__main__":
  main(sys.argv)
