"""
Speed and memory of every hot path of SeQ-GAN, measured in one run on one device.

    python bench.py                                   # auto device (README, "Speed": its figures and time)
    python bench.py --device cuda --batch-size 8 --json bench.json

One table, one row per figure: what, shape, median time per call, throughput, peak memory.
`--json PATH` writes the same rows (and the device) as JSON. Rows:
  - tokenizer training step (Sec. 3.4 phase 1: L1 + L_per^alpha (Eq. 3) + VQ (Eq. 2) + GAN,
    backward, Adam, then the discriminator's step), for `tiny` and a paper-scale preset;
  - tokenizer encode (E + nearest code, Eq. 1) and decode (G) images/s, both presets;
  - nearest-code search (vq.VectorQuantizer.distances + argmin) against a plain matmul of the
    same shape, K = 1024 codes of nz = 256 for 16k feature vectors; target: at most 1.5x;
  - AR sampling tokens/s with and without the KV cache at N = 64 and 256; target: >= 5x at 256;
  - MaskGIT (12 steps) against AR with the KV cache, images/s, same model, N = 256, at the
    sampling batch and for one image (B = 1). MaskGIT's
    advantage (the paper's Sec. 3.1 motivation; target >= 10x) holds where one AR step costs
    launch and memory latency, not arithmetic (a GPU); on a CPU both are arithmetic-bound and
    MaskGIT's 12 passes over N tokens cost more than AR's N single-token passes.

Timing: one warmup call, then the median of --repeats calls (one call when a call takes more
than 2 s); CUDA is synchronized around every call. Mixed precision as in train.py: bf16 autocast
on CUDA (the quantizer in fp32), none on the CPU. Peak memory: on CUDA max_memory_allocated
during the row; on the CPU the process's peak resident set so far (getrusage), which only grows.
Weights are random: speed does not depend on them (the VGG16 is torchvision's architecture
without its ImageNet weights, so nothing is downloaded).

Shape legend: B batch, H x W image, h x w latent grid, N = h*w tokens, K codebook size,
nz code dimension, M feature vectors searched at once.
"""

import argparse
import json
import resource
import statistics
import time

import torch
import torchvision

import losses
import metrics
import train  # the tokenizer's training steps: generator_step and discriminator_step
import transformer
import vq
from machine import UserError, autocast, num_params, pick_device

# ------------------------------------------------------------------------------------------
#### Timing and memory
# ------------------------------------------------------------------------------------------

SLOW_CALL_S = 2.0  # a warmup call longer than this: time one more call, not --repeats


def sync(device):
    # GPU kernels run asynchronously: wait for them before reading the clock
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure(fn, device, repeats):
    """(median seconds per call, peak memory in bytes) of fn() after one warmup call."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    fn()  # warmup: lazy allocations, kernel selection, Adam's state
    sync(device)
    n = repeats if time.perf_counter() - t0 < SLOW_CALL_S else 1
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return statistics.median(times), peak


class Table:
    """Rows of (what, shape, seconds per call, throughput, peak memory); printed and as JSON."""

    def __init__(self, device):
        self.device, self.rows = device, []

    def add(self, what, shape, seconds, rate=None, unit="", peak=None, note=""):
        row = {"what": what, "shape": shape, "seconds": seconds, "rate": rate, "unit": unit,
               "peak_bytes": peak, "note": note}
        self.rows.append(row)
        print(self.format(row), flush=True)

    @staticmethod
    def format(row):
        r = row["rate"]
        rate = "" if r is None else f"{r:,.0f} {row['unit']}" if r >= 100 else f"{r:.3g} {row['unit']}"
        peak = f"{row['peak_bytes'] / 2**30:.2f} GiB" if row["peak_bytes"] else ""
        return f"{row['what']:<44} {row['shape']:<30} {row['seconds'] * 1e3:>10.1f} ms {rate:>16} {peak:>9}  {row['note']}"

    def header(self):
        mem = "CUDA max allocated in the row" if self.device.type == "cuda" else "process peak RSS so far"
        print(f"{'what':<44} {'shape':<30} {'time/call':>13} {'throughput':>16} {'memory':>9}  (memory: {mem})")


# ------------------------------------------------------------------------------------------
#### Tokenizer: training step, encode, decode
# ------------------------------------------------------------------------------------------


def semantic_vgg(preset):
    """The perceptual loss's network with random weights: speed is the same as with trained ones."""
    net = losses.SmallVGG16(32) if preset == "tiny" else torchvision.models.vgg16(weights=None)
    return losses.VGG16Features(net)


def bench_tokenizer(table, preset, B, device, repeats):
    cfg = vq.TokenizerConfig(**vq.TOKENIZER_PRESETS[preset])
    model = vq.Tokenizer(cfg).to(device)
    perceptual = losses.SemanticPerceptualLoss(semantic_vgg(preset), alpha=1.0).to(device)
    recipe = train.TRAIN_PRESETS[preset]  # the preset's PatchGAN (tiny: no norm, R1; paper scale: VQGAN's)
    disc = losses.Discriminator(recipe["disc_ndf"], recipe["disc_layers"], recipe["disc_norm"]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.5, 0.9))
    # phase 1 after disc_start: the whole objective of losses.py, adaptive weight included
    objective = lambda x, x_hat, vq_terms: losses.tokenizer_objective(  # noqa: E731
        x, x_hat, vq_terms, perceptual, recipe["tokenizer"]["perceptual_weight"], disc, model.last_layer(),
        recipe["tokenizer"]["disc_weight"])
    counter = metrics.CodeCounter(cfg.K)
    x = torch.rand(B, 3, cfg.image_size, cfg.image_size, device=device) * 2 - 1  # (B, 3, H, W)

    def train_step():  # train.py's two steps: the generator's, then D's
        _, x_hat = train.generator_step(model, opt, objective, x, 1, 1, 1, counter)
        with autocast(device):
            train.discriminator_step(disc, opt_d, x, x_hat, recipe["disc_r1"])

    H, n = cfg.image_size, cfg.latent_size
    params = num_params(model) / 1e6
    shape = f"B={B} {H}x{H} -> {n}x{n}, K={cfg.K}"
    s, peak = measure(train_step, device, repeats)
    table.add(f"tokenizer train step ({preset}, {params:.1f}M)", shape, s, B / s, "img/s", peak, "incl. VGG, GAN, D step")
    model.eval()
    with torch.no_grad():

        def encode():
            with autocast(device):
                return model.encode(x)

        s, peak = measure(encode, device, repeats)
        table.add(f"tokenizer encode ({preset})", shape, s, B / s, "img/s", peak)
        z_q = encode()[0]

        def decode():
            with autocast(device):
                return model.decode(z_q)

        s, peak = measure(decode, device, repeats)
        table.add(f"tokenizer decode ({preset})", shape, s, B / s, "img/s", peak)
    del model, perceptual, disc, opt, opt_d


# ------------------------------------------------------------------------------------------
#### Nearest-code search (Eq. 1) against a plain matmul of the same shape
# ------------------------------------------------------------------------------------------


def bench_nearest_code(table, device, repeats, M=16384, K=1024, nz=256):
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


# ------------------------------------------------------------------------------------------
#### Sampling: AR with and without the KV cache, MaskGIT against AR
# ------------------------------------------------------------------------------------------


def sampler(Model, preset, N, device, K=1024):
    cfg = transformer.TransformerConfig(vocab_size=K, seq_len=N, num_classes=0, **transformer.TRANSFORMER_PRESETS[preset])
    return Model(cfg).to(device).eval()  # eval: no dropout


def bench_sampling(table, preset, B, device, repeats):
    ar_time = {}
    for N in (64, 256):
        gpt = sampler(transformer.GPT, preset, N, device)
        times = {}
        for use_cache in (True, False):
            with autocast(device):
                s, peak = measure(lambda: gpt.generate(None, num_samples=B, use_cache=use_cache), device, repeats)
            times[use_cache] = s
            note = f"KV cache {times[False] / times[True]:.1f}x faster" + (" (target >= 5x)" if N == 256 else "") if not use_cache else ""
            table.add(f"AR sampling ({preset}), {'KV cache' if use_cache else 'no cache'}", f"B={B} N={N} K=1024",
                      s, B * N / s, "tok/s", peak, note)
        if N == 256:
            ar_time[B] = times[True]  # cached AR at N = 256, batch B: MaskGIT's reference below
        del gpt
    # The wording is "a 256-token image": time MaskGIT against cached AR at the batch above
    # and for one image (B = 1), where AR's 256 sequential steps weigh the most.
    N = 256
    maskgit = sampler(transformer.MaskGIT, preset, N, device)
    for b in sorted({B, 1}, reverse=True):
        if b not in ar_time:  # cached AR at this batch (the loop above timed batch B only)
            gpt = sampler(transformer.GPT, preset, N, device)
            with autocast(device):
                ar_time[b], peak = measure(lambda: gpt.generate(None, num_samples=b), device, repeats)
            table.add(f"AR sampling ({preset}), KV cache", f"B={b} N={N} K=1024", ar_time[b], b * N / ar_time[b],
                      "tok/s", peak)
            del gpt
        with autocast(device):
            s, peak = measure(lambda: maskgit.generate(None, num_samples=b, steps=12), device, repeats)
        table.add(f"MaskGIT sampling ({preset}), 12 steps", f"B={b} N={N} K=1024", s, b / s, "img/s", peak,
                  f"{ar_time[b] / s:.2f}x the speed of AR with KV cache, {b / ar_time[b]:.1f} img/s (target >= 10x)")


# ------------------------------------------------------------------------------------------
#### main
# ------------------------------------------------------------------------------------------


def main(argv=None):
    """Command line entry; argv a list of strings (None: sys.argv). Returns the table's rows."""
    args = get_parser().parse_args(argv)
    try:
        device = pick_device(args.device)  # TF32 on CUDA, as in training
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    batch = args.batch_size or (8 if cuda else 2)  # paper-scale tokenizer batch (train preset: 8)
    tf = args.transformer or ("base" if cuda else "tiny")
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}), torch {torch.__version__}")
    table = Table(device)
    table.header()
    t0 = time.time()
    bench_tokenizer(table, "tiny", args.tiny_batch_size, device, args.repeats)
    if args.preset != "none":
        bench_tokenizer(table, args.preset, batch, device, args.repeats)
    bench_nearest_code(table, device, args.repeats)
    bench_sampling(table, tf, args.sample_batch_size, device, args.repeats)
    print(f"total {time.time() - t0:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "device_name": name, "torch": torch.__version__, "rows": table.rows}, f, indent=1)
    return table.rows


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--preset", default="imagenet256", help="paper-scale tokenizer preset to time too ('none': skip)")
    p.add_argument("--batch-size", type=int, default=None, help="its batch (default 2 on the CPU, 8 on CUDA)")
    p.add_argument("--tiny-batch-size", type=int, default=32, help="batch of the tiny tokenizer (its training batch)")
    p.add_argument("--transformer", default=None, help="transformer preset for sampling (default tiny on the CPU, base on CUDA)")
    p.add_argument("--sample-batch-size", type=int, default=8,
                   help="images sampled at once (sample.py: 64; the cached AR step is latency-bound at small B)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per row after the warmup (median)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    return p


if __name__ == "__main__":
    main()
