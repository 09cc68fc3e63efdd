"""One table of every ratio the benchmarks measure (what `make bench` prints last).

Each benchmark script takes `--summary_file=FILE` and appends one JSON line per ratio
it measures (`record`); then

  python -m benchmarks.summary FILE

prints them as one table: benchmark, method, menet_jax's rate, the reference and its
rate in the same run, the ratio, the accuracy or objective gap where the benchmark
measures one, and the machine each line was measured on.
"""

from __future__ import annotations

import json
from pathlib import Path

from absl import app, flags

from menet_jax.utils import machine

_SUMMARY_FILE = flags.DEFINE_string(
    "summary_file", None, "Append this script's ratios (JSON lines) to this file; "
    "`python -m benchmarks.summary FILE` prints them as one table.")

COLUMNS = ("benchmark", "method", "ours", "reference", "reference_rate", "unit", "ratio", "gap",
           "machine")


def record(benchmark: str, method: str, ours: float, reference: str, reference_rate: float,
           unit: str, gap: str = "", *, path: str | Path | None = None) -> None:
  """Appends one ratio ours / reference_rate (both in `unit`) to `path` (default: the parsed
  --summary_file; nothing is written when that is not given)."""
  path = path if path is not None else _SUMMARY_FILE.value
  if not path:
    return
  row = dict(benchmark=benchmark, method=method, ours=float(ours), reference=reference,
             reference_rate=float(reference_rate), unit=unit,
             ratio=float(ours) / float(reference_rate), gap=gap, machine=machine.describe())
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("a") as f:  # one line per write: a killed run leaves whole lines or a torn last one
    f.write(json.dumps(row) + "\n")


def read(path: str | Path) -> list[dict]:
  """The rows of a summary file; a line that is not a whole row (a run killed mid-write) is an
  error naming the file and line, not skipped."""
  rows = []
  for i, line in enumerate(Path(path).read_text().splitlines(), 1):
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{i} is not a whole summary row ({e}); rerun that benchmark") from e
    if not isinstance(row, dict) or set(row) != set(COLUMNS):
      raise ValueError(f"{path}:{i} is not a summary row: expected the keys {COLUMNS}")
    rows.append(row)
  return rows


def table(rows: list[dict]) -> str:
  """The rows as one markdown table, then the machines they were measured on."""
  machines = list(dict.fromkeys(r["machine"] for r in rows))
  out = ["| benchmark | method | menet_jax | reference | reference rate | unit | ratio | gap |"
         + (" machine |" if len(machines) > 1 else ""),
         "|---|---|---|---|---|---|---|---|" + ("---|" if len(machines) > 1 else "")]
  for r in rows:
    out.append(f"| {r['benchmark']} | {r['method']} | {r['ours']:.4g} | {r['reference']} | "
               f"{r['reference_rate']:.4g} | {r['unit']} | {r['ratio']:.2f}x | {r['gap']} |"
               + (f" {machines.index(r['machine']) + 1} |" if len(machines) > 1 else ""))
  out += [""] + [f"machine{f' {i + 1}' if len(machines) > 1 else ''}: {m}"
                 for i, m in enumerate(machines)]
  return "\n".join(out)


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("usage: python -m benchmarks.summary SUMMARY_FILE...")
  print(table([row for path in argv[1:] for row in read(path)]))


if __name__ == "__main__":
  app.run(main)
