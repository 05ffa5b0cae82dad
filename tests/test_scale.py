"""From a laptop CPU to full ImageNet: paper-scale sizes, torchrun, gradient accumulation, bf16.

  - the paper-scale tokenizers, built on the meta device (no memory), have the paper's sizes
    (the transformers' 171M / 306M are counted in tests/test_transformer.py);
  - the quantizer's indices under bf16 autocast are the fp32 ones, and its nearest-code search
    agrees with a float64 brute force even among near-tied codes;
  - `torchrun --nproc_per_node=2` (gloo, CPU) trains the tokenizer and the AR model to the same
    weights and gradients as one process on the same global batch; only rank 0 writes;
  - --grad-accum k over k micro-batches gives the step of the k-times larger batch.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

import runs
import vq
from conftest import ROOT, TINY

TOK = ["--semantic", "random", "--disc-ndf", "8", "--disc-layers", "2"]
# Exact equality of two runs needs a loss that is a mean of per-image terms. Two are not:
#  - the entropy term -gamma*H(D_bar): D_bar is the soft usage averaged over the (micro-)batch,
#    and H of an average is not the average of H, so --entropy-weight 0;
#  - the GAN terms: the discriminator's BatchNorm normalizes with (micro-)batch statistics and
#    VQGAN's adaptive weight is a ratio of gradient norms, so the GAN starts after the run.
# (GroupNorm in the tokenizer is per image: it does not care how the batch is split.)
# alpha 0.5 and weight 1: both perceptual terms count (every rank must hold the same VGG).
# And fp32: "auto" trains in bf16 on CPUs with native bf16, whose roundings depend on the batch split.
# And no units: the random net's deep features are tiny, so its gradient units (relu5_3 ~1e-5,
# Deviation 16) blow fp32's rounding of f(x_hat) - f(x) up past the tolerance. The units are
# constants: whether they are on does not change how the batch splits.
EXACT_TOK = [*TOK, "--entropy-weight", "0", "--disc-start", "1000", "--alpha", "0.5", "--perceptual-weight", "1",
             "--precision", "fp32", "--perceptual-norm", "none"]
# AR: no class dropout (a per-rank random draw) and no dropout (tiny preset: 0)
EXACT_AR = ["--class-dropout", "0", "--precision", "fp32"]
# One step: the gradients agree to rounding, but Adam turns rounding noise in near-zero
# gradients into steps of +-lr, so from the second step on the weights differ by more.
ONE = ["--steps", "1"]


def load(path):
    return torch.load(path, weights_only=True)


def optimizer_param_names(ckpt):
    """Parameter names in the order of the checkpoint's optimizer state (as train.py builds it)."""
    with torch.device("meta"):  # shapes only
        if ckpt["kind"] == "tokenizer":  # phase 1: Adam over all parameters
            model = vq.Tokenizer(vq.TokenizerConfig(**ckpt["config"]))
            params = list(model.parameters())
        else:  # AdamW with two groups: decayed Linear weights first, then the rest
            model = runs.build_transformer(ckpt["kind"], ckpt["config"])
            params = [p for g in model.configure_optimizer(0.01, 1e-3).param_groups for p in g["params"]]
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for p in params]


def assert_same_step(a, b):
    """Two checkpoints after the same steps: same gradients (Adam's first moment, i.e. the mean
    gradient, and second moment) and same weights."""
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    scale = max(st["exp_avg"].abs().max().item() for st in state_a.values())
    for i, name in enumerate(optimizer_param_names(a)):
        m_a, m_b = state_a[i]["exp_avg"], state_b[i]["exp_avg"]
        torch.testing.assert_close(m_a, m_b, rtol=1e-3, atol=1e-5 * scale, msg=lambda m: f"grad of {name}: {m}")
        torch.testing.assert_close(state_a[i]["exp_avg_sq"], state_b[i]["exp_avg_sq"], rtol=1e-3, atol=1e-9 * scale**2)
        # Weights where the gradient stands above rounding noise. Where it is zero in exact
        # arithmetic (the bias of a conv followed by a GroupNorm of one channel per group), both
        # runs hold rounding noise, and Adam's m / sqrt(v) turns noise into steps of +-lr.
        real = (m_a.abs() > 1e-3 * scale) & (m_b.abs() > 1e-3 * scale)
        torch.testing.assert_close(a["model"][name][real], b["model"][name][real], rtol=1e-4, atol=2e-6,
                                   msg=lambda m: f"{name}: {m}")


def log_lines(run_dir):
    return [json.loads(l) for l in open(os.path.join(run_dir, "log.jsonl"))]


def assert_same_grad_norm(path_a, path_b):
    """The AR stage clips gradients to norm 1, which hides a wrong scale from Adam's moments;
    the logged norm before clipping does not."""
    norms = lambda path: [l["grad_norm"] for l in log_lines(os.path.dirname(path)) if "grad_norm" in l]
    assert norms(path_a) and norms(path_a) == pytest.approx(norms(path_b), rel=1e-4)


# ------------------------------------------------------------------------------------------
# paper-scale sizes (docs/deviations.md, Deviation 4)
# ------------------------------------------------------------------------------------------


# the paper's counts: Table 1 (baselineVQ 54.5M, +Conv x2 70.0M, +Attention x2 61.4M) and SeQ-GAN
# (57.9M, Tables 3 and 4)
PAPER_COUNTS = {"conv": 54.5e6, "conv-x2": 70.0e6, "attention-x2": 61.4e6, "seqgan": 57.9e6}


@pytest.mark.parametrize("decoder", list(PAPER_COUNTS))
@pytest.mark.parametrize("preset", ["imagenet256", "ffhq256", "lsun256"])
def test_paper_scale_tokenizer_param_counts(preset, decoder):
    cfg = vq.TokenizerConfig(**{**vq.TOKENIZER_PRESETS[preset], "decoder": decoder})
    with torch.device("meta"):  # shapes only, no memory
        model = vq.Tokenizer(cfg)
    n, paper = sum(p.numel() for p in model.parameters()), PAPER_COUNTS[decoder]
    assert abs(n / paper - 1) < 0.002, f"{n / 1e6:.2f}M vs the paper's {paper / 1e6:.1f}M"
    assert cfg.latent_size == 16 and cfg.K == 1024 and cfg.nz == 256  # f = 16: 16x16 tokens


# ------------------------------------------------------------------------------------------
# the quantizer in fp32 under bf16 autocast; nearest-code search among near-tied codes
# ------------------------------------------------------------------------------------------


def test_quantizer_indices_under_bf16_autocast_equal_fp32():
    # paper-scale codebook at VQGAN's init: codes within +-1/K of the origin, all nearly tied
    torch.manual_seed(0)
    q = vq.VectorQuantizer(1024, 256)
    z_hat = torch.randn(2, 256, 16, 16)  # fp32 features, as the encoder's last conv would give
    _, s32, _ = q(z_hat)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q, s16, losses = q(z_hat)
        # the same search left to autocast runs its matmul in bf16 and flips many indices:
        # without the quantizer's own fp32 region this test would fail
        z = z_hat.permute(0, 2, 3, 1).reshape(-1, 256)
        s_bf16 = q.distances(z).argmin(1)
    assert torch.equal(s16, s32)
    assert (s_bf16 != s32.flatten()).any()
    assert z_q.dtype == torch.float32 and all(v.dtype == torch.float32 for v in losses.values())


def test_nearest_code_among_near_ties_matches_float64():
    # At init the distances differ in the 4th digit; the search must still find the nearest code.
    torch.manual_seed(0)
    q = vq.VectorQuantizer(1024, 256)
    z = torch.randn(4096, 256)
    e = q.codebook.weight.detach()
    reference = torch.cdist(z.double(), e.double()).argmin(1)  # float64 brute force
    assert torch.equal(q.distances(z).argmin(1), reference)
    # distances() leaves out ||z||^2 (constant per row); with it, they are the squared distances
    D = q.distances(z) + z.pow(2).sum(1, keepdim=True)
    torch.testing.assert_close(D.double(), torch.cdist(z.double(), e.double()) ** 2, rtol=1e-5, atol=1e-3)


# ------------------------------------------------------------------------------------------
# torchrun: 2 processes on the CPU (gloo) against 1 process, same global batch
# ------------------------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(tmp_path, *argv, nproc=2):
    """python -m torch.distributed.run --nproc_per_node=2 train.py ...; returns its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", os.path.join(ROOT, "train.py"), *argv]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def only_rank0_wrote(run_dir):
    """One log line per (step, kind of line) and no stray files: rank 1 wrote nothing."""
    keys = [(l["step"], tuple(sorted(l))) for l in log_lines(run_dir)]
    assert len(keys) == len(set(keys)), "duplicate log lines: a second rank wrote log.jsonl"
    assert not [f for f in os.listdir(run_dir) if ".tmp" in f or ".part" in f]


@pytest.mark.slow
@pytest.mark.posix  # torchrun
def test_torchrun_tokenizer_matches_one_process(run, tmp_path):
    args = ["--stage", "tokenizer", *ONE, *EXACT_TOK, *TINY]
    one = run(*args, "--name", "one")
    out = torchrun(tmp_path, *args, "--name", "two", "--runs-dir", str(tmp_path / "runs"))
    two = os.path.join(tmp_path, "runs", "two", "ckpt_00000001.pt")
    assert out.count("tokenizer: done at step 1") == 1  # printed by rank 0 only
    assert_same_step(load(one), load(two))
    only_rank0_wrote(os.path.dirname(two))
    # codebook usage over all ranks: the training and validation usage of the full batch / split
    a, b = log_lines(os.path.dirname(one)), log_lines(os.path.dirname(two))
    usage = lambda lines, key: [l[key] for l in lines if key in l]
    assert usage(a, "usage") == usage(b, "usage") and usage(a, "val_usage") == usage(b, "val_usage")
    # phase 2 under torchrun: frozen encoder and codebook inside DDP, then the GAN (disc-start 0)
    torchrun(tmp_path, "--stage", "decoder", "--steps", "2", "--phase1", two, *TOK, "--disc-start", "0", *TINY,
             "--name", "two-dec", "--runs-dir", str(tmp_path / "runs"))
    dec = load(os.path.join(tmp_path, "runs", "two-dec", "ckpt_00000002.pt"))
    assert dec["phase"] == 2 and all(torch.equal(v, dec["model"][k]) for k, v in load(two)["model"].items()
                                     if k.startswith(("encoder.", "quantizer.")))


@pytest.mark.slow
@pytest.mark.posix  # torchrun
def test_torchrun_transformers_match_one_process(run, tmp_path):
    tok = run("--stage", "tokenizer", "--steps", "1", *TOK, *TINY)
    # a copy of the tokenizer in its own folder: each run then writes its own token cache
    os.makedirs(tmp_path / "tok2")
    tok2 = shutil.copy(tok, tmp_path / "tok2")
    args = ["--stage", "ar", *ONE, *EXACT_AR, *TINY]
    one = run(*args, "--tokenizer", tok, "--name", "ar-one")
    torchrun(tmp_path, *args, "--tokenizer", tok2, "--name", "ar-two", "--runs-dir", str(tmp_path / "runs"))
    two = os.path.join(tmp_path, "runs", "ar-two", "ckpt_00000001.pt")
    assert_same_step(load(one), load(two))
    assert_same_grad_norm(one, two)
    only_rank0_wrote(os.path.dirname(two))
    # the token cache the two ranks encoded in halves is the one a single process encodes
    cache = lambda folder: load(next(os.path.join(folder, f) for f in os.listdir(folder) if f.startswith("tokens_")))
    a, b = cache(os.path.dirname(tok)), cache(tmp_path / "tok2")
    assert all(torch.equal(x, y) for split in ("train", "val") for x, y in zip(a[split], b[split]))
    # MaskGIT under torchrun (masks are per rank: no exact comparison), reusing the cache
    out = torchrun(tmp_path, "--stage", "nar", "--steps", "2", *TINY, "--tokenizer", tok2, "--name", "nar-two",
                   "--runs-dir", str(tmp_path / "runs"))
    assert "token cache: " in out and os.path.isfile(os.path.join(tmp_path, "runs", "nar-two", "ckpt_00000002.pt"))


# ------------------------------------------------------------------------------------------
# gradient accumulation: k micro-batches = one step on the k-times larger batch
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_grad_accum_tokenizer_matches_large_batch(run):
    args = ["--stage", "tokenizer", *ONE, *EXACT_TOK, *TINY]
    assert_same_step(load(run(*args, "--name", "k1")), load(run(*args, "--grad-accum", "2", "--name", "k2")))


@pytest.mark.slow
def test_grad_accum_transformer_matches_large_batch(run):
    tok = run("--stage", "tokenizer", "--steps", "1", *TOK, *TINY)
    args = ["--stage", "ar", *ONE, *EXACT_AR, *TINY, "--tokenizer", tok]
    k1, k2 = run(*args, "--name", "k1"), run(*args, "--grad-accum", "2", "--name", "k2")
    assert_same_step(load(k1), load(k2))
    assert_same_grad_norm(k1, k2)
