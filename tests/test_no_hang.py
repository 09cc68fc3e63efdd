"""No configuration hangs: the CPU decomposition route cannot starve XLA's thread pool.

jaxlib 0.10.2's batched LAPACK kernels split a batch over XLA's intra-op pool
and block the calling thread until the pieces finish. When XLA runs two such
calls at once on pool threads (several devices, two Python threads, or
independent loops of one program), every pool thread can end up waiting and
the process hangs for good. `spectral.eigh` therefore hands a batch to its own
kernel (batched_eigh, threads it starts and joins) and `spectral.orthonormal_basis`
hands LAPACK one matrix at a time on CPU; neither enters the pool.

Two kinds of tests: the configurations that hung, run in child processes under
a watchdog (a hang fails after TIMEOUT seconds instead of stalling CI), and a
static check that no program the library builds hands LAPACK a batch.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import evaluation, masks, reconstruct
from menet_jax.attacks import subspace_projector
from menet_jax.defenses import MENet
from menet_jax.evaluation import suite
from menet_jax.reconstruct import rank
from menet_jax.training import factories, objectives
from menet_jax.training import state as state_lib
from menet_jax.training.config import Config
from tests import watchdog

TIMEOUT = 240  # s; each child finishes in 5-40 s on 2 cores

# Two Python threads run the jitted Soft-Impute at once on one device. With the batched
# kernel this hung in every one of 3 tries on a 2-core AMD EPYC (60 s timeout).
THREADS = """
import threading, jax, jax.numpy as jnp, numpy as np
from menet_jax import reconstruct
x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (128, 32, 96)), jnp.float32)
f = jax.jit(lambda x, m: reconstruct.soft_impute(x, m, max_iters=20))
def work(seed):
  for i in range(10):
    jax.block_until_ready(f(x, jax.random.bernoulli(jax.random.key(100 * seed + i), 0.5, x.shape)))
threads = [threading.Thread(target=work, args=(s,)) for s in range(2)]
for t in threads: t.start()
for t in threads: t.join()
"""

# The evaluation that hung on one CPU device (issue 9), scaled down: BPDA+EOT through ME-Net
# with 10 draws in chunks of 8, i.e. a loop over full chunks and an independent remainder,
# both decomposing, inside the attack's loop.
EOT = """
import functools, jax, jax.numpy as jnp, numpy as np
from menet_jax import data, evaluation, models
from menet_jax.defenses import MENet
from tests.conftest import DATA_DIR
images, labels = data.load("cifar10", "test[:32]", DATA_DIR)
net = models.create("small_cnn", num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3)
variables = net.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False)
defense = MENet.create(method="usvt", startp=0.4, endp=0.6, mask_num=2)
restored = evaluation.Target(apply_fn=functools.partial(net.apply, train=False),
                             variables=variables, defense=defense)
r = evaluation.run_attack(restored, None, images.astype(np.float32) / 255, labels,
                          spec="bpda_eot(steps=5, samples=10, chunk=8)", eps=8 / 255,
                          step_size=2 / 255, restarts=1, draws=2, attack_key=jax.random.key(0),
                          eval_key=jax.random.key(1), batch_size=16)
print("accuracy", r.accuracy)
"""

# ME training sets built over every local device (shard_map), with the iterative solver.
ME_SET = """
import sys, jax, numpy as np
from menet_jax import data
from menet_jax.data import cache
from menet_jax.defenses import MENet
from tests.conftest import DATA_DIR
images, _ = data.load("cifar10", "test[:24]", DATA_DIR)
defense = MENet.create(method="nuclear_norm", startp=0.4, endp=0.6, mask_num=2)
out = cache.build(images=images, indices=np.arange(24), levels=defense.train_levels,
                  transform=defense.transform, key=jax.random.key(0),
                  manifest={"method": "nuclear_norm"}, cache_dir=sys.argv[1], batch_size=16,
                  progress=False)
np.save(sys.argv[2], out)
"""

needs_cifar = pytest.mark.skipif(not (watchdog.REPO.parent / "shared" / "data" / "cifar10").is_dir(),
                                 reason="needs ../shared/data CIFAR-10")


def test_two_threads_calling_the_library_finish():
  watchdog.run(["-c", THREADS], timeout=TIMEOUT, what="two threads running Soft-Impute")


@needs_cifar
@pytest.mark.parametrize("devices", [1, 4])
def test_eot_evaluation_with_a_remainder_chunk_finishes(devices):
  out = watchdog.run(["-c", EOT], devices=devices, timeout=TIMEOUT,
                     what=f"BPDA+EOT evaluation on {devices} device(s)")
  assert "accuracy" in out


@needs_cifar
def test_me_set_build_on_four_devices_finishes_and_matches_one(tmp_path):
  procs = [watchdog.start(["-c", ME_SET, tmp_path / f"cache{n}", tmp_path / f"{n}.npy"], devices=n)
           for n in (1, 4)]
  watchdog.finish(procs, TIMEOUT, "ME-set build")
  one, four = np.load(tmp_path / "1.npy"), np.load(tmp_path / "4.npy")
  assert one.shape == four.shape == (2, 24, 32, 32, 3)
  # Per-image results (tests/test_parallel.py); uint8 rounding may flip a value lying within
  # rounding of a half-level, by one level.
  assert np.abs(one.astype(int) - four.astype(int)).max() <= 1


def _lapack_calls(program_text: str) -> list[tuple[str, str, str]]:
  """(target, num_batch_dims, operand type) of every LAPACK custom call in StableHLO text."""
  calls = []
  for line in program_text.splitlines():
    target = re.search(r"custom_call @(lapack_\w+)", line)
    if target:
      batch = re.search(r'num_batch_dims = "(\d+)"', line)
      operand = re.search(r":\s*\((tensor<[^>]*>)", line)
      calls.append((target.group(1), batch.group(1) if batch else "?",
                    operand.group(1) if operand else "?"))
  return calls


def _programs():
  """(name, function, example arguments) for the programs that decompose matrices."""
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 8, 12)), jnp.float32)
  mask = masks.bernoulli(jax.random.key(0), x.shape, 0.5)
  params = {"splic": {"rank": 2}, "splic_alternating": {"rank": 2}}
  for name in reconstruct.names():
    fn = lambda x, m, name=name: reconstruct.get(name)(x, m, **params.get(name, {}))
    yield name, fn, (x, mask)
    # A caller's vmap (EOT and SPSA vmap their chunks) must not batch the decomposition.
    yield f"vmap({name})", jax.vmap(fn), (x[None].repeat(2, 0), mask[None].repeat(2, 0))
  # SPLIC's tracked subspace (QR and a small eigh per step) needs rank + 8 < min(m, n).
  tall = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (3, 16, 20)), jnp.float32)
  tall_mask = masks.bernoulli(jax.random.key(1), tall.shape, 0.5)
  subspace = lambda x, m: reconstruct.splic(x, m, rank=2, solver="subspace")
  yield "splic(solver=subspace)", subspace, (tall, tall_mask)
  yield "vmap(splic(solver=subspace))", jax.vmap(subspace), (tall[None].repeat(2, 0),
                                                             tall_mask[None].repeat(2, 0))
  images = jnp.asarray(np.random.default_rng(1).random((4, 8, 8, 3)), jnp.float32)
  defense = MENet.create(method="usvt", startp=0.4, endp=0.6, mask_num=2)
  keys = jax.random.split(jax.random.key(0), 4)
  yield "MENet.transform", defense.transform, (keys, images, jnp.full(4, 0.5))
  yield "rank", rank._cumulative_energy, (x,)
  yield "subspace_projector", lambda a: subspace_projector(a, rank=2)(a), (images,)
  config = Config.for_dataset("cifar10", workdir="w", model="small_cnn")
  model = factories.create_model(config)
  state = state_lib.create_train_state(jax.random.key(0), model, factories.optimizer(config, 1),
                                       (8, 8, 3))
  batch = {"image": jnp.zeros((4, 8, 8, 3), jnp.uint8), "label": jnp.zeros(4, jnp.int32),
           "level": jnp.full(4, 0.5)}
  objective = objectives.create("pgd_at(eps=0.03, step_size=0.01, steps=2)")
  step = lambda s, b, k: objective.step(s, b, k, defense=defense, augment=False)
  yield "pgd_at step", step, (state, batch, jax.random.key(0))
  restored = evaluation.Target(apply_fn=functools.partial(model.apply, train=False),
                               variables={"params": state.params,
                                          "batch_stats": state.batch_stats},
                               defense=defense)
  ctx = evaluation.context(restored, restored.variables, None, None, eps=0.03, step_size=0.01)
  eot = suite.ATTACKS.lookup("bpda_eot(steps=2, samples=10, chunk=8)")
  yield "bpda_eot", lambda k, a, y: eot(ctx, k, a, y), (jax.random.key(0), images,
                                                         jnp.zeros(4, jnp.int32))


@pytest.mark.parametrize("name, fn, args", [pytest.param(*p, id=p[0]) for p in _programs()])
def test_no_program_hands_lapack_a_batch(name, fn, args):
  text = jax.jit(fn).lower(*args).as_text()
  calls = _lapack_calls(text)
  own = text.count("custom_call @menet_jax_batched_eigh")
  if "tv_minimization" in name:  # differences and projections only: nothing to decompose
    assert not calls and not own, f"{name}: unexpected decompositions {calls}"
    return
  assert own, f"{name}: no batched_eigh call found; has the lowering changed?"
  assert not [c for c in calls if "syevd" in c[0]], f"{name}: an eigh bypasses batched_eigh"
  batched = [c for c in calls if c[1] != "0" or c[2].count("x") > 2]
  assert not batched, f"{name} hands LAPACK a batch: {batched}"
