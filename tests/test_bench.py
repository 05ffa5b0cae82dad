"""bench.py runs end to end on tiny shapes and reports every row, with the achieved GFLOP/s of
each hot path and its share of the peaks measured in the same run (no speed is asserted here:
speed is what bench.py prints, not what a test on a shared CI machine can promise); the GPU
check says in one line that it needs CUDA."""

import json
import time

import pytest
import torch

import bench
from conftest import error_of


@pytest.mark.slow  # bench.py end to end
@pytest.mark.long
def test_bench_reports_every_row_with_gflops_and_its_share_of_the_peak(tmp_path):
    out = tmp_path / "bench.json"
    rows = bench.main([
        "--device", "cpu", "--preset", "none", "--tiny-batch-size", "2", "--transformer-batch-size", "2",
        "--sample-batch-size", "2", "--repeats", "1", "--json", str(out)])
    by_name = {(r["what"], r["shape"]): r for r in rows}
    shapes = list(by_name)
    assert ("MaskGIT sampling (tiny), 12 steps", "B=2 N=256 K=1024") in shapes
    assert ("MaskGIT sampling (tiny), 12 steps", "B=1 N=256 K=1024") in shapes  # one image
    assert ("AR sampling (tiny), KV cache", "B=1 N=256 K=1024") in shapes
    assert sum("no cache" in w for w, _ in shapes) == 2  # N = 64 and 256
    assert all(r["seconds"] > 0 for r in rows)
    notes = {r["shape"]: r["note"] for r in rows if r["what"].startswith("MaskGIT sampling")}
    assert "x the speed of AR with KV cache" in notes["B=1 N=256 K=1024"]
    # every training step reports achieved GFLOP/s and its share of a peak of this same run
    report = json.load(open(out))
    assert set(report["peaks_gflops"]) == {"matmul", "conv"}
    steps = [r for r in rows if "train step" in r["what"]]
    assert len(steps) == 3  # the tiny tokenizer, the AR model and MaskGIT
    for r in steps:
        assert r["gflops"] > 0 and r["share_of_peak"] == pytest.approx(r["gflops"] / report["peaks_gflops"][r["peak_name"]])
    assert report["rows"] == rows


def test_flop_count_of_a_matmul_and_a_conv_is_exact():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert bench.count_flops(lambda: a @ b) == 2 * 8 * 16 * 4
    conv, x = torch.nn.Conv2d(3, 5, 3, padding=1, bias=False), torch.randn(2, 3, 6, 6)
    assert bench.count_flops(lambda: conv(x)) == 2 * 2 * 3 * 5 * 9 * 6 * 6
    x.requires_grad_(True)  # backward: the input and the weight gradients, each as much as the forward
    assert bench.count_flops(lambda: conv(x).sum().backward()) == 3 * 2 * 2 * 3 * 5 * 9 * 6 * 6


def test_a_reference_peak_is_the_fastest_call_and_a_row_the_median():
    # calls after the warmup: 0.1 s, 0 s, 0.1 s: a peak must not be dragged down by slow calls
    delays = iter([0.0, 0.1, 0.0, 0.1] * 2)
    fn = lambda: time.sleep(next(delays))
    assert bench.measure(fn, torch.device("cpu"), 3, best=True)[0] < 0.05
    assert bench.measure(fn, torch.device("cpu"), 3)[0] >= 0.1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_check_says_it_needs_cuda():
    msg = error_of(bench.main, ["--gpu-check"])
    assert "needs a CUDA GPU" in msg and "python bench.py" in msg
