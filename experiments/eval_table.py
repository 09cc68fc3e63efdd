"""One table over several evaluation records (<workdir>/eval/<name>.json).

  python -m experiments.eval_table runs/a/eval/cpu.json runs/b/eval/cpu.json
"""

from __future__ import annotations

import json
import sys

from menet_jax.evaluation import report


def main(argv: list[str]) -> None:
  if len(argv) < 2:
    sys.exit("usage: python -m experiments.eval_table RECORD.json [RECORD.json ...]")
  records = []
  for path in argv[1:]:
    try:
      with open(path) as f:
        records.append(json.load(f))
    except (OSError, json.JSONDecodeError) as e:
      sys.exit(f"error: cannot read the evaluation record {path}: {e}")
  print(report.combined(records), end="")


if __name__ == "__main__":
  main(sys.argv)
