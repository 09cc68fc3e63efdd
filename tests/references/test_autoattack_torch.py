"""references/autoattack_torch: the PyTorch port of the RIDE MNIST CNN computes the Flax model's
logits, a wrong port is caught, and the attacks' outputs are checked. Skipped without torch
(a benchmark-only dependency, requirements-bench.txt)."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from menet_jax import models  # noqa: E402
from menet_jax.training import state as state_lib  # noqa: E402
from references import autoattack_torch as ref  # noqa: E402


@pytest.fixture(scope="module")
def flax_model():
  module = models.create("ride_mnist_cnn", num_classes=10)
  variables = state_lib.init_variables(module, jax.random.key(0), (28, 28, 1), train=False)
  return module, variables


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(0)
  # Uniform noise, and blobs on black like digits (most pixels 0: the normalisation's offset).
  blobs = np.zeros((16, 28, 28, 1), np.float32)
  for img in blobs:
    r, c = rng.integers(4, 20, 2)
    img[r:r + 8, c:c + 4] = rng.uniform(0.5, 1.0)
  return np.concatenate([rng.uniform(0, 1, (16, 28, 28, 1)).astype(np.float32), blobs])


def test_port_computes_the_flax_logits(flax_model, images):
  module, variables = flax_model
  torch.set_num_threads(1)
  ours = np.asarray(module.apply(variables, images, train=False))
  net = ref.from_flax(variables, mean=module.mean, std=module.std)
  theirs = ref.logits(net, images)
  measures = ref.check_logits(ours, theirs)
  assert measures["max_rel_diff"] < 5e-6 and measures["predictions_differ"] == 0
  # The normalisation is the model's (RIDE's MNIST statistics), not the identity.
  assert module.mean == (0.1307,) and module.std == (0.3081,)
  assert torch.allclose(net.pixel_mean.flatten(), torch.tensor([0.1307]))


def test_a_wrong_port_is_caught(flax_model, images):
  module, variables = flax_model
  ours = np.asarray(module.apply(variables, images, train=False))
  # Dense_0's rows left in Flax's (h, w, c) order, and the normalisation left out.
  net = ref.from_flax(variables, mean=module.mean, std=module.std)
  with torch.no_grad():
    net.fc1.weight.copy_(torch.tensor(np.asarray(variables["params"]["Dense_0"]["kernel"]).T))
  with pytest.raises(AssertionError, match="logits differ"):
    ref.check_logits(ours, ref.logits(net, images))
  raw = ref.from_flax(variables, mean=(0.0,), std=(1.0,))
  with pytest.raises(AssertionError, match="logits differ"):
    ref.check_logits(ours, ref.logits(raw, images))


def test_batch_stats_and_foreign_layers_are_refused(flax_model):
  module, variables = flax_model
  with pytest.raises(ValueError, match="batch"):
    ref.from_flax({**variables, "batch_stats": {"BatchNorm_0": {"mean": np.zeros(3)}}},
                  mean=module.mean, std=module.std)
  with pytest.raises(ValueError, match="layers"):
    ref.from_flax({"params": {"Conv_0": variables["params"]["Conv_0"]}}, mean=(0.0,), std=(1.0,))


def test_outputs_outside_the_ball_are_refused(flax_model, images):
  module, variables = flax_model
  net = ref.from_flax(variables, mean=module.mean, std=module.std)
  x = ref.to_torch(images[:4])
  y = torch.zeros(4, dtype=torch.long)
  inside = torch.clamp(x + 0.1 * torch.sign(torch.randn_like(x)), 0, 1)
  flags = ref.robust_flags(net, x, inside, y, eps=0.1)
  assert flags.dtype == bool and flags.shape == (4,)
  with pytest.raises(AssertionError, match="not valid"):
    ref.robust_flags(net, x, torch.clamp(x + 0.11, 0, 1), y, eps=0.1)
  with pytest.raises(AssertionError, match="not valid"):
    ref.robust_flags(net, x, x - 0.05 * (x < 0.04), y, eps=0.1)  # inside the ball, below 0


def test_apgd_ce_runs_and_lowers_accuracy(flax_model, images):
  pytest.importorskip("torchattacks")
  module, variables = flax_model
  torch.set_num_threads(1)
  net = ref.from_flax(variables, mean=module.mean, std=module.std)
  x = images[:8]
  labels = ref.logits(net, x).argmax(1)  # every image correct at first
  flags = ref.run_reference(net, x, labels, eps=0.3, attacks=("apgd_ce",))
  assert set(flags) == {"apgd_ce"} and flags["apgd_ce"].shape == (8,)
  assert flags["apgd_ce"].mean() < 1  # an untrained network is not robust at 0.3
  with pytest.raises(ValueError, match="unknown attack"):
    ref.attack("pgd", net, eps=0.3)


def test_autoattack_gets_the_standard_budgets(flax_model):
  pytest.importorskip("torchattacks")
  module, variables = flax_model
  net = ref.from_flax(variables, mean=module.mean, std=module.std)
  apgd, apgdt, fab, square = ref.attack("autoattack_standard", net, eps=0.3)._autoattack.attacks
  assert apgd.steps == apgdt.steps == fab.steps == 100
  assert apgdt.n_target_classes == fab.n_target_classes == 9 and fab.multi_targeted
  assert square.n_queries == 5000 and square.p_init == 0.8 and not square.rescale_schedule
  assert ref.attack("square_rescaled", net, eps=0.3).rescale_schedule
