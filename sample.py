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

import train


def load_models(ckpt_path, device, tokenizer=None):
    """Transformer checkpoint -> (model in eval mode, kind, tokenizer, checkpoint)."""
    ckpt = train.load_checkpoint(ckpt_path, ("ar", "nar"), "--ckpt")
    kind = ckpt["kind"]
    model = train.build_transformer(kind, ckpt["config"])
    model.load_state_dict(ckpt["ema"] if ckpt.get("ema") else ckpt["model"])
    tok_path = tokenizer or ckpt["tokenizer_path"]
    if not os.path.exists(tok_path):
        raise train.UserError(f"the tokenizer {tok_path} this model was trained on is gone: pass --tokenizer PATH to a copy")
    tok, _, tok_hash = train.load_tokenizer(tok_path, device)
    if tok_hash != ckpt["tokenizer_hash"]:
        raise train.UserError(
            f"{tok_path} does not make the tokens {ckpt['path']} was trained on (encoder+codebook hash "
            f"{tok_hash[:12]} != {ckpt['tokenizer_hash'][:12]}): pass --tokenizer with that tokenizer or its phase-2 run"
        )
    return model.to(device).eval(), kind, tok, ckpt


def check_args(args, num_classes):
    """Out-of-range flags -> one-line errors that say what is allowed."""
    if args.n < 1:
        raise train.UserError(f"--n must be >= 1, got {args.n}")
    if args.top_k is not None and args.top_k < 1:
        raise train.UserError(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise train.UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.temperature < 0:
        raise train.UserError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if args.cfg_scale < 0:
        raise train.UserError(f"--cfg-scale must be >= 0, got {args.cfg_scale}")
    if args.steps < 1:
        raise train.UserError(f"--steps must be >= 1, got {args.steps}")
    if args.batch_size < 1:
        raise train.UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):  # checked before sampling, not after minutes of it
        raise train.UserError(f"--out {args.out}: the folder {folder} does not exist; create it or pick another --out")
    for c in args.classes or []:
        if num_classes == 0:
            raise train.UserError("this model is unconditional: drop --classes")
        if not 0 <= c < num_classes:
            raise train.UserError(f"class label {c} is outside the model's classes 0..{num_classes - 1}")


@torch.no_grad()
def sample(model, kind, tok, labels, args, device):
    """Images (M, 3, H, W) in [-1, 1] for the given labels (or None), in batches."""
    g = torch.Generator(device=device).manual_seed(args.seed)
    out = []
    for i in range(0, args.n, args.batch_size):
        n = min(args.batch_size, args.n - i)
        y = labels[i : i + n] if labels is not None else None
        if kind == "ar":
            s = model.generate(y, num_samples=n, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                               cfg_scale=args.cfg_scale, generator=g)
        else:
            s = model.generate(y, num_samples=n, steps=args.steps, choice_temperature=args.choice_temperature,
                               temperature=args.temperature, cfg_scale=args.cfg_scale, generator=g)
        out.append(tok.decode_indices(s).float().clamp(-1, 1).cpu())  # (n, 3, H, W)
    return torch.cat(out)


def main(args):
    try:
        device = train.pick_device(args.device, 0)
        ckpt_path = args.ckpt or os.path.join(args.runs_dir, "tiny-ar")
        model, kind, tok, ckpt = load_models(ckpt_path, device, args.tokenizer)
        num_classes = model.config.num_classes
        check_args(args, num_classes)
        labels = None
        if num_classes > 0:
            if args.classes:  # the given classes, cycled to n images
                labels = torch.tensor(args.classes, device=device).repeat(args.n // len(args.classes) + 1)[: args.n]
            else:  # random classes from the seed
                labels = torch.randint(num_classes, (args.n,), generator=torch.Generator().manual_seed(args.seed)).to(device)
        images = sample(model, kind, tok, labels, args, device)
        if args.out.endswith(".npz"):
            uint8 = ((images.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
            save = {"images": uint8}
            if labels is not None:
                save["labels"] = labels.cpu().numpy()
            np.savez(args.out, **save)
        else:
            train.save_grid(images, args.out, nrow=args.nrow)
        print(f"{kind} ({ckpt['path']}): {args.n} images -> {args.out}")
        return args.out
    except train.UserError as e:
        raise SystemExit(f"error: {e}") from None


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="ar/nar checkpoint or run folder (default runs/tiny-ar)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--tokenizer", default=None, help="override the tokenizer path recorded in the checkpoint")
    p.add_argument("--out", default="samples.png", help=".png grid, or .npz with uint8 images (and labels)")
    p.add_argument("--n", type=int, default=32, help="number of images")
    p.add_argument("--nrow", type=int, default=8, help="images per grid row")
    p.add_argument("--classes", type=int, nargs="*", default=None, help="class labels, cycled (default: random)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (0 = greedy)")
    p.add_argument("--top-k", type=int, default=None, help="AR: keep the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="AR: nucleus sampling mass in (0, 1]")
    p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance (1 = off, 0 = unconditional)")
    p.add_argument("--steps", type=int, default=12, help="MaskGIT decoding steps")
    p.add_argument("--choice-temperature", type=float, default=4.5, help="MaskGIT Gumbel temperature, annealed to 0")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    return p


if __name__ == "__main__":
    main(get_parser().parse_args())
