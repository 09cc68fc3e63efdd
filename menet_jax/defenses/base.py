"""The Defense interface: what sits between an input and the classifier.

One small interface, as optax's GradientTransformation is one for optimizers:
training, the preprocessed-set cache, the attacks, the evaluation runner, the
sanity checks and the benchmarks use only these members, so a new defense is a
new module that subclasses `Defense` and registers itself, and nothing else
changes.

    transform(keys, x, level) -> x      one draw of the preprocessing, per image
    attack_view(keys, x, level) -> x    the same forward pass, with the gradient
                                        an attacker gets (default: BPDA identity)
    predict(network, key, x, indices)   the inference rule: one draw, or a
                                        majority vote over `votes` draws
    randomized, preprocesses            whether draws differ; whether it does anything
    train_levels, test_level            the levels of training and test draws
    check(image_shape), describe()      validation against a data shape; JSON

Shapes: keys (B,) typed PRNG keys, one per image; x (B, H, W, C) float in
[0, 1]; level (B,) float32, the per-image setting of a draw (ME-Net: the
observation probability p; defenses without one ignore it).

Randomness is per image: the keys of image j come from its index in its split,
never from its batch or device (`inference_keys`), so a verdict does not
depend on the batch size or the device count.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from menet_jax.defenses.bpda import bpda
from menet_jax.utils import parallel
from menet_jax.utils.registry import Registry

DEFENSES = Registry("defense")
#: The name of the view that is the true gradient of `transform`, where a defense offers one.
EXACT = "exact"
Network = Callable[[jax.Array], jax.Array]  # x (B, H, W, C) -> logits (B, classes)


class Defense(abc.ABC):
  """Base class of every defense; subclasses are frozen dataclasses (static under jit)."""

  #: Draws differ from one key to the next (the attacker needs EOT, the judge several draws).
  randomized: bool = False
  #: The defense changes its input (False only for `Identity`: nothing to cache or draw).
  preprocesses: bool = True
  #: Draws per prediction: 1 is one draw, k > 1 a majority vote over k draws.
  votes: int = 1

  @abc.abstractmethod
  def transform(self, keys: jax.Array, x: jax.Array, level: jax.Array) -> jax.Array:
    """One draw of the preprocessing: keys (B,), x (B, H, W, C), level (B,) -> (B, H, W, C)."""

  def attack_view(self, keys: jax.Array, x: jax.Array, level: jax.Array) -> jax.Array:
    """`transform` with the gradient an attacker differentiates: BPDA's identity by default.

    A defense that offers a better approximation (a differentiable surrogate)
    overrides this; the forward pass must stay `transform`'s.
    """
    return _bpda_transform(self)(x, keys, level)

  @property
  def views(self) -> tuple[str, ...]:
    """The attacker's views of the defense's gradient that `view` offers: "bpda" always,
    `EXACT` ("exact") where `transform` itself is differentiable and its true gradient is
    worth having (the sanity checks compare every other view with it), others by name."""
    return ("bpda",)

  def view(self, name: str, keys: jax.Array, x: jax.Array, level: jax.Array) -> jax.Array:
    """The forward pass with the gradient of view `name`: "bpda" is `attack_view`, "exact"
    differentiates `transform` itself; a defense may offer others (e.g. the gradient of an
    approximation it fitted)."""
    if name == "bpda":
      return self.attack_view(keys, x, level)
    if name == EXACT and EXACT in self.views:
      return self.transform(keys, x, level)
    # A subclass that lists any other view serves it in its own `view`, before this one.
    raise ValueError(f"{type(self).__name__} offers no {name!r} view; it offers "
                     f"{', '.join(self.views)}")

  @property
  def train_levels(self) -> np.ndarray:
    """(n,) levels of the training draws: n draws per image per epoch (ME-Net: p_1..p_n)."""
    return np.ones(1)

  @property
  def test_level(self) -> float:
    """The level of a test-time draw (ME-Net: mean(p_i))."""
    return 1.0

  def check(self, image_shape: tuple[int, int, int]) -> None:
    """Raises ValueError if the defense cannot run on images of (H, W, C) `image_shape`."""

  def describe(self) -> dict[str, Any]:
    """A JSON-serialisable description, for manifests and reports: the registered name (the
    class name if unregistered) and every dataclass field."""
    name = DEFENSES.name_of(type(self)) or type(self).__name__
    fields = dataclasses.fields(self) if dataclasses.is_dataclass(self) else ()
    return {"defense": name, **{f.name: _plain(getattr(self, f.name)) for f in fields}}

  def spec(self) -> str:
    """The component string that creates this defense, every parameter written out.

    Default: the registered name of the class with its dataclass fields.
    """
    return DEFENSES.spec_of(self)

  def inference_keys(self, key: jax.Array, indices: jax.Array) -> jax.Array:
    """(votes, B) per-image keys of one prediction, tied to each image's index in its split."""
    indices = jnp.asarray(indices)
    per_vote = jax.vmap(lambda v: jax.random.fold_in(key, v))(jnp.arange(self.votes))
    return jax.vmap(lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(indices))(per_vote)

  def predict(self, network: Network, key: jax.Array, x: jax.Array, indices: jax.Array
              ) -> jax.Array:
    """(B,) int32 labels under the inference rule: one draw at `test_level`, or the majority
    vote over `votes` draws; image j's draws depend on (key, j) only."""
    keys = self.inference_keys(key, indices)
    level = jnp.full(x.shape[:1], self.test_level, jnp.float32)
    logits = jax.lax.map(lambda k: network(self.transform(k, x, level)), keys)
    if self.votes > 1:
      return majority_vote(logits)
    return jnp.argmax(logits[0], -1).astype(jnp.int32)


def _plain(value: Any) -> Any:
  """A field's value as JSON holds it (tuples as lists, anything else unknown as its text)."""
  if isinstance(value, (bool, int, float, str)) or value is None:
    return value
  if isinstance(value, (tuple, list)):
    return [_plain(v) for v in value]
  return str(value)


def _bpda_transform(defense: Defense) -> Callable[..., jax.Array]:
  """defense.transform as f(x, keys, level), run forward, differentiated as the identity."""
  return bpda(lambda x, keys, level: defense.transform(keys, x, level))


@DEFENSES.register("identity")
@dataclasses.dataclass(frozen=True)
class Identity(Defense):
  """No defense: the classifier sees its input. Lets callers treat every model alike."""

  preprocesses = False

  def transform(self, keys: jax.Array, x: jax.Array, level: jax.Array) -> jax.Array:
    return x

  def attack_view(self, keys: jax.Array, x: jax.Array, level: jax.Array) -> jax.Array:
    return x

  def describe(self) -> dict[str, Any]:
    return {"defense": "identity"}

  def spec(self) -> str:
    return "identity"


def majority_vote(logits: jax.Array) -> jax.Array:
  """Majority vote over predicted labels (ME-Net, Appendix J); ties go to the smaller label.

  Args:
    logits: (k, B, classes) logits of k randomized predictions per image.

  Returns:
    (B,) int32 labels.
  """
  votes = jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1], dtype=jnp.int32).sum(0)
  return jnp.argmax(votes, -1).astype(jnp.int32)


class _PerDevice:
  """Mixin placed before a defense's own class: its `transform` runs on each device's slice of
  the batch (shard_map); every other member is the defense's own."""

  def transform(self, keys, x, level):
    return parallel.per_device(super().transform, self._mesh, split=(True, True, True))(
        keys, x, level)

  def describe(self):
    return self._inner.describe()

  def spec(self):
    return self._inner.spec()


@functools.cache
def _per_device_class(cls: type) -> type:
  return type(f"PerDevice{cls.__name__}", (_PerDevice, cls), {"__doc__": cls.__doc__})


def per_device(defense: Defense, mesh: Mesh) -> Defense:
  """`defense` with its transform run by each device of `mesh` on its slice of the batch.

  Per-image draws involve no cross-image work, so splitting them changes nothing but where
  they run; the iterative solvers' loops then stay on one device instead of being partitioned
  by XLA. The result is an instance of a subclass of the defense's own class with the same
  field values: every method the defense defines or overrides (`attack_view`, `view`,
  `predict`, ...) is its own, and whichever of them calls `transform` splits over the devices.
  """
  wrapped = object.__new__(_per_device_class(type(defense)))
  # Its attributes as they are (fields and whatever __post_init__ derived), without rerunning
  # __init__.
  state = vars(defense) if hasattr(defense, "__dict__") else {
      f.name: getattr(defense, f.name) for f in dataclasses.fields(defense)}
  for name, value in state.items():
    object.__setattr__(wrapped, name, value)
  object.__setattr__(wrapped, "_inner", defense)
  object.__setattr__(wrapped, "_mesh", mesh)
  return wrapped


def on_devices(defense: Defense, mesh: Mesh) -> Defense:
  """`defense` whose draws run per device over `mesh` (itself when the mesh has one device)."""
  if mesh.size == 1 or not defense.preprocesses:
    return defense
  return per_device(defense, mesh)


def create(spec: str, **overrides: Any) -> Defense:
  """The defense a component string names, e.g. create("menet(method=usvt, startp=0.4)")."""
  return DEFENSES.create(spec, **overrides)


def names() -> tuple[str, ...]:
  return DEFENSES.names()


def register(name: str, **metadata: Any):
  """Class decorator: registers a `Defense` subclass under `name`."""
  return DEFENSES.register(name, **metadata)
