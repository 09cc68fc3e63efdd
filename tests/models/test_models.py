"""menet_jax.models: parameter counts, logits, batch norm, input normalisation, registry."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import data, models
from menet_jax.models import DenseNet, LeNet, ResNet, SmallCNN, WideResNet, small_cnn

CIFAR = (data.dataset("cifar10").mean, data.dataset("cifar10").std)
MNIST_STATS = ((0.1307,), (0.3081,))  # a non-trivial 1-channel normalisation


def _params_and_stats(model, shape):
  """Numbers of parameters and of batch-norm running statistics, from shapes only (no init)."""
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(shape, jnp.float32), train=False))
  size = lambda tree: sum(math.prod(a.shape) for a in jax.tree.leaves(tree))
  return size(variables["params"]), size(variables.get("batch_stats", {}))


# Analytic counts, written from the architectures' definitions, independently of the flax code.
# Batch norm counts its scale and bias (2 C), as PyTorch's parameters() does.

def _bn(c):
  return 2 * c


def _lenet_count(classes=10):
  return (5 * 5 * 1 * 32 + 32) + (5 * 5 * 32 * 64 + 64) + (7 * 7 * 64 * 1024 + 1024) + (
      1024 * classes + classes)


def _resnet18_count(classes=10):
  total, c_in = 3 * 3 * 3 * 64 + _bn(64), 64
  for stage, c in enumerate((64, 128, 256, 512)):
    for block in range(2):
      total += 9 * c_in * c + _bn(c) + 9 * c * c + _bn(c)
      if stage > 0 and block == 0:
        total += c_in * c + _bn(c)  # 1x1 projection shortcut
      c_in = c
  return total + 512 * classes + classes


def _wrn_count(depth, k, classes=10):
  total, c_in = 3 * 3 * 3 * 16, 16
  for c in (16 * k, 32 * k, 64 * k):
    for _ in range((depth - 4) // 6):
      total += _bn(c_in) + 9 * c_in * c + _bn(c) + 9 * c * c + (c_in * c if c_in != c else 0)
      c_in = c
  return total + _bn(c_in) + c_in * classes + classes


def _densenet121_count(classes):
  total, c = 7 * 7 * 3 * 64 + _bn(64), 64
  for i, layers in enumerate((6, 12, 24, 16)):
    for _ in range(layers):
      total += _bn(c) + c * 128 + _bn(128) + 9 * 128 * 32
      c += 32
    if i < 3:
      total += _bn(c) + c * (c // 2)
      c //= 2
  return total + _bn(c) + c * classes + classes


@pytest.mark.parametrize("name, classes, shape, published, analytic", [
    # LeNet: the analytic sum of the task (832 + 51,264 + 3,212,288 + 10,250).
    ("lenet", 10, (1, 28, 28, 1), 3_274_634, _lenet_count()),
    # kuangliu/pytorch-cifar ResNet18 (the ME-Net release's model).
    ("resnet18", 10, (1, 32, 32, 3), 11_173_962, _resnet18_count()),
    # The PyTorch WideResNet of TRADES / the ME-Net release.
    ("wrn-28-10", 10, (1, 32, 32, 3), 36_479_194, _wrn_count(28, 10)),
    ("wrn-34-10", 10, (1, 32, 32, 3), 46_160_474, _wrn_count(34, 10)),
    # torchvision.models.densenet121 documentation (224x224 inputs; the count does not depend
    # on the input size).
    ("densenet121", 1000, (1, 64, 64, 3), 7_978_856, _densenet121_count(1000)),
    # The PyTorch-examples MNIST CNN of RIDE's Table 2: (20*25 + 20) + (50*20*25 + 50) +
    # (800*500 + 500) + (500*10 + 10).
    ("ride_mnist_cnn", 10, (1, 28, 28, 1), 431_080, 520 + 25_050 + 400_500 + 5_010),
])
def test_parameter_counts(name, classes, shape, published, analytic):
  assert analytic == published
  params, _ = _params_and_stats(models.create(name, num_classes=classes, mean=(0.5,), std=(0.5,)),
                                shape)
  assert params == published


def test_densenet121_count_for_tiny_imagenet():
  # 800 fewer classes than ImageNet: 800 rows of 1024 weights and 800 biases fewer.
  params, _ = _params_and_stats(models.create("densenet121", num_classes=200), (1, 64, 64, 3))
  assert params == _densenet121_count(200) == 7_978_856 - 800 * 1025


def test_running_statistics_are_not_parameters():
  # A mean and a variance per batch-norm channel: the stem's 64, four BNs of 64 in stage 1,
  # five (with the projection's) of 128, 256 and 512 in stages 2-4.
  _, stats = _params_and_stats(models.create("resnet18", num_classes=10), (1, 32, 32, 3))
  assert stats == 2 * (64 + 4 * 64 + 5 * 128 + 5 * 256 + 5 * 512)
  _, lenet_stats = _params_and_stats(models.create("lenet", num_classes=10), (1, 28, 28, 1))
  assert lenet_stats == 0


# Real (small) models, initialised and applied.
SMALL = {
    "small_cnn": (SmallCNN(num_classes=10), (2, 32, 32, 3)),
    "small_cnn_28x28x1": (SmallCNN(num_classes=10, mean=MNIST_STATS[0], std=MNIST_STATS[1]),
                          (2, 28, 28, 1)),
    "lenet": (LeNet(num_classes=10), (2, 28, 28, 1)),
    "resnet18": (models.create("resnet18", num_classes=10), (2, 32, 32, 3)),
    "wrn-10-1": (WideResNet(num_classes=10, depth=10, widen_factor=1), (2, 32, 32, 3)),
    "densenet_tiny": (DenseNet(num_classes=200, block_sizes=(1, 1, 1, 1), growth_rate=8),
                      (2, 32, 32, 3)),
}
WITH_BN = [k for k in SMALL if k != "lenet"]


def _jit_apply(model):
  return jax.jit(model.apply, static_argnames=("train", "mutable", "capture_intermediates"))


@pytest.fixture(scope="module")
def initialised():
  """name -> (model, variables, x, jitted model.apply) with x uniform in [0, 1]."""
  out = {}
  for i, (name, (model, shape)) in enumerate(SMALL.items()):
    x = jnp.asarray(np.random.default_rng(i).uniform(size=shape), jnp.float32)
    # An rbg key: XLA:CPU compiles these inits 3-4 times faster than with threefry keys.
    key = jax.random.key(100 + i, impl="rbg")
    variables = jax.jit(functools.partial(model.init, train=False))(key, x)
    out[name] = model, variables, x, _jit_apply(model)
  return out


@pytest.mark.parametrize("name", list(SMALL))
def test_logits_shape_and_dtype(initialised, name):
  model, variables, x, apply = initialised[name]
  # The calls the other tests make, so that each compiles once.
  for logits in (apply(variables, x, train=False),
                 apply(variables, x, train=True, mutable=("batch_stats",))[0]):
    assert logits.shape == (x.shape[0], model.num_classes)
    assert logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("name, classes, shape", [
    ("wrn-28-10", 10, (2, 32, 32, 3)), ("wrn-34-10", 100, (2, 32, 32, 3)),
    ("densenet121", 200, (2, 64, 64, 3)), ("resnet18", 10, (2, 32, 32, 3)),
])
def test_logits_shape_of_large_models(name, classes, shape):
  model = models.create(name, num_classes=classes)
  x = jnp.zeros(shape, jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  for train in (False, True):
    logits, _ = jax.eval_shape(
        lambda v: model.apply(v, x, train=train, mutable=["batch_stats"]), variables)
    assert (logits.shape, logits.dtype) == ((shape[0], classes), jnp.float32)


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "wrn-34-10", "densenet121", "lenet"])
def test_bfloat16_compute_keeps_float32_parameters_and_logits(name):
  shape = {"lenet": (2, 28, 28, 1), "densenet121": (2, 64, 64, 3)}.get(name, (2, 32, 32, 3))
  model = models.create(name, num_classes=10, dtype=jnp.bfloat16)
  x = jnp.zeros(shape, jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  logits = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert logits.dtype == jnp.float32


def test_bfloat16_logits_close_to_float32(initialised):
  model, variables, x, apply = initialised["small_cnn"]
  low = _jit_apply(model.clone(dtype=jnp.bfloat16))(variables, x, train=False)
  ref = apply(variables, x, train=False)
  np.testing.assert_allclose(low, ref, atol=0.05 * float(jnp.abs(ref).max()))


def _perturbed_stats(variables, seed):
  """Running statistics away from their (0, 1) initial values, so that eval mode uses them."""
  rng = np.random.default_rng(seed)
  stats = jax.tree.map(lambda a: rng.uniform(0.5, 1.5, a.shape).astype(np.float32),
                       variables["batch_stats"])
  return {**variables, "batch_stats": stats}


@pytest.mark.parametrize("name", WITH_BN)
def test_eval_mode_output_does_not_depend_on_the_batch(initialised, name):
  _, variables, x, apply = initialised[name]
  variables = _perturbed_stats(variables, 1)
  other = np.random.default_rng(2).uniform(size=x.shape).astype(np.float32)
  first = apply(variables, x, train=False)
  mixed = apply(variables, jnp.concatenate([x[:1], other[1:]]), train=False)
  np.testing.assert_allclose(mixed[0], first[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", WITH_BN)
def test_train_mode_uses_batch_statistics_and_updates_them(initialised, name):
  model, variables, x, apply = initialised[name]
  other = np.random.default_rng(2).uniform(size=x.shape).astype(np.float32)
  first, updates = apply(variables, x, train=True, mutable=("batch_stats",))
  mixed, _ = apply(variables, jnp.concatenate([x[:1], other[1:]]), train=True,
                   mutable=("batch_stats",))
  assert np.max(np.abs(mixed[0] - first[0])) > 1e-3
  old, new = jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(updates["batch_stats"])
  assert len(old) == len(new) > 0
  assert all(np.max(np.abs(a - b)) > 0 for a, b in zip(old, new))
  with pytest.raises(Exception, match="batch_stats"):
    model.apply(variables, x, train=True)  # the running averages must be declared mutable


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 5, 2)])
def test_small_cnn_pool_is_max_pool(shape):
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  np.testing.assert_array_equal(small_cnn.max_pool_2x2(jnp.asarray(x)),
                                nn.max_pool(jnp.asarray(x), (2, 2), strides=(2, 2)))


def test_lenet_ignores_train(initialised):
  _, variables, x, apply = initialised["lenet"]
  assert set(variables) == {"params"}
  np.testing.assert_array_equal(apply(variables, x, train=True), apply(variables, x, train=False))


def test_first_batch_norm_matches_numpy(initialised):
  # SmallCNN begins normalise -> conv 3x3 (padding 1, no bias) -> BatchNorm_0; redo it in numpy.
  _, variables, x, apply = initialised["small_cnn"]
  variables = _perturbed_stats(variables, 3)
  rng = np.random.default_rng(0)
  bn_params = {"scale": rng.uniform(0.5, 2.0, 16).astype(np.float32),
               "bias": rng.normal(size=16).astype(np.float32)}
  variables = {**variables, "params": {**variables["params"], "BatchNorm_0": bn_params}}
  _, state = apply(variables, x, train=True, mutable=("batch_stats", "intermediates"),
                   capture_intermediates=True)
  out = np.asarray(state["intermediates"]["BatchNorm_0"]["__call__"][0])

  xn = (np.asarray(x, np.float64) - np.array(CIFAR[0])) / np.array(CIFAR[1])
  kernel = np.asarray(variables["params"]["Conv_0"]["kernel"], np.float64)  # (3, 3, 3, 16)
  padded = np.pad(xn, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1:3]
  conv = sum(padded[:, a:a + h, b:b + w] @ kernel[a, b] for a in range(3) for b in range(3))
  mu, var = conv.mean(axis=(0, 1, 2)), conv.var(axis=(0, 1, 2))
  expected = (conv - mu) / np.sqrt(var + 1e-5) * bn_params["scale"] + bn_params["bias"]
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)

  # PyTorch's momentum 0.1: new = 0.9 old + 0.1 batch (flax keeps the biased variance).
  old = variables["batch_stats"]["BatchNorm_0"]
  new = state["batch_stats"]["BatchNorm_0"]
  np.testing.assert_allclose(new["mean"], 0.9 * np.asarray(old["mean"]) + 0.1 * mu, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(new["var"], 0.9 * np.asarray(old["var"]) + 0.1 * var, rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("name, stats", [
    ("small_cnn", CIFAR), ("small_cnn_28x28x1", MNIST_STATS),
    ("densenet_tiny", (data.dataset("tiny_imagenet").mean, data.dataset("tiny_imagenet").std)),
    ("lenet", ((0.25,), (0.5,))),
])
def test_normalisation_inside_the_model(initialised, name, stats):
  model, variables, x, _ = initialised[name]
  mean, std = stats
  pre = (np.asarray(x, np.float64) - np.array(mean)) / np.array(std)
  with_stats = _jit_apply(model.clone(mean=mean, std=std))(variables, x, train=False)
  identity = _jit_apply(model.clone(mean=(0.0,), std=(1.0,)))(
      variables, jnp.asarray(pre, jnp.float32), train=False)
  np.testing.assert_allclose(with_stats, identity, rtol=1e-4, atol=1e-4)


def test_channel_mismatch_in_normalisation_is_an_error(initialised):
  model, variables, _, _ = initialised["small_cnn"]
  with pytest.raises(ValueError, match="mean must have one entry per channel"):
    model.apply(variables, jnp.zeros((1, 32, 32, 1)), train=False)


def test_normalization_constants():
  # The ME-Net release's CIFAR-10 constants; Madry's raw MNIST pixels; every dataset's are
  # per-channel or one value, in range.
  assert CIFAR == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
  for name in ("mnist", "fashion_mnist"):
    assert (data.dataset(name).mean, data.dataset(name).std) == ((0.0,), (1.0,))
  stats = {name: (data.dataset(name).mean, data.dataset(name).std) for name in data.names()}
  stats.update(models.NORMALIZATION)
  for name, (mean, std) in stats.items():
    assert len(mean) == len(std)
    assert all(0 <= m < 1 for m in mean) and all(0 < s <= 1 for s in std)
  assert set(models.NORMALIZATION) == {"mnist_examples", "raw"}


def test_registry_names_and_classes():
  assert models.names() == ("densenet121", "er_cifar10", "er_cifar10_small", "er_mnist",
                            "er_stl10", "er_tiny_imagenet", "lenet", "resnet18", "ride_mnist_cnn",
                            "small_cnn", "vgg19_bn", "wrn-28-10", "wrn-34-10")
  wrn = models.create("wrn-28-10", num_classes=100, mean=np.full(3, 0.5), std=[0.25] * 3,
                      dtype=jnp.bfloat16)
  assert isinstance(wrn, WideResNet) and isinstance(wrn, nn.Module)
  assert (wrn.depth, wrn.widen_factor, wrn.num_classes, wrn.dtype) == (28, 10, 100, jnp.bfloat16)
  assert (wrn.mean, wrn.std) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
  assert isinstance(models.create("resnet18", num_classes=10), ResNet)
  assert models.create("lenet", num_classes=10).mean == (0.0,)
  assert models.create("densenet121", num_classes=200).mean == data.dataset("tiny_imagenet").mean


def test_registry_rejects_unknown_name():
  with pytest.raises(ValueError, match="unknown model 'resnet50'; known: densenet121") as err:
    models.create("resnet50", num_classes=10)
  assert all(n in str(err.value) for n in models.names())


@pytest.mark.parametrize("num_classes", [1, 0, -3, 2.0, True, None])
def test_registry_rejects_bad_num_classes(num_classes):
  with pytest.raises(ValueError, match="num_classes"):
    models.create("small_cnn", num_classes=num_classes)


@pytest.mark.parametrize("kwargs, match", [
    (dict(std=(0.2, 0.0, 0.2)), "std must hold finite positive numbers"),
    (dict(mean=()), "mean must be a non-empty sequence"),
    (dict(mean="0.5"), "mean must be a non-empty sequence"),
    (dict(mean=(0.5, float("nan"), 0.5)), "mean must hold finite numbers"),
    (dict(mean=[[0.5, 0.5, 0.5]]), "mean must be a non-empty sequence"),
    (dict(std=("a", "b")), "std must be a non-empty sequence"),
    (dict(depth=40), "model 'wrn-34-10' has no argument 'depth'; it takes dtype"),
    (dict(widths=(8,)), "model 'wrn-34-10' has no argument 'widths'; it takes dtype"),
])
def test_registry_rejects_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    models.create("wrn-34-10", num_classes=10, **kwargs)


def test_wide_resnet_rejects_bad_depth():
  model = WideResNet(depth=30)
  with pytest.raises(ValueError, match="depth must be 6 n"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))


def test_a_model_may_prescribe_its_own_normalisation():
  # The examples' CNN normalises MNIST with mean 0.1307 / std 0.3081; Madry's LeNet takes raw
  # pixels; the others take their dataset's statistics.
  assert models.normalization_of("ride_mnist_cnn", (0.0,), (1.0,)) == ((0.1307,), (0.3081,))
  assert models.normalization_of("lenet", (0.0,), (1.0,)) == ((0.0,), (1.0,))
  assert models.normalization_of("small_cnn", *CIFAR) == CIFAR


@pytest.mark.parametrize("name, shape", [("small_cnn", (2, 32, 32, 3)),
                                         ("er_mnist(width=8)", (2, 28, 28, 1))])
def test_float64_model_keeps_every_value_in_float64(name, shape):
  # The float64 reference runs of tests/training/test_parallel.py: under jax_enable_x64 a model
  # of compute dtype float64 gets float64 variables (training.state.init_variables) and returns
  # float64 logits; the same weights in float32 give the same logits to float32 rounding
  # (sums of at most 3 x 3 x 64 = 576 terms: <= 576 u = 3.4e-5 relative, worst case).
  from menet_jax.training import state as state_lib  # noqa: PLC0415 - training sits above models

  x = np.random.default_rng(0).uniform(0, 1, shape)
  with jax.enable_x64(True):
    spec = name.rstrip(")") + (", " if "(" in name else "(") + "dtype=float64)"
    model = models.create(spec, num_classes=10, mean=(0.5,), std=(0.25,))
    variables = state_lib.init_variables(model, jax.random.key(0), shape[1:], train=False)
    assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float64)}
    logits = model.apply(variables, jnp.asarray(x), train=False)
    assert logits.dtype == jnp.float64
  single = models.create(name, num_classes=10, mean=(0.5,), std=(0.25,))
  ref = single.apply(jax.tree.map(lambda a: np.asarray(a, np.float32), variables),
                     jnp.asarray(x, jnp.float32), train=False)
  assert ref.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(logits), ref, rtol=0,
                             atol=1e-4 * float(np.abs(logits).max()))
