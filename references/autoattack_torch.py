"""AutoAttack's four attacks in PyTorch (torchattacks 3.5.1) on a port of the RIDE MNIST CNN:
the reference that menet_jax's APGD-CE, APGD-T, FAB-T and Square are checked against.

The network of menet_jax's "ride_mnist_cnn" (models/ride_cnn.py, RIDE's Table 2 classifier),
rebuilt in PyTorch with the trained Flax variables copied in (`from_flax`): pixels in [0, 1],
(x - mean) / std inside the model as in the Flax classifier, conv 1->20 5x5 VALID, ReLU, 2x2
max-pool, conv 20->50 5x5 VALID, ReLU, 2x2 max-pool, dense 800->500, ReLU, dense 500->10.
Flax is channels-last: its kernels are (H, W, in, out) and its flatten before the first dense
layer runs over (h, w, c), where PyTorch's runs over (c, h, w); `from_flax` permutes the
kernels and the rows of the first dense kernel accordingly, so that the PyTorch model computes
the Flax model's logits on the same images (up to float32 summation order).

`run_reference` runs each attack at AutoAttack's standard budgets (Croce & Hein, ICML 2020;
the settings of fra31/auto-attack's version='standard', the same under l-inf and l2) on every
image, and checks every output itself: finite, in [0, 1], within eps of its image in the
threat model's norm (l-inf by default, or l2 in pixel units). `torch` and `torchattacks` are
benchmark-only dependencies (requirements-bench.txt):

    python -m references.autoattack_torch --workdir=/work/runs/mnist_madry_cpu \
      --data_dir=../shared/data --images=500 --eps=0.3 --out=out/reference_torch.npz
    python -m references.autoattack_torch --workdir=/work/runs/mnist_madry_cpu \
      --data_dir=../shared/data --images=500 --norm=l2 --eps=2.0 --attacks=square \
      --out=out/reference_torch_l2.npz
"""

from __future__ import annotations

import json
import platform
import time
from typing import Any, Mapping, Sequence

import numpy as np

# The attacks of `run_reference`, each on all images, then AutoAttack's cascade of the four.
ATTACKS = ("apgd_ce", "apgd_t", "fab_t", "square", "autoattack_standard")
# Also accepted: Square with torchattacks' default schedule of p rescaled to the query budget
# (p halves as it would over 10,000 queries); AutoAttack runs Square without the rescaling.
EXTRA_ATTACKS = ("square_rescaled",)
NUM_CLASSES = 10
# AutoAttack's standard budgets (fra31/auto-attack, autoattack.py, version='standard').
STEPS = 100  # APGD-CE, APGD-T and FAB-T iterations
N_TARGET_CLASSES = 9  # APGD-T and FAB-T: the 9 highest-scoring other classes, one run each
SQUARE_QUERIES = 5000
SQUARE_P_INIT = 0.8
# The threat models' norms, menet_jax's names -> torchattacks' (its APGD, APGDT, FAB, Square and
# AutoAttack take either).
NORMS = {"linf": "Linf", "l2": "L2"}
# An output counts as inside the ball when max |x_adv - x| <= eps + EPS_SLACK: the attacks clip
# to x +- eps computed in float32, and rounding x +- eps (below 2 in magnitude) moves that
# bound by at most half an ulp, 2^-24 = 6e-8; the slack allows 16 times that, and is far
# below any eps an evaluation uses.
EPS_SLACK = 1e-6
# Under l2 an output counts as inside the ball when ||x_adv - x||_2 <= eps (1 + L2_RSLACK) +
# sqrt(d) EPS_SLACK, d values per image (784 on MNIST). The attacks scale a perturbation to eps
# (or check it against eps) with an l2 norm computed in float32: a float32 sum of d = 784
# squares is off by at most (d - 1) u = 4.7e-5 of itself (u = 2^-24), its square root by half
# that, 2.3e-5 of the norm, and the scaling adds a rounding of u per value; L2_RSLACK allows
# about four times that bound. Rounding x + delta to float32 then moves each value by at most
# half an ulp (below EPS_SLACK, as above), at most sqrt(d) EPS_SLACK over d values in l2.
L2_RSLACK = 1e-4
# Logit agreement of `check_logits` (see there): the two implementations' float32 sums differ
# by about 1e-6 of the logit scale (9e-7 measured on random initialisations); 1e-5 of it is
# the bound asserted.
LOGIT_RTOL = 1e-5


def ride_mnist_cnn(*, mean: Sequence[float], std: Sequence[float], num_classes: int = NUM_CLASSES):
  """The RIDE MNIST CNN as a torch.nn.Module, float32, in eval mode: (N, 1, 28, 28) pixels
  in [0, 1] -> (N, num_classes) logits, normalising with (mean, std) (one value per channel)."""
  import torch  # noqa: PLC0415 - benchmark-only dependency
  from torch import nn  # noqa: PLC0415
  from torch.nn import functional as F  # noqa: PLC0415

  class RIDEMnistCNN(nn.Module):
    """menet_jax.models.RIDEMnistCNN in NCHW."""

    def __init__(self):
      super().__init__()
      self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
      self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))
      self.conv1 = nn.Conv2d(1, 20, 5)
      self.conv2 = nn.Conv2d(20, 50, 5)
      self.fc1 = nn.Linear(800, 500)
      self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x):
      x = (x - self.pixel_mean) / self.pixel_std
      x = F.max_pool2d(F.relu(self.conv1(x)), 2)
      x = F.max_pool2d(F.relu(self.conv2(x)), 2)
      return self.fc2(F.relu(self.fc1(x.flatten(1))))

  return RIDEMnistCNN().eval()


def from_flax(variables: Mapping[str, Any], *, mean: Sequence[float], std: Sequence[float]):
  """`ride_mnist_cnn` holding the Flax model's variables ({"params": ...}; the model has no
  batch norm, so a non-empty "batch_stats" is an error).

  Conv kernels (H, W, in, out) -> (out, in, H, W). Dense kernels (in, out) -> (out, in);
  the first dense layer's 800 inputs are the (4, 4, 50) feature maps flattened as (h, w, c)
  in Flax and as (c, h, w) in PyTorch, so its rows are permuted from the one order to the other.
  """
  import torch  # noqa: PLC0415 - benchmark-only dependency

  extra = set(variables) - {"params", "batch_stats"}
  if extra or any(np.size(v) for v in _leaves(variables.get("batch_stats", {}))):
    raise ValueError(f"the RIDE MNIST CNN has only params, got collections {sorted(variables)} "
                     f"with batch statistics {variables.get('batch_stats')!r}")
  params = {layer: {name: np.asarray(value, np.float32) for name, value in leaves.items()}
            for layer, leaves in variables["params"].items()}
  if sorted(params) != ["Conv_0", "Conv_1", "Dense_0", "Dense_1"]:
    raise ValueError(f"not the RIDE MNIST CNN's layers: {sorted(params)}")
  dense0 = params["Dense_0"]["kernel"]
  if dense0.shape != (800, 500):
    raise ValueError(f"Dense_0 kernel {dense0.shape}, expected (800, 500)")
  dense0 = dense0.reshape(4, 4, 50, 500).transpose(2, 0, 1, 3).reshape(800, 500)  # (h,w,c) -> (c,h,w)
  weights = {
      "conv1.weight": params["Conv_0"]["kernel"].transpose(3, 2, 0, 1),
      "conv1.bias": params["Conv_0"]["bias"],
      "conv2.weight": params["Conv_1"]["kernel"].transpose(3, 2, 0, 1),
      "conv2.bias": params["Conv_1"]["bias"],
      "fc1.weight": dense0.T,
      "fc1.bias": params["Dense_0"]["bias"],
      "fc2.weight": params["Dense_1"]["kernel"].T,
      "fc2.bias": params["Dense_1"]["bias"],
  }
  model = ride_mnist_cnn(mean=mean, std=std, num_classes=weights["fc2.bias"].shape[0])
  state = model.state_dict()
  for name, value in weights.items():
    if tuple(state[name].shape) != value.shape:
      raise ValueError(f"{name}: Flax gives {value.shape}, the network has {tuple(state[name].shape)}")
    state[name] = torch.tensor(value)
  model.load_state_dict(state)
  return model


def _leaves(tree) -> list:
  if isinstance(tree, Mapping):
    return [leaf for value in tree.values() for leaf in _leaves(value)]
  return [tree]


def to_torch(images: np.ndarray):
  """(N, H, W, C) float images in [0, 1] (menet_jax's layout) -> (N, C, H, W) float32 tensor."""
  import torch  # noqa: PLC0415 - benchmark-only dependency

  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
  return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2), np.float32))


def logits(torch_model, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
  """The PyTorch model's logits (N, classes) on (N, H, W, C) images in [0, 1]."""
  import torch  # noqa: PLC0415 - benchmark-only dependency

  x = to_torch(images)
  with torch.no_grad():
    return np.concatenate([torch_model(x[i:i + batch_size]).numpy()
                           for i in range(0, len(x), batch_size)]) if len(x) else \
        np.zeros((0, NUM_CLASSES), np.float32)


def check_logits(ours: np.ndarray, theirs: np.ndarray, *, rtol: float = LOGIT_RTOL) -> dict:
  """Asserts two float32 implementations' logits (N, classes) agree; returns the measures.

  Tolerance: each logit is a chain of four float32 dot products (fan-in 25, 500, 800 and 500)
  that the two implementations sum in different orders. A float32 sum of n terms is off by
  at most n u sum|terms| (u = 2^-24 = 6e-8), in practice by about sqrt(n) u sum|terms|
  (rounding errors are a random walk): sqrt(800) u = 1.7e-6 of the scale of the terms, per
  layer and per implementation. With the scale of the logits, s = max |logit| over the batch
  (at least 1e-3), standing for the size of the summed terms, `rtol` s = 1e-5 s bounds that
  with room for four layers, two implementations and moderate cancellation, and catches any
  port error (a wrong permutation or transpose moves logits by a large fraction of s).

  Predictions must be identical, except where the logits of `ours` tie: the top two are
  within twice the tolerance of each other (either order is then within rounding).
  """
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  if ours.shape != theirs.shape:
    raise AssertionError(f"logits of shapes {ours.shape} and {theirs.shape}")
  scale = max(float(np.max(np.abs(ours), initial=0.0)), 1e-3)
  tol = rtol * scale
  diff = float(np.max(np.abs(ours - theirs), initial=0.0))
  top2 = np.sort(ours, axis=1)[:, -2:]
  tie = (top2[:, 1] - top2[:, 0]) <= 2 * tol
  differ = ours.argmax(1) != theirs.argmax(1)
  measures = {"max_abs_diff": diff, "logit_scale": scale, "tolerance": tol,
              "max_rel_diff": diff / scale, "predictions_differ": int(differ.sum()),
              "predictions_differ_at_ties": int((differ & tie).sum()), "ties": int(tie.sum())}
  if diff > tol:
    raise AssertionError(f"logits differ by {diff:.3g} > {tol:.3g} ({rtol:g} of the logit "
                         f"scale {scale:.3g}): {measures}")
  if np.any(differ & ~tie):
    raise AssertionError(f"predictions differ on {int((differ & ~tie).sum())} images whose "
                         f"top two logits are not tied: {measures}")
  return measures


def attack(name: str, torch_model, *, eps: float, seed: int = 0, norm: str = "linf"):
  """The torchattacks attack of `name` at AutoAttack's standard budget (radius eps in `norm`,
  "linf" or "l2"; torchattacks' norm, below, is NORMS[norm]: "Linf" or "L2").

  apgd_ce: APGD(norm, eps, steps=100, n_restarts=1, loss="ce", eot_iter=1, rho=0.75,
    seed): AutoAttack's APGDAttack(n_iter=100, n_restarts=1, loss="ce", rho=.75).
  apgd_t: APGDT(norm, eps, steps=100, n_restarts=1, n_classes=10, eot_iter=1, rho=0.75,
    seed): the targeted DLR loss (its only loss), n_classes - 1 = 9 target classes (the 2nd
    to 10th highest logits of the clean image, one run of 100 steps each on the images still
    correct): AutoAttack's APGDAttack_targeted(n_iter=100, n_target_classes=9, n_restarts=1).
  fab_t: FAB(norm, eps, steps=100, n_restarts=1, multi_targeted=True, n_classes=10,
    alpha_max=0.1, eta=1.05, beta=0.9, seed): the targeted FAB over the same 9 target
    classes: AutoAttack's FABAttack(targeted, n_iter=100, n_target_classes=9, n_restarts=1);
    an output counts only within eps (FAB minimises the norm, then checks it against eps).
  square: Square(norm, eps, n_queries=5000, n_restarts=1, p_init=0.8, loss="margin",
    resc_schedule=False, seed): AutoAttack's SquareAttack(p_init=.8, n_queries=5000,
    n_restarts=1, resc_schedule=False): p halves after 10, 50, 200, ... 4000 queries, the
    schedule of a 10,000-query run not rescaled to 5,000 (torchattacks' default,
    resc_schedule=True, rescales it: "square_rescaled").
  autoattack_standard: AutoAttack(norm, eps, version="standard", n_classes=10, seed),
    a MultiAttack cascade of APGD, APGDT, FAB (multi-targeted) and Square, each on the images
    the ones before left correct. torchattacks builds it with its classes' defaults, which are
    not AutoAttack's: 10 steps for APGD, APGDT and FAB, and Square's rescaled schedule. Here
    its members are set to the budgets above (steps 100, resc_schedule False) and checked.

  Each attack seeds torch's generator with `seed` when called, so a run is repeatable.
  """
  import torchattacks  # noqa: PLC0415 - benchmark-only dependency

  if norm not in NORMS:
    raise ValueError(f"unknown norm {norm!r}: one of {tuple(NORMS)}")
  common = {"norm": NORMS[norm], "eps": eps, "seed": seed}
  if name == "apgd_ce":
    return torchattacks.APGD(torch_model, steps=STEPS, n_restarts=1, loss="ce", eot_iter=1,
                             rho=0.75, **common)
  if name == "apgd_t":
    return torchattacks.APGDT(torch_model, steps=STEPS, n_restarts=1, n_classes=N_TARGET_CLASSES + 1,
                              eot_iter=1, rho=0.75, **common)
  if name == "fab_t":
    return torchattacks.FAB(torch_model, steps=STEPS, n_restarts=1, multi_targeted=True,
                            n_classes=N_TARGET_CLASSES + 1, alpha_max=0.1, eta=1.05, beta=0.9,
                            **common)
  if name in ("square", "square_rescaled"):
    return torchattacks.Square(torch_model, n_queries=SQUARE_QUERIES, n_restarts=1,
                               p_init=SQUARE_P_INIT, loss="margin",
                               resc_schedule=name == "square_rescaled", **common)
  if name == "autoattack_standard":
    auto = torchattacks.AutoAttack(torch_model, version="standard", n_classes=N_TARGET_CLASSES + 1,
                                   **common)
    apgd, apgdt, fab, square = members = auto._autoattack.attacks  # noqa: SLF001
    kinds = [type(m).__name__ for m in members]
    if kinds != ["APGD", "APGDT", "FAB", "Square"]:
      raise RuntimeError(f"torchattacks' AutoAttack runs {kinds}, not APGD, APGDT, FAB, Square")
    for member in (apgd, apgdt, fab):
      member.steps = STEPS
    square.rescale_schedule = False
    wanted = [(apgd, {"steps": STEPS, "n_restarts": 1, "loss": "ce", "eot_iter": 1}),
              (apgdt, {"steps": STEPS, "n_restarts": 1, "n_target_classes": N_TARGET_CLASSES}),
              (fab, {"steps": STEPS, "n_restarts": 1, "multi_targeted": True,
                     "n_target_classes": N_TARGET_CLASSES}),
              (square, {"n_queries": SQUARE_QUERIES, "n_restarts": 1, "p_init": SQUARE_P_INIT,
                        "loss": "margin", "rescale_schedule": False})]
    for member, settings in wanted:
      for key, value in {**settings, **common}.items():
        if getattr(member, key) != value:
          raise RuntimeError(f"AutoAttack's {type(member).__name__}.{key} = "
                             f"{getattr(member, key)!r}, not {value!r}")
    return auto
  raise ValueError(f"unknown attack {name!r}: one of {ATTACKS + EXTRA_ATTACKS}")


def run_reference(torch_model, images: np.ndarray, labels: np.ndarray, *, eps: float,
                  attacks: Sequence[str] = ATTACKS, seed: int = 0,
                  norm: str = "linf") -> dict[str, np.ndarray]:
  """Per image, whether it stays robust under each attack (`attack` says which settings).

  Args:
    torch_model: a torch.nn.Module mapping (N, C, H, W) pixels in [0, 1] to logits
      (e.g. `from_flax`); put in eval mode.
    images: (N, H, W, C) float in [0, 1], menet_jax's layout.
    labels: (N,) int true labels.
    eps: radius in `norm` (pixel units).
    attacks: names from ATTACKS (or EXTRA_ATTACKS); each runs on all N images (torchattacks
      attacks only the ones classified correctly, and returns the others unchanged).
    seed: the attacks' seed.
    norm: the threat model's norm, "linf" or "l2".

  Returns:
    {name: (N,) bool}: robust = the model classifies the attack's output as the label, where
    the output has been checked here (`robust_flags`) to be finite, in [0, 1] and within eps
    of the image in `norm`.

  Raises:
    AssertionError: an attack returned an output outside [0, 1] or the eps-ball, or of
      another shape (the reference is then broken, and no count from it would be sound).
  """
  import torch  # noqa: PLC0415 - benchmark-only dependency

  torch_model.eval()
  x = to_torch(images)
  y = torch.from_numpy(np.asarray(labels, np.int64))
  if len(y) != len(x):
    raise ValueError(f"{len(x)} images but {len(y)} labels")
  results = {}
  for name in attacks:
    adv = attack(name, torch_model, eps=eps, seed=seed, norm=norm)(x, y).detach()
    results[name] = robust_flags(torch_model, x, adv, y, eps=eps, name=name, norm=norm)
  return results


def robust_flags(torch_model, x, adv, y, *, eps: float, name: str = "attack",
                 norm: str = "linf") -> np.ndarray:
  """(N,) bool: adv's prediction equals y, after checking adv (N, C, H, W) is a valid
  perturbation of x: finite, in [0, 1], within eps + EPS_SLACK in l-inf (norm "linf"), or
  within eps (1 + L2_RSLACK) + sqrt(C H W) EPS_SLACK in l2 (norm "l2")."""
  import torch  # noqa: PLC0415 - benchmark-only dependency

  if adv.shape != x.shape or adv.dtype != x.dtype:
    raise AssertionError(f"{name}: output {tuple(adv.shape)} {adv.dtype}, input "
                         f"{tuple(x.shape)} {x.dtype}")
  a, c = adv.numpy().astype(np.float64), x.numpy().astype(np.float64)
  d = (a - c).reshape(len(a), -1)
  if norm == "linf":
    dist, bound = np.abs(d).max(axis=1, initial=0.0), eps + EPS_SLACK
  elif norm == "l2":
    dist = np.sqrt(np.sum(d * d, axis=1))
    bound = eps * (1 + L2_RSLACK) + np.sqrt(d.shape[1]) * EPS_SLACK
  else:
    raise ValueError(f"unknown norm {norm!r}: one of {tuple(NORMS)}")
  bad = ~np.isfinite(a).reshape(len(a), -1).all(axis=1) | (a < 0).reshape(len(a), -1).any(axis=1) \
      | (a > 1).reshape(len(a), -1).any(axis=1) | ~(dist <= bound)
  if bad.any():
    raise AssertionError(f"{name}: {int(bad.sum())} outputs are not valid perturbations "
                         f"({norm} distance up to {dist.max():.9g} for eps {eps}, range "
                         f"[{a.min():.9g}, {a.max():.9g}])")
  with torch.no_grad():
    pred = torch_model(adv).argmax(1)
  return (pred == y).numpy()


def _define_flags() -> None:
  from absl import flags  # noqa: PLC0415

  flags.DEFINE_string("workdir", None, "The trained ride_mnist_cnn run.", required=True)
  flags.DEFINE_enum("checkpoint", "last", ["last", "best"], "Which checkpoint of the run.")
  flags.DEFINE_string("data_dir", "../shared/data", "Offline datasets.")
  flags.DEFINE_integer("images", 500, "The first N images of the run's test split.", lower_bound=1)
  flags.DEFINE_enum("norm", "linf", list(NORMS), "The threat model's norm.")
  flags.DEFINE_float("eps", 0.3, "Radius in `norm`, in pixel units.", lower_bound=0.0)
  flags.DEFINE_list("attacks", list(ATTACKS), "Attacks to run, each on all images, from "
                    f"{', '.join(ATTACKS + EXTRA_ATTACKS)}.")
  flags.DEFINE_integer("seed", 0, "The attacks' seed.")
  flags.DEFINE_integer("threads", 1, "PyTorch intra-op threads.", lower_bound=1)
  flags.DEFINE_string("out", None, "Per-image robust flags (.npz, keys = attack names); the "
                      "settings, versions and timings go to a .json beside it.", required=True)


def main(argv: Sequence[str]) -> None:
  """The CLI: restores a trained run, ports it, checks the logits, runs the attacks, writes
  the per-image flags (.npz) and a summary (.json), each through a temporary file."""
  from pathlib import Path  # noqa: PLC0415

  import torch  # noqa: PLC0415 - benchmark-only dependency
  import torchattacks  # noqa: PLC0415
  from absl import flags, logging  # noqa: PLC0415

  from menet_jax import data, evaluation  # noqa: PLC0415
  from menet_jax.models import RIDEMnistCNN  # noqa: PLC0415
  from menet_jax.training import factories  # noqa: PLC0415
  from menet_jax.utils import machine  # noqa: PLC0415
  from menet_jax.utils.atomic_write import atomic_write  # noqa: PLC0415

  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments {argv[1:]}")
  opts = flags.FLAGS
  logging.set_verbosity(logging.WARNING)  # orbax logs every step of a restore at INFO
  unknown = [a for a in opts.attacks if a not in ATTACKS + EXTRA_ATTACKS]
  if unknown:
    raise SystemExit(f"unknown attacks {unknown}: choose from {ATTACKS + EXTRA_ATTACKS}")
  out = Path(opts.out)
  json_path = out.with_suffix(".json")
  torch.set_num_threads(opts.threads)

  restored = evaluation.load(opts.workdir, opts.checkpoint)
  config = restored.config
  module = factories.create_model(config)
  if not isinstance(module, RIDEMnistCNN):
    raise SystemExit(f"{opts.workdir} trained {config.model}; this reference ports only "
                     "ride_mnist_cnn")
  images, labels = data.load(config.dataset, config.test_split, opts.data_dir)
  if len(images) < opts.images:
    raise SystemExit(f"{config.test_split} has {len(images)} images, fewer than {opts.images}")
  x = images[:opts.images].astype(np.float32) / 255.0
  y = labels[:opts.images].astype(np.int64)

  flax_logits = np.concatenate([
      np.asarray(restored.apply_fn(restored.variables, x[i:i + 500], train=False))
      for i in range(0, len(x), 500)])
  torch_model = from_flax(restored.variables, mean=module.mean, std=module.std)
  torch_logits = logits(torch_model, x)
  agreement = check_logits(flax_logits, torch_logits)
  clean = torch_logits.argmax(1) == y
  print(f"{len(x)} images of {config.dataset} {config.test_split}; checkpoint "
        f"{restored.checkpoint} (step {restored.step}); the bare classifier (the run's defense "
        f"{config.defense!r} is not applied)")
  print(f"logits: max |flax - torch| {agreement['max_abs_diff']:.3g} = "
        f"{agreement['max_rel_diff']:.3g} of the logit scale {agreement['logit_scale']:.3g} "
        f"(tolerance {agreement['tolerance']:.3g}); predictions differ on "
        f"{agreement['predictions_differ']} images ({agreement['ties']} near-ties)")
  print(f"clean accuracy {clean.mean():.4f}; torch {torch.__version__}, torchattacks "
        f"{torchattacks.__version__}, {opts.threads} thread(s)", flush=True)

  robust, seconds = {}, {}
  for name in opts.attacks:
    start = time.perf_counter()
    robust[name] = run_reference(torch_model, x, y, eps=opts.eps, attacks=(name,),
                                 seed=opts.seed, norm=opts.norm)[name]
    seconds[name] = time.perf_counter() - start
    print(f"{name:20s} robust accuracy {robust[name].mean():.4f} "
          f"({int(robust[name].sum())}/{len(x)})  {seconds[name]:8.1f} s", flush=True)

  with atomic_write(out) as tmp:
    with open(tmp, "wb") as f:  # a file object: np.savez adds no second suffix
      np.savez(f, **robust)
  summary = {
      "workdir": str(opts.workdir), "checkpoint": restored.checkpoint, "step": restored.step,
      "model": config.model, "run_defense_not_applied": config.defense,
      "dataset": config.dataset, "split": config.test_split, "images": len(x),
      "norm": opts.norm, "eps": opts.eps, "seed": opts.seed, "torch_threads": opts.threads,
      "attacks": list(opts.attacks), "clean_accuracy": float(clean.mean()),
      "robust_accuracy": {k: float(v.mean()) for k, v in robust.items()},
      "seconds": seconds, "logit_agreement": agreement,
      "settings": {"steps": STEPS, "n_target_classes": N_TARGET_CLASSES,
                   "square_queries": SQUARE_QUERIES, "square_p_init": SQUARE_P_INIT,
                   "square_resc_schedule": {"square": False, "square_rescaled": True,
                                            "autoattack_standard": False},
                   "restarts": 1, "norm": NORMS[opts.norm], "eps_slack": EPS_SLACK,
                   **({"l2_rslack": L2_RSLACK} if opts.norm == "l2" else {}),
                   "each_attack_on_all_images": True,
                   "autoattack_standard": "torchattacks.AutoAttack(version='standard') with its "
                                          "APGD, APGDT and FAB set to 100 steps and Square to "
                                          "resc_schedule=False"},
      "versions": {"torch": torch.__version__, "torchattacks": torchattacks.__version__,
                   "numpy": np.__version__, "python": platform.python_version()},
      "machine": machine.describe(),
  }
  with atomic_write(json_path) as tmp:
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
  print(f"wrote {out} and {json_path}")


if __name__ == "__main__":
  from absl import app  # noqa: PLC0415

  _define_flags()
  app.run(main)
