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

import runs  # rebuilding the transformer and its tokenizer from checkpoints, sampling, grids
from machine import UserError, pick_device


def check_args(args, num_classes):
    """Out-of-range flags -> one-line errors that say what is allowed."""
    if args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")
    # AR only: top-k and top-p filter the next-token distribution (Sec. 3.2 names both); MaskGIT ignores them
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.temperature < 0:
        raise UserError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    # guidance: logits = uncond + cfg_scale * (cond - uncond); 1 = plain conditional, 0 = unconditional
    if args.cfg_scale < 0:
        raise UserError(f"--cfg-scale must be >= 0, got {args.cfg_scale}")
    # MaskGIT decoding steps (12 in Tables 3 and 4); more steps than tokens is refused in main()
    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):  # checked before sampling, not after minutes of it
        raise UserError(f"--out {args.out}: the folder {folder} does not exist; create it or pick another --out")
    # labels index the model's class table; row num_classes is the null class (no label), not a real one
    for c in args.classes or []:
        if num_classes == 0:
            raise UserError("this model is unconditional: drop --classes")
        if not 0 <= c < num_classes:
            raise UserError(f"class label {c} is outside the model's classes 0..{num_classes - 1}")


def sampling_kwargs(kind, args):
    """The keyword arguments of GPT.generate (kind "ar") or MaskGIT.generate ("nar") from the flags."""
    if kind == "ar":
        # AR (Sec. 3.1, VQGAN): raster order with a KV cache; temperature, then top-k, then top-p
        return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, cfg_scale=args.cfg_scale)
    # NAR (Sec. 3.1, MaskGIT): all [MASK] to all decided in `steps` parallel passes, Gumbel choice
    # noise annealed from choice_temperature to 0
    return dict(steps=args.steps, choice_temperature=args.choice_temperature, temperature=args.temperature,
                cfg_scale=args.cfg_scale)


def main(argv=None):
    """Command line entry; argv a list of strings (None: sys.argv). Returns the output path.
    User mistakes end as one-line SystemExit("error: ..."), without a traceback."""
    args = get_parser().parse_args(argv)
    try:
        device = pick_device(args.device)  # no torchrun here: local rank 0
        ckpt_path = args.ckpt or os.path.join(args.runs_dir, "tiny-ar")
        # the transformer (EMA weights when kept) and the tokenizer it was trained on, hash-checked
        model, kind, tok, ckpt = runs.load_transformer(ckpt_path, device, args.tokenizer)
        num_classes = model.config.num_classes  # 0 = unconditional: the null class only
        check_args(args, num_classes)           # after loading: the class range comes from the model
        if kind == "nar" and args.steps > model.config.seq_len:  # each MaskGIT step fills >= 1 token
            raise UserError(f"--steps {args.steps} is more than the {model.config.seq_len} tokens of an image: "
                                  f"use at most {model.config.seq_len} (MaskGIT fills at least one per step)")
        labels = None
        if num_classes > 0:
            # class-conditional model: every image gets a label, never the null class
            if args.classes:  # the given classes, cycled to n images
                labels = torch.tensor(args.classes, device=device).repeat(args.n // len(args.classes) + 1)[: args.n]
            else:  # random classes from the seed
                labels = torch.randint(num_classes, (args.n,), generator=torch.Generator().manual_seed(args.seed)).to(device)
        # one generator for all batches: the same --seed, --batch-size and device give the same images
        g = torch.Generator(device=device).manual_seed(args.seed)
        images = runs.sample_images(model, tok, args.n, labels, g, args.batch_size,
                                    **sampling_kwargs(kind, args))  # (M, 3, H, W) in [-1, 1]
        if args.out.endswith(".npz"):                            # for FID (metrics.py --samples)
            # [-1, 1] -> [0, 255] uint8, channels last: (M, 3, H, W) -> (M, H, W, 3), as metrics.py reads it
            uint8 = ((images.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
            save = {"images": uint8}  # (M, H, W, 3) uint8
            if labels is not None:
                save["labels"] = labels.cpu().numpy()  # (M,) class of each image (not read by metrics.py)
            np.savez(args.out, **save)
        else:
            runs.save_grid(images, args.out, nrow=args.nrow)  # PNG grid, upscaled 2x below 64 px
        print(f"{kind} ({ckpt['path']}): {args.n} images -> {args.out}")
        return args.out
    except UserError as e:
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
    # NAR (MaskGIT) only: 12 steps as in the paper (Tables 3, 4); choice temperature 4.5 is MaskGIT's
    p.add_argument("--steps", type=int, default=12, help="MaskGIT decoding steps")
    p.add_argument("--choice-temperature", type=float, default=4.5, help="MaskGIT Gumbel temperature, annealed to 0")
    # system
    p.add_argument("--batch-size", type=int, default=64)  # images per forward pass; guidance doubles it
    p.add_argument("--device", default="auto")            # auto: the GPU if one is visible, else the CPU
    return p


if __name__ == "__main__":
    main()
