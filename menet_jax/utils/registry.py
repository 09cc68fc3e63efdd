"""One registry helper for every kind of named component (after big_vision's `registry`).

Reconstructors, models, defenses, attacks and training objectives each keep a
`Registry` of their own, and all of them are named the same way: a component
string

    name                      the component with its declared defaults
    name(k=v, k2=v2)          with some parameters set; values are Python
                              literals (1, 0.5, "x", (1, 2), True, None) or bare
                              words, which are strings (method=usvt)

A component's parameters are declared once, in the signature of what is
registered: the keyword-only parameters of a function (its positional ones are
its call arguments, e.g. a reconstructor's x and mask), or the constructor
parameters of a class (a frozen dataclass's fields). Names, defaults and the
accepted types come from that declaration; an unknown name or argument, a
missing one, or a value of the wrong type raises one `ValueError` line that
names what is accepted. Range checks stay with the component itself.

    RECONSTRUCTORS = Registry("method")
    RECONSTRUCTORS.register("usvt", check=check_usvt)(usvt)
    name, params = RECONSTRUCTORS.bind("usvt(keep=0.5)")   # all parameters, defaults filled
    fn = RECONSTRUCTORS.lookup("usvt(keep=0.5)")           # usvt with those parameters bound
    DEFENSES.create("menet(method=usvt, startp=0.4)")      # an instance of the registered class
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import re
import types
import typing
from typing import Any, Callable, Mapping

_Kind = inspect.Parameter


@dataclasses.dataclass(frozen=True)
class Entry:
  """A registered component.

  Attributes:
    name: its registered name.
    obj: the function or class.
    parameters: its declared parameters, in declaration order.
    hints: their annotations (resolved where possible).
    open: whether it takes **kwargs beyond the declared ones.
    fixed: keyword arguments always passed and not settable by name.
    metadata: anything else the registering package records (e.g. a threat model).
  """
  name: str
  obj: Any
  parameters: tuple[inspect.Parameter, ...]
  hints: Mapping[str, Any]
  open: bool
  fixed: Mapping[str, Any]
  metadata: Mapping[str, Any]


def parse(spec: str) -> tuple[str, dict[str, Any]]:
  """"name(k=v, ...)" -> (name, {k: v}); raises ValueError for anything else."""
  if not isinstance(spec, str) or not spec.strip():
    raise ValueError(f"a component must be a string such as 'name' or 'name(k=v)', got {spec!r}")
  try:
    node = ast.parse(spec.strip(), mode="eval").body
  except SyntaxError:
    raise ValueError(f"cannot parse component {spec!r}; write it as name or name(k=v, ...)") \
        from None
  if isinstance(node, ast.Name):
    return node.id, {}
  if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)) or node.args:
    raise ValueError(f"cannot parse component {spec!r}; write it as name or name(k=v, ...) "
                     "with keyword arguments only")
  kwargs = {}
  for keyword in node.keywords:
    if keyword.arg is None:
      raise ValueError(f"component {spec!r}: ** is not allowed")
    kwargs[keyword.arg] = _literal(keyword.value, spec)
  return node.func.id, kwargs


def _literal(node: ast.AST, spec: str) -> Any:
  if isinstance(node, ast.Name):  # a bare word is a string: method=usvt
    return node.id
  try:
    return ast.literal_eval(node)
  except ValueError:
    raise ValueError(f"component {spec!r}: {ast.unparse(node)} is not a literal") from None


def format_spec(name: str, params: Mapping[str, Any]) -> str:
  """The canonical string of a component: name(k=v, ...) with keys sorted (name alone if none)."""
  if not params:
    return name
  return f"{name}({','.join(f'{k}={_show(v)}' for k, v in sorted(params.items()))})"


def _show(value: Any) -> str:
  if isinstance(value, str) and value.isidentifier() and value not in ("True", "False", "None"):
    return value
  return repr(value)


class Registry:
  """Named components of one kind ("method", "model", "defense", "attack", "objective")."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, Entry] = {}

  def register(self, name: str, obj: Any = None, *, fixed: Mapping[str, Any] | None = None,
               hidden: tuple[str, ...] = (), **metadata: Any):
    """Registers `obj` under `name`; without `obj`, returns a decorator that does.

    Args:
      name: the component's name: an identifier, so that it can be written in a
        component string (a name with dashes, "wrn-28-10", only without arguments).
      obj: a function (its keyword-only parameters are the component's) or a
        class (its constructor's parameters are).
      fixed: keyword arguments passed on every call and hidden from the
        component's parameters (e.g. the depth of "wrn-28-10").
      hidden: constructor parameters that are not the component's to name
        (passed by the caller, e.g. a model's num_classes).
      **metadata: recorded with the entry, `entry(name).metadata`.
    """
    def add(target):
      if name in self._entries:
        raise ValueError(f"a {self.kind} named {name!r} is already registered")
      self._entries[name] = _entry(name, target, dict(fixed or {}), hidden, metadata)
      return target
    return add if obj is None else add(obj)

  def unregister(self, name: str) -> None:
    """Removes `name` (a component registered for one test or notebook cell)."""
    self.entry(name)
    del self._entries[name]

  def names(self) -> tuple[str, ...]:
    return tuple(sorted(self._entries))

  def entry(self, name: str) -> Entry:
    if name not in self._entries:
      raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
    return self._entries[name]

  def defaults(self, name: str) -> dict[str, Any]:
    """The declared defaults of `name`'s parameters (those without one are left out)."""
    return {p.name: p.default for p in self.entry(name).parameters
            if p.default is not _Kind.empty}

  def get(self, name: str) -> Any:
    """The registered function or class itself."""
    return self.entry(name).obj

  def bind(self, spec: str, **overrides: Any) -> tuple[str, dict[str, Any]]:
    """(name, every declared parameter with its value) for a component string.

    `overrides` are applied on top of what the string sets, with the same checks.
    """
    # A registered name that is not an identifier ("wrn-28-10") is taken as a whole.
    name, given = (spec.strip(), {}) if isinstance(spec, str) and spec.strip() in self._entries \
        else parse(spec)
    entry = self.entry(name)
    given.update(overrides)
    declared = {p.name: p for p in entry.parameters}
    unknown = sorted(set(given) - set(declared)) if not entry.open else []
    if unknown:
      accepted = ", ".join(declared) or "no arguments"
      raise ValueError(f"{self.kind} {name!r} has no argument {', '.join(map(repr, unknown))}; "
                       f"it takes {accepted}")
    missing = [p for p in declared if p not in given and declared[p].default is _Kind.empty]
    if missing:
      raise ValueError(f"{self.kind} {name!r} needs {', '.join(missing)}")
    bound = {}
    for p in entry.parameters:
      value = given[p.name] if p.name in given else p.default
      bound[p.name] = _check_type(self.kind, name, p.name, value, entry.hints.get(p.name))
    bound.update({k: v for k, v in given.items() if k not in declared})
    return name, bound

  def lookup(self, spec: str, **overrides: Any) -> Callable[..., Any]:
    """The registered function with the string's parameters bound (functools.partial)."""
    name, params = self.bind(spec, **overrides)
    entry = self.entry(name)
    return functools.partial(entry.obj, **entry.fixed, **params)

  def create(self, spec: str, **overrides: Any) -> Any:
    """Calls the registered class or factory with the string's parameters."""
    return self.lookup(spec, **overrides)()

  def name_of(self, obj: Any) -> str | None:
    """The name `obj` is registered under, or None."""
    return next((n for n, e in self._entries.items() if e.obj is obj), None)

  def spec_of(self, instance: Any) -> str:
    """The component string of an instance of a registered dataclass: its registered name with
    every field written out."""
    name = self.name_of(type(instance))
    if name is None:
      raise ValueError(f"{type(instance).__name__} is not a registered {self.kind}")
    return format_spec(name, {f.name: getattr(instance, f.name)
                              for f in dataclasses.fields(instance)})

  def canonical(self, spec: str) -> str:
    """The string with every parameter written out (defaults included), keys sorted."""
    return format_spec(*self.bind(spec))


def _entry(name: str, obj: Any, fixed: dict[str, Any], hidden: tuple[str, ...],
           metadata: dict[str, Any]) -> Entry:
  if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
    raise ValueError(f"component names must be identifiers (dashes allowed), got {name!r}")
  is_class = inspect.isclass(obj)
  signature = inspect.signature(obj)
  params, open_ = [], False
  for p in signature.parameters.values():
    if p.kind is _Kind.VAR_KEYWORD:
      open_ = True
    elif p.name in fixed or p.name in hidden or p.kind is _Kind.VAR_POSITIONAL:
      continue
    elif is_class or p.kind is _Kind.KEYWORD_ONLY:
      params.append(p)
  try:
    hints = typing.get_type_hints(obj.__init__ if is_class else obj)
  except Exception:  # noqa: BLE001 - unresolvable annotations only lose the type check
    hints = {}
  return Entry(name, obj, tuple(params), hints, open_, types.MappingProxyType(fixed),
               types.MappingProxyType(metadata))


def _check_type(kind: str, name: str, param: str, value: Any, hint: Any) -> Any:
  """The value, converted where the declaration allows it (int -> float, list -> tuple)."""
  if hint is None or value is None and _optional(hint):
    return value
  base = _strip_optional(hint)
  origin = typing.get_origin(base)
  if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
    return float(value)
  if base is int and isinstance(value, int) and not isinstance(value, bool):
    return value
  if base is bool and isinstance(value, bool):
    return value
  if base is str and isinstance(value, str):
    return value
  if (base is tuple or origin is tuple) and isinstance(value, (tuple, list)):
    return tuple(value)
  if base in (float, int, bool, str, tuple) or origin is tuple:
    expected = getattr(base, "__name__", str(base))
    raise ValueError(f"{kind} {name!r}: {param} must be {expected}, got {value!r}")
  return value


def _optional(hint: Any) -> bool:
  return type(None) in typing.get_args(hint)


def _strip_optional(hint: Any) -> Any:
  args = [a for a in typing.get_args(hint) if a is not type(None)]
  if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
    return args[0]
  return hint


def split_list(text: str) -> list[str]:
  """Splits a comma-separated list of components at the commas outside parentheses."""
  parts, depth, current = [], 0, []
  for ch in text:
    depth += {"(": 1, ")": -1}.get(ch, 0)
    if ch == "," and depth == 0:
      parts.append("".join(current).strip())
      current = []
    else:
      current.append(ch)
  parts.append("".join(current).strip())
  return [p for p in parts if p]
