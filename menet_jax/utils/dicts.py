"""What differs between two mappings, for error messages that say what changed."""

from __future__ import annotations

from typing import Any, Collection, Mapping

_MISSING = object()


def differences(stored: Mapping[str, Any], wanted: Mapping[str, Any], *, where: str = "stored",
                now: str = "now", ignore: Collection[str] = ()) -> list[str]:
  """One "key: <stored value> in <where>, <wanted value> <now>" line per differing key.

  Keys missing on one side show as "missing"; keys in `ignore` are skipped.
  """
  def show(value: Any) -> str:
    return "missing" if value is _MISSING else repr(value)

  return [f"{k}: {show(stored.get(k, _MISSING))} in {where}, {show(wanted.get(k, _MISSING))} {now}"
          for k in sorted((set(stored) | set(wanted)) - set(ignore))
          if stored.get(k, _MISSING) != wanted.get(k, _MISSING)]
