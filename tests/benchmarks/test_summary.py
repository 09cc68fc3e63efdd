"""benchmarks.summary: the rows each benchmark appends and the one table `make bench` prints."""

import json

import pytest

from benchmarks import summary


def test_rows_are_appended_read_back_and_tabled(tmp_path):
  path = tmp_path / "bench" / "summary.jsonl"
  summary.record("attack", "usvt", 3000.0, "numpy loop", 1500.0, "img x steps/s", path=path)
  summary.record("reconstruct", "soft_impute", 253.0, "numpy loop", 47.9, "img/s",
                 "objective gap median -3.0e-04", path=path)
  rows = summary.read(path)
  assert [r["ratio"] for r in rows] == [pytest.approx(2.0), pytest.approx(253.0 / 47.9)]
  text = summary.table(rows)
  assert "| attack | usvt | 3000 | numpy loop | 1500 | img x steps/s | 2.00x |  |" in text
  assert "| 5.28x | objective gap median -3.0e-04 |" in text
  assert text.count("machine: ") == 1 and "machine 2" not in text


def test_a_torn_or_foreign_line_is_an_error_not_a_row(tmp_path):
  path = tmp_path / "summary.jsonl"
  summary.record("attack", "usvt", 3.0, "numpy", 1.5, "img/s", path=path)
  whole = path.read_text()
  path.write_text(whole + whole[:20])  # a run killed while writing its second line
  with pytest.raises(ValueError, match=r"summary.jsonl:2 is not a whole summary row"):
    summary.read(path)
  path.write_text(json.dumps({"method": "usvt"}) + "\n")
  with pytest.raises(ValueError, match=r":1 is not a summary row"):
    summary.read(path)
