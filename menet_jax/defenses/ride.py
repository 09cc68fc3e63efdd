"""RIDE and its family: a small network fitted afresh to every input image (Lin et al., 2019).

The defense (shared/papers/RIDE.txt, Algorithms 1-2, appendix Table 3; the
notes in shared/specs/RIDE.md give every choice below with its reason) fits a
reconstruction network h(.; w) to each image x~ by self-supervised denoising,
and classifies its estimate. Per image, with keys from the image's own key:

    w <- init, Adam state <- init, x(0) <- x~
    for t = 1..T (stages):
        K steps of Adam (coupled L2, as PyTorch) on the loss
            L(w) = masked MSE( h(x(t-1) + eps; w), x(t-1) + eps' )        eps, eps' ~ N(0, sigma^2)
        (a fraction `mask_fraction` of the pixels, per pixel and shared by the channels,
        is excluded from each step's loss; dropout 0.5 after the marked layers)
        x_est(t) <- mean over `samples` draws of h(x(t-1) + eps; w)      (dropout on, as the release)
        d_i <- sum_c |x(t-1) - x_est(t)| per pixel, tau <- its lower median
        x(t)_i <- x_est(t)_i where d_i < tau (NMS), alpha x(t-1)_i + (1 - alpha) x_est(t)_i elsewhere
    return x_est(T)

Variants (`variant`): "ride" as above; "dae" the same loss on x~ with no stage
updates (one stage of K T steps); "dip" a fixed random input z ~ N(0, 1) drawn
once, target x~, no stage updates; "idip" DIP's input with RIDE's targets and
stage updates. The loss is the paper's masked MSE, or with loss="release" the
release's ||h - target||_2 * mean(mask) (whose mask masks nothing).

The networks (Table 3): 3 x 3 convolutions with bias and ReLU, a sigmoid output
(images in [0, 1]); "mnist" 1-16-16-16-1 (4,945 parameters), "cifar"
3-32-32-32-32-3 (29,507), "imagenet" 3-32 x 7-3 (57,251). A batch of images is
fitted `chunk` images at once: every image has its own parameters and optimizer
state (vmap), nothing reduces across images, and an image's result depends on its
key and pixels only. Convolutions run as im2col + einsum ("im2col"; a batched
matmul with hand-written derivatives, the fast path on CPU) or as vmapped
convolutions ("grouped"; one grouped convolution for the batch); the two are
tested equal, values and derivatives.

Attacker's views (`view`): "bpda" (identity backward), "frozen" (the backward
pass of the fitted network at its final weights, z -> mean h(z + eps; w*) at z =
x~, the chain through the stage updates taken as the identity), and "exact"
(the exact gradient, unrolled through all K T steps, with rematerialisation; feasible for
small K T, a gradient-quality check).

    ride(preset=release_mnist), ride(variant=dae, k=200, t=5)
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import optax

from menet_jax.defenses.base import DEFENSES, Defense
from menet_jax.utils import validation

# Table 3: output channels of each 3 x 3 convolution before the last, and the layers
# (0-based) followed by dropout.
NETWORKS = {"mnist": ((16, 16, 16), (1, 2)), "cifar": ((32, 32, 32, 32), (1, 2)),
            "imagenet": ((32,) * 7, (3, 4, 5))}
VARIANTS = ("ride", "dae", "dip", "idip")
LOSSES = ("masked_mse", "release")
CONVS = ("im2col", "grouped")
# The CPU working set of `RIDE.chunk_size`: 2^20 floats (4 MB) of the widest patch matrix.
CPU_CHUNK_FLOATS = 2 ** 20
# The release's MNIST demo: 1001 iterations with updates at 200, 400, 600, 800.
PRESETS = {"paper": {"k": 2000, "t": 5}, "release_mnist": {"k": 200, "t": 5}}

Params = list[tuple[jax.Array, jax.Array]]  # (kernel (3, 3, C_in, C_out), bias (C_out,)) per layer


def network_for(image_shape: tuple[int, int, int]) -> str:
  """The Table 3 network of a dataset's images: mnist (1 channel), imagenet (> 64 px), cifar."""
  h, _, c = image_shape
  return "mnist" if c == 1 else "imagenet" if h > 64 else "cifar"


def init_params(key: jax.Array, network: str, channels: int) -> Params:
  """Xavier-uniform kernels (fan = 9 C), PyTorch's default biases U(+-1/sqrt(9 C_in))."""
  widths, _ = NETWORKS[network]
  sizes = [channels, *widths, channels]
  params = []
  for k, (c_in, c_out) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes, sizes[1:])):
    k_w, k_b = jax.random.split(k)
    limit = math.sqrt(6.0 / (9 * c_in + 9 * c_out))
    bound = 1.0 / math.sqrt(9 * c_in)
    params.append((jax.random.uniform(k_w, (3, 3, c_in, c_out), jnp.float32, -limit, limit),
                   jax.random.uniform(k_b, (c_out,), jnp.float32, -bound, bound)))
  return params


def parameter_count(network: str, channels: int) -> int:
  return sum(w.size + b.size for w, b in init_params(jax.random.key(0), network, channels))


def _patches(x: jax.Array) -> jax.Array:
  """The 3 x 3 SAME neighbourhoods of x (N, H, W, C) as (N, H, W, 9 C), in (row, column, channel)
  order: 9 shifted slices of the zero-padded x."""
  h, w = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return jnp.concatenate([padded[:, a:a + h, b:b + w] for a in range(3) for b in range(3)], -1)


def _correlate(patches: jax.Array, kernel: jax.Array) -> jax.Array:
  """patches (N, H, W, 9 C_in) times kernel (3, 3, C_in, C_out) -> (N, H, W, C_out)."""
  return jnp.einsum("nhwk,ko->nhwo", patches, kernel.reshape(-1, kernel.shape[-1]),
                    precision=jax.lax.Precision.HIGHEST)


@jax.custom_vjp
def _conv_im2col(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  """3 x 3 SAME convolution of x (N, H, W, C_in) as im2col and one matmul.

  Its derivatives are written out because autodiff's cost more than the forward on XLA:CPU
  (docs/benchmarks.md, RIDE): its input gradient is the output gradient g times the kernel's
  transpose, N H W x 9 C_in wide, then the adjoint of the 9 slices (a scatter-add), and its
  kernel gradient contracts the patches over the pixels, for which XLA copies them transposed.
  Here both come from the patches of g, P(g) (N, H, W, 9 C_out):
    dx = P(g) . flip(kernel) with C_in / C_out swapped (a forward correlation again), and
    dkernel[a, b] = x^T P(g)[:, 2 - a, 2 - b], since y[p] = sum_ab x[p + (a - 1, b - 1)] kernel[a, b]
  (only x, 9 times narrower than its patches, is transposed). Both are tested against lax's
  rules, to second order.
  """
  return _correlate(_patches(x), kernel) + bias


def _conv_im2col_fwd(x, kernel, bias):
  return _conv_im2col(x, kernel, bias), (x, kernel)


def _conv_im2col_bwd(residuals, g):
  x, kernel = residuals
  g_patches = _patches(g)
  dx = _correlate(g_patches, jnp.flip(kernel, (0, 1)).swapaxes(2, 3))
  c_in, c_out = kernel.shape[2:]
  products = jnp.einsum("nhwc,nhwk->ck", x, g_patches, precision=jax.lax.Precision.HIGHEST)
  dkernel = jnp.flip(products.reshape(c_in, 3, 3, c_out), (1, 2)).transpose(1, 2, 0, 3)
  return dx, dkernel, jnp.sum(g, axis=(0, 1, 2))


_conv_im2col.defvjp(_conv_im2col_fwd, _conv_im2col_bwd)


def _conv_lax(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      precision=jax.lax.Precision.HIGHEST) + bias


CONV = {"im2col": _conv_im2col, "grouped": _conv_lax}


def keep_mask(key: jax.Array, keep: float, shape: tuple[int, ...]) -> jax.Array:
  """Bernoulli(keep) draws of `shape` (bool), for dropout.

  At keep = 1/2, RIDE's rate, every draw is one bit of a threefry word, 32 draws per word:
  the same distribution (each bit of the generator's output is a fair coin, independent of the
  others) for a 32nd of the generator's work, which was about a tenth of a CIFAR-10 fit
  (docs/benchmarks.md). Any other keep compares uniforms, as jax.random.bernoulli does.
  """
  if keep != 0.5:
    return jax.random.bernoulli(key, keep, shape)
  size = math.prod(shape)
  words = jax.random.bits(key, (-(-size // 32),), jnp.uint32)
  bits = (words[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
  return bits.reshape(-1)[:size].reshape(shape).astype(bool)


def forward(params: Params, z: jax.Array, key: jax.Array, *, network: str, dropout: float,
            conv: str) -> jax.Array:
  """h(z; params) for one image's samples z (n, H, W, C): ReLU after every convolution but
  the last, dropout (kept units scaled by 1 / (1 - rate)) after the marked ones, sigmoid out."""
  _, dropped = NETWORKS[network]
  keys = jax.random.split(key, len(params))
  for i, (kernel, bias) in enumerate(params[:-1]):
    z = jax.nn.relu(CONV[conv](z, kernel, bias))
    if i in dropped and dropout > 0:
      keep = keep_mask(keys[i], 1 - dropout, z.shape)
      z = jnp.where(keep, z / (1 - dropout), 0)
  kernel, bias = params[-1]
  return jax.nn.sigmoid(CONV[conv](z, kernel, bias))


def masked_mse(out: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """sum m (out - target)^2 / max(1, C sum m), with m (n, H, W, 1) shared by the C channels."""
  return jnp.sum(mask * (out - target) ** 2) / jnp.maximum(1.0, out.shape[-1] * jnp.sum(mask))


def release_loss(out: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """The release's ||out - target||_2 (one norm of the whole residual) times mean(m)."""
  return jnp.sqrt(jnp.sum((out - target) ** 2)) * jnp.mean(mask)


def lower_median(d: jax.Array) -> jax.Array:
  """The lower median sorted(d)[(N - 1) // 2] (torch's .median), not the mean of the middle."""
  flat = jnp.sort(d.reshape(-1))
  return flat[(flat.size - 1) // 2]


def stage_update(x_prev: jax.Array, x_est: jax.Array, alpha: float, nms: bool) -> jax.Array:
  """Eq. 9 with the median replacement: pixels whose L1 change (over channels) is below the
  lower median take x_est, the others alpha x_prev + (1 - alpha) x_est."""
  blend = alpha * x_prev + (1 - alpha) * x_est
  if not nms:
    return blend
  d = jnp.sum(jnp.abs(x_prev - x_est), axis=-1, keepdims=True)
  return jnp.where(d < lower_median(d), x_est, blend)


@dataclasses.dataclass(frozen=True)
class RIDE(Defense):
  """RIDE, DAE, DIP or I-DIP (module docstring); attributes are the knobs of the paper.

  Attributes:
    variant: "ride", "dae", "dip" or "idip".
    preset: "paper" (K 2000, T 5) or "release_mnist" (K 200, T 5); k and t override it.
    k, t: Adam steps per stage and stages (DAE and DIP run K T steps in one stage).
    network: "mnist", "cifar", "imagenet", or None for the images' (`network_for`).
    sigma: input and target noise, in pixel units of [0, 1] (the MNIST demo's 0.1).
    target_noise: add noise to the target too (the paper).
    mask_fraction: fraction of the pixels excluded from each step's loss (0.9).
    loss: "masked_mse" (the paper) or "release".
    dropout: rate after the marked layers (0.5).
    lr, weight_decay, amsgrad: Adam with coupled L2 (the paper: 1e-4, 1e-4, no).
    alpha, nms: the stage update's convex weight and the median replacement.
    samples: n, noisy samples per step and per estimate.
    conv: "im2col" or "grouped".
    chunk: images fitted at once (vmapped); the batch goes through in chunks of this size
      (lax.map). None picks it: on CPU the images whose widest patch matrix (H W x 9 C) fills
      about 4 MB, the working set that ran fastest on a 2-core EPYC (docs/benchmarks.md: 8 or
      16 MNIST images and 4 CIFAR-10 images beat all 32 or 16 by 1.3x), and on accelerators
      the whole batch. The result does not depend on it (every image has its own key).
  """
  variant: str = "ride"
  preset: str = "paper"
  k: int | None = None
  t: int | None = None
  network: str | None = None
  sigma: float = 0.1
  target_noise: bool = True
  mask_fraction: float = 0.9
  loss: str = "masked_mse"
  dropout: float = 0.5
  lr: float = 1e-4
  weight_decay: float = 1e-4
  amsgrad: bool = False
  alpha: float = 0.9
  nms: bool = True
  samples: int = 1
  conv: str = "im2col"
  chunk: int | None = None

  randomized = True

  def __post_init__(self):
    validation.choice("variant", self.variant, VARIANTS)
    validation.choice("preset", self.preset, tuple(PRESETS))
    for name in ("k", "t"):
      value = getattr(self, name)
      object.__setattr__(self, name, validation.integer_in(
          name, PRESETS[self.preset][name] if value is None else value, 1))
    if self.network is not None:
      validation.choice("network", self.network, tuple(NETWORKS))
    validation.number_in("sigma", self.sigma, 0.0, math.inf)
    validation.number_in("mask_fraction", self.mask_fraction, 0.0, 1.0, hi_open=True)
    validation.choice("loss", self.loss, LOSSES)
    validation.number_in("dropout", self.dropout, 0.0, 1.0, hi_open=True)
    validation.number_in("lr", self.lr, 0.0, math.inf, lo_open=True)
    validation.number_in("weight_decay", self.weight_decay, 0.0, math.inf)
    validation.number_in("alpha", self.alpha, 0.0, 1.0)
    validation.integer_in("samples", self.samples, 1)
    validation.choice("conv", self.conv, CONVS)
    if self.chunk is not None:
      validation.integer_in("chunk", self.chunk, 1)
    if self.variant in ("dip", "idip") and self.samples != 1:
      raise ValueError(f"samples must be 1 for {self.variant} (one fixed input), got "
                       f"{self.samples}")

  def check(self, image_shape: tuple[int, int, int]) -> None:
    if len(image_shape) != 3:
      raise ValueError(f"image_shape must be (H, W, C), got {image_shape}")

  @property
  def views(self) -> tuple[str, ...]:
    return ("bpda", "frozen", "exact")

  def optimizer(self) -> optax.GradientTransformation:
    """Adam with PyTorch's coupled L2 (added to the gradient before the moments), also on
    biases: not AdamW."""
    moments = optax.scale_by_amsgrad() if self.amsgrad else optax.scale_by_adam()
    return optax.chain(optax.add_decayed_weights(self.weight_decay), moments,
                       optax.scale(-self.lr))

  def _network(self, shape) -> str:
    return self.network or network_for(tuple(shape))

  def fit(self, key: jax.Array, x: jax.Array
          ) -> tuple[jax.Array, Params, jax.Array, jax.Array]:
    """The defense on one image x (H, W, C): its estimate, and for the frozen view the final
    weights, the noisy input (n, H, W, C) and the dropout key of that estimate."""
    network = self._network(x.shape)
    h = functools.partial(forward, network=network, dropout=self.dropout, conv=self.conv)
    loss_fn = masked_mse if self.loss == "masked_mse" else release_loss
    tx = self.optimizer()
    n, stages = self.samples, (self.t if self.variant in ("ride", "idip") else 1)
    steps = self.k * (self.t if stages == 1 else 1)
    k_init, k_steps, k_est = jax.random.split(key, 3)
    k_params, k_input = jax.random.split(k_init)
    params = init_params(k_params, network, x.shape[-1])
    fixed_input = jax.random.normal(k_input, (1, *x.shape), x.dtype)  # DIP and I-DIP
    fixed = self.variant in ("dip", "idip")

    def noisy(u, k):
      return u[None] + self.sigma * jax.random.normal(k, (n, *u.shape), u.dtype)

    def step(carry, j):
      params, opt, u = carry
      k_in, k_tg, k_mask, k_drop = jax.random.split(jax.random.fold_in(k_steps, j), 4)
      z = fixed_input if fixed else noisy(u, k_in)
      target = noisy(u, k_tg) if self.target_noise else jnp.broadcast_to(u, (n, *u.shape))
      mask = jax.random.bernoulli(k_mask, 1 - self.mask_fraction, (n, *u.shape[:2], 1))
      grads = jax.grad(lambda p: loss_fn(h(p, z, k_drop), target, mask))(params)
      updates, opt = tx.update(grads, opt, params)
      return (optax.apply_updates(params, updates), opt, u), None

    def estimate(params, u, k):
      k_in, k_drop = jax.random.split(k)
      z = fixed_input if fixed else noisy(u, k_in)
      return jnp.mean(h(params, z, k_drop), axis=0), z, k_drop

    def stage(carry, s):
      params, opt, u = carry
      # A checkpoint per Adam step: the exact (unrolled) gradient stores one carry per step, not
      # every activation of every step.
      (params, opt, _), _ = jax.lax.scan(jax.checkpoint(step), (params, opt, u),
                                         s * steps + jnp.arange(steps))
      # Keyed by the number of steps taken, so that a stage update that changes nothing
      # (alpha = 1, no NMS) gives DAE exactly.
      x_est, z, k_drop = estimate(params, u, jax.random.fold_in(k_est, (s + 1) * steps))
      u = stage_update(u, x_est, self.alpha, self.nms) if stages > 1 else u
      return (params, opt, u), (x_est, z, k_drop)

    (params, _, _), (x_est, z, k_drop) = jax.lax.scan(stage, (params, tx.init(params), x),
                                                      jnp.arange(stages))
    return x_est[-1], params, z[-1], k_drop[-1]

  def chunk_size(self, x: jax.Array) -> int:
    """Images per vmapped fit for the batch x (N, H, W, C): `chunk`, or as its doc says."""
    if self.chunk is not None:
      return min(self.chunk, len(x))
    if jax.default_backend() != "cpu":
      return len(x)
    h, w, c = x.shape[1:]
    widest = max(c, *NETWORKS[self._network(x.shape[1:])][0])
    return max(1, min(len(x), round(CPU_CHUNK_FLOATS / (h * w * 9 * widest))))

  def map_images(self, fn, keys: jax.Array, x: jax.Array):
    """fn(key, image) over the keys (N,) and images x (N, H, W, C), vmapped `chunk_size` images
    at a time."""
    return jax.lax.map(lambda a: fn(*a), (keys, x), batch_size=self.chunk_size(x))

  def transform(self, keys: jax.Array, x: jax.Array, level: jax.Array) -> jax.Array:
    return self.map_images(lambda k, image: self.fit(k, image)[0], keys, x)

  def view(self, name: str, keys: jax.Array, x: jax.Array, level: jax.Array) -> jax.Array:
    if name == "frozen":
      return _frozen(self, keys, x)
    return super().view(name, keys, x, level)



def _frozen(defense: RIDE, keys: jax.Array, x: jax.Array) -> jax.Array:
  """The defense forward; backward through the fitted network at its final weights.

  Per image, the backward pass is the VJP of x -> mean_n h(x + e_n; w*) at the image x, with
  e = z - x the offset of the last estimate's input z (its noise, plus the stage updates'
  change of the target, whose own derivative is taken as the identity) and that estimate's
  dropout.
  """
  @jax.custom_vjp
  def run(x):
    return defense.transform(keys, x, None)

  def fwd(x):
    out, params, z, k_drop = defense.map_images(defense.fit, keys, x)
    return out, (params, z - x[:, None], k_drop, x)

  def bwd(residuals, cotangent):
    params, offsets, drop_keys, x0 = residuals
    net = defense._network(x0.shape[1:])

    def one(p, e, k, image, ct):
      fitted = lambda v: jnp.mean(forward(p, v[None] + e, k, network=net,
                                          dropout=defense.dropout, conv=defense.conv), axis=0)
      return jax.vjp(fitted, image)[1](ct)[0]

    return (jax.vmap(one)(params, offsets, drop_keys, x0, cotangent),)

  run.defvjp(fwd, bwd)
  return run(x)


DEFENSES.register("ride", RIDE)
