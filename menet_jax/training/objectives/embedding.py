"""Objectives of embedding classifiers C(Q(x)) (models.embedding): ER, E-CLA and VAE-CLA.

The ER-Classifier (shared/papers/ER-Classifier.txt, eq. 2 and Algorithm 1; the notes
shared/specs/ER-Classifier.md, section 1.3) trains the encoder Q and head C on

    min_{Q, C}  lambda_0 E CE(C(Q(x)), y) + lambda_1 W1(Q_Z, P_Z),

W1 between the codes' distribution and a prior P_Z in its dual form, estimated by a
critic D whose Lipschitz bound is kept by clipping its weights to [-c, c] (WGAN).
One iteration on a batch (x, y), codes z~ = Q(x) and prior draws z ~ P_Z:

  0. (eps > 0) x <- PGD(x, y) on CE through C o Q (Madry's adversarial training);
  1. critic: one step on  lambda (mean D(z) - mean D(stop_grad z~)), then clip D;
  2. classification: one step on  lambda_0 mean CE(C(Q(x)), y), the head at
     head_lr x lr, the encoder at lr;
  3. regulariser: one step on  lambda_1 mean D(Q(x))  for the encoder, with the
     same optimizer state as its step 2.

(The sign is the paper's listing's, the prior in the role of "real": the critic
lowers D on the prior and raises it on the codes; the encoder moves its codes to
where D is low.) Each step has its own optimizer: the loop's (`tx`) for the
encoder, `tx` followed by a scale of head_lr or critic_lr for the head and critic
(for Adam, exactly Adam at that fraction of lr). Only step 2's forward pass
updates batch-norm statistics; the others use batch statistics without updating
them, as PGD does.

"ecla" is the same encoder, head and optimizers trained by steps 0 and 2 only (the
paper's E-CLA; with eps > 0 the architecture-matched adversarial-training control).
"vaecla" trains a variational encoder (mean and log-variance) on
CE(C(mean + exp(logvar / 2) e), y) + beta KL(N(mean, var) || N(0, I)), e ~ N(0, I)
(beta < 1, see VAECLA),
in one step of the encoder and head; the classifier uses the mean.

The critic game is `critic`: "clip" (the paper's, above), "wgan_gp" (not in the
paper: linear output, no clipping, gradient penalty gp_weight (|grad D(z^)|_2 - 1)^2
at z^ = z + a (z~ - z), a ~ U[0, 1] per code, its own Adam(1e-4, b 0.5 / 0.9) and
n_critic steps per iteration, igul222's settings; the same sign convention as "clip",
which the penalty does not see) or "js" (the standard GAN game the paper "also
tried": a logit f, the critic minimises -[mean log s(f(z)) + mean log(1 - s(f(z~)))],
the encoder -lambda_1 mean log s(f(Q(x))), no clipping).

The release's accidental behaviours are options, off by default: accumulate_grad
adds step 2's encoder gradient to step 3's (no zero_grad between them);
release_bn_stats updates the encoder's batch-norm statistics from every forward pass
the release makes (steps 1 and 2 before the step, step 3 twice after it: four
updates per batch instead of one). The release's third, a step-decay scheduler that
is created but never stepped, is the default here (constant lr); the scheduler as
written (StepLR(30, 0.5)) is the loop's `--lr_boundaries=30,60,... --lr_decay=0.5`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from menet_jax.defenses import Defense
from menet_jax.models.embedding import Critic
from menet_jax.training import state as state_lib
from menet_jax.training.objectives.base import Metrics, Objective, register
from menet_jax.training.objectives.pgd_at import attacked_inputs
from menet_jax.utils import validation

# The priors of the paper's section 4.3: (sampler, variance per coordinate or None).
PRIORS: dict[str, tuple[Callable[[jax.Array, tuple[int, ...]], jax.Array], float | None]] = {
    "gaussian": (jax.random.normal, 1.0),
    "uniform": (lambda key, shape: jax.random.uniform(key, shape, minval=-3.0, maxval=3.0), 3.0),
    "cauchy": (jax.random.cauchy, None),  # no moments: its codes' mean and spread are not compared
}


@dataclasses.dataclass(frozen=True)
class _Game:
  """A critic game on scores D(z) of prior draws and D(z~) of codes (both (B,)).

  critic_loss(d_prior, d_codes) is what the critic minimises, encoder_loss(d_codes)
  what step 3 minimises before lambda_1; estimate(critic loss) is the distance the
  critic estimates (W1 or JS), logged as `estimate_name`. How the critic is kept in
  check: `clipped` (weights clipped to [-c, c] after each step) or `penalised` (the
  gradient penalty); `optimizer` replaces the loop's (scaled by critic_lr) when set;
  `n_critic` is the default number of critic steps per iteration.
  """
  output: str
  critic_loss: Callable[[jax.Array, jax.Array], jax.Array]
  encoder_loss: Callable[[jax.Array], jax.Array]
  estimate: Callable[[jax.Array], jax.Array]
  estimate_name: str
  clipped: bool = False
  penalised: bool = False
  optimizer: optax.GradientTransformation | None = None
  n_critic: int = 1


_WGAN = dict(critic_loss=lambda d_prior, d_codes: d_prior.mean() - d_codes.mean(),
             encoder_loss=jnp.mean, estimate=jnp.negative, estimate_name="w1_estimate")
GAMES: dict[str, _Game] = {
    "clip": _Game(output="log_sigmoid", clipped=True, **_WGAN),
    # igul222's critic: its own Adam, independent of the loop's optimizer, 5 steps.
    "wgan_gp": _Game(output="logit", penalised=True, optimizer=optax.adam(1e-4, b1=0.5, b2=0.9),
                     n_critic=5, **_WGAN),
    # With the best critic, its loss is log 4 - 2 JS(P_Z, Q_Z).
    "js": _Game(output="logit",
                critic_loss=lambda f_prior, f_codes: -(jax.nn.log_sigmoid(f_prior).mean()
                                                       + jax.nn.log_sigmoid(-f_codes).mean()),
                encoder_loss=lambda f_codes: -jax.nn.log_sigmoid(f_codes).mean(),
                estimate=lambda loss: 0.5 * (jnp.log(4.0) - loss), estimate_name="js_estimate"),
}


class EmbeddingState(struct.PyTreeNode):
  """The classifier (params, batch_stats), the critic and one optimizer state per update.

  params holds the model's {"q": encoder, "c": head}; opt_state {"encoder", "head",
  "critic"}; critic is {} for the objectives without one.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  critic: Any
  opt_state: dict[str, Any]
  apply_fn: Callable[..., Any] = struct.field(pytree_node=False)
  critic_fn: Callable[..., Any] = struct.field(pytree_node=False)
  txs: dict[str, optax.GradientTransformation] = struct.field(pytree_node=False)

  def update(self, part: str, grads: Any, params: Any) -> tuple[Any, Any]:
    """(new params, new optimizer state) of one part after a step on grads."""
    updates, opt = self.txs[part].update(grads, self.opt_state[part], params)
    return optax.apply_updates(params, updates), opt

  def apply_classifier_gradients(self, grads: Any, batch_stats: Any) -> EmbeddingState:
    """One step of the encoder and the head on grads {"q", "c"}, and the new statistics."""
    q, opt_q = self.update("encoder", grads["q"], self.params["q"])
    c, opt_c = self.update("head", grads["c"], self.params["c"])
    return self.replace(params={"q": q, "c": c}, batch_stats=batch_stats,
                        opt_state=dict(self.opt_state, encoder=opt_q, head=opt_c))


def _apply(state: EmbeddingState, params: Any, *args, method: str, key: jax.Array | None = None,
           batch_stats: Any = None) -> tuple[Any, Any]:
  """(output, updated batch_stats) of a train-mode call of the model's `method`."""
  variables = {"params": params,
               "batch_stats": state.batch_stats if batch_stats is None else batch_stats}
  out, updates = state.apply_fn(variables, *args, train=True, method=method,
                                mutable=["batch_stats"],
                                rngs={"dropout": key} if key is not None else {})
  return out, updates["batch_stats"]


def _code_metrics(codes: jax.Array, prior: str) -> Metrics:
  """How far a batch of codes (B, k) is from the prior: the RMS of its mean and, where the
  prior has a variance, |cov - var I|_F / k."""
  out = {"code_mean_rms": jnp.sqrt(jnp.mean(jnp.mean(codes, 0) ** 2))}
  variance = PRIORS[prior][1]
  if variance is not None:
    k = codes.shape[-1]
    out["code_cov_gap"] = jnp.linalg.norm(jnp.cov(codes, rowvar=False) - variance * jnp.eye(k)) / k
  return out


@dataclasses.dataclass(frozen=True)
class _EmbeddingObjective(Objective):
  """What the three objectives share: optimizers, state, adversarial examples."""
  head_lr: float = 0.05
  eps: float = 0.0
  step_size: float = 0.01
  steps: int = 40

  draws_in_step = True

  def __post_init__(self):
    validation.number_in("head_lr", self.head_lr, 0.0, 1.0, lo_open=True)
    validation.number_in("eps", self.eps, 0.0, 1.0)
    validation.number_in("step_size", self.step_size, 0.0, 1.0, lo_open=True)
    validation.integer_in("steps", self.steps, 1)

  def _txs(self, tx: optax.GradientTransformation) -> dict[str, optax.GradientTransformation]:
    return {"encoder": tx, "head": optax.chain(tx, optax.scale(self.head_lr))}

  def _critic(self) -> nn.Module | None:
    return None

  def init(self, key: jax.Array, model: nn.Module, tx: optax.GradientTransformation,
           image_shape: tuple[int, int, int]) -> EmbeddingState:
    if not hasattr(model, "encode"):
      raise ValueError(f"objective {self.spec()} needs an embedding classifier (models.embedding, "
                       f"e.g. er_mnist), got {type(model).__name__}")
    k_model, k_critic = jax.random.split(key)
    variables = state_lib.init_variables(model, k_model, image_shape, train=False)
    params, txs, critic_params = variables["params"], self._txs(tx), {}
    critic = self._critic()
    if critic is not None:
      code = jax.eval_shape(lambda: model.apply(variables, jnp.zeros((2, *image_shape)),
                                                train=False, method="encode"))
      critic_params = state_lib.init_variables(critic, k_critic, code.shape[1:], code.dtype)
      txs["critic"] = self._critic_tx(tx)
    opt_state = {"encoder": txs["encoder"].init(params["q"]),
                 "head": txs["head"].init(params["c"])}
    if critic is not None:
      opt_state["critic"] = txs["critic"].init(critic_params)
    return EmbeddingState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables.get("batch_stats", {}), critic=critic_params,
                          opt_state=opt_state, apply_fn=model.apply,
                          critic_fn=critic.apply if critic is not None else None, txs=txs)

  def _inputs(self, state, batch, key, defense: Defense, augment: bool
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(training inputs, labels, model key): `pgd_at.attacked_inputs` with fresh dropout at
    every attack step, and a key for the step's own draws."""
    # The step key's splits go to the inputs, as in every objective; the model's draws (dropout,
    # prior) come from a key folded out of it.
    k_attack, k_model = jax.random.split(jax.random.fold_in(key, 1))
    x, labels = attacked_inputs(
        lambda x, t: _apply(state, state.params, x, method="__call__",
                            key=jax.random.fold_in(k_attack, t))[0],
        batch, key, defense=defense, augment=augment, eps=self.eps, step_size=self.step_size,
        steps=self.steps)
    return x, labels, k_model


@register("ecla")
@dataclasses.dataclass(frozen=True)
class ECLA(_EmbeddingObjective):
  """Cross-entropy only (the paper's E-CLA), head at head_lr x lr; eps > 0: PGD adversarial
  training with step_size and steps (the architecture-matched control of ER)."""

  def _classification(self, state: EmbeddingState, x: jax.Array, labels: jax.Array,
                      key: jax.Array, scale: float = 1.0
                      ) -> tuple[EmbeddingState, Metrics, jax.Array, Any]:
    """Step 2: (state, metrics, codes, encoder gradient) after one step on scale x mean CE."""
    def loss_fn(params):
      codes, stats = _apply(state, params, x, method="encode")
      logits, stats = _apply(state, params, codes, method="classify", key=key, batch_stats=stats)
      ce = state_lib.cross_entropy(logits, labels).mean()
      return scale * ce, (ce, logits, codes, stats)

    (_, (ce, logits, codes, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    state = state.apply_classifier_gradients(grads, stats)
    metrics = {"loss": ce, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
    return state, metrics, jax.lax.stop_gradient(codes), grads["q"]

  def step(self, state, batch, key, *, defense: Defense, augment: bool):
    x, labels, k_model = self._inputs(state, batch, key, defense, augment)
    _, k_class = jax.random.split(k_model)  # as ER's, which draws its prior from the first
    state, metrics, codes, _ = self._classification(state, x, labels, k_class)
    return state.replace(step=state.step + 1), {**metrics, **_code_metrics(codes, "gaussian")}


@register("er")
@dataclasses.dataclass(frozen=True)
class ER(ECLA):
  """The ER-Classifier: E-CLA's steps plus the critic (1) and the encoder regulariser (3).

  Attributes (besides E-CLA's):
    lambda_critic, lambda_ce, lambda_reg: lambda, lambda_0, lambda_1 of the steps.
    critic: the game, "clip", "wgan_gp" or "js" (module docstring).
    clip: c, the "clip" critic's weights and biases are clipped to [-c, c] after its step.
    critic_lr: the "clip" and "js" critics' learning rate as a fraction of lr.
    gp_weight: the "wgan_gp" penalty's weight.
    n_critic: critic steps per iteration, fresh prior draws each; None: the game's (5 for
      "wgan_gp", else 1).
    prior: "gaussian" N(0, I), "uniform" U(-3, 3)^k or "cauchy" Cauchy(0, 1)^k.
    accumulate_grad: step 3 also applies step 2's encoder gradient (the release).
    release_bn_stats: the encoder's batch-norm statistics updated four times per batch (the
      release).
  """
  lambda_critic: float = 1.0
  lambda_ce: float = 1.0
  lambda_reg: float = 1.0
  critic: str = "clip"
  clip: float = 0.01
  critic_lr: float = 0.5
  gp_weight: float = 10.0
  n_critic: int | None = None
  prior: str = "gaussian"
  accumulate_grad: bool = False
  release_bn_stats: bool = False

  def __post_init__(self):
    super().__post_init__()
    for name in ("lambda_critic", "lambda_ce", "lambda_reg", "gp_weight"):
      validation.number_in(name, getattr(self, name), 0.0, float("inf"))
    validation.number_in("clip", self.clip, 0.0, float("inf"), lo_open=True)
    validation.number_in("critic_lr", self.critic_lr, 0.0, 1.0, lo_open=True)
    validation.choice("critic", self.critic, tuple(GAMES))
    if self.n_critic is not None:
      validation.integer_in("n_critic", self.n_critic, 1)
    validation.choice("prior", self.prior, tuple(PRIORS))

  @property
  def _game(self) -> _Game:
    return GAMES[self.critic]

  def _critic(self) -> nn.Module:
    return Critic(output=self._game.output)

  def _critic_tx(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    if self._game.optimizer is not None:
      return self._game.optimizer
    return optax.chain(tx, optax.scale(self.critic_lr))

  def critic_step(self, state: EmbeddingState, codes: jax.Array, key: jax.Array
                  ) -> tuple[EmbeddingState, jax.Array]:
    """Step 1 (n_critic steps) on codes z~ (B, k), prior draws from key: (state, the critic's
    distance estimate before its last step)."""
    game = self._game

    def loss_fn(gamma, prior, alpha):
      loss = game.critic_loss(state.critic_fn(gamma, prior), state.critic_fn(gamma, codes))
      out = self.lambda_critic * loss
      if game.penalised:
        mixed = prior + alpha[:, None] * (codes - prior)
        # D acts on each code alone, so the gradient of the sum is each code's own gradient.
        slopes = jax.grad(lambda z: state.critic_fn(gamma, z).sum())(mixed)
        out = out + self.gp_weight * jnp.mean((jnp.linalg.norm(slopes, axis=-1) - 1.0) ** 2)
      return out, game.estimate(loss)

    def one_step(i, carry):
      gamma, opt, _ = carry
      k_prior, k_alpha = jax.random.split(jax.random.fold_in(key, i))
      prior = PRIORS[self.prior][0](k_prior, codes.shape)
      alpha = jax.random.uniform(k_alpha, codes.shape[:1])
      (_, estimate), grads = jax.value_and_grad(loss_fn, has_aux=True)(gamma, prior, alpha)
      updates, opt = state.txs["critic"].update(grads, opt, gamma)
      gamma = optax.apply_updates(gamma, updates)
      if game.clipped:
        gamma = jax.tree.map(lambda p: jnp.clip(p, -self.clip, self.clip), gamma)
      return gamma, opt, estimate

    n = self.n_critic or game.n_critic
    gamma, opt, estimate = jax.lax.fori_loop(
        0, n, one_step, (state.critic, state.opt_state["critic"], jnp.zeros((), codes.dtype)))
    return state.replace(critic=gamma, opt_state=dict(state.opt_state, critic=opt)), estimate

  def regulariser_step(self, state: EmbeddingState, x: jax.Array, extra: Any = None
                       ) -> tuple[EmbeddingState, jax.Array]:
    """Step 3 on inputs x: (state, lambda_1 x the game's encoder loss before the step);
    `extra` (a gradient of the encoder's parameters) is added to the step's gradient."""
    def loss_fn(q):
      z, stats = _apply(state, {"q": q, "c": state.params["c"]}, x, method="encode")
      return self.lambda_reg * self._game.encoder_loss(state.critic_fn(state.critic, z)), stats

    (reg, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["q"])
    if extra is not None:
      grads = jax.tree.map(jnp.add, grads, extra)
    q, opt = state.update("encoder", grads, state.params["q"])
    # The learning-rate schedule follows the loop's iterations (PyTorch's StepLR is stepped per
    # epoch, not per optimizer step): step 3 leaves its count where step 2 left it. Adam's own
    # count (bias correction) advances, as the release's shared optimizer's does.
    opt = _hold_schedule(opt, state.opt_state["encoder"])
    if self.release_bn_stats:  # the release's step-3 forward and its unused second one
      stats = _encoder_stats(state.replace(batch_stats=stats), state.params, x)
      state = state.replace(batch_stats=stats)
    return state.replace(params=dict(state.params, q=q),
                         opt_state=dict(state.opt_state, encoder=opt)), reg

  def step(self, state, batch, key, *, defense: Defense, augment: bool):
    x, labels, k_model = self._inputs(state, batch, key, defense, augment)
    k_prior, k_class = jax.random.split(k_model)
    if self.release_bn_stats:  # the release's step-1 forward, before step 2's
      state = state.replace(batch_stats=_encoder_stats(state, state.params, x))
    # Steps 1 and 2 touch disjoint parts (the critic; the encoder and head), so step 2 runs
    # first and step 1 takes the codes of its forward pass, made with the same parameters.
    state, metrics, codes, g_ce = self._classification(state, x, labels, k_class, self.lambda_ce)
    state, estimate = self.critic_step(state, codes, k_prior)
    state, reg = self.regulariser_step(state, x, g_ce if self.accumulate_grad else None)
    return state.replace(step=state.step + 1), {
        **metrics, self._game.estimate_name: estimate, "regulariser": reg,
        **_code_metrics(codes, self.prior)}


def _encoder_stats(state: EmbeddingState, params: Any, x: jax.Array) -> Any:
  """The batch statistics after one train-mode encoder pass over x."""
  return _apply(state, params, x, method="encode")[1]


def _hold_schedule(new: Any, old: Any) -> Any:
  """`new` optimizer state with the counts of its learning-rate schedules taken from `old`."""
  is_schedule = lambda s: isinstance(s, optax.ScaleByScheduleState)
  return jax.tree.map(lambda n, o: o if is_schedule(n) else n, new, old, is_leaf=is_schedule)


@register("vaecla")
@dataclasses.dataclass(frozen=True)
class VAECLA(_EmbeddingObjective):
  """VAE-CLA: a variational encoder (model with variational=True) on CE + beta KL, z sampled
  in training, the mean at test.

  beta must stay below 1 for the code to carry the label: the expected KL bounds the mutual
  information I(X; Z) >= I(Y; Z), which bounds what the code can save of the cross-entropy, so
  at beta >= 1 the code that matches the prior (KL 0, chance accuracy) is optimal. Measured at
  beta 1 on MNIST (er_mnist(width=32)): KL 0.01 nats, 10-17 % held-out accuracy after 6 epochs.
  The default 0.1 is not the paper's (it gives none).
  """
  beta: float = 0.1

  def __post_init__(self):
    super().__post_init__()
    validation.number_in("beta", self.beta, 0.0, float("inf"))

  def init(self, key, model, tx, image_shape):
    if not getattr(model, "variational", False):
      raise ValueError("objective vaecla needs a variational encoder: set the model's "
                       "variational=True, e.g. er_mnist(variational=True)")
    return super().init(key, model, tx, image_shape)

  def step(self, state, batch, key, *, defense: Defense, augment: bool):
    x, labels, k_model = self._inputs(state, batch, key, defense, augment)
    k_noise, k_drop = jax.random.split(k_model)

    def loss_fn(params):
      (mean, log_var), stats = _apply(state, params, x, method="encode")
      z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(k_noise, mean.shape)
      logits, stats = _apply(state, params, z, method="classify", key=k_drop, batch_stats=stats)
      ce = state_lib.cross_entropy(logits, labels).mean()
      kl = gaussian_kl(mean, log_var).mean()
      return ce + self.beta * kl, (ce, kl, logits, mean, stats)

    (_, (ce, kl, logits, mean, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    state = state.apply_classifier_gradients(grads, stats).replace(step=state.step + 1)
    return state, {"loss": ce, "kl": kl, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
                   **_code_metrics(jax.lax.stop_gradient(mean), "gaussian")}


def gaussian_kl(mean: jax.Array, log_var: jax.Array) -> jax.Array:
  """KL(N(mean, exp(log_var)) || N(0, I)) per example: mean, log_var (B, k) -> (B,)."""
  return -0.5 * jnp.sum(1 + log_var - mean ** 2 - jnp.exp(log_var), axis=-1)
