"""The named attacks of the evaluation runner, each with its threat model.

An attack here is a complete threat model: what the attacker knows (nothing but
a copy, the network, the whole pipeline, scores, decisions), which loss it
ascends and through what. The runner picks them by name
(`--attacks=clean,pgd,bpda_eot,...`), as big_vision picks ops from a config.

Every attack has the signature `attack(ctx, key, x, y, steps) -> x_adv` on a
batch x: (B, H, W, C) in [0, 1], labels y: (B,). `ctx` (`Context`) carries the
target and the attack parameters. For an undefended target, the defense is the
identity, so the BPDA attacks are plain white-box attacks and gray-box is
white-box.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from menet_jax import attacks, validation

Logits = Callable[[jax.Array], jax.Array]
RandomLogits = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Params:
  """Attack parameters (pixels in [0, 1]).

  Attributes:
    eps: l-inf radius.
    step_size: PGD / CW / BPDA step.
    eot_samples: R, draws of the defense averaged per EOT step (published: 40).
    eot_step_size: the EOT attack's step (published: 5 eps / 200 with 200 steps).
    eot_chunk: EOT draws evaluated at once (memory).
    apgd_samples: draws averaged per APGD step through the defense.
    projected_rank: k of projected BPDA.
    spsa_samples, spsa_steps, spsa_lr, spsa_delta: SPSA (published: 2048 samples).
    boundary_steps: Boundary attack proposals (published: 1000).
    layout: the defense's matrix layout (projected BPDA's subspace).
  """
  eps: float = 8 / 255
  step_size: float = 2 / 255
  eot_samples: int = 40
  eot_step_size: float = 2 / 255
  eot_chunk: int = 8
  apgd_samples: int = 1
  projected_rank: int = 5
  spsa_samples: int = 2048
  spsa_steps: int = 100
  spsa_lr: float = 0.01
  spsa_delta: float = 0.01
  boundary_steps: int = 1000
  layout: str = "concat"

  def validate(self) -> "Params":
    validation.number_in("eps", self.eps, 0.0, 1.0)
    for name in ("step_size", "eot_step_size", "spsa_lr", "spsa_delta"):
      validation.number_in(name, getattr(self, name), 0.0, 1.0, lo_open=True)
    for name in ("eot_samples", "eot_chunk", "apgd_samples", "projected_rank", "spsa_steps",
                 "boundary_steps"):
      validation.integer_in(name, getattr(self, name), 1)
    validation.integer_in("spsa_samples", self.spsa_samples, 2)
    if self.spsa_samples % 2:
      raise ValueError(f"spsa_samples must be even, got {self.spsa_samples}")
    return self


@dataclasses.dataclass(frozen=True)
class Context:
  """What an attack may use; which of it an attack does use is its threat model.

  Attributes:
    network: x -> logits of the target's network alone (no preprocessing).
    defended: (x, key) -> logits of the whole target under one draw of its
      randomness (the network itself when undefended).
    through: like `defended`, with BPDA's identity backward pass through the
      preprocessing.
    preprocess: (x, key) -> the preprocessed input under one draw (x if none).
    source: x -> logits of the independently trained copy (transfer attacks), or None.
    params: the attack parameters.
    randomized: whether the target draws randomness (else EOT needs one draw only).
  """
  network: Logits
  defended: RandomLogits
  through: RandomLogits
  preprocess: Callable[[jax.Array, jax.Array], jax.Array]
  source: Logits | None
  params: Params
  randomized: bool = True


@dataclasses.dataclass(frozen=True)
class Attack:
  """A registered attack.

  Attributes:
    fn: (ctx, key, x, y, steps) -> x_adv.
    threat: "none", "transfer", "gray-box", "white-box", "score-based" or "decision-based".
    iterative: takes the runner's step counts (else `steps` is ignored).
    random: its result depends on the key (restarts make sense).
    needs_source: needs the independently trained copy.
  """
  fn: Callable[..., jax.Array]
  threat: str
  iterative: bool
  random: bool
  needs_source: bool = False
  description: str = ""


REGISTRY: dict[str, Attack] = {}


def register(name: str, **kwargs) -> Callable:
  def wrap(fn):
    if name in REGISTRY:
      raise ValueError(f"attack {name!r} is already registered")
    REGISTRY[name] = Attack(fn=fn, **kwargs)
    return fn
  return wrap


def get(name: str) -> Attack:
  if name not in REGISTRY:
    raise ValueError(f"unknown attack {name!r}; known: {', '.join(sorted(REGISTRY))}")
  return REGISTRY[name]


def names() -> tuple[str, ...]:
  return tuple(sorted(REGISTRY))


def _on(logits_fn: Logits, loss, y):
  return lambda xa, t: loss(logits_fn(xa), y)


def _fresh(random_logits: RandomLogits, loss, y, key):
  """Loss under a fresh draw of the defense at every step t."""
  return attacks.fresh_draws(lambda xa, k: loss(random_logits(xa, k), y), key)


def _cw(kappa: float):
  return lambda logits, y: attacks.cw_margin(logits, y, kappa)


@register("clean", threat="none", iterative=False, random=False,
          description="the unperturbed test images")
def _clean(ctx, key, x, y, steps):
  return x


# Attacks on a network alone: white-box for a vanilla model, gray-box for a
# defended one (the attacker has the trained network, not the preprocessing),
# transfer when the network is the independently trained copy.
def _network_attacks(prefix: str, threat: str, logits_of: Callable[[Context], Logits],
                     needs_source: bool, where: str) -> None:
  @register(f"{prefix}fgsm", threat=threat, iterative=False, random=False,
            needs_source=needs_source, description=f"FGSM on {where}")
  def _fgsm(ctx, key, x, y, steps):
    return attacks.fgsm(_on(logits_of(ctx), attacks.cross_entropy, y), x, eps=ctx.params.eps)

  @register(f"{prefix}pgd", threat=threat, iterative=True, random=True,
            needs_source=needs_source, description=f"PGD (cross-entropy) on {where}")
  def _pgd(ctx, key, x, y, steps):
    return attacks.pgd(_on(logits_of(ctx), attacks.cross_entropy, y), key, x,
                       eps=ctx.params.eps, step_size=ctx.params.step_size, steps=steps)

  for kappa in (20, 50):
    @register(f"{prefix}cw{kappa}", threat=threat, iterative=True, random=True,
              needs_source=needs_source,
              description=f"PGD on the CW margin loss, kappa = {kappa}, on {where}")
    def _cw_attack(ctx, key, x, y, steps, kappa=kappa):
      return attacks.pgd(_on(logits_of(ctx), _cw(kappa), y), key, x, eps=ctx.params.eps,
                         step_size=ctx.params.step_size, steps=steps)


_network_attacks("", "gray-box", lambda ctx: ctx.network, False,
                 "the target's network without its preprocessing")
_network_attacks("transfer_", "transfer", lambda ctx: ctx.source, True,
                 "the independently trained copy")


@register("bpda_pgd", threat="white-box", iterative=True, random=True,
          description="PGD through the defense, BPDA identity backward, a fresh draw per step")
def _bpda_pgd(ctx, key, x, y, steps):
  k_start, k_draws = jax.random.split(key)
  return attacks.pgd(_fresh(ctx.through, attacks.cross_entropy, y, k_draws), k_start, x,
                     eps=ctx.params.eps, step_size=ctx.params.step_size, steps=steps)


@register("bpda_eot", threat="white-box", iterative=True, random=True,
          description="BPDA-PGD with EOT: each step averages eot_samples draws (one for an "
                      "undefended model); keeps the iterate with the highest average loss")
def _bpda_eot(ctx, key, x, y, steps):
  k_start, k_draws = jax.random.split(key)
  p = ctx.params
  samples = p.eot_samples if ctx.randomized else 1
  loss = attacks.eot(lambda xa, k: attacks.cross_entropy(ctx.through(xa, k), y), k_draws,
                     samples, chunk=min(p.eot_chunk, samples))
  return attacks.pgd(loss, k_start, x, eps=p.eps, step_size=p.eot_step_size, steps=steps,
                     keep_best=True)


def _apgd(loss):
  def run(ctx, key, x, y, steps):
    k_start, k_draws = jax.random.split(key)
    p = ctx.params
    samples = p.apgd_samples if ctx.randomized else 1
    averaged = attacks.eot(lambda xa, k: loss(ctx.through(xa, k), y), k_draws, samples,
                           chunk=min(p.eot_chunk, samples))
    return attacks.apgd(averaged, k_start, x, eps=p.eps, steps=steps)
  return run


register("apgd_ce", threat="white-box", iterative=True, random=True,
         description="APGD on cross-entropy through the defense (BPDA, apgd_samples draws "
                     "per step)")(_apgd(attacks.cross_entropy))
register("apgd_dlr", threat="white-box", iterative=True, random=True,
         description="APGD on the DLR loss through the defense (BPDA, apgd_samples draws "
                     "per step)")(_apgd(attacks.dlr))


@register("approx_input", threat="white-box", iterative=True, random=True,
          description="ME-Net 3.4 approximate-input attack: BPDA-PGD started from the "
                      "preprocessed image, projected onto the eps-ball")
def _approx_input(ctx, key, x, y, steps):
  k_pre, k_draws = jax.random.split(key)
  return attacks.pgd(_fresh(ctx.through, attacks.cross_entropy, y, k_draws), k_pre, x,
                     eps=ctx.params.eps, step_size=ctx.params.step_size, steps=steps,
                     start=ctx.preprocess(x, k_pre))


@register("projected_bpda", threat="white-box", iterative=True, random=True,
          description="ME-Net 3.4 projected BPDA: the BPDA gradient projected onto the top "
                      "projected_rank singular vectors of the clean image")
def _projected_bpda(ctx, key, x, y, steps):
  return attacks.projected_pgd(_fresh(ctx.through, attacks.cross_entropy, y, key), x,
                               eps=ctx.params.eps, step_size=ctx.params.step_size, steps=steps,
                               rank=ctx.params.projected_rank, layout=ctx.params.layout)


@register("spsa", threat="score-based", iterative=False, random=True,
          description="SPSA on the margin loss of the defended scores (spsa_samples "
                      "directions, spsa_steps Adam steps)")
def _spsa(ctx, key, x, y, steps):
  p = ctx.params
  return attacks.spsa(lambda xa, k: attacks.margin(ctx.defended(xa, k), y), key, x, eps=p.eps,
                      steps=p.spsa_steps, samples=p.spsa_samples, lr=p.spsa_lr,
                      delta=p.spsa_delta)


@register("boundary", threat="decision-based", iterative=False, random=True,
          description="Boundary attack on the defended decisions (boundary_steps proposals), "
                      "its l2-minimal point projected onto the eps-ball")
def _boundary(ctx, key, x, y, steps):
  wrong = lambda xa, k: jnp.argmax(ctx.defended(xa, k), -1) != y
  x_b, _ = attacks.boundary(wrong, key, x, steps=ctx.params.boundary_steps)
  return attacks.project_linf(x_b, x, ctx.params.eps)
