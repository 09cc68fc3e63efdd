"""One call from Python: any classifier, behind any defense, against the field's attacks.

    import menet_jax.evaluation as ev
    result = ev.evaluate(model, x, y, defense="median(size=3)", eps=8 / 255)
    print(result)                      # the table: every attack, the worst case, the checks
    result.write("out/eval")           # eval.md, eval.json, eval.npz (per image), eval.png

`model` is x -> logits (or (variables, x) -> logits with `variables=`); x: (N, H, W, C)
float32 in [0, 1]; y: (N,) int. The defaults are `EvalConfig`'s: AutoAttack's "rand" version
for a randomized defense and its "standard" one otherwise, as a cascade, every gradient
attack through the defense's BPDA view, with the sanity checks against gradient masking.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np

from menet_jax.defenses import Defense
from menet_jax.evaluation import report, runner
from menet_jax.evaluation.config import EvalConfig
from menet_jax.evaluation.target import Target, as_defense
from menet_jax.utils import machine, parallel


@dataclasses.dataclass(frozen=True)
class Result:
  """An evaluation's outcome.

  Attributes:
    record: the JSON-serialisable record (rows, worst case, sanity checks, settings).
    verdicts: per row's canonical attack string and "worst_case", (draws, N) bool: image j
      classified correctly under draw d of the defense.
  """
  record: dict[str, Any]
  verdicts: dict[str, np.ndarray]

  @property
  def accuracy(self) -> dict[str, float]:
    """Accuracy under the first draw, by row label, "worst case" last."""
    out = {r["label"]: r["accuracy"] for r in self.record["results"]}
    out[report.WORST_CASE] = self.record["worst_case"]["accuracy"]
    return out

  @property
  def worst_case(self) -> dict[str, Any]:
    """The worst case over the attacks: accuracy, its 95 % interval, over draws, images."""
    return self.record["worst_case"]

  @property
  def robust(self) -> np.ndarray:
    """(N,) bool: robust to every attack under the first draw (AutoAttack's per-image flag)."""
    return self.verdicts["worst_case"][0]

  @property
  def failed_checks(self) -> list[str]:
    return report.failed_checks(self.record)

  def markdown(self) -> str:
    return report.markdown(self.record)

  def write(self, directory: str | Path, name: str = "eval") -> dict[str, Path]:
    """Writes name.md, name.json, name.npz and name.png (accuracy against eps) into
    `directory`, each atomically; returns their paths by kind."""
    return report.write(self.record, self.verdicts, directory, name)

  def __str__(self) -> str:
    return self.markdown()

  _repr_markdown_ = markdown


def evaluate(model: Callable[..., Any] | Target, x: np.ndarray, y: np.ndarray, *,
             variables: Any = None, defense: Defense | str | None = None,
             source: Callable[..., Any] | Target | None = None,
             config: EvalConfig | None = None, store: runner.RowStore | None = None,
             log: Callable[[str], None] | None = None, **settings: Any) -> Result:
  """Evaluates `model` behind `defense` on (x, y).

  Args:
    model: x -> logits; (variables, x) -> logits when `variables` is given; or a `Target`
      (e.g. a run restored by `evaluation.load`), whose defense is used unless `defense` is set.
    x: (N, H, W, C) float in [0, 1]; y: (N,) int labels.
    variables: the model's variables (passed to jit as arguments, not baked in as constants).
    defense: a `Defense`, a component string ("menet(method=usvt)"), or None (none).
    source: the independently trained copy for the transfer attacks (x -> logits or Target).
    config: the evaluation's settings (`EvalConfig`); `settings` override its fields, e.g.
      eps=8/255, attacks=("standard",), norm="l2", draws=20.
    store: a `RowStore` for a resumable evaluation (finished rows are read back).
    log: where each row's line goes as it finishes (default: printed by process 0 only).

  Returns:
    A `Result`: per-row and worst-case accuracies with 95 % intervals, per-image verdicts,
    the sanity checks; `.write(dir)` for the report and the figure.

  Raises:
    ValueError: a bad argument, named with its accepted range, before anything runs.
  """
  config = (config or EvalConfig()).replace(**settings)
  if log is None:
    log = print if parallel.is_chief() else lambda _: None
  if isinstance(model, Target):
    target = model if defense is None else model.with_defense(as_defense(defense))
  else:
    target = Target.of(model, variables, defense)
  source_target = source if isinstance(source, Target) or source is None else Target.of(source)
  x, y = np.asarray(x), np.asarray(y)
  if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"x must be float images (N, H, W, C) in [0, 1], got {x.dtype} of shape "
                     f"{x.shape}")
  if len(x) == 0 or not (np.min(x) >= 0 and np.max(x) <= 1):
    raise ValueError(f"x must hold at least one image with pixels in [0, 1], got range "
                     f"[{np.min(x, initial=0):.4g}, {np.max(x, initial=0):.4g}]")
  if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"y must be (N,) = ({len(x)},) integer labels, got {y.dtype} of shape "
                     f"{y.shape}")
  target.defense.check(x.shape[1:])
  plan = config.checked(x.shape[1:], target.defense.randomized)
  record, verdicts = runner.run(target, source_target, x.astype(np.float32), y.astype(np.int32),
                                plan, store=store, log=log)
  record.setdefault("machine", machine.describe())
  return Result(record, verdicts)
