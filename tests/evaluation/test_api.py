"""The one-call evaluation of a user's model: presets, the cascade, intervals, the new sanity
checks, reports with figures, and the per-device wrapper's forwarding."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from menet_jax import defenses, evaluation
from menet_jax.evaluation import runner, sanity, suite
from menet_jax.utils import parallel

RNG = np.random.default_rng(0)
W = jnp.asarray(RNG.normal(size=(8 * 8 * 1, 10)), jnp.float32) * 0.3
X = RNG.uniform(0, 1, (12, 8, 8, 1)).astype(np.float32)


def model(x):
  """A user's classifier: a plain function of x (N, 8, 8, 1) -> logits (N, 10)."""
  return x.reshape(len(x), -1) @ W


Y = np.asarray(jnp.argmax(model(X), -1))
CHEAP = dict(sanity_eps=(), sanity_images=12, progress=False)


def test_the_readme_call_evaluates_a_users_model_and_writes_the_report(tmp_path):
  result = evaluation.evaluate(model, X, Y, eps=0.03, attacks=["apgd_ce(steps=5)", "fab_t(steps=5,targets=2)"],
                               defense="median(k=3)", **dict(CHEAP, sanity_eps=(0.0, 0.5)))
  assert list(result.accuracy) == ["clean", "apgd_ce-5", "fab_t-5", "worst case"]
  assert result.robust.shape == (12,) and result.robust.dtype == bool
  assert result.worst_case["accuracy"] == result.robust.mean()
  assert result.record["defense"] == {"defense": "median", "k": 3, "padding": "zero"}
  assert result.record["draws"] == 1  # deterministic: judged once
  # Median offers its exact gradient: the agreement check compares BPDA's with it.
  assert set(result.record["sanity"]["gradient_agreement"]) == {"bpda"}
  paths = result.write(tmp_path, "mine")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.json", "mine.md", "mine.npz",
                                                        "mine.png"]
  assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  md = paths["md"].read_text()
  assert "| **worst case**" in md and "![accuracy against eps](mine.png)" in md
  assert "judged once (deterministic defense)" in md


def test_bad_arguments_are_named_before_anything_runs():
  logged = []
  for kwargs, match in (({}, "eps .* is required"), ({"eps": 2.0}, r"eps must be in \[0"),
                        ({"eps": 0.1, "attacks": ["nope"]}, "unknown attack 'nope'"),
                        ({"eps": 0.1, "norm": "l2", "attacks": ["spsa"]},
                         "runs under the linf threat model only"),
                        ({"eps": 0.1, "draws": 0}, "draws must be an integer >= 1"),
                        ({"eps": 0.1, "sanity_eps": (-1,)}, "sanity_eps must be in"),
                        ({"eps": 0.1, "bogus": 1}, "unknown evaluation setting")):
    with pytest.raises((ValueError, TypeError), match=match):
      evaluation.evaluate(model, X, Y, log=logged.append, **kwargs)
  with pytest.raises(ValueError, match="pixels in \\[0, 1\\]"):
    evaluation.evaluate(model, X * 255, Y, eps=0.1)
  with pytest.raises(ValueError, match="y must be"):
    evaluation.evaluate(model, X, Y[:3], eps=0.1)
  assert logged == []


def test_presets_are_autoattacks_versions():
  assert suite.parse_attacks(["standard"], [7]) == [
      "apgd_ce(chunk=8,samples=1,steps=100,view=bpda)", "apgd_t(steps=100,targets=9,view=bpda)",
      "fab_t(restarts=1,steps=100,targets=9,view=bpda)",
      "square(p_init=0.8,queries=5000,rescale=False)"]
  assert suite.parse_attacks(["rand"], [7]) == [
      "apgd_ce(chunk=8,samples=20,steps=100,view=bpda)",
      "apgd_dlr(chunk=8,samples=20,steps=100,view=bpda)"]
  assert suite.parse_attacks(["auto"], [7], randomized=True) == suite.parse_attacks(["rand"], [7])
  # The same rows under l2.
  assert suite.parse_attacks(["standard"], [7], "l2") == suite.parse_attacks(["standard"], [7])
  assert suite.parse_attacks(["auto"], [7], randomized=False) == \
      suite.parse_attacks(["standard"], [7])
  plan = evaluation.EvalConfig(eps=0.1).checked((8, 8, 1), randomized=False)
  assert plan.cascade and plan.draws == 1 and plan.rows[0] == "clean" and len(plan.rows) == 5
  plan = evaluation.EvalConfig(eps=0.1, attacks=("pgd",)).checked((8, 8, 1), randomized=True)
  assert not plan.cascade and plan.draws == 10 and len(plan.rows) == 4  # clean, pgd at 7/20/40
  # The default sweep: 0, eps / 4, eps, 2 eps, and half the largest distance.
  assert plan.sanity_eps == (0.0, 0.025, 0.1, 0.2, 0.5)


def test_the_cascade_gives_the_full_runs_worst_case_in_less_work():
  # With one image per batch an image's attack does not depend on which others are attacked,
  # so the cascade's worst case must equal the full run's exactly.
  settings = dict(eps=0.05, attacks=["apgd_ce(steps=4)", "apgd_t(steps=4,targets=3)",
                                     "square(queries=30)"], batch_size=1, **CHEAP)
  full = evaluation.evaluate(model, X, Y, cascade=False, **settings)
  cascade = evaluation.evaluate(model, X, Y, cascade=True, **settings)
  np.testing.assert_array_equal(cascade.verdicts["worst_case"], full.verdicts["worst_case"])
  attacked = [r["attacked"] for r in cascade.record["results"]]
  assert attacked[0] == 12 and attacked[1] == 12 and attacked[-1] < 12
  assert attacked == sorted(attacked, reverse=True)
  assert cascade.record["cascade"] and not full.record["cascade"]


def test_intervals_are_wilsons():
  for k, n in ((0, 10), (3, 12), (50, 100), (500, 500)):
    lo, hi = runner.wilson(k / n, n)
    ref = scipy.stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert lo == pytest.approx(ref.low, abs=1e-4) and hi == pytest.approx(ref.high, abs=1e-4)


def test_probabilities_instead_of_logits_fail_the_output_check():
  probabilities = lambda x: jax.nn.softmax(model(x))
  result = evaluation.evaluate(probabilities, X, Y, eps=0.03, attacks=["clean"], **CHEAP)
  assert any("outputs are finite logits" in f and "probabilities" in f
             for f in result.failed_checks)
  assert not evaluation.evaluate(model, X, Y, eps=0.03, attacks=["clean"], **CHEAP).failed_checks


@dataclasses.dataclass(frozen=True)
class SecretNoise(defenses.Defense):
  """Random, but does not say so (randomized stays False)."""
  amount: float = 0.1

  def transform(self, keys, x, level):
    noise = jax.vmap(lambda k: jax.random.uniform(k, x.shape[1:], minval=-1, maxval=1))(keys)
    return jnp.clip(x + self.amount * noise, 0, 1)


def test_undeclared_randomness_is_detected():
  result = evaluation.evaluate(model, X, Y, eps=0.03, attacks=["clean"], defense=SecretNoise(),
                               **CHEAP)
  assert any(f.startswith("randomness declared") for f in result.failed_checks)
  assert result.record["defense"] == {"defense": "SecretNoise", "amount": 0.1}


def test_a_score_based_attack_that_beats_the_white_box_ones_fails_the_check():
  def row(name, correct):
    return runner.Row(spec=name, attack=name, label=name, threat=suite.threat(name).access,
                      steps=None, eps=0.1, norm="linf", correct=np.asarray([correct]),
                      max_linf=0.1, max_l2=None, wall_s=0.0, description="")
  white = row("apgd_ce", [True] * 8 + [False] * 2)
  ok = row("square", [True] * 7 + [False] * 3)  # one image more: within the allowance
  bad = row("square", [True] * 5 + [False] * 5)
  assert sanity.score_based([white, ok])[0].passed
  check = sanity.score_based([white, bad])[0]
  assert not check.passed and "broke 3 of 10" in check.detail


@dataclasses.dataclass(frozen=True)
class AlwaysThree(defenses.Defense):
  """Overrides predict (and has a field the wrapper must pass through)."""
  marker: int = 7

  def transform(self, keys, x, level):
    return x

  def predict(self, network, key, x, indices):
    return jnp.full(x.shape[:1], 3, jnp.int32)


def test_the_per_device_wrapper_keeps_every_override():
  inner = AlwaysThree()
  wrapped = defenses.per_device(inner, parallel.mesh(jax.local_devices()))
  assert isinstance(wrapped, AlwaysThree)
  x = jnp.asarray(X[:4])
  labels = wrapped.predict(model, jax.random.key(0), x, jnp.arange(4))
  np.testing.assert_array_equal(labels, 3)
  assert wrapped.marker == 7 and wrapped.describe() == inner.describe()
  np.testing.assert_array_equal(wrapped.view("bpda", jax.random.split(jax.random.key(0), 4), x,
                                             jnp.ones(4)), x)


def test_progress_reports_forward_passes_from_inside_the_compiled_attack(monkeypatch):
  from menet_jax.evaluation import progress
  monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
  monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False)
  lines = []
  evaluation.evaluate(model, X, Y, eps=0.03, attacks=["apgd_ce(steps=6)"], batch_size=4,
                      log=lines.append, **dict(CHEAP, progress=True))
  beats = [l for l in lines if "apgd_ce-6" in l and "forward passes" in l]
  assert beats, lines
  # Passes counted before the row's first batch finished: the heartbeat comes from inside.
  assert any(" 0/12 images, " in l for l in beats)
  # The total read off the program (3 batches) is what ran: the last pass is logged before the
  # last batch returns; the ETA comes from the passes' rate.
  done, total = beats[-1].split(" forward passes")[0].split()[-1].split("/")
  assert int(done) == int(total) >= 3 * 6, beats[-1]
  assert all("s left" in l for l in beats[2:]), beats
  quiet = []
  evaluation.evaluate(model, X, Y, eps=0.03, attacks=["apgd_ce(steps=6)"], batch_size=4,
                      log=quiet.append, **CHEAP)
  assert not [l for l in quiet if "forward passes" in l]


def test_forward_passes_are_counted_through_loops_as_they_run():
  from menet_jax.evaluation import progress
  ran = []

  def net(x):
    jax.debug.callback(lambda: ran.append(1))
    return x * 2

  def program(x):
    y = jax.vmap(net)(x)  # a heartbeat without operands runs once under vmap
    z = jax.lax.fori_loop(0, 5, lambda i, c: c + net(c), y)  # a scan of length 5
    w = jax.lax.map(net, x)  # 3 rows
    g = jax.grad(lambda v: net(v).sum())(x)
    branch = jax.lax.cond(x.sum() > 0, net, net, x)  # either way once
    return z.sum() + w.sum() + g.sum() + branch.sum()

  x = jnp.ones((3, 2))
  jax.block_until_ready(jax.jit(program)(x))
  jax.effects_barrier()
  assert progress.calls(jax.make_jaxpr(jax.jit(program))(x)) == len(ran) == 11
  unknown = lambda x: jax.lax.while_loop(lambda c: c.sum() < 10, net, x)
  assert progress.calls(jax.make_jaxpr(unknown)(x)) is None
  uneven = lambda x: jax.lax.cond(x.sum() > 0, net, lambda v: v, x)
  assert progress.calls(jax.make_jaxpr(uneven)(x)) is None


def test_radii_are_written_as_people_write_them():
  from menet_jax.evaluation.curves import linf_text
  assert [linf_text(e) for e in (0.3, 0.1, 8 / 255, 2 / 255, 0.0)] == [
      "0.3", "0.1", "8/255", "2/255", "0"]


def test_the_table_tool_compares_runs_side_by_side(tmp_path, capsys):
  from experiments import eval_table
  for name, defense in (("bare", None), ("median", "median(k=3)")):
    evaluation.evaluate(model, X, Y, eps=0.03, attacks=["pgd(steps=2)"], defense=defense,
                        log=lambda line: None, **CHEAP).write(tmp_path, name)
  capsys.readouterr()
  figure = tmp_path / "compare.png"
  eval_table.main(["eval_table", f"--figure={figure}", str(tmp_path / "bare.json"),
                   str(tmp_path / "median.json")])
  out = capsys.readouterr().out
  assert "| pgd-2 |" in out.splitlines()[0] and out.count("\n| ") == 2  # a row per run
  assert figure.read_bytes()[:4] == b"\x89PNG"


def test_randomized_as_a_field_survives_the_spec_round_trip():
  @dataclasses.dataclass(frozen=True)
  class MaybeNoisy(defenses.Defense):
    amount: float = 0.1
    randomized: bool = True

    def transform(self, keys, x, level):
      return x

  defenses.register("maybe_noisy")(MaybeNoisy)
  try:
    for spec in ("maybe_noisy(amount=0.2)", "maybe_noisy(amount=0.2, randomized=False)"):
      d = defenses.create(spec)
      again = defenses.create(d.spec())
      assert again == d and again.randomized == d.randomized
      assert d.describe() == {"defense": "maybe_noisy", "amount": 0.2,
                              "randomized": d.randomized}
  finally:
    defenses.DEFENSES.unregister("maybe_noisy")


def test_every_attack_at_more_radii_draws_its_curve(tmp_path):
  result = evaluation.evaluate(model, X, Y, eps=0.03, attacks=["pgd(steps=3)", "fgsm"],
                               curve_eps=(0.01, 0.1, 0.03), cascade=False, **CHEAP)
  curve = result.record["curve"]
  assert [c["eps"] for c in curve] == [0.01, 0.1]  # eps itself is the main table's
  for c in curve:
    assert [r["label"] for r in c["results"]] == ["pgd-3", "fgsm"]
    worst = np.logical_and.reduce([result.verdicts["clean"]] + [
        result.verdicts[f"{s}@{c['eps']:g}"] for s in ("pgd(step_size=None,steps=3)", "fgsm")])
    np.testing.assert_array_equal(result.verdicts[f"worst_case@{c['eps']:g}"], worst)
    assert c["worst_case"]["accuracy"] == worst[0].mean()
  # A linear model under FGSM: a larger radius never leaves more images correct.
  fgsm = [result.accuracy["fgsm"]] + [c["results"][1]["accuracy"] for c in curve]
  assert fgsm[1] >= fgsm[0] >= fgsm[2]  # eps 0.01, 0.03, 0.1
  paths = result.write(tmp_path)
  assert "Every attack at more radii" in paths["md"].read_text()
  assert paths["png"].stat().st_size > 0
