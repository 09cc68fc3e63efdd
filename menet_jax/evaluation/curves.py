"""Robustness against the radius, as a robustness researcher reads it: accuracy (y) against
eps (x), one curve per attack with its 95 % interval, and the worst case.

An evaluation runs its attacks at one radius and the BPDA-PGD sanity sweep at several: the
figure draws the sweep as a curve, every attack and the worst case as points at the
evaluation's radius (each with its Wilson interval), and the clean accuracy at eps = 0.
`compare` puts the worst cases of several evaluations side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from menet_jax.utils.atomic_write import atomic_write


def _pyplot():
  import matplotlib  # noqa: PLC0415  (a figure is optional work: import on demand)

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  return plt


def linf_text(eps: float) -> str:
  """An l-inf radius as people write it: k/255 where it is a whole number of grey levels
  (8/255), the number otherwise (0.3 on MNIST, not 76.5/255)."""
  short = f"{eps:.4g}"
  if abs(float(short) - eps) <= 1e-9 * max(eps, 1e-12):
    return short  # 0.3, 0.5: the number itself is short
  levels = eps * 255
  if abs(levels - round(levels)) < 1e-4 * max(1.0, levels) and round(levels) > 0:
    return f"{round(levels)}/255"
  return short


def _radius_text(eps: float, norm: str) -> str:
  return f"{eps:.4g}" if norm == "l2" else linf_text(eps)


def _errorbar(ax, x, row: dict[str, Any], **kw) -> None:
  lo, hi = row["interval95"]
  a = row["accuracy"]
  ax.errorbar([x], [a], yerr=[[a - lo], [hi - a]], capsize=3, **kw)


def robustness(record: dict[str, Any], path: str | Path) -> Path:
  """Writes the accuracy-against-eps figure of one evaluation record (PNG, atomically)."""
  plt = _pyplot()
  norm, eps = record.get("norm", "linf"), record["eps"]
  fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
  sweep = record["sanity"]["eps_sweep"]
  if sweep["accuracy"]:
    pts = sorted(sweep["accuracy"], key=lambda a: a["eps"])
    xs = [a["eps"] for a in pts]
    ax.plot(xs, [a["accuracy"] for a in pts], "o-", color="0.45",
            label=f"BPDA-PGD-{sweep['steps']} sweep ({sweep['images']} images)")
    if all("interval95" in a for a in pts):
      ax.fill_between(xs, [a["interval95"][0] for a in pts], [a["interval95"][1] for a in pts],
                      color="0.45", alpha=0.15)
  rows = [r for r in record["results"] if "interval95" in r]
  attacks = [r for r in rows if r["attack"] != "clean"]
  if record.get("curve"):
    _curves(ax, record, attacks)
    attacks = []  # drawn as curves
  # The attacks' points sit side by side around eps, so that their intervals do not hide
  # one another.
  spread = 0.04 * eps
  for i, r in enumerate(r for r in rows if r["attack"] == "clean" or r in attacks):
    x = 0.0 if r["attack"] == "clean" else \
        eps + spread * (attacks.index(r) - (len(attacks) - 1) / 2)
    _errorbar(ax, x, r, fmt="s", label=f"{r['label']}: {r['accuracy']:.1%}",
              color=f"C{i % 10}", alpha=0.85)
  worst = record["worst_case"]
  if "interval95" in worst and not record.get("curve"):
    _errorbar(ax, eps, worst, fmt="*", markersize=12, color="black",
              label=f"worst case: {worst['accuracy']:.1%}")
  ax.set_xlabel(f"{'l2' if norm == 'l2' else 'l-inf'} radius eps")
  ax.set_ylabel("accuracy (95 % interval)")
  ax.set_ylim(-0.02, 1.02)
  ax.axvline(eps, color="0.8", lw=0.8, zorder=0)
  if sweep["accuracy"] and eps > 0 and max(a["eps"] for a in sweep["accuracy"]) > 8 * eps:
    ax.set_xscale("symlog", linthresh=eps)  # the far radius of the sweep would squash the rest
  title = f"robustness at eps {_radius_text(eps, norm)}, {record['images']} images"
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  return _save(fig, plt, path)


def _curves(ax, record: dict[str, Any], attacks: list[dict[str, Any]]) -> None:
  """One line per attack and one for the worst case over the evaluation's radius and the
  curve's (`EvalConfig.curve_eps`), each point with its 95 % interval as a band."""
  clean = next(r for r in record["results"] if r["attack"] == "clean")
  points = sorted([(record["eps"], {r["label"]: r for r in attacks}, record["worst_case"])] +
                  [(c["eps"], {r["label"]: r for r in c["results"]}, c["worst_case"])
                   for c in record["curve"]], key=lambda p: p[0])
  series = [(r["label"], lambda by, label=r["label"]: by[0].get(label)) for r in attacks]
  series.append(("worst case", lambda by: by[1]))
  for i, (label, pick) in enumerate(series):
    xs, ys, lo, hi = [0.0], [clean["accuracy"]], [clean["interval95"][0]], [clean["interval95"][1]]
    for e, by_label, worst in points:
      r = pick((by_label, worst))
      if r is not None:
        xs.append(e)
        ys.append(r["accuracy"])
        lo.append(r["interval95"][0])
        hi.append(r["interval95"][1])
    style = dict(color="black", lw=2) if label == "worst case" else dict(color=f"C{(i + 1) % 10}")
    ax.plot(xs, ys, "o-", label=f"{label}: {ys[xs.index(record['eps'])]:.1%} at eps", **style)
    ax.fill_between(xs, lo, hi, alpha=0.12, color=style["color"])


def compare(records: Sequence[dict[str, Any]], names: Sequence[str], path: str | Path) -> Path:
  """Writes one figure of several evaluations: clean and worst-case accuracy per run, with
  their 95 % intervals (PNG, atomically)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(records) + 2), 4.2), dpi=120)
  for i, rec in enumerate(records):
    clean = next((r for r in rec["results"] if r["attack"] == "clean"), None)
    for offset, row, color, label in ((-0.15, clean, "C0", "clean"),
                                      (0.15, rec["worst_case"], "C3", "worst case")):
      if row is not None and "interval95" in row:
        ax.bar(i + offset, row["accuracy"], width=0.3, color=color,
               label=label if i == 0 else None)
        lo, hi = row["interval95"]
        ax.errorbar([i + offset], [row["accuracy"]], yerr=[[row["accuracy"] - lo],
                                                          [hi - row["accuracy"]]],
                    color="black", capsize=3)
  ax.set_xticks(range(len(records)), names, rotation=20, ha="right", fontsize=8)
  ax.set_ylabel("accuracy (95 % interval)")
  ax.set_ylim(0, 1.02)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return _save(fig, plt, path)


def _save(fig, plt, path: str | Path) -> Path:
  path = Path(path)
  with atomic_write(path) as tmp:
    fig.savefig(tmp, format="png")
  plt.close(fig)
  return path
