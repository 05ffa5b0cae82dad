"""bench.py runs end to end on tiny shapes and reports every row (no speed is asserted here:
speed is what bench.py prints, not what a test on a shared CI machine can promise)."""

import json

import pytest

import bench

pytestmark = pytest.mark.slow  # bench.py end to end


def test_bench_reports_every_row(tmp_path):
    out = tmp_path / "bench.json"
    rows = bench.main([
        "--device", "cpu", "--preset", "none", "--tiny-batch-size", "2", "--sample-batch-size", "2",
        "--repeats", "1", "--json", str(out)])
    shapes = [(r["what"], r["shape"]) for r in rows]
    assert ("MaskGIT sampling (tiny), 12 steps", "B=2 N=256 K=1024") in shapes
    assert ("MaskGIT sampling (tiny), 12 steps", "B=1 N=256 K=1024") in shapes  # one image
    assert ("AR sampling (tiny), KV cache", "B=1 N=256 K=1024") in shapes
    assert sum("no cache" in w for w, _ in shapes) == 2  # N = 64 and 256
    assert all(r["seconds"] > 0 for r in rows)
    notes = {r["shape"]: r["note"] for r in rows if r["what"].startswith("MaskGIT")}
    assert "x the speed of AR with KV cache" in notes["B=1 N=256 K=1024"]
    assert json.load(open(out))["rows"] == rows
