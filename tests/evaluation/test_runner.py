"""The runner: verdicts under the defense's draws, restarts, the worst case over attacks,
resumable rows, any defense in front of any classifier."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import defenses, evaluation
from menet_jax.defenses import MENet
from menet_jax.evaluation import runner, suite
from tests.evaluation.helpers import small_cnn

COMMON = dict(eps=0.3, step_size=0.05, restarts=2, draws=3, attack_key=jax.random.key(0),
              eval_key=jax.random.key(1), batch_size=5)


def _data():
  x = np.asarray(jax.random.uniform(jax.random.key(1), (12, 16, 16, 3)))
  vanilla = small_cnn()
  y = np.array(jnp.argmax(vanilla.apply_fn(vanilla.variables, x), -1))
  y[:4] = (y[:4] + 1) % 10  # 8 of 12 correct
  return vanilla, x, y


def test_run_attack_judges_final_examples_under_the_defense():
  vanilla, x, y = _data()
  clean = evaluation.run_attack(vanilla, None, x, y, spec="clean", **COMMON)
  # An undefended model is deterministic: it is judged once (draws=3 asked), and padding is
  # ignored.
  assert (clean.accuracy, clean.mean_over_draws, clean.robust_all_draws) == (8 / 12,) * 3
  assert clean.correct.shape == (1, 12) and clean.max_linf == 0.0
  np.testing.assert_array_equal(clean.correct[0], np.arange(12) >= 4)
  attacked = evaluation.run_attack(vanilla, None, x, y, spec="bpda_pgd(steps=10)", **COMMON)
  assert attacked.accuracy == 0.0 and attacked.max_linf <= 0.3 + 1e-6
  # Restart r uses the same key whatever the number of restarts, so a second restart can only
  # remove images from the robust set (robust = survives every restart).
  weak = dict(COMMON, eps=0.004, step_size=0.002)
  one = evaluation.run_attack(vanilla, None, x, y, spec="pgd(steps=2)", **dict(weak, restarts=1))
  four = evaluation.run_attack(vanilla, None, x, y, spec="pgd(steps=2)", **dict(weak, restarts=4))
  assert np.all(four.correct <= one.correct) and np.all(one.correct <= clean.correct)
  with pytest.raises(ValueError, match="restarts must be an integer >= 1"):
    evaluation.run_attack(vanilla, None, x, y, spec="clean", **dict(COMMON, restarts=0))
  with pytest.raises(ValueError, match="needs the independently trained copy"):
    evaluation.run_attack(vanilla, None, x, y, spec="transfer_pgd(steps=2)", **COMMON)

  defense = MENet.create(method="usvt", startp=0.3, endp=0.5, mask_num=2)
  defended = small_cnn(defense)
  r = evaluation.run_attack(defended, None, x, y, spec="clean", **COMMON)
  # The randomized defense: robust in every draw <= mean over draws, first draw in between bounds.
  assert r.robust_all_draws <= r.mean_over_draws <= 1.0
  assert r.robust_all_draws <= r.accuracy
  # Judgement keys are tied to image indices: the batch size does not change a verdict.
  r2 = evaluation.run_attack(defended, None, x, y, spec="clean", **dict(COMMON, batch_size=12))
  np.testing.assert_array_equal(r.correct, r2.correct)
  # The same classifier behind another defense, chosen at evaluation time.
  r3 = evaluation.run_attack(defended.with_defense(defenses.Identity()), None, x, y,
                             spec="clean", **COMMON)
  np.testing.assert_array_equal(r3.correct, clean.correct)


def test_worst_case_is_the_per_image_and_of_the_rows(tmp_path):
  vanilla, x, y = _data()
  result = evaluation.evaluate(
      vanilla, x, y, attacks=["clean", "fgsm", "pgd(steps=2)"], eps=0.02, step_size=0.01,
      restarts=1, draws=2, seed=0, batch_size=6, sanity_eps=[], sanity_images=4)
  record, verdicts = result.record, result.verdicts
  rows = [verdicts[s] for s in ("clean", "fgsm", "pgd(step_size=None,steps=2)")]
  expected = rows[0] & rows[1] & rows[2]
  np.testing.assert_array_equal(verdicts["worst_case"], expected)
  assert record["worst_case"]["accuracy"] == pytest.approx(expected[0].mean())
  assert record["worst_case"]["robust_all_draws"] == pytest.approx(expected.all(0).mean())
  assert record["worst_case"]["accuracy"] <= min(r["accuracy"] for r in record["results"])


def test_rows_are_stored_and_read_back_not_recomputed(tmp_path):
  vanilla, x, y = _data()
  settings = {"run": "toy", "images": 12}
  store = runner.RowStore(tmp_path / "rows", settings)
  first = evaluation.run_attack(vanilla, None, x, y, spec="pgd(steps=2)", store=store, **COMMON)
  assert store.computed == ["pgd(step_size=None,steps=2)"] and store.reused == []
  again = runner.RowStore(tmp_path / "rows", settings)
  second = evaluation.run_attack(vanilla, None, x, y, spec="pgd(steps=2)", store=again, **COMMON)
  assert again.computed == [] and again.reused == ["pgd(step_size=None,steps=2)"]
  np.testing.assert_array_equal(first.correct, second.correct)
  assert first.wall_s == second.wall_s
  # Other settings (or another radius) never take a stored row for theirs.
  other = runner.RowStore(tmp_path / "rows", dict(settings, images=11))
  evaluation.run_attack(vanilla, None, x, y, spec="pgd(steps=2)", store=other, **COMMON)
  evaluation.run_attack(vanilla, None, x, y, spec="pgd(steps=2)", store=again,
                        **dict(COMMON, eps=0.1))
  assert other.computed and len(again.computed) == 1
  assert not [p for p in (tmp_path / "rows").iterdir() if p.name.startswith(".")]


# A defense registered from this test file: the library learns nothing about it.
@defenses.register("toy_noise")
@dataclasses.dataclass(frozen=True)
class ToyNoise(defenses.Defense):
  """Adds uniform noise of amplitude `amount` (a randomized, differentiable defense)."""
  amount: float = 0.1
  votes: int = 1

  randomized = True

  def transform(self, keys, x, level):
    noise = jax.vmap(lambda k: jax.random.uniform(k, x.shape[1:], minval=-1, maxval=1))(keys)
    return jnp.clip(x + self.amount * noise, 0, 1)


def test_a_defense_registered_outside_the_library_is_evaluated_end_to_end():
  try:
    vanilla, x, y = _data()
    toy = defenses.create("toy_noise(amount=0.2, votes=3)")
    assert toy.spec() == "toy_noise(amount=0.2,votes=3)"
    result = evaluation.evaluate(
        vanilla, x, y, attacks=["clean", "bpda_eot(samples=2)"], attack_steps=[2],
        eps=0.05, step_size=0.02, restarts=1, draws=2, seed=0, batch_size=12,
        sanity_eps=[0.0, 0.5], sanity_images=12, defense=toy, progress=False)
    record, verdicts = result.record, result.verdicts
    # The default description names the registered defense with its parameters.
    assert record["defense"] == {"defense": "toy_noise", "amount": 0.2, "votes": 3}
    assert [r["label"] for r in record["results"]] == ["clean", "bpda_eot-2"]
    assert verdicts["worst_case"].shape == (2, 12)
    assert record["sanity"]["gradients"]["finite"] == 1.0
    # Its draws change the verdicts of a classifier that the identity leaves at 8 of 12.
    assert record["results"][1]["accuracy"] <= record["results"][0]["accuracy"]
  finally:
    defenses.DEFENSES.unregister("toy_noise")


def test_every_registered_attack_runs_through_a_defense_within_eps():
  defense = MENet.create(method="usvt", startp=0.5, endp=0.5, mask_num=1)
  target = small_cnn(defense)
  x = np.asarray(jax.random.uniform(jax.random.key(2), (4, 16, 16, 3)))
  y = np.arange(4)
  small = {"bpda_eot": "samples=2, chunk=2", "apgd_ce": "samples=2", "apgd_dlr": "samples=2",
           "projected_bpda": "rank=2", "spsa": "samples=4, steps=2", "boundary": "steps=3",
           "cw_l2": "steps=2, binary_steps=1", "square": "queries=20", "apgd_t": "targets=2",
           "fab_t": "targets=2"}
  # Under l2, one attack per code path (PGD's l2 step and its best-iterate variant, the
  # Boundary attack's l2 projection, CW, FAB's l2 projection, APGD's l2 step under APGD-T); the
  # transfer and margin variants share pgd's.
  l2_paths = ("pgd", "bpda_eot", "boundary", "cw_l2", "fab_t", "apgd_t")
  for name in suite.names():
    for norm, eps in (("linf", 0.05), ("l2", 0.5)):
      if norm not in suite.threat(name).norms or (norm == "l2" and name not in l2_paths):
        continue
      entry = f"{name}({small[name]})" if name in small else name
      (spec,) = suite.parse_attacks([entry], [2], norm)
      r = evaluation.run_attack(target, small_cnn(seed=1), x, y, spec=spec, eps=eps,
                                step_size=eps / 2, restarts=1, draws=2, norm=norm,
                                attack_key=jax.random.key(0), eval_key=jax.random.key(1),
                                batch_size=4)
      assert (r.max_linf if norm == "linf" else r.max_l2) <= eps + 1e-5, (name, norm)
      assert r.norm == norm and 0.0 <= r.robust_all_draws <= r.mean_over_draws <= 1.0, name
      assert r.steps == (2 if suite.threat(name).iterative else None), name


def test_ride_is_evaluated_through_its_views_with_the_gradient_agreement():
  vanilla, x, y = _data()
  d = defenses.create("ride(k=2, t=2, network=cifar)")
  result = evaluation.evaluate(
      vanilla, x[:4], y[:4], attacks=["bpda_pgd(steps=1, view=frozen)"], eps=0.03,
      step_size=0.01, restarts=1, draws=1, seed=0, batch_size=4, sanity_eps=[],
      sanity_images=2, defense=d)
  record, verdicts = result.record, result.verdicts
  assert [r["label"] for r in record["results"]] == ["clean", "bpda_pgd[frozen]-1"]  # clean added
  assert record["results"][1]["spec"].endswith("view=frozen)")
  agreement = record["sanity"]["gradient_agreement"]
  assert set(agreement) == {"bpda", "frozen"}
  assert all(-1 <= c["min"] <= c["mean"] <= 1 for c in agreement.values())
  assert verdicts["worst_case"].shape == (1, 4)


@pytest.mark.parametrize("rows, match", [
    (["clean", "pgd(steps=1)", "bpda_pgd(steps=1, view=frozen)"], "offers bpda"),
    (["clean", "transfer_pgd(steps=1)"], "needs the independently trained copy"),
    (["clean", "pgd(steps=1, samples=3)"], "samples"),
])
def test_every_row_is_checked_before_the_first_runs(rows, match):
  vanilla, x, y = _data()
  logged = []
  with pytest.raises(ValueError, match=match):
    evaluation.evaluate(vanilla, x, y, attacks=rows, eps=0.03, step_size=0.01, restarts=1,
                        draws=1, seed=0, batch_size=4, sanity_eps=[], sanity_images=2,
                        defense=defenses.create("median"), log=logged.append)
  assert logged == []  # no row ran


def test_a_sweep_on_fewer_images_never_reuses_a_row_of_all_images(tmp_path):
  # The sweep's radius, attack and step (max(0.03, 2.5 x 0.02 / 2)) equal the main row's; it
  # attacks the first 4 images only, so it must be computed, not read back.
  vanilla, x, y = _data()
  store = runner.RowStore(tmp_path, {"run": "test"})
  evaluation.evaluate(vanilla, x, y, attacks=["bpda_pgd(steps=2)"], eps=0.02, step_size=0.03,
                      restarts=1, draws=1, seed=0, batch_size=6, sanity_eps=[0.02],
                      sanity_images=4, store=store)
  assert store.reused == [] and len(store.computed) == 3  # clean, the row, the sweep
