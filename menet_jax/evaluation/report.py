"""Evaluation reports: a JSON record, the per-image verdicts, and a markdown table shaped
like the paper's, with the worst case over attacks per image."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from menet_jax.evaluation import curves
from menet_jax.utils.atomic_write import atomic_write

WORST_CASE = "worst case"


def _label(row: dict[str, Any]) -> str:
  if "label" in row:
    return row["label"]
  # Records written before rows carried labels (docs/eval of issue 4).
  return row["attack"] if row["steps"] is None else f"{row['attack']}-{row['steps']}"


def markdown(record: dict[str, Any]) -> str:
  """The report: the paper-shaped one-row table, the detailed table, the checks."""
  rows = record["results"]
  l2 = record.get("norm", "linf") == "l2"
  defense = record["defense"]
  worst = record["worst_case"]
  cascade = record.get("cascade", False)
  lines = [f"# Evaluation of `{record['run']}`" if record.get("run") else "# Evaluation", ""]
  if record.get("checkpoint"):
    lines.append(f"- checkpoint: `{record['checkpoint']}` (step {record['step']})")
  lines += [f"- model: {record.get('model', 'a user model')}; defense: "
            f"{json.dumps(defense, sort_keys=True)}",
            f"- images: {record['images']}" +
            (f" ({record['split']}, the first {record['images']})" if record.get("split") else "")
            + f"; seed {record['seed']}; restarts {record['restarts']}; " +
            (f"judged under {record['draws']} draws of the defense's randomness"
             if record["draws"] > 1 else "judged once (deterministic defense)") +
            ("; cascade (each attack only on the images still robust)" if cascade else ""),
            _radius(record)]
  if "source" in record:
    lines.append(f"- source (transfer): {record['source'] or 'none'}")
  lines += [f"- machine: {record.get('machine', 'not recorded')}; wall time "
            f"{record['wall_s']:.1f} s", *_defense_cost(record)]
  if record.get("command"):
    lines.append(f"- command: `{record['command']}`")
  lines += ["",
           "| " + " | ".join([*(_label(r) for r in rows), WORST_CASE]) + " |",
           "|" + "---|" * (len(rows) + 1),
           "| " + " | ".join(f"{r['accuracy']:.1%}" for r in [*rows, worst]) + " |", "",
           "| attack | threat model | steps | accuracy, first draw [95 % interval] | "
           "mean over draws | robust in all draws | images attacked "
           f"| max {'l2' if l2 else 'l-inf'} | wall s |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    largest = f"{r['max_l2']:.4g}" if l2 else curves.linf_text(r['max_linf'])
    lines.append(f"| `{r['spec']}` | {r['threat']} | {r['steps'] or ''} | "
                 f"{r['accuracy']:.2%} {_interval(r)} | {r['mean_over_draws']:.2%} | "
                 f"{r['robust_all_draws']:.2%} | {r.get('attacked') or r['images']} | "
                 f"{largest} | {r['wall_s']:.1f} |")
  lines.append(f"| **{WORST_CASE}** (robust only if every attack above failed) | | | "
               f"{worst['accuracy']:.2%} {_interval(worst)} | {worst['mean_over_draws']:.2%} | "
               f"{worst['robust_all_draws']:.2%} | | | |")
  if cascade:
    lines += ["", "In a cascade each attack runs only on the images that every attack above it "
              "left robust; its accuracy counts the others as broken."]
  if record.get("curve"):
    attacks = [r for r in rows if r["attack"] != "clean"]
    points = sorted([(record["eps"], {r["label"]: r for r in attacks}, worst)] +
                    [(c["eps"], {r["label"]: r for r in c["results"]}, c["worst_case"])
                     for c in record["curve"]], key=lambda p: p[0])
    lines += ["", "Every attack at more radii (the figure's curves):", "",
              "| eps | " + " | ".join([*(r["label"] for r in attacks), WORST_CASE]) + " |",
              "|---|" + "---|" * (len(attacks) + 1)]
    for e, by_label, w in points:
      radius = f"{e:.4g}" if l2 else curves.linf_text(e)
      lines.append(f"| {radius} | " + " | ".join(
          [*(f"{by_label[r['label']]['accuracy']:.1%}" for r in attacks),
           f"{w['accuracy']:.1%} {_interval(w)}"]) + " |")
  sanity = record["sanity"]
  failed = [c for c in sanity["checks"] if not c["passed"]]
  lines += ["", "## Sanity checks (gradient masking)", ""]
  for w in sanity.get("warnings", []):
    lines.append(f"**Warning:** {w}.")
    lines.append("")
  if failed:
    lines.append(f"**{len(failed)} CHECK(S) FAILED: the numbers above may overstate robustness.**")
    lines.append("")
  for c in sanity["checks"]:
    lines.append(f"- {'PASS' if c['passed'] else '**FAIL**'} {c['name']}: {c['detail']}")
  for view, cos in sanity.get("gradient_agreement", {}).items():
    lines.append(f"- gradient agreement of the {view!r} view with the exact gradient: "
                 f"cosine {cos['mean']:.3f} on average, {cos['min']:.3f} at least")
  sweep = sanity["eps_sweep"]
  if sweep["accuracy"]:
    lines += ["", f"BPDA-PGD-{sweep['steps']} on the first {sweep['images']} images:", "",
              "| eps | " + " | ".join(f"{a['eps']:.4g}" if l2 else curves.linf_text(a['eps'])
                                      for a in sweep["accuracy"])
              + " |", "|---|" + "---|" * len(sweep["accuracy"]),
              "| accuracy | " + " | ".join(f"{a['accuracy']:.1%}" for a in sweep["accuracy"])
              + " |"]
  lines += ["", "Attacks:", ""]
  for name in dict.fromkeys(r["attack"] for r in rows):
    lines.append(f"- `{name}`: " + next(r["description"] for r in rows if r["attack"] == name))
  return "\n".join(lines) + "\n"


def _interval(row: dict[str, Any]) -> str:
  if "interval95" not in row:  # records written before intervals were kept
    return ""
  lo, hi = row["interval95"]
  return f"[{lo:.1%}, {hi:.1%}]"


def _radius(record: dict[str, Any]) -> str:
  """The threat model's line: l-inf as `linf_text`; l2 in pixel units and per pixel (the unit
  of Athalye et al. and of the ER-Classifier's Table 2, whose 0.005 is 3.92 on MNIST)."""
  eps, step = record["eps"], f"default step {record['step_size']:.6g}"
  if record.get("norm", "linf") == "linf":
    return f"- l-inf eps {curves.linf_text(eps)}, {step}"
  return (f"- l2 eps {eps:.6g} (|x_adv - x|_2, pixels in [0, 1]; {eps / record['pixels']:.4g} "
          f"per pixel, the unit of the ER-Classifier's Table 2), {step}")


def _defense_cost(record: dict[str, Any]) -> list[str]:
  clean = next((r for r in record["results"] if r["attack"] == "clean"), None)
  if clean is None:
    return []
  return [f"- defense cost: the clean row ({record['images']} images x {record['draws']} draws "
          f"of the defense) took {clean['wall_s']:.1f} s, compilation included"]


def write(record: dict[str, Any], verdicts: dict[str, np.ndarray], directory: str | Path,
          name: str) -> dict[str, Path]:
  """Writes name.json, name.npz (per-image verdicts), name.md and name.png (accuracy against
  eps) into directory, each atomically.

  name.npz holds, for every row's canonical attack string and "worst_case", a
  (draws, N) bool array: image j classified correctly under draw d.

  Returns:
    The paths by kind: "json", "npz", "md", "png".
  """
  directory = Path(directory)
  paths = {kind: directory / f"{name}.{kind}" for kind in ("json", "npz", "md", "png")}
  with atomic_write(paths["json"]) as tmp:
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
  buffer = io.BytesIO()
  np.savez(buffer, **verdicts)
  with atomic_write(paths["npz"]) as tmp:
    tmp.write_bytes(buffer.getvalue())
  curves.robustness(record, paths["png"])
  with atomic_write(paths["md"]) as tmp:
    tmp.write_text(markdown(record) + f"\n![accuracy against eps]({name}.png)\n")
  return paths


def failed_checks(record: dict[str, Any]) -> list[str]:
  return [f"{c['name']}: {c['detail']}" for c in record["sanity"]["checks"] if not c["passed"]]


def combined(records: list[dict[str, Any]]) -> str:
  """One markdown table over several evaluations: a row per run, a column per attack-steps.

  The columns are the union of the runs' attacks in order of first appearance;
  a run that did not run an attack shows "—". Each cell is the accuracy, with
  the fraction robust in all draws in brackets where it differs.
  """
  columns = list(dict.fromkeys(_label(r) for rec in records for r in rec["results"]))
  columns.append(WORST_CASE)
  lines = ["| run | defense | images | " + " | ".join(columns) + " | sanity |",
           "|---|---|---|" + "---|" * len(columns) + "---|"]
  for rec in records:
    cells = {_label(r): r for r in rec["results"]}
    if "worst_case" in rec:  # absent from records written before per-image verdicts were kept
      cells[WORST_CASE] = rec["worst_case"]
    d = rec["defense"] or {}
    defense = (f"{d['method']} p {d['startp']:g}→{d['endp']:g}, {d['inference']} p {d['mean_p']:.3g}"
               if "method" in d else d.get("defense", "none"))
    values = []
    for c in columns:
      r = cells.get(c)
      if r is None:
        values.append("—")
      elif abs(r["robust_all_draws"] - r["accuracy"]) > 1e-12:
        values.append(f"{r['accuracy']:.1%} ({r['robust_all_draws']:.1%})")
      else:
        values.append(f"{r['accuracy']:.1%}")
    failed = len(failed_checks(rec))
    name = Path(rec["run"]).name if rec.get("run") else rec.get("defense_spec") or "model"
    lines.append(f"| {name} | {defense} | {rec['images']} | " + " | ".join(values)
                 + f" | {'all passed' if not failed else f'**{failed} failed**'} |")
  return "\n".join(lines) + "\n"
