"""The tests that take a device: the `device` fixture, the CPU unless SEQGAN_TEST_DEVICE names
another (`python bench.py --gpu-check` runs this file, among the fast suite, with cuda). They
check on that device what the CPU tests check on the CPU: the quantizer against a brute force,
straight-through gradients, bf16 autocast with the fp32 islands, the KV cache, MaskGIT's
decoding, and a short training run of every tokenizer and transformer stage."""

import pytest
import torch

import losses
import machine
import train
import transformer
import vq
from conftest import TINY


def test_quantizer_matches_brute_force_and_passes_gradients_straight_through(device):
    torch.manual_seed(0)
    q = vq.VectorQuantizer(64, 8).to(device)
    z_hat = torch.randn(2, 8, 4, 4, device=device, requires_grad=True)
    z_q, s, _ = q(z_hat)
    z = z_hat.detach().permute(0, 2, 3, 1).reshape(-1, 8).double()
    brute = torch.cdist(z, q.codebook.weight.detach().double()).argmin(1)
    assert torch.equal(s.flatten(), brute)
    g = torch.randn_like(z_q)
    z_q.backward(g)
    assert torch.equal(z_hat.grad, g)


def test_bf16_autocast_keeps_the_quantizer_and_the_vgg_in_fp32(device):
    torch.manual_seed(0)
    q = vq.VectorQuantizer(1024, 256).to(device)  # VQGAN's init: near-tied codes
    z_hat = torch.randn(2, 256, 8, 8, device=device)
    _, s32, _ = q(z_hat)
    features = losses.VGG16Features(losses.SmallVGG16(8, widths=(4, 4, 8, 8, 8), hidden=16)).to(device)
    with machine.autocast(device, torch.bfloat16):
        z_q, s16, _ = q(z_hat)
        out = features(torch.rand(2, 3, 32, 32, device=device))
    assert torch.equal(s16, s32) and z_q.dtype == torch.float32
    assert {v.dtype for v in out.values()} == {torch.float32}


def test_kv_cache_and_maskgit_decoding(device):
    torch.manual_seed(0)
    cfg = transformer.TransformerConfig(K=16, seq_len=12, num_classes=3, n_layer=2, n_head=2, n_embd=32)
    gpt = transformer.GPT(cfg).to(device).eval()
    y = torch.tensor([0, 2], device=device)
    greedy = [gpt.generate(y, temperature=0, use_cache=c) for c in (True, False)]
    assert torch.equal(greedy[0], greedy[1])
    maskgit = transformer.MaskGIT(cfg).to(device).eval()
    s, history = maskgit.generate(y, steps=4, return_history=True,
                                  generator=torch.Generator(device=device).manual_seed(0))
    assert [int(m.sum(1).max()) for m in history] == transformer.mask_counts(12, 4)
    assert (s < 16).all()


@pytest.mark.parametrize("stage", ["tokenizer", "ar", "nar"])
def test_two_training_steps_on_the_device(stage, device, tmp_path):
    runs_dir = str(tmp_path / "runs")
    tok = ["--semantic", "random", "--disc-ndf", "8", "--disc-layers", "2", "--disc-start", "1"]
    common = [*TINY, "--steps", "2", "--device", str(device), "--runs-dir", runs_dir]
    path = train.main(["--stage", "tokenizer", *tok, *common])
    if stage != "tokenizer":
        path = train.main(["--stage", stage, *common])
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
