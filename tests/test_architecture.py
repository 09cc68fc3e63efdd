"""The layering of docs/architecture.md: a package imports only the packages above it."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "menet_jax"
# Top to bottom; a package may import itself and those listed before it.
LAYERS = ["utils", "data", "reconstruct", "defenses", "models", "attacks", "training", "evaluation",
          "analysis"]


def _imports(path: Path) -> set[str]:
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("menet_jax"):
      parts = node.module.split(".")
      if len(parts) > 1:
        found.add(parts[1])
      else:  # from menet_jax import x, y
        found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.Import):
      found.update(a.name.split(".")[1] for a in node.names
                   if a.name.startswith("menet_jax.") and "." in a.name)
  return found & set(LAYERS)


@pytest.mark.parametrize("layer", LAYERS)
def test_packages_import_only_the_layers_above(layer):
  allowed = set(LAYERS[:LAYERS.index(layer) + 1])
  for path in sorted((PACKAGE / layer).rglob("*.py")):
    wrong = _imports(path) - allowed
    assert not wrong, f"{path.relative_to(PACKAGE)} imports {sorted(wrong)} (below {layer})"


def test_every_module_is_in_a_layer():
  top = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
  assert top == set(LAYERS)
  assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py"]


def test_evaluation_knows_training_only_through_its_restore_bridge():
  # Evaluation takes any classifier (a Target); restoring one of this project's runs is the
  # only part of it that reads a training configuration or checkpoint.
  for path in sorted((PACKAGE / "evaluation").rglob("*.py")):
    if path.name != "restore.py":
      assert "training" not in _imports(path), f"{path.relative_to(PACKAGE)} imports training"
