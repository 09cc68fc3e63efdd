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


# String constants that equal a dataset's name outside the dataset modules, and why each does
# not branch on a dataset: RIDE's networks are named for its paper's datasets and chosen by the
# images' shape (defenses.ride.network_for).
NOT_A_DATASET = {("defenses/ride.py", "mnist"), ("defenses/ride.py", "imagenet")}


def _registers_a_dataset(tree: ast.AST) -> bool:
  return any(isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Dataset"
             for node in ast.walk(tree))


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
  """(line, value) of the string constants that are not docstrings."""
  docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                and node.body and isinstance(node.body[0], ast.Expr)}
  return [(node.lineno, node.value) for node in ast.walk(tree)
          if isinstance(node, ast.Constant) and isinstance(node.value, str)
          and id(node) not in docstrings]


def test_only_a_datasets_own_module_names_it():
  # A dataset is one registered module (menet_jax/data/<dataset>.py): the library reads its
  # facts (shape, splits, files, Table 8 defaults, normalisation) from its Dataset and never
  # branches on its name, so a new dataset is a new module and nothing else.
  from menet_jax import data

  names = set(data.names()) | {d.tfds_name for d in map(data.dataset, data.names())} - {None}
  registering = []
  for path in sorted(PACKAGE.rglob("*.py")):
    tree = ast.parse(path.read_text())
    if _registers_a_dataset(tree):
      registering.append(path.name)
      continue
    where = str(path.relative_to(PACKAGE))
    named = [(line, s) for line, s in _strings(tree) if s in names and (where, s) not in NOT_A_DATASET]
    assert not named, f"{where} names datasets (line, name): {named}"
  assert len(registering) == len(data.names()), registering


def _module_name(path: Path) -> str:
  parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_of_a_package_imports_one_that_imports_it_back():
  # e.g. training/: the config builds objectives, which build states; a state's factories that
  # read a config live apart (training/factories.py), so no import (type-only ones included)
  # goes back up.
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("menet_jax"):
        for alias in node.names:
          child = f"{node.module}.{alias.name}"
          edges.add(child if child in modules else node.module)
      elif isinstance(node, ast.Import):
        edges.update(a.name for a in node.names if a.name in modules)
    # A package's __init__ gathering its own modules is not a cycle.
    graph[name] = {e for e in edges if e != name and not name.startswith(e + ".")
                   and e in modules}
  state: dict[str, int] = {}

  def visit(name, trail):
    if state.get(name) == 2:
      return
    assert state.get(name) != 1, " -> ".join(trail + [name])
    state[name] = 1
    for child in sorted(graph[name]):
      visit(child, trail + [name])
    state[name] = 2

  for name in sorted(graph):
    visit(name, [])
