"""bench.py runs end to end on tiny shapes and reports every row, with the achieved GFLOP/s of
each hot path and its share of the peaks measured in the same run (no speed is asserted here:
speed is what bench.py prints, not what a test on a shared CI machine can promise); the GPU
check says in one line that it needs CUDA."""

import json
import os
import time

import pytest
import torch

import bench
import data
import losses
import runs
import train
import vq
from conftest import error_of
from machine import PRECISIONS, Proc, set_rng_state


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


# ------------------------------------------------------------------------------------------
# bench.py times its own copy of train.py's loop body: the two must train alike
# ------------------------------------------------------------------------------------------

FP32 = ["--precision", "fp32", "--n-train", "32", "--n-val", "8", "--batch-size", "8", "--grad-accum", "2",
        "--log-every", "1", "--eval-every", "100", "--sample-every", "100", "--ckpt-every", "3", "--keep", "9",
        "--threads", "1"]


def checkpoint_at(path, step):
    return torch.load(os.path.join(os.path.dirname(path), f"ckpt_{step:08d}.pt"), weights_only=True)


def optimizer_hash(state):
    """runs.state_hash of an optimizer's state_dict (its tensors, flattened by name)."""
    flat = {f"{i}.{k}": v if torch.is_tensor(v) else torch.tensor(float(v))
            for i, st in state["state"].items() for k, v in st.items()}
    return runs.state_hash(flat)


@pytest.mark.slow
def test_bench_tokenizer_step_trains_as_train_py_does(run):
    """Three steps of bench.tokenizer_train_step from train.py's checkpoint at step 3 give train.py's
    weights, D and both optimizers at step 6, bit for bit: the GAN on from step 2, lambda afresh
    every 2nd step and held between, R1 every 2nd step, two micro-batches."""
    argv = ["--stage", "tokenizer", "--steps", "6", "--semantic", "random", "--disc-start", "2",
            "--disc-ndf", "8", "--disc-layers", "2", "--lambda-every", "2", "--r1-every", "2", *FP32]
    path = run(*argv)
    args = train.settings([*argv, "--runs-dir", "unused"])
    start, end = checkpoint_at(path, 3), checkpoint_at(path, 6)
    model = vq.Tokenizer(train.tokenizer_config(args))
    disc = losses.Discriminator(args.disc_ndf, args.disc_layers, args.disc_norm)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=args.lr, betas=(0.5, 0.9))
    for module, key in ((model, "model"), (disc, "disc"), (opt, "optimizer"), (opt_d, "disc_optimizer")):
        module.load_state_dict(start[key])
    train_ds = data.load_data("train", **data.data_flags(args))
    perceptual = train.perceptual_loss(args, Proc(0, 1, torch.device("cpu")), train_ds)
    lam = start["gan_lambda"]
    for step, (x, _) in enumerate(data.step_loader(train_ds, args.seed, 3, 6, args.batch_size), 4):
        for group in opt.param_groups:  # train.py's schedule (tiny: warmup 0, then the cosine)
            group["lr"] = train.lr_at(step - 1, args.lr, args.warmup, args.steps)
        _, lam = bench.tokenizer_train_step(x, step, lam, model=model, disc=disc, opt=opt, opt_d=opt_d,
                                            perceptual=perceptual, args=args)
    assert runs.state_hash(model.state_dict()) == runs.state_hash(end["model"])
    assert runs.state_hash(disc.state_dict()) == runs.state_hash(end["disc"])
    assert optimizer_hash(opt.state_dict()) == optimizer_hash(end["optimizer"])
    assert optimizer_hash(opt_d.state_dict()) == optimizer_hash(end["disc_optimizer"])
    assert float(lam) == float(end["gan_lambda"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ar", "nar"])
def test_bench_transformer_step_trains_as_train_py_does(run, kind):
    """The same for bench.transformer_train_step: from train.py's checkpoint at step 3 (its RNG
    state too: class dropout and MaskGIT's masks draw from it), three steps give step 6's weights."""
    run("--stage", "tokenizer", "--steps", "1", "--semantic", "random", "--disc-ndf", "8", "--disc-layers", "2",
        *FP32)
    argv = ["--stage", kind, "--steps", "6", "--ema", "0", *FP32]
    path = run(*argv)
    start, end = checkpoint_at(path, 3), checkpoint_at(path, 6)
    args = train.settings([*argv, "--runs-dir", "unused"])
    model = runs.build_transformer(kind, start["config"]).train()
    opt = model.configure_optimizer(weight_decay=0.01, lr=args.lr, betas=(0.9, 0.95))
    model.load_state_dict(start["model"])
    opt.load_state_dict(start["optimizer"])
    tok, _, tok_hash = runs.load_tokenizer(end["tokenizer_path"], "cpu")
    cache = data.token_cache(data.data_flags(args), tok, tok_hash, end["tokenizer_path"], None, torch.device("cpu"))
    tokens, labels = cache["train"]
    set_rng_state(start["rng"])
    for step, pairs in enumerate(data.StepSampler(len(tokens), args.batch_size, args.seed, 3, 6, False, 0, 1), 4):
        idx = torch.tensor([i for i, _ in pairs])
        for group in opt.param_groups:
            group["lr"] = train.lr_at(step - 1, args.lr, args.warmup, args.steps)
        bench.transformer_train_step(model, opt, tokens[idx].long(), labels[idx], PRECISIONS["fp32"], args.grad_accum)
    assert runs.state_hash(model.state_dict()) == runs.state_hash(end["model"])
    assert optimizer_hash(opt.state_dict()) == optimizer_hash(end["optimizer"])
