"""The named attacks of the evaluation runner, each a complete threat model.

An attack here says what the attacker knows (nothing but a copy, the network,
the whole pipeline, scores, decisions), which loss it ascends and through what.
Attacks are registered components (utils.registry) with their parameters in
their signature, so a command line names them with their budgets:

    --attacks="clean,pgd@7/20,bpda_eot(steps=200,samples=40,step_size=0.000784),spsa(samples=2048)"

Every attack is `fn(ctx, key, x, y, *, params...) -> x_adv` on a batch x:
(B, H, W, C) in [0, 1], labels y: (B,). `ctx` (`Context`) carries the target,
its defense and the threat model's norm and radius (l-inf, or l2 in pixel units). A step size of None is the runner's
default step. For an undefended target (the identity defense) the BPDA attacks
are plain white-box attacks and gray-box is white-box.

Each registration records its threat model (`Threat`): the sanity checks
order attacks by it (more knowledge must not leave higher accuracy), never by
their names.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from menet_jax import attacks
from menet_jax.defenses import Defense
from menet_jax.utils.registry import Registry, format_spec, parse

Logits = Callable[[jax.Array], jax.Array]
RandomLogits = Callable[[jax.Array, jax.Array], jax.Array]

ATTACKS = Registry("attack")
KNOWLEDGE = {"none": 0, "transfer": 1, "score-based": 1, "decision-based": 1, "gray-box": 2,
             "white-box": 3}


@dataclasses.dataclass(frozen=True)
class Threat:
  """What an attack knows and does.

  Attributes:
    access: "none", "transfer", "gray-box" (the network without the defense),
      "white-box" (the whole pipeline), "score-based" or "decision-based".
    method: the optimiser ("pgd", "apgd", "fgsm", "spsa", "boundary", ...).
    loss: what it ascends ("cross_entropy", "cw", "dlr", "margin", "decision").
    iterative: takes the runner's step counts (--attack_steps) for `steps`.
    random: its result depends on the key (restarts make sense).
    needs_source: needs the independently trained copy.
    norms: the threat models' norms it runs under ("linf", "l2").
  """
  access: str
  method: str = "none"
  loss: str = "none"
  iterative: bool = False
  random: bool = False
  needs_source: bool = False
  norms: tuple[str, ...] = ("linf",)

  def knowledge(self, params: dict[str, Any], randomized: bool) -> int:
    """Rank of what the attacker knows: transfer < gray-box < white-box < white-box that
    averages several draws of a randomized defense (EOT)."""
    eot = randomized and params.get("samples", 1) > 1 and self.access == "white-box"
    return KNOWLEDGE[self.access] + int(eot)


@dataclasses.dataclass(frozen=True)
class Context:
  """What an attack may use; which of it an attack does use is its threat model.

  Attributes:
    network: x -> logits of the target's network alone (no defense).
    defended: (x, key) -> logits of the whole target under one draw of its defense.
    through: (x, key, view) -> logits like `defended`, differentiated through the defense's
      view `view` of its gradient ("bpda", the identity, unless the defense offers others,
      `Defense.views`).
    preprocess: (x, key) -> the defended input under one draw (x for the identity).
    source: x -> logits of the independently trained copy (transfer attacks), or None.
    defense: the target's defense.
    eps: radius of the threat model, in `norm` ("linf" or "l2", pixels in [0, 1]).
    step_size: the default step of the iterative attacks.
  """
  network: Logits
  defended: RandomLogits
  through: Callable[..., jax.Array]
  preprocess: Callable[[jax.Array, jax.Array], jax.Array]
  source: Logits | None
  defense: Defense
  eps: float
  step_size: float
  norm: str = "linf"

  def step(self, step_size: float | None) -> float:
    return self.step_size if step_size is None else step_size


def register(name: str, *, threat: Threat, description: str):
  """Decorator: registers `fn(ctx, key, x, y, *, params...)` as attack `name`."""
  return ATTACKS.register(name, threat=threat, description=description)


def threat(name: str) -> Threat:
  return ATTACKS.entry(name).metadata["threat"]


def description(name: str) -> str:
  return ATTACKS.entry(name).metadata["description"]


def names() -> tuple[str, ...]:
  return ATTACKS.names()


# AutoAttack's two versions (Croce & Hein 2020), at its budgets, every gradient attack through
# the defense's view (BPDA unless the attack names another): "standard" for a deterministic
# defense (APGD-CE, APGD-T on 9 targets, FAB-T on 9 targets, Square at 5,000 queries, run as a
# cascade), "rand" for a randomized one (APGD-CE and APGD-DLR, each step averaging 20 draws).
# The same rows under l-inf and l2.
_WHITE_BOX = ("apgd_ce(steps=100)", "apgd_t(steps=100, targets=9)", "fab_t(steps=100, targets=9)")
_EOT = ("apgd_ce(steps=100, samples=20)", "apgd_dlr(steps=100, samples=20)")
PRESETS = {
    "standard": {norm: (*_WHITE_BOX, "square(queries=5000, rescale=False)")
                 for norm in attacks.NORMS},
    "rand": {"linf": _EOT, "l2": _EOT},
}


def preset(name: str, norm: str = "linf", randomized: bool | None = None) -> tuple[str, ...]:
  """The attack rows of preset `name` ("standard", "rand", or "auto": "rand" for a randomized
  defense, "standard" otherwise) under `norm`."""
  if name == "auto":
    if randomized is None:
      raise ValueError("the 'auto' preset needs to know whether the defense is randomized")
    name = "rand" if randomized else "standard"
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r}; presets: auto, {', '.join(PRESETS)}")
  if norm not in PRESETS[name]:
    raise ValueError(f"preset {name!r} has no {norm} version (its attacks run under "
                     f"{', '.join(PRESETS[name])} only); name the attacks instead")
  return PRESETS[name][norm]


def is_preset(entry: str) -> bool:
  return entry == "auto" or entry in PRESETS


def parse_attacks(entries: list[str], default_steps: list[int], norm: str = "linf",
                  randomized: bool | None = None) -> list[str]:
  """Attack entries -> the canonical component string of every row, validated before any work.

  An entry is a component string ("bpda_eot(steps=200, samples=40)"), the
  shorthand name@s1/s2 for steps=s1 and steps=s2, or a preset's name ("standard",
  "rand", "auto": `preset`) for its rows. An iterative attack whose entry sets no
  steps runs at each of `default_steps`. Every attack must run under the threat
  model's `norm`.
  """
  rows = []
  expanded = [e for entry in entries
              for e in (preset(entry, norm, randomized) if is_preset(entry) else (entry,))]
  for entry in expanded:
    spec, _, steps_text = entry.partition("@")
    name, given = parse(spec)
    t = threat(name)
    check_norm(name, norm)
    if steps_text:
      if "steps" not in [p.name for p in ATTACKS.entry(name).parameters] or not t.iterative:
        raise ValueError(f"attack {name!r} does not take the runner's steps (set its budget "
                         f"in its arguments), got {entry!r}")
      try:
        steps = [int(s) for s in steps_text.split("/")]
      except ValueError:
        raise ValueError(f"steps in {entry!r} must be integers, e.g. pgd@7/20/40") from None
    elif t.iterative and "steps" not in given:
      steps = list(default_steps)
    else:
      steps = [None]
    for s in steps:
      rows.append(format_spec(*(ATTACKS.bind(spec) if s is None else ATTACKS.bind(spec, steps=s))))
  if not rows:
    raise ValueError("attacks must name at least one attack")
  return rows


def check_norm(name: str, norm: str) -> None:
  """Raises ValueError unless attack `name` runs under `norm`."""
  norms = threat(name).norms
  if norm not in norms:
    raise ValueError(f"attack {name!r} runs under the {'/'.join(norms)} threat model only, "
                     f"not norm={norm!r}; under l2: "
                     f"{', '.join(n for n in names() if 'l2' in threat(n).norms)}")


def _positive_steps(steps: int) -> int:
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
    raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
  return steps


def _on(logits_fn: Logits, loss, y):
  return lambda xa, t: loss(logits_fn(xa), y)


def _fresh(random_logits: RandomLogits, loss, y, key):
  """Loss under a fresh draw of the defense at every step t."""
  return attacks.fresh_draws(lambda xa, k: loss(random_logits(xa, k), y), key)


def _cw(kappa: float):
  return lambda logits, y: attacks.cw_margin(logits, y, kappa)


@register("clean", threat=Threat("none", norms=attacks.NORMS),
          description="the unperturbed test images")
def _clean(ctx, key, x, y):
  return x


# Attacks on a network alone: white-box for an undefended model, gray-box for a defended one
# (the attacker has the trained network, not the defense), transfer when the network is the
# independently trained copy.
def _network_attacks(prefix: str, access: str, logits_of: Callable[[Context], Logits],
                     where: str) -> None:
  source = access == "transfer"

  @register(f"{prefix}fgsm", threat=Threat(access, "fgsm", "cross_entropy", needs_source=source),
            description=f"FGSM on {where}")
  def _fgsm(ctx, key, x, y):
    return attacks.fgsm(_on(logits_of(ctx), attacks.cross_entropy, y), x, eps=ctx.eps)

  @register(f"{prefix}pgd", threat=Threat(access, "pgd", "cross_entropy", iterative=True,
                                          random=True, needs_source=source, norms=attacks.NORMS),
            description=f"PGD (cross-entropy) on {where}")
  def _pgd(ctx, key, x, y, *, steps: int = 20, step_size: float | None = None):
    return attacks.pgd(_on(logits_of(ctx), attacks.cross_entropy, y), key, x, eps=ctx.eps,
                       step_size=ctx.step(step_size), steps=_positive_steps(steps),
                       norm=ctx.norm)

  def cw_attack(kappa: float):
    def _cw_attack(ctx, key, x, y, *, steps: int = 20, step_size: float | None = None):
      return attacks.pgd(_on(logits_of(ctx), _cw(kappa), y), key, x, eps=ctx.eps,
                         step_size=ctx.step(step_size), steps=_positive_steps(steps),
                         norm=ctx.norm)
    return _cw_attack

  for kappa in (20, 50):
    register(f"{prefix}cw{kappa}", threat=Threat(access, "pgd", f"cw{kappa}", iterative=True,
                                                 random=True, needs_source=source,
                                                 norms=attacks.NORMS),
             description=f"PGD on the CW margin loss, kappa = {kappa}, on {where}")(
                 cw_attack(kappa))


_network_attacks("", "gray-box", lambda ctx: ctx.network,
                 "the target's network without its defense")
_network_attacks("transfer_", "transfer", lambda ctx: ctx.source, "the independently trained copy")


def _through(ctx: Context, view: str) -> RandomLogits:
  return lambda xa, k: ctx.through(xa, k, view)


@register("bpda_pgd", threat=Threat("white-box", "pgd", "cross_entropy", iterative=True,
                                    random=True, norms=attacks.NORMS),
          description="PGD through the defense's gradient view (BPDA identity by default), a "
                      "fresh draw per step")
def _bpda_pgd(ctx, key, x, y, *, steps: int = 20, step_size: float | None = None,
              view: str = "bpda"):
  k_start, k_draws = jax.random.split(key)
  return attacks.pgd(_fresh(_through(ctx, view), attacks.cross_entropy, y, k_draws), k_start, x,
                     eps=ctx.eps, step_size=ctx.step(step_size), steps=_positive_steps(steps),
                     norm=ctx.norm)


@register("bpda_eot", threat=Threat("white-box", "pgd", "cross_entropy", iterative=True,
                                    random=True, norms=attacks.NORMS),
          description="BPDA-PGD with EOT: each step averages `samples` draws (one for a "
                      "deterministic defense); keeps the iterate with the highest average loss")
def _bpda_eot(ctx, key, x, y, *, steps: int = 20, samples: int = 40,
              step_size: float | None = None, chunk: int = 8, view: str = "bpda"):
  k_start, k_draws = jax.random.split(key)
  samples = samples if ctx.defense.randomized else 1
  loss = attacks.eot(lambda xa, k: attacks.cross_entropy(ctx.through(xa, k, view), y), k_draws,
                     samples, chunk=min(chunk, samples))
  return attacks.pgd(loss, k_start, x, eps=ctx.eps, step_size=ctx.step(step_size),
                     steps=_positive_steps(steps), keep_best=True, norm=ctx.norm)


def _apgd(loss):
  def run(ctx, key, x, y, *, steps: int = 20, samples: int = 1, chunk: int = 8,
          view: str = "bpda"):
    k_start, k_draws = jax.random.split(key)
    samples = samples if ctx.defense.randomized else 1
    averaged = attacks.eot(lambda xa, k: loss(ctx.through(xa, k, view), y), k_draws, samples,
                           chunk=min(chunk, samples))
    return attacks.apgd(averaged, k_start, x, eps=ctx.eps, steps=_positive_steps(steps),
                        norm=ctx.norm)
  return run


register("apgd_ce", threat=Threat("white-box", "apgd", "cross_entropy", iterative=True,
                                  random=True, norms=attacks.NORMS),
         description="APGD on cross-entropy through the defense (BPDA, `samples` draws per "
                     "step)")(_apgd(attacks.cross_entropy))
register("apgd_dlr", threat=Threat("white-box", "apgd", "dlr", iterative=True, random=True,
                                   norms=attacks.NORMS),
         description="APGD on the DLR loss through the defense (BPDA, `samples` draws per "
                     "step)")(_apgd(attacks.dlr))


@register("apgd_t", threat=Threat("white-box", "apgd", "dlr_targeted", iterative=True,
                                  random=True, norms=attacks.NORMS),
          description="APGD-T: APGD on the targeted DLR loss towards each of the `targets` "
                      "classes with the next largest clean logits, through the defense (BPDA), "
                      "a fresh draw per step")
def _apgd_t(ctx, key, x, y, *, steps: int = 100, targets: int = 9, view: str = "bpda"):
  k_start, k_draws = jax.random.split(key)
  logits = lambda xa, t: ctx.through(xa, jax.random.fold_in(k_draws, t), view)
  return attacks.apgd_targeted(logits, k_start, x, y, eps=ctx.eps, steps=_positive_steps(steps),
                               targets=targets, norm=ctx.norm)


@register("fab_t", threat=Threat("white-box", "fab", "fab", iterative=True, random=True,
                                  norms=attacks.NORMS),
          description="FAB-T: the fast adaptive boundary attack towards each of the `targets` "
                      "classes with the next largest clean logits, through the defense (BPDA), "
                      "its closest adversarial point kept where it is within eps")
def _fab_t(ctx, key, x, y, *, steps: int = 100, targets: int = 9, restarts: int = 1,
           view: str = "bpda"):
  k_search, k_draws = jax.random.split(key)
  logits = lambda xa, t: ctx.through(xa, jax.random.fold_in(k_draws, t), view)
  return attacks.fab_t(logits, k_search, x, y, eps=ctx.eps, steps=_positive_steps(steps),
                       targets=targets, norm=ctx.norm, restarts=restarts)


@register("approx_input", threat=Threat("white-box", "approx_input", "cross_entropy",
                                        iterative=True, random=True),
          description="ME-Net 3.4 approximate-input attack: BPDA-PGD started from the "
                      "defended image, projected onto the eps-ball")
def _approx_input(ctx, key, x, y, *, steps: int = 20, step_size: float | None = None):
  k_pre, k_draws = jax.random.split(key)
  return attacks.pgd(_fresh(_through(ctx, "bpda"), attacks.cross_entropy, y, k_draws), k_pre,
                     x, eps=ctx.eps, step_size=ctx.step(step_size), steps=_positive_steps(steps),
                     start=ctx.preprocess(x, k_pre))


@register("projected_bpda", threat=Threat("white-box", "projected_pgd", "cross_entropy",
                                          iterative=True, random=True),
          description="ME-Net 3.4 projected BPDA: the BPDA gradient projected onto the top "
                      "`rank` singular vectors of the clean image (in the defense's layout)")
def _projected_bpda(ctx, key, x, y, *, steps: int = 20, step_size: float | None = None,
                    rank: int = 5):
  layout = getattr(ctx.defense, "layout", "concat")
  return attacks.projected_pgd(_fresh(_through(ctx, "bpda"), attacks.cross_entropy, y, key), x,
                               eps=ctx.eps, step_size=ctx.step(step_size),
                               steps=_positive_steps(steps), rank=rank, layout=layout)


@register("spsa", threat=Threat("score-based", "spsa", "margin", random=True),
          description="SPSA on the margin loss of the defended scores (`samples` directions, "
                      "`steps` Adam steps)")
def _spsa(ctx, key, x, y, *, samples: int = 2048, steps: int = 100, lr: float = 0.01,
          delta: float = 0.01):
  return attacks.spsa(lambda xa, k: attacks.margin(ctx.defended(xa, k), y), key, x, eps=ctx.eps,
                      steps=steps, samples=samples, lr=lr, delta=delta)


@register("square", threat=Threat("score-based", "square", "margin", random=True,
                                  norms=attacks.NORMS),
          description="Square attack: random search over the eps-ball's vertices (l-inf) or its "
                      "sphere (l2) on the margin of the defended scores (`queries` forward "
                      "passes, a fresh draw each)")
def _square(ctx, key, x, y, *, queries: int = 5000, p_init: float = 0.8, rescale: bool = True):
  k_search, k_draws = jax.random.split(key)
  return attacks.square(_fresh(ctx.defended, attacks.margin, y, k_draws), k_search, x,
                        eps=ctx.eps, queries=queries, p_init=p_init, rescale=rescale,
                        norm=ctx.norm)


@register("boundary", threat=Threat("decision-based", "boundary", "decision", random=True,
                                    norms=attacks.NORMS),
          description="Boundary attack on the defended decisions (`steps` proposals), its "
                      "l2-minimal point projected onto the eps-ball")
def _boundary(ctx, key, x, y, *, steps: int = 1000):
  wrong = lambda xa, k: jnp.argmax(ctx.defended(xa, k), -1) != y
  x_b, _ = attacks.boundary(wrong, key, x, steps=steps)
  if ctx.norm == "l2":
    return attacks.project_l2(x_b, x, ctx.eps)
  return attacks.project_linf(x_b, x, ctx.eps)


@register("cw_l2", threat=Threat("white-box", "cw", "cw", random=True, norms=("l2",)),
          description="Carlini-Wagner l2 through the defense's gradient view (`binary_steps` "
                      "rounds of `steps` Adam steps, a fresh draw per step); its closest "
                      "example projected onto the eps-ball")
def _cw_l2(ctx, key, x, y, *, steps: int = 1000, binary_steps: int = 5, lr: float = 0.01,
           initial_const: float = 1.0, view: str = "bpda"):
  x_cw, _ = attacks.cw_l2(lambda xa, t: ctx.through(xa, jax.random.fold_in(key, t), view), x, y,
                          steps=steps, binary_steps=binary_steps, lr=lr,
                          initial_const=initial_const)
  return attacks.project_l2(x_cw, x, ctx.eps)
