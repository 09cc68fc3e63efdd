"""The README's first example, the one-call evaluation, runs as written (on the offline data,
writing into a temporary directory); its table of paper configurations says what they run."""

import os
import re
import shlex

import pytest
from absl import flags

from experiments import main as experiment
from menet_jax import data, defenses
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


def _paper_commands() -> list[str]:
  text = (REPO / "README.md").read_text()
  table = text.split("**Paper configurations.**", 1)[1].split("\n\n", 2)[1]
  return re.findall(r"`(python -m experiments\.\w+ [^`]+)`", table)


@pytest.mark.parametrize("command", _paper_commands())
def test_each_paper_configuration_of_the_readme_runs_what_its_workdir_names(command, monkeypatch):
  monkeypatch.chdir(REPO)  # the flagfiles' paths are relative to the repository
  args = shlex.split(command)[2:]
  entry = args.pop(0).split(".")[1]
  fv = flags.FlagValues()
  experiment.define_flags(None if entry == "main" else
                          {"svhn": "svhn_cropped"}.get(entry, entry), fv)
  fv(["prog", *args])
  config = experiment.config_from_flags(fv)
  run = config.workdir.split("/")[-1]  # runs/<dataset>_<mode>[_<p range>][_<model>]
  assert run.startswith({"svhn_cropped": "svhn"}.get(config.dataset, config.dataset)), run
  data.dataset(config.dataset)
  if config.mode != "custom":
    assert f"_{config.mode}" in run, (run, config.mode)
  p_range = re.search(r"_(\d(?:\.\d)?)-(\d(?:\.\d)?)", run)
  if p_range:
    d = defenses.create(config.defense)
    assert (d.startp, d.endp) == (float(p_range[1]), float(p_range[2])), (run, d)
    assert d.method == "nuclear_norm" and d.mask_num == 10  # the paper's ME-Net
  if "--model=" in command:
    assert run.endswith("_" + config.model), (run, config.model)


def test_the_paper_table_has_its_rows():
  assert len(_paper_commands()) == 14
