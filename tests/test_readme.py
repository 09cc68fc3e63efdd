"""The README's first example, the one-call evaluation, runs as written (on the offline data,
writing into a temporary directory)."""

import os
import re

import pytest

from menet_jax.evaluation import suite
from tests.conftest import CIFAR_TEST, DATA_DIR
from tests.watchdog import REPO


def _snippet(heading: str) -> str:
  text = (REPO / "README.md").read_text()
  section = text.split(f"## {heading}\n", 1)[1]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_one_call_evaluation_of_the_readme_runs(tmp_path, capsys, monkeypatch):
  if not CIFAR_TEST.is_file():
    pytest.skip(f"CIFAR-10 test batch not found at {CIFAR_TEST}")
  # The code as written, with the standard preset's budgets cut to fit the suite (the same
  # attacks in the same cascade; at full budget it takes minutes).
  monkeypatch.setitem(suite.PRESETS, "standard", {"linf": (
      "apgd_ce(steps=3)", "apgd_t(steps=3, targets=2)", "fab_t(steps=3, targets=2)",
      "square(queries=20, rescale=False)")})
  code = _snippet("Evaluate your own model and defense")
  assert '"../shared/data"' in code and 'result.write("out/eval")' in code
  code = code.replace('"../shared/data"', repr(str(DATA_DIR)))
  cwd = os.getcwd()
  os.chdir(tmp_path)
  try:
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
  finally:
    os.chdir(cwd)
  result = scope["result"]
  assert [r["attack"] for r in result.record["results"]] == ["clean", "apgd_ce", "apgd_t",
                                                             "fab_t", "square"]
  assert result.record["cascade"] and result.record["draws"] == 1
  assert "| **worst case**" in capsys.readouterr().out
  assert sorted(p.name for p in (tmp_path / "out" / "eval").iterdir()) == [
      "eval.json", "eval.md", "eval.npz", "eval.png"]
