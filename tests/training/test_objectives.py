import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from menet_jax import defenses
from menet_jax.defenses import MENet
from menet_jax.training import factories, loop, objectives
from menet_jax.training import state as state_lib
from menet_jax.training.config import Config


def _config(**kw):
  args = dict(workdir="w", model="small_cnn", lr=0.1, lr_boundaries=(2, 3), weight_decay=1e-2)
  args.update(kw)
  return Config.for_dataset("cifar10", **args)


def test_optimizer_is_torch_sgd_with_coupled_weight_decay():
  # torch.optim.SGD: g <- g + wd p; v <- mu v + g; p <- p - lr v (lr from the step schedule).
  cfg = _config()
  tx = factories.optimizer(cfg, steps_per_epoch=2)
  p = np.array([1.0, -2.0, 3.0])
  state = tx.init(jnp.asarray(p))
  ref_p, ref_v = p.copy(), np.zeros(3)
  for step in range(7):
    g = np.sin(ref_p + step)
    lr = 0.1 * 0.1 ** ((step >= 4) + (step >= 6))  # boundaries at epochs 2 and 3 = steps 4 and 6
    ref_v = 0.9 * ref_v + g + 1e-2 * ref_p
    ref_p = ref_p - lr * ref_v
    updates, state = tx.update(jnp.asarray(np.sin(p + step)), state, jnp.asarray(p))
    p = np.asarray(optax.apply_updates(jnp.asarray(p), updates))
    np.testing.assert_allclose(p, ref_p, rtol=1e-6)


def _state(cfg, seed=0):
  tx = factories.optimizer(cfg, steps_per_epoch=10)
  return state_lib.create_train_state(jax.random.key(seed), factories.create_model(cfg), tx, (32, 32, 3))


def _batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
          "label": rng.integers(0, 10, n).astype(np.int32), "level": np.full(n, 0.5, np.float32)}


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves((state.params, state.batch_stats))]


IDENTITY = defenses.Identity()


def test_madry_with_zero_radius_is_a_vanilla_step():
  cfg = _config()
  state, batch, key = _state(cfg), _batch(), jax.random.key(1)
  vanilla, m1 = objectives.create("standard").step(state, batch, key, defense=IDENTITY,
                                                   augment=True)
  madry, m2 = objectives.create("pgd_at(eps=0.0, step_size=0.01, steps=2)").step(
      state, batch, key, defense=IDENTITY, augment=True)
  for a, b in zip(_leaves(vanilla), _leaves(madry)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), rel=1e-6)
  assert int(vanilla.step) == 1
  # The step moved the parameters and the running statistics.
  assert any(np.abs(a - b).max() > 0 for a, b in zip(_leaves(state), _leaves(vanilla)))


def test_a_warmed_up_radius_attacks_within_its_fraction_of_eps():
  from menet_jax.training.objectives.pgd_at import attacked_inputs
  cfg = _config()
  state, batch, key = _state(cfg), _batch(), jax.random.key(3)
  logits = lambda x, t: state_lib.logits(state, state.params, x, train=True)[0]
  eps = 8 / 255
  clean = np.asarray(batch["image"], np.float32) / 255

  def attacked(radius):
    x, _ = attacked_inputs(logits, batch, key, defense=IDENTITY, augment=False, eps=eps,
                           step_size=2 / 255, steps=3, radius=radius)
    return np.asarray(x)

  full = attacked(None)
  for r in (0.25, 0.5):
    moved = np.abs(attacked(jnp.asarray(r)) - clean)
    assert moved.max() <= r * eps + 1e-6 and moved.max() > 0.9 * r * eps, (r, moved.max())
  np.testing.assert_allclose(attacked(jnp.asarray(1.0)), full, atol=1e-6)
  # The objective's schedule: step s attacks at min(1, (s + 1) / warmup_steps) eps.
  objective = objectives.create("pgd_at(eps=0.0313725, step_size=0.0078431, steps=2, "
                                "warmup_steps=4)")
  assert objective.warmup_steps == 4
  with pytest.raises(ValueError, match="warmup_steps"):
    objectives.create("pgd_at(warmup_steps=-1)")
  stepped, _ = objective.step(state, batch, key, defense=IDENTITY, augment=False)
  assert int(stepped.step) == 1


def test_adv_step_trains_on_the_reconstruction_of_a_perturbed_image():
  cfg = _config()
  defense = MENet.create(method="usvt", startp=0.4, endp=0.6, mask_num=2)
  state, batch, key = _state(cfg), _batch(), jax.random.key(2)

  def step(eps):
    objective = objectives.create(f"pgd_at(eps={eps}, step_size={2 / 255}, steps=2)")
    return objective.step(state, batch, key, defense=defense, augment=False)

  robust, _ = step(8 / 255)
  same_masks_no_attack, _ = step(0.0)
  # With eps = 0 the network sees exactly the reconstruction of the clean image under the
  # step's last masks; with eps > 0 it sees another image, hence other gradients.
  assert any(np.abs(a - b).max() > 1e-6
             for a, b in zip(_leaves(robust), _leaves(same_masks_no_attack)))
  # An ME reconstruction differs from the clean image: this is not a vanilla step either.
  vanilla, _ = objectives.create("standard").step(state, batch, key, defense=IDENTITY,
                                                  augment=False)
  assert any(np.abs(a - b).max() > 1e-6 for a, b in zip(_leaves(vanilla),
                                                        _leaves(same_masks_no_attack)))


def test_eval_step_counts_weighted_majority_votes():
  cfg = _config()
  state = _state(cfg)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, 3, 32, 32, 3), dtype=np.uint8)  # (B, k votes, H, W, C)
  labels = rng.integers(0, 10, 6).astype(np.int32)
  weight = np.array([1, 1, 1, 1, 0, 0], np.float32)
  out = loop.eval_step(state.apply_fn, {"params": state.params, "batch_stats": state.batch_stats},
                       {"image": images, "label": labels, "weight": weight})
  logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                          images.reshape(18, 32, 32, 3).astype(np.float32) / 255, train=False)
  votes = np.asarray(logits).reshape(6, 3, 10).argmax(-1)
  majority = np.array([np.bincount(v, minlength=10).argmax() for v in votes])
  assert float(out["count"]) == 4
  assert float(out["correct"]) == float(np.sum((majority == labels) * weight))
