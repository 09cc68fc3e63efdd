"""Attacks named as components: parsing, canonical strings, one-line errors, threat models."""

import pytest

from menet_jax.evaluation import suite
from menet_jax.utils.registry import split_list


def test_parse_attacks_expands_steps_and_writes_every_parameter():
  rows = suite.parse_attacks(
      split_list("clean,pgd,bpda_eot@200,bpda_eot(steps=20, samples=10),spsa(samples=64)"),
      [7, 20])
  assert rows == ["clean", "pgd(step_size=None,steps=7)", "pgd(step_size=None,steps=20)",
                  "bpda_eot(chunk=8,samples=40,step_size=None,steps=200,view=bpda)",
                  "bpda_eot(chunk=8,samples=10,step_size=None,steps=20,view=bpda)",
                  "spsa(delta=0.01,lr=0.01,samples=64,steps=100)"]


def test_split_list_keeps_commas_inside_parentheses():
  assert split_list("a, b(x=1, y=(2, 3)),c") == ["a", "b(x=1, y=(2, 3))", "c"]


@pytest.mark.parametrize("entry, match", [
    ("pgdd", "unknown attack 'pgdd'; known: apgd_ce, .*bpda_eot"),
    ("bpda_eot(sampels=3)", "attack 'bpda_eot' has no argument 'sampels'; it takes steps, "
                            "samples, step_size, chunk, view"),
    ("bpda_eot(steps=2.5)", "attack 'bpda_eot': steps must be int, got 2.5"),
    ("clean@5", "attack 'clean' does not take the runner's steps"),
    ("pgd@x", "steps in 'pgd@x' must be integers"),
    ("pgd(", "cannot parse component 'pgd\\('"),
])
def test_bad_entries_give_one_clear_error(entry, match):
  with pytest.raises(ValueError, match=match):
    suite.parse_attacks([entry], [7])


def test_knowledge_orders_threat_models():
  know = lambda name, **p: suite.threat(name).knowledge(p, randomized=True)
  assert know("transfer_pgd") < know("pgd") < know("bpda_pgd") < know("bpda_eot", samples=10)
  # EOT on a deterministic defense knows no more than one draw.
  assert suite.threat("bpda_eot").knowledge({"samples": 10}, randomized=False) == know("bpda_pgd")
