"""Device choice: CUDA, then Apple's MPS, then the CPU; the MPS rules (no autocast, float64
statistics on the CPU). This machine has no MPS: the tests that need one skip here."""

import contextlib

import pytest
import torch

import machine
import metrics
import sample
import vq
from conftest import error_of

HAS_MPS = torch.backends.mps.is_available()


def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert machine.pick_device("auto") == torch.device("mps")
    assert machine.pick_device("mps") == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert machine.pick_device("auto") == torch.device("cpu")
    # a visible CUDA GPU still comes first (set_device stubbed: this build has no CUDA runtime)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    assert machine.pick_device("auto", local_rank=1) == torch.device("cuda:1")


def test_mps_asked_for_but_absent_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(machine.UserError, match="MPS backend is not available"):
        machine.pick_device("mps")
    # through a script: one line, before anything is loaded
    out = ["--out", str(tmp_path / "x.png")]
    assert "--device mps: Apple's MPS backend" in error_of(sample.main, ["--device", "mps", *out])
    assert "not a device name" in error_of(sample.main, ["--device", "gpu", *out])


def test_no_autocast_on_mps_and_the_quantizer_can_switch_it_off(monkeypatch):
    # machine.autocast "auto": bf16 on CUDA and on a CPU with native bf16; MPS and other CPUs in fp32
    assert isinstance(machine.autocast(torch.device("mps")), contextlib.nullcontext)
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: False)
    assert isinstance(machine.autocast(torch.device("cpu")), contextlib.nullcontext)
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: True)
    on = machine.autocast(torch.device("cpu"))
    assert isinstance(on, torch.autocast) and on.fast_dtype == torch.bfloat16
    assert isinstance(machine.autocast(torch.device("cpu"), None), contextlib.nullcontext)  # --precision fp32
    # the evaluation's "portable": fp32 on every CPU, so a recorded figure holds on any of them
    assert isinstance(machine.autocast(torch.device("cpu"), "portable"), contextlib.nullcontext)
    assert machine.autocast("cuda", "portable").fast_dtype == torch.bfloat16
    # the quantizer's own switch takes the device type of its input, "mps" included
    with torch.autocast(device_type="mps", enabled=False):
        pass


@pytest.mark.skipif(not HAS_MPS, reason="needs Apple's MPS backend (an Apple-silicon Mac)")
def test_on_mps_statistics_are_float64_on_the_cpu_and_match():
    gen = torch.Generator().manual_seed(0)
    feats, probs = torch.randn(12, 5, generator=gen), torch.softmax(torch.randn(12, 3, generator=gen), -1)
    on_mps, on_cpu = metrics.RunningStatistics(is_n=12), metrics.RunningStatistics(is_n=12)
    for f, p in zip(feats.split(5), probs.split(5)):
        on_mps.update(f.to("mps"), p.to("mps"))
        on_cpu.update(f, p)
    a, b = on_mps.result(), on_cpu.result()
    assert a["mu"].dtype == torch.float64 and a["mu"].device.type == "cpu"
    torch.testing.assert_close(a["sigma"], b["sigma"])
    assert a["inception_score"] == pytest.approx(b["inception_score"])


@pytest.mark.skipif(not HAS_MPS, reason="needs Apple's MPS backend (an Apple-silicon Mac)")
def test_on_mps_the_quantizer_picks_the_cpu_codes():
    torch.manual_seed(0)
    q = vq.VectorQuantizer(16, 8).eval()
    z_hat = torch.randn(2, 8, 4, 4)
    _, s_cpu, _ = q(z_hat)
    with machine.autocast(torch.device("mps")):
        _, s_mps, _ = q.to("mps")(z_hat.to("mps"))
    assert torch.equal(s_mps.cpu(), s_cpu)
