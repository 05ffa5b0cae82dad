"""Sample images from a trained transformer (Sec. 3.1, "Generation: sampling from generative transformers"):
index sequences s from the AR model (raster order, KV cache) or MaskGIT (iterative decoding), looked up in the
codebook and decoded by the checkpoint's tokenizer (--tokenizer: its phase-2 run, the decoder of Fig. 8).

    python sample.py                                  # newest tiny AR run -> runs/samples.png
    python sample.py --ckpt runs/tiny-nar --classes 0 1 2 --n 24 --cfg-scale 2
    python sample.py --ckpt runs/tiny-ar --n 1000 --out samples.npz   # one file, uint8 images for FID
    python sample.py --ckpt runs/imagenet256-ar --n 50000 --out samples/   # a folder, streamed, resumable

A folder --out is written --chunk-size images at a time (chunk_000000.npz, ..., samples.json): memory stays at
one chunk whatever --n is, and the same command continues a stopped run. Chunk c's labels and noise come from
(--seed, c) alone: a resumed folder holds the images of an uninterrupted run (same device type, --batch-size).
"""

import argparse
import os
import time

import numpy as np
import torch

import pictures  # sampled images, grids and the sample-folder format
import runlog
import runs  # rebuilding the transformer and its tokenizer from checkpoints
from machine import (Parser, UserError, at_least, atomic_write, number, one_line_errors, pick_device,
                     remove_stale_temp_files)

# chunk c draws from the generator seeded SEED_STRIDE * seed + c (as data.step_batch seeds an epoch)
SEED_STRIDE = 1_000_003


def output_kind(out):
    """--out -> "grid" (an image file), "npz" (one file) or "folder" (no extension, or an existing folder)."""
    ext = os.path.splitext(out.rstrip("/" + os.sep))[1].lower()  # "samples/" is a folder, like "samples"
    if os.path.isdir(out) or out.endswith(("/", os.sep)) or not ext:
        return "folder"
    return "npz" if ext == ".npz" else "grid"


def check_args(args, num_classes):
    """What one flag's range cannot check (get_parser checks that) -> one-line errors, before any sampling."""
    kind = output_kind(args.out)
    if kind == "grid" and not args.out.lower().endswith((".png", ".jpg", ".jpeg")):
        raise UserError(f"--out {args.out}: use .png or .jpg (a grid), .npz (one file) or a folder name "
                        "without an extension (a streamed sample folder)")
    if kind != "folder" and args.n > args.chunk_size:  # a single file is held in memory until written
        raise UserError(f"--out {args.out} holds all {args.n} images in memory and writes them at the end; "
                        f"up to --chunk-size ({args.chunk_size}) images go to one file. For more, stream "
                        f"them to a folder: --out {os.path.splitext(args.out)[0]}/")
    if kind == "folder" and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is a file; a sample folder needs a new or existing folder")
    folder = os.path.dirname(os.path.abspath(args.out))  # the parent, for a folder --out
    if not os.path.isdir(folder) and os.path.isdir(os.path.dirname(folder)):
        os.makedirs(folder)  # one missing folder, as train.py makes runs/: `--out runs/x.png` works at once
    if not os.path.isdir(folder):
        raise UserError(f"--out {args.out}: the folder {folder} does not exist; create it or pick another --out")
    for c in args.classes or []:  # row num_classes of the model's class table is the null class, not a real one
        if num_classes == 0:
            raise UserError("this model is unconditional: drop --classes")
        if not 0 <= c < num_classes:
            raise UserError(f"class label {c} is outside the model's classes 0..{num_classes - 1}")


def sampling_kwargs(kind, args):
    """The keyword arguments of GPT.generate (kind "ar") or MaskGIT.generate ("nar") from the flags."""
    if kind == "ar":  # Sec. 3.1, VQGAN: raster order with a KV cache; temperature, then top-k, then top-p
        return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, cfg_scale=args.cfg_scale)
    # Sec. 3.1, MaskGIT: all [MASK] to all decided in `steps` parallel passes, Gumbel choice noise annealed to 0
    return dict(steps=args.steps, choice_temperature=args.choice_temperature, temperature=args.temperature,
                cfg_scale=args.cfg_scale)


def sample_chunk(model, tok, kind, args, c, m, device):
    """Chunk c: uint8 images (m, H, W, 3) and labels (m,) or None; from (seed, c) alone, so any chunk can be remade."""
    g_cpu = torch.Generator().manual_seed(SEED_STRIDE * args.seed + c)
    num_classes, labels = model.config.num_classes, None  # labels (m,), never the null class; None: unconditional
    if num_classes and args.classes:  # the given classes, cycled over the whole set: image i gets classes[i % len]
        i = torch.arange(c * args.chunk_size, c * args.chunk_size + m)  # (m,) global image indices
        labels = torch.tensor(args.classes)[i % len(args.classes)]
    elif num_classes:
        labels = torch.randint(num_classes, (m,), generator=g_cpu)  # random classes
    # the sampling noise: a generator on the model's device, seeded from the same chunk stream
    g = torch.Generator(device=device).manual_seed(int(torch.randint(2**62, (1,), generator=g_cpu)))
    y = labels.to(device) if labels is not None else None
    images = np.empty((m, tok.cfg.image_size, tok.cfg.image_size, 3), dtype=np.uint8)  # the only per-image memory
    i = 0
    for x in pictures.iter_samples(model, tok, m, y, g, args.batch_size, **sampling_kwargs(kind, args)):
        images[i : i + len(x)] = pictures.to_uint8(x)  # (b, 3, H, W) in [-1, 1] -> (b, H, W, 3) uint8
        i += len(x)
    return images, (labels.numpy() if labels is not None else None)


def sample_to_folder(args, kind, model, tok, ckpt, device):
    """--out DIR: chunk after chunk, each written all or nothing; continues a stopped run."""
    os.makedirs(args.out, exist_ok=True)
    # what makes the images (a rerun must match it): the weights, not their paths; batch and device cut the draws
    settings = {"n": args.n, "chunk_size": args.chunk_size, "seed": args.seed, "classes": args.classes, "kind": kind,
                "model_sha256": runs.state_hash(model.state_dict()),
                "tokenizer_sha256": runs.state_hash(tok.state_dict()), **sampling_kwargs(kind, args),
                "batch_size": args.batch_size, "device_type": device.type}
    manifest = {"settings": settings, "n": args.n, "chunk_size": args.chunk_size,  # the rest is for the reader
                "image_size": [tok.cfg.image_size, tok.cfg.image_size], "num_classes": model.config.num_classes,
                "ckpt": os.path.abspath(ckpt["path"]), "ckpt_step": ckpt.get("step"),
                "tokenizer": os.path.abspath(args.tokenizer or ckpt["tokenizer_path"])}
    old = pictures.read_sample_manifest(args.out)
    if old is None:
        if os.listdir(args.out):  # never mix samples into a folder of other files (nor touch them)
            raise UserError(f"--out {args.out} is a folder of other files, not a sample folder: pick a new or "
                            "empty one")
        pictures.write_sample_manifest(args.out, manifest)
    elif old.get("settings") != settings:  # one line: the first setting that differs, both values, two ways out
        was = old.get("settings") or {}
        key = next(k for k in {**was, **settings} if was.get(k) != settings.get(k))
        raise UserError(f"--out {args.out} holds samples made with {key}={was.get(key)!r}, not {settings.get(key)!r}: "
                        "rerun with the settings it was made with to continue it, or pick another --out")
    remove_stale_temp_files(args.out)  # the half-written chunk of a killed run
    total, start = pictures.num_chunks(args.n, args.chunk_size), pictures.chunks_done(args.out, manifest)
    if start == total:
        print(f"{args.out} already holds all {args.n} images")
        return args.out
    if start > 0:
        print(f"{args.out}: {start} of {total} chunks already written; continuing with chunk {start}")
    t0 = time.time()
    try:
        for c in range(start, total):
            m = min(args.chunk_size, args.n - c * args.chunk_size)  # the last chunk may be short
            images, labels = sample_chunk(model, tok, kind, args, c, m, device)  # (m, H, W, 3) uint8, (m,)
            pictures.write_sample_chunk(args.out, c, images, labels)
            done = min(args.n, (c + 1) * args.chunk_size)
            rate = (done - start * args.chunk_size) / max(time.time() - t0, 1e-9)  # images/s in this run
            print(f"chunk {c + 1}/{total}: {done}/{args.n} images, {rate:.2f} img/s, "
                  f"ETA {runlog.fmt_time((args.n - done) / rate)}", flush=True)
    except KeyboardInterrupt:  # the chunks on disk are complete (atomic writes); the one being sampled is lost
        print(f"stopped: {args.out} keeps {pictures.chunks_done(args.out, manifest)} of {total} chunks; "
              "run the same command again to continue", flush=True)
        raise SystemExit(130) from None  # 128 + SIGINT, as a shell reports Ctrl-C
    return args.out


@one_line_errors
def main(argv=None):
    """Command line entry; argv a list of strings (None: sys.argv). Returns the output path."""
    args = get_parser().parse_args(argv)
    device = pick_device(args.device)  # no torchrun here: local rank 0
    ckpt_path = args.ckpt or os.path.join(args.runs_dir, "tiny-ar")
    # the transformer (EMA weights when kept) and the tokenizer it was trained on, hash-checked
    model, kind, tok, ckpt = runs.load_transformer(ckpt_path, device, args.tokenizer)
    check_args(args, model.config.num_classes)  # after loading: the class range comes from the model
    if kind == "nar" and args.steps > model.config.seq_len:  # each MaskGIT step fills >= 1 token
        raise UserError(f"--steps {args.steps} is more than the {model.config.seq_len} tokens of an image: use at "
                        f"most {model.config.seq_len} (MaskGIT fills at least one per step)")
    out = output_kind(args.out)
    if out == "folder":  # any n: streamed to disk a chunk at a time
        sample_to_folder(args, kind, model, tok, ckpt, device)
    else:  # n <= --chunk-size: made as chunk 0 (of n images), in memory
        images, labels = sample_chunk(model, tok, kind, args, 0, args.n, device)  # (n, H, W, 3) uint8
        if out == "npz":  # for FID (metrics.py --samples); labels are not read by metrics.py
            arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
            atomic_write(args.out, lambda f: np.savez(f, **arrays))
        else:  # uint8 -> [-1, 1] for the grid: the same 8-bit levels the PNG stores
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # (n, 3, H, W)
            pictures.save_grid(x, args.out, nrow=args.nrow)  # upscaled 2x below 64 px
    print(f"{kind} ({ckpt['path']}): {args.n} images -> {args.out}")
    return args.out


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the docstring's layout and shows each flag's default."""


def get_parser():
    p = Parser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--ckpt", help="ar/nar checkpoint or run folder (default runs/tiny-ar)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--tokenizer", help="override the tokenizer path recorded in the checkpoint")
    p.add_argument("--out", default="runs/samples.png", help=".png grid; .npz of uint8 images and labels (n <= "
                   "--chunk-size); or a folder (no extension): streamed chunk by chunk, resumable, for any n")
    p.add_argument("--n", type=at_least(1), default=32, help="number of images")
    p.add_argument("--chunk-size", type=at_least(1), default=1000, help="images per file of a folder --out (ours)")
    p.add_argument("--nrow", type=at_least(1), default=8, help="images per grid row")
    p.add_argument("--classes", type=int, nargs="*", help="class labels, cycled (default: random). Built-in data: "
                   "label = color * 8 + shape, colors red, yellow, green, blue (0-3), shapes circle, square, triangle, "
                   "ring, cross, star, hexagon, crescent (0-7): 0 red circle, 9 yellow square, 31 blue crescent")
    p.add_argument("--seed", type=int, default=0, help="seed of the random labels and of every sampling draw")
    # sampling (Sec. 3.1 "Generation"); Sec. 3.2 names top-k, top-p and classifier-free guidance
    p.add_argument("--temperature", type=number(0), default=1.0, help="softmax temperature (0 = greedy)")
    p.add_argument("--top-k", type=at_least(1), help="AR: keep the k most likely tokens")
    p.add_argument("--top-p", type=number(0, 1, low_open=True, high_open=False), help="AR: nucleus mass in (0, 1]")
    # logits = uncond + cfg_scale * (cond - uncond); needs a model trained with --class-dropout > 0
    p.add_argument("--cfg-scale", type=number(0), default=1.0,
                   help="classifier-free guidance (1 = off, 0 = unconditional)")
    p.add_argument("--steps", type=at_least(1), default=12, help="MaskGIT steps, at most the tokens (Tables 3, 4)")
    p.add_argument("--choice-temperature", type=number(0), default=4.5, help="MaskGIT's Gumbel temperature, to 0")
    p.add_argument("--batch-size", type=at_least(1), default=64, help="images per forward pass (guidance doubles it)")
    p.add_argument("--device", default="auto", help="auto: CUDA, else Apple's MPS, else the CPU")
    return p


if __name__ == "__main__":
    main()
