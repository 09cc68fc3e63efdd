"""Plug-ins: modules outside the package that register components (defenses, attacks, models,
objectives) when imported. The command line's --import names them; a trained run records
them, so that everything reading the run (evaluation, a resumed training) imports them first.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Iterable


def load(modules: Iterable[str]) -> list[str]:
  """Imports every module: a dotted name on sys.path ("my_defense", "lab.attacks") or the path
  of a .py file ("plugins/jpeg.py", imported under its file name). Importing twice is a no-op.

  Returns:
    The modules as given, in order (what a run records).

  Raises:
    ValueError: a module that cannot be found or that fails to import, named with the reason.
  """
  loaded = []
  for module in modules:
    module = str(module).strip()
    if not module:
      continue
    try:
      if module.endswith(".py"):
        _load_file(Path(module))
      else:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
      raise ValueError(f"import {module!r}: {e} (a module on sys.path, which holds the current "
                       f"directory under `python -m`, or the path of a .py file)") from e
    except Exception as e:  # the plug-in's own error: say whose it is
      raise ValueError(f"import {module!r} failed: {type(e).__name__}: {e}") from e
    loaded.append(module)
  return loaded


def _load_file(path: Path) -> None:
  if not path.is_file():
    raise ModuleNotFoundError(f"no file {path}")
  name = path.stem
  if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path.resolve()):
    return
  spec = importlib.util.spec_from_file_location(name, path.resolve())
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[name]
    raise
