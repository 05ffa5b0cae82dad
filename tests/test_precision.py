"""The CUDA path's logic, run on the CPU: bf16 autocast in every stage, the fp32 islands inside it,
torch.compile, and the CUDA RNG state in checkpoints.

`--precision bf16` runs train.py under bf16 autocast on any device, so one step of every stage
takes here the mixed-precision path that CUDA takes by default (`--precision auto`):
  - each stage's first step under bf16 logs finite losses within BF16_RTOL of the fp32 step, and
    not bit-equal to it (else autocast never ran);
  - inside bf16 autocast the quantizer (distances, argmin, the entropy's softmax) and the VGG
    features stay fp32: the indices are the fp32 ones, the features come out fp32;
  - `--compile` (slow): one step of the tokenizer, the GPT and MaskGIT compiled equals eager;
  - the CUDA RNG state survives a checkpoint round trip (skipped without CUDA), and a checkpoint
    written on a GPU resumes on a CPU-only machine.
"""

import json
import os

import pytest
import torch

import bench
import losses
import machine
import runs
import train
import vq
from conftest import TINY

# bf16 keeps 8 bits of mantissa (~0.4% per rounding); one step's losses, each the mean of many
# rounded products, stay within a few percent of fp32
BF16_RTOL = 0.05
# ... except where a term follows which code each position takes: bf16 can flip one nearest code
# of the batch (usage 0.492 against 0.5 in one such step), and the small L_sem (0.03) then moves by
# 5%; a broken bf16 path (an fp32 island lost, a NaN) moves it by far more
CODE_SENSITIVE_RTOL = {"per": 0.1, "sem": 0.1, "lam": 0.1}
TOK = ["--semantic", "random", "--disc-ndf", "8", "--disc-layers", "2"]


def first_logged(run_dir):
    """The numbers of the first training log line of a run (step 1)."""
    for line in open(os.path.join(run_dir, "log.jsonl")):
        record = json.loads(line)
        if record["step"] == 1 and not any(k.startswith("val_") for k in record):
            return {k: v for k, v in record.items() if k not in ("stage", "step", "time", "it_s") and
                    isinstance(v, float)}
    raise AssertionError(f"{run_dir}: no log line for step 1")


@pytest.fixture(scope="module")
def phase1(tmp_path_factory):
    """A 2-step tiny phase-1 tokenizer (fp32), for the stages that start from one."""
    runs_dir = tmp_path_factory.mktemp("precision") / "runs"
    train.main(["--stage", "tokenizer", "--steps", "2", *TOK, *TINY, "--runs-dir", str(runs_dir)])
    return runs_dir / "tiny-tokenizer"


STAGES = {  # stage -> its flags for a one-step run (the GAN on from step 1 in both tokenizer phases)
    "classifier": [],
    "tokenizer": [*TOK, "--disc-start", "0"],
    "decoder": [*TOK, "--disc-start", "0"],
    "ar": [],
    "nar": [],
}


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(STAGES))
def test_one_step_of_every_stage_under_cpu_bf16_autocast(stage, phase1, tmp_path):
    extra = {"decoder": ["--phase1", str(phase1)], "ar": ["--tokenizer", str(phase1)],
             "nar": ["--tokenizer", str(phase1)]}.get(stage, [])
    logged = {}
    for precision in ("fp32", "bf16"):
        run_dir = tmp_path / precision
        train.main(["--stage", stage, "--steps", "1", *STAGES[stage], *extra, *TINY, "--precision", precision,
                    "--runs-dir", str(tmp_path), "--name", precision])
        logged[precision] = first_logged(run_dir)
        weights = torch.load(runs.latest_checkpoint(str(run_dir)), weights_only=True)["model"]
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()), \
            f"{stage} under {precision}: non-finite weights after one step"
    fp32, bf16 = logged["fp32"], logged["bf16"]
    assert fp32.keys() == bf16.keys() and fp32
    for k in fp32:
        assert bf16[k] == pytest.approx(fp32[k], rel=CODE_SENSITIVE_RTOL.get(k, BF16_RTOL), abs=1e-3), \
            f"{stage}: {k} is {bf16[k]:.5g} under bf16 autocast against {fp32[k]:.5g} in fp32"
    assert bf16 != fp32, f"{stage}: bf16 and fp32 steps logged the very same numbers: autocast never ran"


def test_the_quantizer_and_the_vgg_stay_fp32_inside_a_bf16_training_step():
    """One generator step of the tokenizer under CPU bf16 autocast, as CUDA runs it (bench.py's copy
    of train.py's step, checked equal to it in tests/test_bench.py): the
    quantizer's distances and output are fp32 (its indices are those an fp32 search picks for
    the features it received) and the VGG's features are fp32; the decoder's convolutions do run
    in bf16."""
    torch.manual_seed(0)
    cfg = vq.TokenizerConfig(**{**vq.TOKENIZER_PRESETS["tiny"], "K": 1024})  # many near-tied codes
    model = vq.Tokenizer(cfg)
    features = losses.VGG16Features(losses.SmallVGG16(8, widths=(4, 4, 8, 8, 8), hidden=16))
    perceptual = losses.SemanticPerceptualLoss(features, 0.5)
    seen = {}
    model.quantizer.register_forward_hook(lambda m, inp, out: seen.update(z_hat=inp[0], z_q=out[0].dtype, s=out[1]))
    features.register_forward_hook(lambda m, inp, out: seen.update(vgg={k: v.dtype for k, v in out.items()}))
    model.decoder.conv_out.register_forward_hook(lambda m, inp, out: seen.update(decoder=out.dtype))
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    real_distances, dtypes = model.quantizer.distances, []

    def distances(z):  # the dtype the (M, K) distance matrix is computed in
        D = real_distances(z)
        dtypes.append(D.dtype)
        return D

    model.quantizer.distances = distances
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay the reference's
    args = bench.stage_settings("tokenizer", "tiny")
    args.precision = "bf16"  # step 1 of tiny's phase 1: the GAN is not on yet (D is never read)
    terms, _ = bench.tokenizer_train_step(x, 1, None, model=model, disc=None, opt=opt, opt_d=None,
                                          perceptual=perceptual, args=args)
    assert seen["decoder"] == torch.bfloat16, "the step did not run under bf16 autocast"
    assert dtypes == [torch.float32], f"the quantizer's distances ran in {dtypes}, not fp32"
    assert seen["z_q"] == torch.float32
    # the codes an fp32 search picks for the very features the quantizer received (the encoder's
    # output, in bf16): without the fp32 island, near-tied codes flip
    z = seen["z_hat"].float().permute(0, 2, 3, 1).reshape(-1, cfg.nz)
    with torch.no_grad():
        s_fp32 = real_distances(z).argmin(1).view_as(seen["s"])
    assert torch.equal(seen["s"], s_fp32), "under bf16 autocast the quantizer picked other codes than fp32 would"
    assert set(seen["vgg"].values()) == {torch.float32}, f"VGG features under bf16 autocast: {seen['vgg']}"
    assert all(torch.isfinite(v) for v in terms.values())


def test_autocast_takes_an_explicit_dtype_and_device_type():
    assert machine.autocast("cpu", torch.bfloat16).fast_dtype == torch.bfloat16
    assert machine.autocast(torch.device("cpu"), torch.bfloat16).device == "cpu"
    assert machine.autocast("cuda").fast_dtype == torch.bfloat16  # "auto" on CUDA: bf16
    for off in (machine.autocast("cpu", None), machine.autocast("cuda", None), machine.autocast("cpu", torch.float32)):
        with off:
            assert not torch.is_autocast_enabled("cpu")
    with machine.autocast("cpu", torch.bfloat16):
        assert torch.is_autocast_enabled("cpu") and (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------
# torch.compile: one step compiled equals one step eager (slow: compiling takes tens of seconds)
# ------------------------------------------------------------------------------------------


def compiled_and_eager(build, step):
    """step(model) -> tensors, run on a fresh eager model and on a compiled copy of the same weights."""
    torch.manual_seed(0)
    eager = build()
    compiled_model = build()
    compiled_model.load_state_dict(eager.state_dict())
    return step(eager), step(torch.compile(compiled_model))


@pytest.mark.slow
@pytest.mark.compile
def test_compiled_tokenizer_step_equals_eager():
    x = torch.rand(2, 3, 32, 32) * 2 - 1

    def step(model):
        x_hat, s, vq_terms = model(x)
        total = (x - x_hat).abs().mean() + sum(vq_terms.values())
        total.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return x_hat.detach(), s, total.detach(), grads

    (a, s_a, l_a, g_a), (b, s_b, l_b, g_b) = compiled_and_eager(
        lambda: vq.Tokenizer(vq.TokenizerConfig(**vq.TOKENIZER_PRESETS["tiny"])), step)
    assert torch.equal(s_a, s_b), "compiled tokenizer picked other codes"
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(l_b, l_a, rtol=1e-4, atol=1e-6)
    for ga, gb in zip(g_a, g_b):
        torch.testing.assert_close(gb, ga, rtol=1e-3, atol=1e-5)


@pytest.mark.slow
@pytest.mark.compile
@pytest.mark.parametrize("kind", ["ar", "nar"])
def test_compiled_transformer_step_equals_eager(kind):
    cfg = dict(K=16, seq_len=16, num_classes=3, n_layer=2, n_head=2, n_embd=32, dropout=0.0,
               class_dropout=0.0)
    s = torch.randint(16, (4, 16), generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0])
    mask = torch.rand(4, 16, generator=torch.Generator().manual_seed(2)) < 0.5  # NAR: one fixed mask

    def step(model):
        kwargs = {"mask": mask} if kind == "nar" else {}
        logits, loss = model(s, y, targets=s, **kwargs)
        loss.backward()
        return logits.detach(), loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    (la, a, ga), (lb, b, gb) = compiled_and_eager(lambda: runs.build_transformer(kind, cfg), step)
    torch.testing.assert_close(lb, la, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    for x, z in zip(ga, gb):
        torch.testing.assert_close(z, x, rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------------------------------
# the CUDA RNG state in checkpoints
# ------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_rng_state_round_trips_through_a_checkpoint(tmp_path):
    torch.cuda.manual_seed_all(0)
    torch.rand(3, device="cuda")
    state = machine.rng_state()
    assert "cuda" in state
    path = tmp_path / "rng.pt"
    torch.save({"rng": state}, path)
    expected = torch.rand(5, device="cuda")  # what the stream gives next
    torch.rand(7, device="cuda")  # move on
    machine.set_rng_state(torch.load(path, weights_only=True)["rng"])
    assert torch.equal(torch.rand(5, device="cuda"), expected)


def test_a_checkpoint_with_a_cuda_rng_state_resumes_without_cuda():
    """A GPU checkpoint's RNG entry "cuda" is skipped on a CPU-only machine: the rest restores."""
    torch.manual_seed(0)
    state = machine.rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)]  # as a GPU machine would save it
    expected = torch.rand(4)
    torch.rand(9)
    if not torch.cuda.is_available():
        machine.set_rng_state(state)
        assert torch.equal(torch.rand(4), expected)
