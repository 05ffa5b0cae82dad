"""
Speed and memory of every hot path of SeQ-GAN, measured in one run on one device, each beside the
device's own reference peaks (docs/benchmarks.md describes every row and how the figures are made).

    python bench.py                        # auto device: the table (README, "Speed")
    python bench.py --json bench.json      # the same rows as JSON
    python bench.py --profile              # the tiny tokenizer's training step, term by term
    python bench.py --gpu-check            # once, on a CUDA machine: the GPU check (docs/scaling.md)

FLOPs: matmuls, convolutions and attention only (GFLOP/s is a lower bound). Weights are random: speed ignores them.
Shapes: B batch, H x W image, h x w latent grid, N = h*w tokens, K codebook size, nz code dimension,
M feature vectors searched at once.
"""

import argparse
import functools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torchvision
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

import config
import losses
import runs
import transformer
import vq
from machine import PRECISIONS, autocast, cpu_has_bf16, num_params, one_line_errors, pick_device

ROOT = os.path.dirname(os.path.abspath(__file__))
SLOW_CALL_S = 2.0  # a warmup call longer than this: time one more call, not --repeats
PEAK_REPEATS = 10  # timed calls of each reference peak, of which the fastest counts


#### Timing, FLOPs, the table, and the device's reference peaks
def sync(device):
    # GPU kernels run asynchronously: wait for them before reading the clock
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure(fn, device, repeats, best=False):
    """(seconds per call, peak memory in bytes) of fn() after one warmup call: the median of the timed
    calls, or with best the fastest (a reference peak is what the device *can* do)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    fn()  # warmup: lazy allocations, kernel selection, Adam's state
    sync(device)
    times = []
    for _ in range(repeats if time.perf_counter() - t0 < SLOW_CALL_S else 1):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux: KiB
    return (min(times) if best else statistics.median(times)), peak


class FlopCount(TorchDispatchMode):
    """Sums torch.utils.flop_counter's formulas over the ops run inside it (torch's own
    FlopCounterMode tracks modules with hooks that R1's double backward trips on)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(fn):
    """FLOPs of one call of fn(): matmuls, convolutions and attention, forward and backward."""
    with FlopCount() as counter:
        fn()
    return counter.total


class Table:
    """The printed table: its header when made, each row (kept in .rows for --json) when added."""

    def __init__(self, device):
        self.rows, self.peaks = [], {}
        mem = "CUDA max allocated in the row" if device.type == "cuda" else "process peak RSS so far"
        print(f"{'what':<42} {'shape':<28} {'time/call':>12} {'throughput':>15} {'GFLOP/s':>9} "
              f"{'of peak':>11} {'memory':>9}  (memory: {mem})")

    def add(self, what, shape, seconds, rate=None, unit="", peak=None, note="", flops=None, vs=None):
        """flops: per call; vs: "matmul" or "conv", the reference peak the row is a share of."""
        gflops = flops / seconds / 1e9 if flops else None
        share = gflops / self.peaks[vs] if gflops and vs in self.peaks else None
        row = {"what": what, "shape": shape, "seconds": seconds, "rate": rate, "unit": unit,
               "gflops": gflops, "share_of_peak": share, "peak_name": vs, "peak_bytes": peak, "note": note}
        self.rows.append(row)
        rate_s = "" if rate is None else f"{rate:,.0f} {unit}" if rate >= 100 else f"{rate:.3g} {unit}"
        gflops_s = f"{gflops:,.1f}" if gflops else ""
        share_s = f"{100 * share:.0f}% {vs}" if share else ""
        mem = f"{peak / 2**30:.2f} GiB" if peak else ""
        print(f"{what:<42} {shape:<28} {seconds * 1e3:>9.1f} ms {rate_s:>15} {gflops_s:>9} {share_s:>11} {mem:>9}  "
              f"{note}", flush=True)
        return row


def bench_peaks(table, device, repeats):
    """GFLOP/s of one large matmul and one 3x3 convolution, measured now: what every hot path is set against."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # what training runs in
    n = 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(device, dtype)
    x = torch.randn(32, 64, 32, 32, device=device, dtype=dtype)
    for name, what, shape, fn, flops in (
            ("matmul", "plain matmul", f"{n}x{n} @ {n}x{n}", lambda: a @ b, 2 * n**3),
            ("conv", "plain 3x3 conv", "B=32 64->64 32x32", lambda: conv(x), 2 * 32 * 64 * 64 * 9 * 32 * 32)):
        with torch.no_grad():
            s, _ = measure(fn, device, max(repeats, PEAK_REPEATS), best=True)
        table.peaks[name] = flops / s / 1e9
        table.add(f"reference: {what}", f"{shape} {str(dtype)[6:]}", s, flops=flops, vs=name,
                  note=f"the {name} peak of this run")


#### The training steps, as train.py runs them
def semantic_vgg(preset):
    """The perceptual loss's network, random: the preset's small classifier, or torchvision's VGG16 at paper scale."""
    if stage_settings("tokenizer", preset).semantic == "classifier":  # train.py's classifier layout
        return losses.VGG16Features(runs.classifier_model(runs.classifier_config(32, preset)))
    return losses.VGG16Features(torchvision.models.vgg16(weights=None))


def stage_settings(stage, preset):
    """A stage's settings, as `python train.py --stage STAGE --preset PRESET` takes them."""
    return config.parse(["--stage", stage, "--preset", preset])[0]


def tokenizer_train_step(x, step, lam, *, model, disc, opt, opt_d, perceptual, args):
    """One step of train.py's tokenizer loop on batch x, on one process: G's step, then D's once the
    GAN is on (args: train.py's settings) -> (the log line's terms, the adaptive weight lambda now held).
    train_tokenizer's loop body, line for line: tests/test_bench.py checks equal weights after equal steps."""
    precision, accum = PRECISIONS[args.precision], args.grad_accum
    gan = losses.gan_on(step, args.disc_start, args.disc_weight)
    held = None if lam is None or (step - args.disc_start) % args.lambda_every == 0 else lam
    opt.zero_grad(set_to_none=True)
    fakes, terms = [], {}
    for xm in x.chunk(accum):
        with autocast(x.device, precision):
            x_hat, _, vq_terms = model(xm)
            loss, terms_m = losses.tokenizer_objective(
                xm, x_hat, vq_terms, perceptual=perceptual, perceptual_weight=args.perceptual_weight,
                disc=disc if gan else None, last_layer=model.last_layer(), disc_weight=args.disc_weight, lam=held)
        (loss / accum).backward()
        fakes.append(x_hat.detach())
        terms = {name: terms.get(name, 0.0) + v.detach() / accum for name, v in terms_m.items()}
    opt.step()
    if gan:
        lam = terms["lam"]
        r1 = args.disc_r1 * args.r1_every if step % args.r1_every == 0 else 0.0
        with autocast(x.device, precision):
            d_total, d_loss = losses.discriminator_loss(disc, x, torch.cat(fakes), r1)
            opt_d.zero_grad(set_to_none=True)
            d_total.backward()
            opt_d.step()
        terms["d"] = d_loss.detach()
    return terms, lam


def transformer_train_step(model, opt, tokens, labels, precision="auto", accum=1):
    """One step of train.py's transformer loop on one process: the loss of Sec. 3.1 on each of `accum`
    micro-batches, backward, clipping at 1, AdamW -> the mean loss. Checked equal by tests/test_bench.py."""
    opt.zero_grad(set_to_none=True)
    loss = 0.0
    for sm, ym in zip(tokens.chunk(accum), labels.chunk(accum) if labels is not None else [None] * accum):
        with autocast(tokens.device, precision):  # what machine.autocast takes: "auto", a dtype, None
            _, loss_m = model(sm, ym, targets=sm)
        (loss_m / accum).backward()
        loss += loss_m.detach() / accum
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss


def tokenizer_steps(preset, B, device, phase=1, precision="auto", gan=True):
    """A tokenizer stage's training step on random images: phase 1 (gan: the GAN on from the first step,
    else never) or phase 2 (frozen encoder and codebook, SeQ-GAN's decoder, alpha 0) -> (run(n) for n
    steps, the model, the steps in one cycle of the preset's lazy R1 and lambda)."""
    args = stage_settings("tokenizer" if phase == 1 else "decoder", preset)
    model = vq.Tokenizer(vq.TokenizerConfig(**vq.TOKENIZER_PRESETS[preset]))
    if phase == 2:
        model = vq.enhance_decoder(model, "seqgan")
        for p in list(model.encoder.parameters()) + list(model.quantizer.parameters()):
            p.requires_grad_(False)
    model = model.to(device)
    perceptual = losses.SemanticPerceptualLoss(semantic_vgg(preset), 1.0 if phase == 1 else 0.0).to(device)
    disc = losses.Discriminator(args.disc_ndf, args.disc_layers, args.disc_norm).to(device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.5, 0.9))
    x = torch.rand(B, 3, model.cfg.image_size, model.cfg.image_size, device=device) * 2 - 1  # (B, 3, H, W)
    args.disc_start = 0 if gan else 10**9
    args.precision = precision  # a name of machine.PRECISIONS
    lam = [None]  # the adaptive weight held between recomputations (lazy lambda)

    def run(n):  # steps 0 to n - 1; over a whole cycle, their mean is the average step
        for i in range(n):
            lam[0] = tokenizer_train_step(x, i, lam[0], model=model, disc=disc, opt=opt, opt_d=opt_d,
                                          perceptual=perceptual, args=args)[1]

    cycle = max(args.r1_every, args.lambda_every) if args.disc_r1 > 0 else args.lambda_every
    return run, model, cycle


def random_transformer(kind, preset, N, device, K=1024, num_classes=0):
    cfg = transformer.TransformerConfig(K=K, seq_len=N, num_classes=num_classes,
                                        **transformer.TRANSFORMER_PRESETS[preset])
    return runs.build_transformer(kind, cfg).to(device)


def transformer_steps(kind, preset, B, N, K, num_classes, device, precision="auto"):
    """One AdamW step of the AR ("ar") or MaskGIT ("nar") transformer on random tokens -> (step(), the model)."""
    model = random_transformer(kind, preset, N, device, K, num_classes).train()
    opt = model.configure_optimizer(weight_decay=0.01, lr=1e-4, betas=(0.9, 0.95))
    s = torch.randint(K, (B, N), device=device)  # (B, N) token ids
    y = torch.randint(num_classes, (B,), device=device) if num_classes else None
    return lambda: transformer_train_step(model, opt, s, y, precision), model


#### The rows: tokenizer, its profile, transformer steps, nearest-code search, sampling
def bench_tokenizer(table, preset, B, device, repeats):
    run, model, cycle = tokenizer_steps(preset, B, device)
    cfg, H, params = model.cfg, model.cfg.image_size, num_params(model) / 1e6
    shape = f"B={B} {H}x{H} -> {cfg.latent_size}x{cfg.latent_size}, K={cfg.K}"
    flops = count_flops(lambda: run(cycle)) / cycle
    s, peak = measure(lambda: run(cycle), device, repeats)
    s /= cycle
    note = "incl. VGG, GAN, D" + (f"; mean of a {cycle}-step lazy R1/lambda cycle" if cycle > 1 else "")
    table.add(f"tokenizer train step ({preset}, {params:.2f}M)", shape, s, B / s, "img/s", peak, note, flops, "conv")
    model.eval()
    x = torch.rand(B, 3, H, H, device=device) * 2 - 1
    with torch.no_grad(), autocast(device):
        z_q = model.encode(x)[0]
        for name, fn in (("encode", lambda: model.encode(x)), ("decode", lambda: model.decode(z_q))):
            s, peak = measure(fn, device, repeats)
            table.add(f"tokenizer {name} ({preset})", shape, s, B / s, "img/s", peak, flops=count_flops(fn), vs="conv")


def profile_tokenizer(table, preset, B, device, repeats, precision):
    """A phase-1 training step term by term, each timed on its own (bf16 autocast keeps the quantizer and
    the VGG in fp32, as train.py): the GAN's rows are what a step adds once it starts, R1 and lambda averaged
    over their lazy cycle (Deviation 14); then the parts' sums beside whole steps, before and after the GAN."""
    recipe = stage_settings("tokenizer", preset)
    model = vq.Tokenizer(vq.TokenizerConfig(**vq.TOKENIZER_PRESETS[preset])).to(device)
    vgg = semantic_vgg(preset).to(device)
    disc = losses.Discriminator(recipe.disc_ndf, recipe.disc_layers, recipe.disc_norm).to(device)
    opt, opt_d = (torch.optim.Adam(m.parameters(), lr=1e-4, betas=(0.5, 0.9)) for m in (model, disc))
    x = torch.rand(B, 3, model.cfg.image_size, model.cfg.image_size, device=device) * 2 - 1  # (B, 3, H, W)
    with torch.no_grad(), autocast(device, PRECISIONS[precision]):           # fixed inputs of each part
        z_hat = model.encoder(x).float()                                     # (B, nz, h, w)
        z_q = model.quantizer(z_hat)[0]
        x_hat = model.decoder(z_q).float()                                   # (B, 3, H, W)

    def leaf(t):
        return t.detach().clone().requires_grad_(True)

    def backward_from(out):
        out.float().sum().backward()  # a gradient of ones: the backward pass's cost, whatever the loss

    def d_step(r1):
        opt_d.zero_grad(set_to_none=True)
        losses.discriminator_loss(disc, x, x_hat, r1)[0].backward()
        opt_d.step()

    @functools.cache
    def lambda_graph():
        # lambda's two gradients at G's last layer come from a graph built once, in the first (warmup) call:
        # without the forward passes that the step makes anyway
        x_hat_g = model.decoder(z_q.detach())
        rec = (x - x_hat_g).abs().mean() + sum(f.pow(2).mean() for f in vgg(x_hat_g).values())
        return rec, losses.hinge_g_loss(disc(x_hat_g))

    for p in model.parameters():
        p.grad = torch.ones_like(p)  # for "Adam on E, codebook, G": its cost does not depend on them
    parts = {  # name: (the call, how often per step after the GAN starts, counted before it starts)
        "encoder E, fwd+bwd": (lambda: backward_from(model.encoder(x)), 1, True),
        "quantizer (Eq. 1, 2, entropy), fwd+bwd": (lambda: backward_from(model.quantizer(leaf(z_hat))[0]), 1, True),
        "decoder G, fwd+bwd": (lambda: backward_from(model.decoder(leaf(z_q))), 1, True),
        "VGG on x (target, no grad)": (torch.no_grad()(lambda: vgg(x)), 1, True),
        "VGG on x_hat, fwd+bwd": (lambda: backward_from(sum(f.sum() for f in vgg(leaf(x_hat)).values())), 1, True),
        "Adam on E, codebook, G": (opt.step, 1, True),
        "GAN: D on x_hat for G, fwd+bwd": (lambda: backward_from(losses.hinge_g_loss(disc(leaf(x_hat)))), 1, False),
        f"GAN: lambda, 1/{recipe.lambda_every} steps": (
            lambda: losses.adaptive_weight(*lambda_graph(), model.last_layer()), 1 / recipe.lambda_every, False),
        "GAN: D's step (real, fake, hinge, Adam)": (lambda: d_step(0.0), 1, False),
        f"GAN: R1 on top, 1/{recipe.r1_every} steps": (
            lambda: d_step(recipe.disc_r1 * recipe.r1_every), 1 / recipe.r1_every, False),
    }
    before = after = flops_before = flops_after = d_step_s = d_step_flops = 0.0
    for name, (fn, share, pre) in parts.items():
        def call():
            with autocast(device, PRECISIONS[precision]):
                fn()
        s, _ = measure(call, device, repeats)
        flops = count_flops(call)
        if name.startswith("GAN: R1"):  # this row times D's step with R1: what R1 adds is the difference
            s, flops = s - d_step_s, flops - d_step_flops
        if name.startswith("GAN: D's step"):
            d_step_s, d_step_flops = s, flops
        table.add(f"  {name}", f"B={B}, {precision}", s * share, flops=flops * share or None, vs="conv",
                  note="" if share == 1 else f"{s * 1e3:.1f} ms every {round(1 / share)}th step")
        after, flops_after = after + s * share, flops_after + flops * share
        if pre:
            before, flops_before = before + s, flops_before + flops
    for gan, parts_s, parts_flops in ((False, before, flops_before), (True, after, flops_after)):
        run, _, cycle = tokenizer_steps(preset, B, device, precision=precision, gan=gan)
        s, _ = measure(lambda: run(cycle), device, repeats)
        table.add(f"  whole step, {'after' if gan else 'before'} the GAN starts", f"B={B}, {precision}", s / cycle,
                  flops=parts_flops, vs="conv", note=f"the parts above sum to {parts_s * 1e3:.1f} ms")


def command_flops(preset, device, classifier_trains=False):
    """The training FLOPs of `python train.py --stage tokenizer` on a preset: each phase's step (before and
    after the GAN starts, the lazy cycle averaged) times its steps, plus the classifier's steps when the
    stage trains one first; evaluation, grids and Eq. 3's units left out. -> {part: FLOPs}"""
    recipe = stage_settings("tokenizer", preset)
    out = {}
    for gan, n in ((False, min(recipe.disc_start, recipe.steps)), (True, max(0, recipe.steps - recipe.disc_start))):
        run, _, cycle = tokenizer_steps(preset, recipe.batch_size, device, precision="fp32", gan=gan)
        out[f"{n} steps {'after' if gan else 'before'} the GAN starts"] = count_flops(lambda: run(cycle)) / cycle * n
    if classifier_trains:
        cls = stage_settings("classifier", preset)
        net = runs.classifier_model(runs.classifier_config(32, preset)).to(device)
        x = torch.rand(cls.batch_size, 3, recipe.image_size, recipe.image_size, device=device) * 2 - 1
        y = torch.randint(32, (cls.batch_size,), device=device)
        flops = count_flops(lambda: torch.nn.functional.cross_entropy(net(x), y).backward())
        out[f"{cls.steps} classifier steps"] = flops * cls.steps
    return out


def bench_transformer_training(table, preset, B, device, repeats, N=64, K=128, num_classes=32):
    for kind, name in (("ar", "AR (GPT)"), ("nar", "MaskGIT")):
        step, model = transformer_steps(kind, preset, B, N, K, num_classes, device)
        flops = count_flops(step)
        s, peak = measure(step, device, repeats)
        table.add(f"{name} train step ({preset}, {num_params(model) / 1e6:.2f}M)", f"B={B} N={N} K={K}", s,
                  B / s, "seq/s", peak, "fwd+bwd+AdamW", flops, "matmul")


def bench_nearest_code(table, device, repeats, M=16384, K=1024, nz=256):
    """Eq. 1's search against a plain matmul of its shape."""
    q = vq.VectorQuantizer(K, nz).to(device)
    z = torch.randn(M, nz, device=device)  # (M, nz), the features of 64 images of 16x16 tokens
    e = q.codebook.weight.detach()  # (K, nz)
    with torch.no_grad():  # fp32 both, as in the quantizer (it switches autocast off)
        t_mm, _ = measure(lambda: z @ e.t(), device, repeats)  # (M, K)
        t_nn, peak = measure(lambda: q.distances(z).argmin(1), device, repeats)  # (M,)
    shape = f"M={M // 1024}k x nz={nz} . K={K}"
    table.add("plain matmul z @ e^T (reference)", shape, t_mm, M / t_mm, "vec/s")
    ok = "OK" if t_nn <= 1.5 * t_mm else "SLOWER than target"
    table.add("nearest-code search (distances+argmin)", shape, t_nn, M / t_nn, "vec/s", peak,
              f"{t_nn / t_mm:.2f}x the matmul (target <= 1.5x: {ok})")


def maskgit_against_ar(table, preset, b, device, repeats, N=256, ar_time=None):
    """MaskGIT's 12 steps against cached AR for b images of N tokens -> MaskGIT's speed-up."""
    if ar_time is None:
        gpt = random_transformer("ar", preset, N, device).eval()  # eval: no dropout
        with autocast(device):
            ar_time, peak = measure(lambda: gpt.generate(None, num_samples=b), device, repeats)
        table.add(f"AR sampling ({preset}), KV cache", f"B={b} N={N} K=1024", ar_time, b * N / ar_time, "tok/s", peak)
    maskgit = random_transformer("nar", preset, N, device).eval()
    with autocast(device):
        s, peak = measure(lambda: maskgit.generate(None, num_samples=b, steps=12), device, repeats)
    table.add(f"MaskGIT sampling ({preset}), 12 steps", f"B={b} N={N} K=1024", s, b / s, "img/s", peak,
              f"{ar_time / s:.2f}x the speed of AR with KV cache, {b / ar_time:.1f} img/s (target >= 10x)")
    return ar_time / s


def bench_sampling(table, preset, B, device, repeats):
    """AR with and without the KV cache at N = 64 and 256; then MaskGIT against cached AR at batch B
    and for one image, where AR's 256 sequential steps weigh the most."""
    for N in (64, 256):
        gpt = random_transformer("ar", preset, N, device).eval()
        times = {}
        for use_cache in (True, False):
            with autocast(device):
                s, peak = measure(lambda: gpt.generate(None, num_samples=B, use_cache=use_cache), device, repeats)
            times[use_cache] = s
            note = "" if use_cache else (f"KV cache {times[False] / times[True]:.1f}x faster"
                                         + (" (target >= 5x)" if N == 256 else ""))
            table.add(f"AR sampling ({preset}), {'KV cache' if use_cache else 'no cache'}", f"B={B} N={N} K=1024",
                      s, B * N / s, "tok/s", peak, note)
    for b in sorted({B, 1}, reverse=True):  # at batch B, the cached AR time at N = 256 above is the reference
        maskgit_against_ar(table, preset, b, device, repeats, ar_time=times[True] if b == B else None)


#### The GPU check (--gpu-check, docs/scaling.md) and the command line
# Dense bf16 tensor-core peaks (TFLOPS, without sparsity) from NVIDIA's datasheets, matched against
# torch.cuda.get_device_name(), the longer names first ("H100 PCIe" before "H100").
VENDOR_BF16_TFLOPS = {
    "H200": (989.0, "NVIDIA H200 datasheet: BF16 Tensor Core 1,979 TFLOPS with sparsity, 989 dense"),
    "H100 SXM": (989.0, "NVIDIA H100 datasheet: SXM BF16 Tensor Core 1,979 TFLOPS with sparsity, 989 dense"),
    "H100 PCIe": (756.0, "NVIDIA H100 datasheet: PCIe BF16 Tensor Core 1,513 TFLOPS with sparsity, 756 dense"),
    "H100": (989.0, "NVIDIA H100 datasheet (SXM): BF16 Tensor Core 989 TFLOPS dense"),
    "A100": (312.0, "NVIDIA A100 datasheet: BF16 Tensor Core 312 TFLOPS dense (624 with sparsity)"),
    "L40S": (362.0, "NVIDIA L40S datasheet: BF16 Tensor Core 362 TFLOPS dense (733 with sparsity)"),
    "L4": (121.0, "NVIDIA L4 datasheet: BF16 Tensor Core 121 TFLOPS dense (242 with sparsity)"),
    "A10": (125.0, "NVIDIA A10 datasheet: BF16 Tensor Core 125 TFLOPS dense (250 with sparsity)"),
}


def run_cuda_tests(section):
    """The fast suite with SEQGAN_TEST_DEVICE=cuda: the tests that take a device run on the GPU."""
    t0 = time.time()
    env = {**os.environ, "SEQGAN_TEST_DEVICE": "cuda"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", "tests"]
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        returncode, stdout = out.returncode, out.stdout
    except subprocess.TimeoutExpired as e:  # the other sections still run
        partial = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        returncode, stdout = -1, partial + "\ntimed out after 240 s"
    summary = (stdout.strip().splitlines() or ["(no output)"])[-1]
    failed = [line for line in stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    print(f"tests on CUDA: {summary} ({time.time() - t0:.0f} s)", flush=True)
    for line in failed[:20]:
        print("  " + line)
    section("tests", {"returncode": returncode, "summary": summary, "failed": failed})


def time_stage(table, name, B, device, peak_tflops, steps):
    """`steps` bf16 training steps of one paper-scale stage on random data -> its row, with its MFU."""
    if name.startswith("tokenizer"):
        run, _, _ = tokenizer_steps("imagenet256", B, device, phase=1 if "1" in name else 2)
    else:
        one, _ = transformer_steps("ar" if name.startswith("AR") else "nar", "base", B, 256, 1024, 1000, device)

        def run(n):
            return [one() for _ in range(n)]
    flops = count_flops(lambda: run(1))
    s, peak = measure(lambda: run(steps), device, 1)
    s /= steps
    mfu = flops / s / (peak_tflops * 1e12) if peak_tflops else None
    row = table.add(f"{name} (bf16)", f"B={B}, {steps} steps", s, B / s, "img/s", peak,
                    f"MFU {100 * mfu:.1f}%" if mfu is not None else "MFU: peak unknown", flops)
    return {**row, "mfu": mfu}


def torchrun_two_gpus(section):
    """The tiny AR stage on 2 GPUs through torchrun (NCCL), when two are visible."""
    if torch.cuda.device_count() < 2:
        section("torchrun", {"skipped": f"{torch.cuda.device_count()} GPU visible"})
        print("torchrun: skipped (one GPU)")
        return
    runs_dir = tempfile.mkdtemp(prefix="seqgan-gpucheck-")
    common = ["--runs-dir", runs_dir, "--n-train", "256", "--n-val", "64", "--steps", "20", "--batch-size", "16"]
    t0 = time.time()
    first = subprocess.run([sys.executable, "train.py", "--stage", "tokenizer", "--semantic", "none", *common],
                           cwd=ROOT, capture_output=True, text=True)
    out = subprocess.run(["torchrun", "--standalone", "--nproc_per_node=2", "train.py", "--stage", "ar", *common],
                         cwd=ROOT, capture_output=True, text=True) if first.returncode == 0 else first
    shutil.rmtree(runs_dir, ignore_errors=True)
    result = {"returncode": out.returncode, "seconds": time.time() - t0,
              "tail": out.stdout[-2000:] + out.stderr[-2000:]}
    print(f"torchrun --nproc_per_node=2 (NCCL), tiny AR: exit {out.returncode} in {result['seconds']:.0f} s")
    section("torchrun", result)


def gpu_check(args):
    """The fast tests on CUDA, each paper-scale stage's MFU, MaskGIT against AR at B = 1, a 2-GPU torchrun;
    the JSON is written after each section, so that a run cut short still reports."""
    if not torch.cuda.is_available():
        raise SystemExit("error: --gpu-check needs a CUDA GPU, and none is visible here: run it on a machine "
                         "with one (python bench.py --gpu-check); on this machine, `python bench.py` times the CPU")
    device = pick_device("cuda")
    name = torch.cuda.get_device_name(device)
    peak_tflops, source = next((v for k, v in VENDOR_BF16_TFLOPS.items() if k in name),
                               (None, f"no dense bf16 peak known for {name!r}: pass --peak-tflops from its datasheet"))
    if args.peak_tflops:
        peak_tflops, source = args.peak_tflops, "--peak-tflops"
    print(f"GPU check on {name}, torch {torch.__version__}; dense bf16 peak: {peak_tflops} TFLOPS ({source})",
          flush=True)
    path, report = args.json or "gpu_check.json", {"device": name, "torch": torch.__version__, "sections": {}}

    def section(key, value):
        report["sections"][key] = value
        with open(path, "w") as f:
            json.dump(report, f, indent=1, default=str)

    section("peak", {"tflops": peak_tflops, "source": source})
    t0 = time.time()
    if not args.skip_tests:
        run_cuda_tests(section)
    table, rows = Table(device), {}
    for stage, B in (("tokenizer phase 1, GAN on", args.gpu_batch), ("tokenizer phase 2", args.gpu_batch),
                     ("AR base", 4 * args.gpu_batch), ("MaskGIT base", 4 * args.gpu_batch)):
        try:
            rows[stage] = time_stage(table, stage, B, device, peak_tflops, args.gpu_steps)
        except torch.cuda.OutOfMemoryError:
            rows[stage] = {"error": f"out of memory at batch {B}: rerun with a smaller --gpu-batch"}
            print(f"{stage}: out of memory at batch {B}", flush=True)
        torch.cuda.empty_cache()
        section("paper_scale", rows)
    speedup = maskgit_against_ar(table, "base", 1, device, args.repeats)
    section("maskgit_vs_ar", {"B": 1, "N": 256, "speedup": speedup, "target": 10.0})
    torchrun_two_gpus(section)
    section("total_seconds", time.time() - t0)
    print(f"GPU check: {time.time() - t0:.0f} s in all -> {path}")
    return report


@one_line_errors
def main(argv=None):
    """Command line entry; argv a list of strings (None: sys.argv). Returns the table's rows."""
    args = get_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.gpu_check:
        return gpu_check(args)
    device = pick_device(args.device)  # TF32 on CUDA, as in training
    if args.profile:  # the default tokenizer's step, term by term, in both precisions
        print(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}; the tiny "
              f"tokenizer's training step, term by term (B={args.tiny_batch_size})")
        table = Table(device)
        bench_peaks(table, device, args.repeats)
        for precision in ("fp32", "bf16"):
            emulated = device.type == "cpu" and precision == "bf16" and not cpu_has_bf16()
            print(f"{precision}:" + (" (this CPU has no native bf16: emulated, slower than fp32)" if emulated else ""))
            profile_tokenizer(table, "tiny", args.tiny_batch_size, device, args.repeats, precision)
        parts = command_flops("tiny", device)
        print(f"the training FLOPs of `python train.py --stage tokenizer`: {sum(parts.values()) / 1e12:.1f} TFLOP ("
              + ", ".join(f"{k}: {v / 1e12:.1f}" for k, v in parts.items()) + "; the shipped classifier: none trained)")
        return table.rows
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}), torch {torch.__version__}")
    table = Table(device)
    t0 = time.time()
    bench_peaks(table, device, args.repeats)
    bench_tokenizer(table, "tiny", args.tiny_batch_size, device, args.repeats)
    if args.preset != "none":  # paper-scale tokenizer batch: the train preset's 8 on CUDA
        bench_tokenizer(table, args.preset, args.batch_size or (8 if cuda else 2), device, args.repeats)
    bench_transformer_training(table, "tiny", args.transformer_batch_size, device, args.repeats)
    bench_nearest_code(table, device, args.repeats)
    bench_sampling(table, args.transformer or ("base" if cuda else "tiny"), args.sample_batch_size, device,
                   args.repeats)
    print(f"total {time.time() - t0:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "device_name": name, "torch": torch.__version__,
                       "peaks_gflops": table.peaks, "rows": table.rows}, f, indent=1)
    return table.rows


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--preset", default="imagenet256", help="paper-scale tokenizer preset to time too ('none': skip)")
    p.add_argument("--batch-size", type=int, default=None, help="its batch (default 2 on the CPU, 8 on CUDA)")
    p.add_argument("--tiny-batch-size", type=int, default=32, help="batch of the tiny tokenizer (its training batch)")
    p.add_argument("--transformer-batch-size", type=int, default=64, help="batch of the tiny transformer steps")
    p.add_argument("--transformer", default=None, help="sampling rows' preset (default tiny on the CPU, base on CUDA)")
    p.add_argument("--sample-batch-size", type=int, default=8, help="images sampled at once (sample.py: 64)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per row after the warmup (median)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--profile", action="store_true", help="only the tiny tokenizer's training step, term by term")
    p.add_argument("--gpu-check", action="store_true", help="CUDA: the tests, paper-scale MFU, MaskGIT vs AR, torchrun")
    p.add_argument("--gpu-batch", type=int, default=16, help="--gpu-check: tokenizer batch (transformers: 4x)")
    p.add_argument("--gpu-steps", type=int, default=20, help="--gpu-check: steps timed per stage")
    p.add_argument("--peak-tflops", type=float, default=None, help="--gpu-check: the GPU's dense bf16 peak, if unknown")
    p.add_argument("--skip-tests", action="store_true", help="--gpu-check: leave out the test suite on CUDA")
    return p


if __name__ == "__main__":
    main()
