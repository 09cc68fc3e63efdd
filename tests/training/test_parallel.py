"""What the device and host count change, and what they do not.

Each configuration runs in its own process under a watchdog (tests/watchdog.py):
the device count is fixed when JAX starts, and a hang must fail, not stall CI.

The claim (README, "Many devices, many hosts"), tested exactly:
  * Per-image results (masks, reconstructions, ME sets, evaluation-mode logits
    and the attacker's gradients through them) involve no sum over images; each
    device runs the same per-image operations on its slice of the batch.
  * Cross-image sums (the gradient mean, BatchNorm's batch statistics) are
    split into per-device partial sums, so they are reassociated: they agree
    to rounding, not bitwise. Training is the same computation on any device
    count: runs agree to the rounding of the dtype they compute in.
  * Processes holding the same replicated state get bitwise identical results.

The comparisons across device counts run in float64 (jax_enable_x64, the model's
compute dtype float64: tests/train_worker.py --x64). In float32 a rounding
difference is 6e-8 relative, and a pre-activation that close to a ReLU's or a
max-pool's switch point takes the other branch in one of the runs: the unit's
whole gradient appears or vanishes, and the runs part by far more than
rounding. That is what made the float32 comparison depend on the CPU: on an
Intel Xeon (family 6 model 167) the 4-device float32 run stayed within 2.5e-7
of a float64 run for 6 steps, then at step 7 a batch-normalised
pre-activation of +2.9e-6 (second conv stage, one unit of one image) came out
<= 0, its ReLU and max-pool window closed, and the parameters jumped to 7e-5
(5.6e-4 at step 8) from the 1-device run, which stayed within 1.5e-6 of
float64 throughout. The float64 runs on 1 and 4 devices agreed to 8e-15. In
float64 a switch needs a pre-activation within ~1e-15 of its switch point (the
smallest here were 1e-6), so the bound below follows from float64 rounding
alone, on any CPU.
"""


import numpy as np
import pytest

from tests import watchdog
from tests.conftest import CIFAR_TEST, DATA_DIR

pytestmark = pytest.mark.skipif(not CIFAR_TEST.is_file(), reason="needs ../shared/data CIFAR-10")

MNIST_TEST = DATA_DIR / "mnist" / "t10k-images-idx3-ubyte.gz"
TIMEOUT = 400  # s; each run takes 10-60 s on 2 cores

# Per-image results on every local device: ME-Net reconstructions (USVT, per-example keys),
# eval-mode logits of a small CNN on them, and the BPDA gradient of the loss through them.
PER_IMAGE = """
import functools, sys, jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from menet_jax import data, evaluation, models
from menet_jax.attacks import cross_entropy
from menet_jax.defenses import MENet
from menet_jax.training.state import init_variables
from tests.conftest import DATA_DIR
images, labels = data.load("cifar10", "test[:16]", DATA_DIR)
x = jnp.asarray(images, jnp.float64) / 255
defense = MENet.create(method="usvt", startp=0.4, endp=0.6, mask_num=2)
net = models.create("small_cnn(dtype=float64)", num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3)
variables = init_variables(net, jax.random.key(0), x.shape[1:], train=False)
restored = evaluation.Target(apply_fn=functools.partial(net.apply, train=False),
                             variables=variables, defense=defense)
ctx = evaluation.context(restored, variables, None, None, eps=8 / 255, step_size=2 / 255)
key = jax.random.key(1)
recon = jax.jit(ctx.preprocess)(x, key)
logits = jax.jit(ctx.defended)(x, key)
grad = jax.jit(jax.grad(lambda a: cross_entropy(ctx.through(a, key), jnp.asarray(labels)).sum()))(x)
np.savez(sys.argv[1], devices=jax.device_count(), recon=recon, logits=logits, grad=grad)
"""


def _worker_args(out, workdir, *extra):
  return ["-m", "tests.train_worker", out, workdir, *extra]


def _parameters(path):
  arrays = np.load(path)
  return {k: arrays[k] for k in arrays.files if k not in ("step", "accuracy")}


def _max_difference(a, b, dtype=np.float32):
  a, b = _parameters(a), _parameters(b)
  assert sorted(a) == sorted(b)
  assert {v.dtype for v in (*a.values(), *b.values())} == {np.dtype(dtype)}
  return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def _one_and_four_devices(args_for, what):
  procs = [watchdog.start(args_for(n), devices=n) for n in (1, 4)]
  watchdog.finish(procs, TIMEOUT, what)


def test_per_image_results_do_not_depend_on_device_count(tmp_path):
  _one_and_four_devices(lambda n: ["-c", PER_IMAGE, tmp_path / f"{n}.npz"],
                        "per-image pipeline")
  one, four = np.load(tmp_path / "1.npz"), np.load(tmp_path / "4.npz")
  assert int(one["devices"]) == 1 and int(four["devices"]) == 4
  assert one["recon"].dtype == np.float64
  # Each device runs the same operations per image as one device does; XLA compiles them for a
  # different batch size, which nothing obliges to keep the instruction order, so the bound is
  # float64 rounding of values in [0, 1] (or relative to the largest), with a margin of 1e4 for
  # a few hundred operations and USVT's eigendecomposition. A wrong key, mask or shard differs
  # by O(0.1).
  np.testing.assert_allclose(four["recon"], one["recon"], rtol=0, atol=1e-12)
  scale = float(np.abs(one["logits"]).max())
  np.testing.assert_allclose(four["logits"], one["logits"], rtol=0, atol=1e-12 * scale)
  scale = float(np.abs(one["grad"]).max())
  np.testing.assert_allclose(four["grad"], one["grad"], rtol=0, atol=1e-12 * scale)


# The runs differ only in how cross-image sums are associated (4 partial sums instead of one):
# a relative difference of at most (B - 1) eps = 3.3e-15 per sum (B = 16, float64 eps 2.2e-16;
# the batch-norm sums over B x H x W terms: <= 16,384 eps = 3.6e-12 as a worst case, O(sqrt)
# of it in practice). Away from switch points (module docstring) training is smooth in those
# sums: with parameters and gradients of magnitude <= ~1 and lr 0.05, 8 steps move a difference
# by a small factor, so it stays orders of magnitude below 1e-9. A wrong shard, key or mask
# changes the parameters by 1e-3 or more after one step.
ROUNDING = 1e-9


@pytest.mark.parametrize("mode, images", [("vanilla", 128), ("pure", 64)])
def test_training_agrees_across_device_counts(tmp_path, mode, images):
  _one_and_four_devices(
      lambda n: _worker_args(tmp_path / f"{n}.npz", tmp_path / f"run{n}", f"--mode={mode}",
                             f"--images={images}", "--x64"), f"{mode} training")
  assert int(np.load(tmp_path / "1.npz")["step"]) == 8
  assert _max_difference(tmp_path / "1.npz", tmp_path / "4.npz", np.float64) < ROUNDING


@pytest.mark.skipif(not MNIST_TEST.is_file(), reason="needs ../shared/data MNIST")
def test_adversarial_training_step_agrees_across_device_counts(tmp_path):
  # One step of ME-Net adversarial training (PGD-2 through BPDA with USVT, fresh per-example
  # masks, per-device reconstruction) from the same initial state. The model has no BatchNorm,
  # so the attack involves no cross-image sum: the adversarial examples are per-image results,
  # and the only reassociated sum is the gradient mean of the update. (With BatchNorm, the
  # attack's input gradients differ by rounding and sign() may flip a near-zero component; so
  # may a switch of USVT's threshold, much more likely in float32 than in float64.)
  _one_and_four_devices(
      lambda n: _worker_args(tmp_path / f"{n}.npz", tmp_path / f"run{n}", "--mode=adv",
                             "--dataset=mnist", "--model=lenet", "--images=16", "--mask_num=1",
                                   "--x64"),
      "adversarial training step")
  assert int(np.load(tmp_path / "1.npz")["step"]) == 1
  assert _max_difference(tmp_path / "1.npz", tmp_path / "4.npz", np.float64) < ROUNDING


@pytest.mark.skipif(not MNIST_TEST.is_file(), reason="needs ../shared/data MNIST")
def test_er_classifier_step_agrees_across_device_counts(tmp_path):
  # One ER- iteration (CE step, critic step with clipping, regulariser step; SGD, whose update
  # is linear in the gradient, unlike Adam's first step, which is about lr sign(g) and turns a
  # rounding-sized gradient into an lr-sized update) from the same initial state: the batch-norm
  # statistics, the critic's means and the code metrics are cross-image sums over devices.
  _one_and_four_devices(
      lambda n: _worker_args(tmp_path / f"{n}.npz", tmp_path / f"run{n}", "--dataset=mnist",
                             "--model=er_mnist(width=8)", "--objective=er", "--images=16",
                                   "--x64"),
      "ER-Classifier step")
  assert int(np.load(tmp_path / "1.npz")["step"]) == 1
  assert _max_difference(tmp_path / "1.npz", tmp_path / "4.npz", np.float64) < ROUNDING


def test_two_processes_train_and_agree(tmp_path):
  # Adversarial training (with BatchNorm) on two jax.distributed processes: both hold the
  # replicated state that the same collectives produced, so they agree bitwise.
  port = watchdog.free_port()
  procs = [watchdog.start(_worker_args(tmp_path / f"p{i}.npz", tmp_path / "run",
                                       f"--coordinator=localhost:{port}", f"--process={i}",
                                       "--processes=2"))
           for i in range(2)]
  watchdog.finish(procs, TIMEOUT, "two-process training")
  assert int(np.load(tmp_path / "p0.npz")["step"]) == 8
  assert _max_difference(tmp_path / "p0.npz", tmp_path / "p1.npz") == 0.0
  # Each process built the ME test set of its own half of the split.
  assert len(list((tmp_path / "run-cache").iterdir())) == 2
