"""The one registry helper: component strings, parameters declared once, one-line errors."""

import dataclasses

import pytest

from menet_jax.utils.registry import Registry, format_spec, parse


def test_parse_and_format_are_inverse():
  assert parse("pgd") == ("pgd", {})
  assert parse("a(x=1, y=0.5, s='t', w=word, t=(1, 2), n=None, b=True)") == (
      "a", {"x": 1, "y": 0.5, "s": "t", "w": "word", "t": (1, 2), "n": None, "b": True})
  spec = format_spec("a", {"y": 0.5, "x": 1, "w": "word", "s": "two words", "t": (1, 2)})
  assert spec == "a(s='two words',t=(1, 2),w=word,x=1,y=0.5)"
  assert parse(spec) == ("a", {"s": "two words", "t": (1, 2), "w": "word", "x": 1, "y": 0.5})


@pytest.mark.parametrize("spec, match", [
    ("a(1)", "keyword arguments only"), ("a(x=f(1))", "is not a literal"), ("a(", "cannot parse"),
    ("", "must be a string"), ("a.b", "cannot parse"),
])
def test_parse_refuses_what_is_not_a_component(spec, match):
  with pytest.raises(ValueError, match=match):
    parse(spec)


def test_functions_declare_keyword_only_parameters_and_classes_their_fields():
  reg = Registry("thing")

  @reg.register("scale")
  def scale(x, *, factor: float = 2.0, name: str = "s"):
    return x * factor

  @reg.register("box")
  @dataclasses.dataclass(frozen=True)
  class Box:
    size: int
    tag: str | None = None

  assert reg.lookup("scale(factor=3)")(2) == 6.0
  assert reg.bind("scale") == ("scale", {"factor": 2.0, "name": "s"})
  assert reg.bind("scale(factor=3)")[1]["factor"] == 3.0  # an int where a float is declared
  assert reg.create("box(size=4)") == Box(4)
  assert reg.canonical("box(size=4)") == "box(size=4,tag=None)" == reg.spec_of(Box(4))
  with pytest.raises(ValueError, match="unknown thing 'bo'; known: box, scale"):
    reg.create("bo")
  with pytest.raises(ValueError, match="thing 'box' has no argument 'sise'; it takes size, tag"):
    reg.create("box(sise=4)")
  with pytest.raises(ValueError, match="thing 'box' needs size"):
    reg.create("box")
  with pytest.raises(ValueError, match="thing 'box': size must be int, got 4.5"):
    reg.create("box(size=4.5)")
  with pytest.raises(ValueError, match="thing 'scale': name must be str, got 3"):
    reg.bind("scale(name=3)")
  with pytest.raises(ValueError, match="already registered"):
    reg.register("box", Box)
  reg.unregister("box")
  assert reg.names() == ("scale",)


def test_fixed_and_hidden_parameters_are_not_the_components_to_set():
  reg = Registry("model")

  @dataclasses.dataclass(frozen=True)
  class Net:
    num_classes: int
    depth: int = 10
    width: int = 1

  reg.register("net-28", Net, fixed={"depth": 28}, hidden=("num_classes",))
  assert reg.lookup("net-28", width=2)(num_classes=5) == Net(5, 28, 2)
  with pytest.raises(ValueError, match="has no argument 'depth'; it takes width"):
    reg.lookup("net-28", depth=3)
