"""
Sample images from a trained transformer (Sec. 3.1, "Generation: sampling from generative
transformers"): draw index sequences s with the AR model (raster order, KV cache) or MaskGIT
(iterative decoding), look the codes up in the codebook and decode them with the tokenizer.

    python sample.py                                  # newest tiny AR run -> samples.png
    python sample.py --ckpt runs/tiny-nar --classes 0 1 2 --n 24 --cfg-scale 2
    python sample.py --ckpt runs/tiny-ar --n 1000 --out samples.npz   # uint8 images for FID

Everything is rebuilt from the checkpoints alone: the transformer checkpoint names the tokenizer
checkpoint (path, and hash of its encoder and codebook) it was trained on. `--tokenizer` may point
to that tokenizer's phase-2 run instead: it makes the same tokens and decodes them with the
attention-enhanced decoder (Fig. 8). EMA weights are used when present.
"""

import argparse
import os

import numpy as np
import torch

import train  # checkpoints, tokenizer loading, build_transformer, save_grid: one code path with training


def load_models(ckpt_path, device, tokenizer=None):
    """Transformer checkpoint -> (model in eval mode, kind, tokenizer, checkpoint)."""
    ckpt = train.load_checkpoint(ckpt_path, ("ar", "nar"), "--ckpt")  # a file or a run folder; ar or nar only
    kind = ckpt["kind"]                                               # "ar" (GPT) or "nar" (MaskGIT)
    # rebuilt from the config dict stored in the checkpoint: no preset or flag is needed
    model = train.build_transformer(kind, ckpt["config"])
    model.load_state_dict(ckpt["ema"] if ckpt.get("ema") else ckpt["model"])  # EMA weights when kept (ours)
    # the tokenizer: the path recorded at training time, or --tokenizer (a moved copy, or the
    # phase-2 run of the same tokenizer: same tokens, the attention-enhanced decoder, Fig. 8)
    tok_path = tokenizer or ckpt["tokenizer_path"]
    if not os.path.exists(tok_path):  # checked before any sampling
        raise train.UserError(f"the tokenizer {tok_path} this model was trained on is gone: pass --tokenizer PATH to a copy")
    tok, _, tok_hash = train.load_tokenizer(tok_path, device)  # eval mode; hash of encoder + codebook
    # the tokens must mean the same codes: the hash covers encoder and codebook only, so a phase-2
    # run of the same tokenizer passes (both frozen in phase 2, Fig. 7) and any other tokenizer fails
    if tok_hash != ckpt["tokenizer_hash"]:
        raise train.UserError(
            f"{tok_path} does not make the tokens {ckpt['path']} was trained on (encoder+codebook hash "
            f"{tok_hash[:12]} != {ckpt['tokenizer_hash'][:12]}): pass --tokenizer with that tokenizer or its phase-2 run"
        )
    return model.to(device).eval(), kind, tok, ckpt  # eval: no dropout, no class dropout


def check_args(args, num_classes):
    """Out-of-range flags -> one-line errors that say what is allowed."""
    if args.n < 1:
        raise train.UserError(f"--n must be >= 1, got {args.n}")
    # AR only: top-k and top-p filter the next-token distribution (Sec. 3.2 names both); MaskGIT ignores them
    if args.top_k is not None and args.top_k < 1:
        raise train.UserError(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise train.UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.temperature < 0:
        raise train.UserError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    # guidance: logits = uncond + cfg_scale * (cond - uncond); 1 = plain conditional, 0 = unconditional
    if args.cfg_scale < 0:
        raise train.UserError(f"--cfg-scale must be >= 0, got {args.cfg_scale}")
    # MaskGIT decoding steps (12 in Tables 3 and 4); more steps than tokens is refused in main()
    if args.steps < 1:
        raise train.UserError(f"--steps must be >= 1, got {args.steps}")
    if args.batch_size < 1:
        raise train.UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):  # checked before sampling, not after minutes of it
        raise train.UserError(f"--out {args.out}: the folder {folder} does not exist; create it or pick another --out")
    # labels index the model's class table; row num_classes is the null class (no label), not a real one
    for c in args.classes or []:
        if num_classes == 0:
            raise train.UserError("this model is unconditional: drop --classes")
        if not 0 <= c < num_classes:
            raise train.UserError(f"class label {c} is outside the model's classes 0..{num_classes - 1}")


@torch.no_grad()
def sample(model, kind, tok, labels, args, device):
    """Images (M, 3, H, W) in [-1, 1] for the given labels (or None), in batches."""
    # one generator for all batches: the same --seed, --batch-size and device give the same images
    g = torch.Generator(device=device).manual_seed(args.seed)
    out = []
    for i in range(0, args.n, args.batch_size):
        n = min(args.batch_size, args.n - i)
        y = labels[i : i + n] if labels is not None else None  # (n,) labels, or None: unconditional
        if kind == "ar":
            # AR (Sec. 3.1, VQGAN): raster order with a KV cache, N forward passes of one new token each;
            # temperature, then top-k, then top-p
            s = model.generate(y, num_samples=n, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                               cfg_scale=args.cfg_scale, generator=g)
        else:
            # NAR (Sec. 3.1, MaskGIT): all [MASK] to all decided in `steps` parallel passes, Gumbel choice noise
            # annealed from choice_temperature to 0
            s = model.generate(y, num_samples=n, steps=args.steps, choice_temperature=args.choice_temperature,
                               temperature=args.temperature, cfg_scale=args.cfg_scale, generator=g)
        # s (n, N) -> codebook lookup -> decoder: the index-to-image mapping of Sec. 3.1 ("Generation")
        out.append(tok.decode_indices(s).float().clamp(-1, 1).cpu())  # (n, 3, H, W)
    return torch.cat(out)  # (M, 3, H, W), M = --n


def main(args):
    try:
        device = train.pick_device(args.device, 0)  # no torchrun here: local rank 0
        ckpt_path = args.ckpt or os.path.join(args.runs_dir, "tiny-ar")
        model, kind, tok, ckpt = load_models(ckpt_path, device, args.tokenizer)
        num_classes = model.config.num_classes  # 0 = unconditional: the null class only
        check_args(args, num_classes)           # after loading: the class range comes from the model
        if kind == "nar" and args.steps > model.config.seq_len:  # each MaskGIT step fills >= 1 token
            raise train.UserError(f"--steps {args.steps} is more than the {model.config.seq_len} tokens of an image: "
                                  f"use at most {model.config.seq_len} (MaskGIT fills at least one per step)")
        labels = None
        if num_classes > 0:
            # class-conditional model: every image gets a label, never the null class
            if args.classes:  # the given classes, cycled to n images
                labels = torch.tensor(args.classes, device=device).repeat(args.n // len(args.classes) + 1)[: args.n]
            else:  # random classes from the seed
                labels = torch.randint(num_classes, (args.n,), generator=torch.Generator().manual_seed(args.seed)).to(device)
        images = sample(model, kind, tok, labels, args, device)  # (M, 3, H, W) in [-1, 1]
        if args.out.endswith(".npz"):                            # for FID (metrics.py --samples)
            # [-1, 1] -> [0, 255] uint8, channels last: (M, 3, H, W) -> (M, H, W, 3), as metrics.py reads it
            uint8 = ((images.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
            save = {"images": uint8}  # (M, H, W, 3) uint8
            if labels is not None:
                save["labels"] = labels.cpu().numpy()  # (M,) class of each image (not read by metrics.py)
            np.savez(args.out, **save)
        else:
            train.save_grid(images, args.out, nrow=args.nrow)  # PNG grid, upscaled 2x below 64 px
        print(f"{kind} ({ckpt['path']}): {args.n} images -> {args.out}")
        return args.out
    except train.UserError as e:
        raise SystemExit(f"error: {e}") from None  # one line, no traceback


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # what to sample from: a transformer checkpoint; its tokenizer comes from the checkpoint
    p.add_argument("--ckpt", default=None, help="ar/nar checkpoint or run folder (default runs/tiny-ar)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--tokenizer", default=None, help="override the tokenizer path recorded in the checkpoint")
    p.add_argument("--out", default="samples.png", help=".png grid, or .npz with uint8 images (and labels)")
    p.add_argument("--n", type=int, default=32, help="number of images")
    p.add_argument("--nrow", type=int, default=8, help="images per grid row")
    p.add_argument("--classes", type=int, nargs="*", default=None, help="class labels, cycled (default: random)")
    p.add_argument("--seed", type=int, default=0)  # the labels (when random) and every sampling draw
    # sampling (Sec. 3.1 "Generation"; Sec. 3.2 names top-k/top-p and classifier-free guidance)
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (0 = greedy)")
    # AR only
    p.add_argument("--top-k", type=int, default=None, help="AR: keep the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="AR: nucleus sampling mass in (0, 1]")
    # both models; needs a class-conditional model trained with --class-dropout > 0 (the null class)
    p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance (1 = off, 0 = unconditional)")
    # NAR (MaskGIT) only: 12 steps as in the paper; choice temperature 4.5 is MaskGIT's (DESIGN.md)
    p.add_argument("--steps", type=int, default=12, help="MaskGIT decoding steps")
    p.add_argument("--choice-temperature", type=float, default=4.5, help="MaskGIT Gumbel temperature, annealed to 0")
    # system
    p.add_argument("--batch-size", type=int, default=64)  # images per forward pass; guidance doubles it
    p.add_argument("--device", default="auto")            # auto: the GPU if one is visible, else the CPU
    return p


if __name__ == "__main__":
    main(get_parser().parse_args())
