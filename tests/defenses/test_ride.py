"""RIDE and its variants against hand formulas and their special cases (tiny K and T)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from menet_jax import defenses
from menet_jax.defenses import ride

KEYS = jax.random.split(jax.random.key(0), 3)


def _images(seed=0, shape=(3, 8, 8, 1)):
  return jnp.asarray(np.random.default_rng(seed).random(shape), jnp.float32)


@pytest.mark.parametrize("network, channels, count", [("mnist", 1, 4945), ("cifar", 3, 29507),
                                                      ("imagenet", 3, 57251)])
def test_parameter_counts_of_table_3(network, channels, count):
  assert ride.parameter_count(network, channels) == count


def test_losses_match_their_formulas():
  rng = np.random.default_rng(1)
  out, target = rng.random((2, 5, 6, 3)), rng.random((2, 5, 6, 3))
  mask = (rng.random((2, 5, 6, 1)) < 0.3).astype(np.float64)
  expected = sum(mask[n, i, j, 0] * (out[n, i, j, c] - target[n, i, j, c]) ** 2
                 for n in range(2) for i in range(5) for j in range(6) for c in range(3))
  expected /= 3 * mask.sum()
  with jax.enable_x64(True):
    np.testing.assert_allclose(ride.masked_mse(out, target, mask), expected, rtol=1e-12)
    np.testing.assert_allclose(ride.release_loss(out, target, mask),
                               np.linalg.norm((out - target).ravel()) * mask.mean(), rtol=1e-12)
    # The release's mask only scales the loss: its gradient direction is that of the norm.
    g = jax.grad(lambda o: ride.release_loss(o, target, mask))(jnp.asarray(out))
  r = out - target
  np.testing.assert_allclose(g, r / np.linalg.norm(r) * mask.mean(), rtol=1e-10)


def test_stage_update_replaces_the_pixels_below_the_lower_median():
  rng = np.random.default_rng(2)
  x_prev, x_est = rng.random((5, 4, 3)), rng.random((5, 4, 3))
  d = np.abs(x_prev - x_est).sum(-1)
  tau = np.sort(d.ravel())[(d.size - 1) // 2]  # 20 pixels: the 10th smallest, not an average
  with jax.enable_x64(True):
    got = np.asarray(ride.stage_update(jnp.asarray(x_prev), jnp.asarray(x_est), 0.9, True))
    blend = np.asarray(ride.stage_update(jnp.asarray(x_prev), jnp.asarray(x_est), 0.9, False))
  replaced = d < tau
  assert replaced.sum() == 9
  np.testing.assert_allclose(got[replaced], x_est[replaced])
  np.testing.assert_allclose(got[~replaced], 0.9 * x_prev[~replaced] + 0.1 * x_est[~replaced])
  np.testing.assert_allclose(blend, 0.9 * x_prev + 0.1 * x_est)


def test_optimizer_is_adam_with_coupled_l2_as_pytorch():
  d = defenses.create("ride(lr=0.01, weight_decay=0.1)")
  tx = d.optimizer()
  w = np.array([0.5, -1.0, 2.0])
  state = tx.init(jnp.asarray(w))
  m, v, ref = np.zeros(3), np.zeros(3), w.copy()
  for step in range(1, 4):
    grad = np.cos(ref * step)
    g = grad + 0.1 * ref  # torch.optim.Adam(weight_decay): L2 added to the gradient
    m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
    ref = ref - 0.01 * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
    updates, state = tx.update(jnp.asarray(np.cos(w * step)), state, jnp.asarray(w))
    w = np.asarray(optax.apply_updates(jnp.asarray(w), updates))
    np.testing.assert_allclose(w, ref, rtol=1e-5)


def test_conv_paths_agree_with_a_direct_correlation():
  rng = np.random.default_rng(3)
  x, kernel, bias = rng.random((2, 6, 7, 3)), rng.normal(size=(3, 3, 3, 4)), rng.normal(size=4)
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  ref = np.zeros((2, 6, 7, 4)) + bias
  for a in range(3):
    for b in range(3):
      ref += np.einsum("nhwc,co->nhwo", padded[:, a:a + 6, b:b + 7], kernel[a, b])
  for name, conv in ride.CONV.items():
    got = conv(jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32),
               jnp.asarray(bias, jnp.float32))
    np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=name)


def test_im2col_derivatives_equal_lax_rules_to_second_order():
  # The im2col path's hand-written VJP against autodiff of lax's convolution, in float64;
  # second order because the unrolled view differentiates through the fit's own gradients.
  rng = np.random.default_rng(5)
  with jax.enable_x64(True):
    x, kernel, bias = (jnp.asarray(rng.normal(size=s)) for s in ((2, 5, 6, 3), (3, 3, 3, 4), (4,)))
    w = jnp.asarray(rng.normal(size=(2, 5, 6, 4)))

    def loss(conv):
      return lambda x, k, b: jnp.sum(w * jnp.tanh(conv(x, k, b)))

    ours, theirs = loss(ride.CONV["im2col"]), loss(ride.CONV["grouped"])
    for a, b in zip(jax.grad(ours, (0, 1, 2))(x, kernel, bias),
                    jax.grad(theirs, (0, 1, 2))(x, kernel, bias)):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    # d/dx of |d loss / d kernel|^2: reverse over reverse through the custom VJP.
    second = lambda f: jax.grad(lambda x: jnp.sum(jax.grad(f, 1)(x, kernel, bias) ** 2))(x)
    np.testing.assert_allclose(second(ours), second(theirs), rtol=1e-10, atol=1e-12)


def test_keep_mask_draws_fair_independent_bits():
  n = 32 * 4096 + 7  # not a multiple of the 32 bits of a word
  keep = np.asarray(ride.keep_mask(jax.random.key(0), 0.5, (n,)))
  assert keep.shape == (n,) and keep.dtype == bool
  # Binomial(n, 1/2): 5 standard deviations.
  assert abs(keep.mean() - 0.5) < 5 * 0.5 / np.sqrt(n)
  # Neighbours within a word and across words agree half the time (pairwise independence).
  for lag in (1, 31, 32, 33):
    agree = np.mean(keep[lag:] == keep[:-lag])
    assert abs(agree - 0.5) < 5 * 0.5 / np.sqrt(n), lag
  other = np.asarray(ride.keep_mask(jax.random.key(1), 0.3, (n,)))
  assert abs(other.mean() - 0.3) < 5 * np.sqrt(0.21 / n)
  assert not np.array_equal(keep, np.asarray(ride.keep_mask(jax.random.key(2), 0.5, (n,))))


def test_chunks_do_not_change_the_result():
  x = _images(shape=(5, 8, 8, 1))
  keys = jax.random.split(jax.random.key(3), 5)
  outs = [np.asarray(jax.jit(defenses.create(f"ride(k=3, t=2, chunk={c})").transform)(
      keys, x, None)) for c in (1, 2, 5)]
  for out in outs[1:]:
    np.testing.assert_allclose(out, outs[0], atol=1e-6)
  # The CPU default: the images whose widest patch matrix (H W x 9 C) holds about 2^20 floats.
  if jax.default_backend() == "cpu":
    d = defenses.create("ride")
    assert d.chunk_size(jnp.zeros((32, 28, 28, 1))) == 9  # 2^20 / (784 x 144) = 9.3
    assert d.chunk_size(jnp.zeros((32, 32, 32, 3))) == 4  # 2^20 / (1024 x 288) = 3.6
    assert d.chunk_size(jnp.zeros((2, 32, 32, 3))) == 2
  assert defenses.create("ride(chunk=3)").chunk_size(jnp.zeros((32, 8, 8, 1))) == 3
  with pytest.raises(ValueError, match="chunk must be an integer >= 1"):
    defenses.create("ride(chunk=0)")


def test_ride_is_keyed_per_image_and_equals_dae_without_stage_updates():
  x = _images()
  d = defenses.create("ride(k=4, t=2)")
  fit = jax.jit(d.transform)
  out = np.asarray(fit(KEYS, x, None))
  assert out.shape == x.shape and np.all((out > 0) & (out < 1))
  np.testing.assert_array_equal(out, np.asarray(fit(KEYS, x, None)))  # same keys, same result
  # Image 1 with other neighbours and another place in the batch: the same result.
  other = x.at[0].set(1 - x[0]).at[2].set(x[1])
  moved = np.asarray(fit(KEYS[jnp.array([0, 2, 1])], other[jnp.array([0, 2, 1])], None))
  np.testing.assert_allclose(moved[2], out[1], atol=1e-6)
  rolled = KEYS[jnp.array([1, 2, 0])]  # image 1 gets another key
  assert not np.allclose(np.asarray(fit(rolled, x, None))[1], out[1])
  # alpha = 1 without the median replacement leaves the target at x~: DAE, step for step.
  still = defenses.create("ride(k=4, t=2, alpha=1.0, nms=False)").transform(KEYS, x, None)
  dae = defenses.create("ride(variant=dae, k=4, t=2)").transform(KEYS, x, None)
  np.testing.assert_allclose(still, dae, atol=1e-6)
  assert not np.allclose(out, dae, atol=1e-4)


def test_dip_keeps_one_random_input_drawn_from_the_images_key():
  d = defenses.create("ride(variant=dip, k=3, t=2)")
  x = _images(shape=(1, 8, 8, 1))
  _, _, z, _ = d.fit(KEYS[0], x[0])
  k_init, _, _ = jax.random.split(KEYS[0], 3)
  expected = jax.random.normal(jax.random.split(k_init)[1], (1, 8, 8, 1))
  np.testing.assert_array_equal(z, expected)
  with pytest.raises(ValueError, match="samples must be 1 for dip"):
    defenses.create("ride(variant=dip, samples=2)")


def test_presets_and_bad_parameters():
  assert (defenses.create("ride(preset=release_mnist)").k, defenses.create("ride").k) == (200, 2000)
  assert defenses.create("ride(preset=release_mnist, k=7)").k == 7
  spec = defenses.create("ride(preset=release_mnist)").spec()
  assert defenses.create(spec) == defenses.create("ride(preset=release_mnist)")
  for bad, match in [("ride(variant=x)", "variant must be one of"), ("ride(k=0)", "k must be"),
                     ("ride(loss=l1)", "loss must be one of"), ("ride(conv=fft)", "conv")]:
    with pytest.raises(ValueError, match=match):
      defenses.create(bad)


def test_the_frozen_view_differentiates_the_fitted_network():
  # (Every view's gradient, the unrolled one included, is exercised by the runner's
  # gradient-agreement test in tests/evaluation/test_runner.py.)
  x = _images(shape=(2, 8, 8, 1))
  d = defenses.create("ride(k=3, t=2, dropout=0.0)")
  keys = KEYS[:2]
  w = jnp.asarray(np.random.default_rng(4).normal(size=x.shape), jnp.float32)
  grads = {v: jax.grad(lambda a: jnp.sum(w * d.view(v, keys, a, None)))(x)
           for v in ("bpda", "frozen")}
  for v, g in grads.items():
    assert g.shape == x.shape and np.all(np.isfinite(g)), v
  np.testing.assert_array_equal(grads["bpda"], w)
  # The frozen view: the VJP of the fitted network at the final weights and last input.
  _, params, z, k_drop = d.fit(keys[0], x[0])
  net = lambda v: jnp.mean(ride.forward(params, v[None] + (z - x[0][None]), k_drop,
                                         network="mnist", dropout=0.0, conv="im2col"), 0)
  np.testing.assert_allclose(grads["frozen"][0], jax.vjp(net, x[0])[1](w[0])[0], rtol=1e-5,
                             atol=1e-7)
  with pytest.raises(ValueError, match="offers no 'frozen' view; it offers bpda"):
    defenses.create("median").view("frozen", keys, x, None)
