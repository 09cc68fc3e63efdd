"""benchmarks.paper_scale: its small setting runs every workload end to end on CPU."""

import json
import subprocess
import sys

import pytest

from benchmarks import paper_scale


def test_the_small_setting_times_every_workload_in_a_process_of_its_own(tmp_path):
  out = tmp_path / "bench" / "paper_scale"
  proc = subprocess.run([sys.executable, "-m", "benchmarks.paper_scale", "--scale=small",
                         f"--out={out}"], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  rows = json.loads(out.with_name("paper_scale.json").read_text())
  assert [r["workload"] for r in rows] == list(paper_scale.WORKLOADS)
  for r in rows:
    assert not r["error"], r
    assert r["rate"] > 0 and r["run_items"] > 0 and r["compile_s"] >= 0, r
    # CPU keeps no device memory statistics: the child's own peak resident set, at least
    # the size of an interpreter with JAX loaded (> 100 MiB) and below the machine's.
    assert r["peak_kind"] == "host" and 100 * 2**20 < r["peak_bytes"] < 64 * 2**30, r
  text = out.with_name("paper_scale.md").read_text()
  assert "# machine: " in text and "--scale=small" in text and "projections mean nothing" in text
  for r in rows:
    row = paper_scale.Row(**r)
    assert f"| {row.workload} | {row.what} | {row.rate:.4g} {row.unit} |" in text
    assert row.projected_s == pytest.approx(row.run_items / row.rate)
  assert not list(out.parent.glob("*.tmp"))


def test_unknown_workloads_are_refused_before_anything_runs():
  proc = subprocess.run([sys.executable, "-m", "benchmarks.paper_scale", "--scale=small",
                         "--workloads=menet_pure,bogus"], capture_output=True, text=True)
  assert proc.returncode != 0
  assert "unknown: ['bogus']" in proc.stderr and "menet_build" in proc.stderr
