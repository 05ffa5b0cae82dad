"""
Sample images from a trained transformer (Sec. 3.1, "Generation: sampling from generative
transformers"): draw index sequences s with the AR model (raster order, KV cache) or MaskGIT
(iterative decoding), look the codes up in the codebook and decode them with the tokenizer.

    python sample.py                                  # newest tiny AR run -> runs/samples.png
    python sample.py --ckpt runs/tiny-nar --classes 0 1 2 --n 24 --cfg-scale 2
    python sample.py --ckpt runs/tiny-ar --n 1000 --out samples.npz   # one file, uint8 images for FID
    python sample.py --ckpt runs/imagenet256-ar --n 50000 --out samples/   # a folder, streamed, resumable

Three kinds of --out:
  x.png (.jpg)   an image grid;
  x.npz          one file: images uint8 (n, H, W, 3) and labels (n,), held in memory and written
                 once at the end, so n is at most --chunk-size;
  DIR            a folder (no extension): the images are sampled and written --chunk-size at a
                 time (chunk_000000.npz, ..., and a manifest samples.json), so memory stays at
                 one chunk (chunk x H x W x 3 bytes, 197 MB at 1000 x 256 px) plus the models,
                 whatever --n is. A run stopped part-way (Ctrl-C, kill, a crash) keeps its
                 finished chunks; the same command continues from the first missing one, and
                 a command with other settings is refused instead of mixing samples.
metrics.py reads the .npz and the folder alike.

Images are a function of (--seed, chunk index): chunk c draws its labels (when random) and its
sampling noise from its own generator, seeded from (seed, c). A resumed folder therefore holds
exactly the images of an uninterrupted run (same device type and --batch-size). A .npz or grid
is made as chunk 0 of n images.

Everything is rebuilt from the checkpoints alone: the transformer checkpoint names the tokenizer
checkpoint (path, and hash of its encoder and codebook) it was trained on. `--tokenizer` may point
to that tokenizer's phase-2 run instead: it makes the same tokens and decodes them with the
attention-enhanced decoder (Fig. 8). EMA weights are used when present.
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
GRID_EXTENSIONS = (".png", ".jpg", ".jpeg")


def output_kind(out):
    """--out -> "grid" (an image file), "npz" (one file) or "folder" (no extension, or an existing folder)."""
    ext = os.path.splitext(out.rstrip("/" + os.sep))[1].lower()  # "samples/" is a folder, like "samples"
    if os.path.isdir(out) or out.endswith(("/", os.sep)) or not ext:
        return "folder"
    return "npz" if ext == ".npz" else "grid"


def check_args(args, num_classes):
    """The flags that one value's range cannot check (get_parser checks those) -> one-line errors."""
    kind = output_kind(args.out)
    if kind == "grid" and not args.out.lower().endswith(GRID_EXTENSIONS):
        raise UserError(f"--out {args.out}: use .png or .jpg (a grid), .npz (one file) or a folder name "
                        "without an extension (a streamed sample folder)")
    # a single file holds all its images in memory until it is written: at most one chunk
    if kind != "folder" and args.n > args.chunk_size:
        raise UserError(f"--out {args.out} holds all {args.n} images in memory and writes them at the end; "
                        f"up to --chunk-size ({args.chunk_size}) images go to one file. For more, stream "
                        f"them to a folder: --out {os.path.splitext(args.out)[0]}/")
    if kind == "folder" and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is a file; a sample folder needs a new or existing folder")
    folder = os.path.dirname(os.path.abspath(args.out))  # the parent, for a folder --out
    if not os.path.isdir(folder) and os.path.isdir(os.path.dirname(folder)):
        os.makedirs(folder)  # one missing folder, as train.py makes runs/: `--out runs/x.png` works at once
    if not os.path.isdir(folder):  # checked before sampling, not after minutes of it: a typo, likely
        raise UserError(f"--out {args.out}: the folder {folder} does not exist; "
                        "create it or pick another --out")
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
        return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    cfg_scale=args.cfg_scale)
    # NAR (Sec. 3.1, MaskGIT): all [MASK] to all decided in `steps` parallel passes, Gumbel choice
    # noise annealed from choice_temperature to 0
    return dict(steps=args.steps, choice_temperature=args.choice_temperature, temperature=args.temperature,
                cfg_scale=args.cfg_scale)


def chunk_labels(args, c, m, num_classes, g):
    """The class labels (m,) of chunk c, or None for an unconditional model. Never the null class."""
    if num_classes == 0:
        return None
    if args.classes:  # the given classes, cycled over the whole set: image i gets classes[i % len]
        i = torch.arange(c * args.chunk_size, c * args.chunk_size + m)  # (m,) global image indices
        return torch.tensor(args.classes)[i % len(args.classes)]        # (m,)
    return torch.randint(num_classes, (m,), generator=g)                # (m,) random classes


def sample_chunk(model, tok, kind, args, c, m, device):
    """Chunk c of the sample set: m images as uint8 (m, H, W, 3) and labels (m,) or None.
    Its labels and noise come from generators seeded by (seed, c) alone, so any chunk can be
    (re)made without the ones before it."""
    g_cpu = torch.Generator().manual_seed(SEED_STRIDE * args.seed + c)
    labels = chunk_labels(args, c, m, model.config.num_classes, g_cpu)  # (m,) or None
    # the sampling noise: a generator on the model's device, seeded from the same chunk stream
    g = torch.Generator(device=device).manual_seed(int(torch.randint(2**62, (1,), generator=g_cpu)))
    y = labels.to(device) if labels is not None else None
    H, W = tok.cfg.image_size, tok.cfg.image_size
    images = np.empty((m, H, W, 3), dtype=np.uint8)  # (m, H, W, 3): the only per-image memory kept
    i = 0
    for x in pictures.iter_samples(model, tok, m, y, g, args.batch_size, **sampling_kwargs(kind, args)):
        images[i : i + len(x)] = pictures.to_uint8(x)  # (b, 3, H, W) in [-1, 1] -> (b, H, W, 3) uint8
        i += len(x)
    return images, (labels.numpy() if labels is not None else None)


def folder_manifest(args, kind, model, tok, ckpt, device):
    """What the sample folder records: `settings` (everything that determines its images; a rerun
    must match them to continue) and, for the reader, where the models came from."""
    settings = {
        "n": args.n, "chunk_size": args.chunk_size, "seed": args.seed, "classes": args.classes, "kind": kind,
        # the weights themselves, not their paths: a run folder whose training went on is another model
        "model_sha256": runs.state_hash(model.state_dict()),
        "tokenizer_sha256": runs.state_hash(tok.state_dict()),
        **sampling_kwargs(kind, args),
        # these change how the random draws are cut and computed, so the exact images too
        "batch_size": args.batch_size, "device_type": device.type,
    }
    return {"settings": settings, "n": args.n, "chunk_size": args.chunk_size,
            "image_size": [tok.cfg.image_size, tok.cfg.image_size], "num_classes": model.config.num_classes,
            "ckpt": os.path.abspath(ckpt["path"]), "ckpt_step": ckpt.get("step"),
            "tokenizer": os.path.abspath(args.tokenizer or ckpt["tokenizer_path"])}


def sample_to_folder(args, kind, model, tok, ckpt, device):
    """--out DIR: chunk after chunk, each written all or nothing; continues a stopped run."""
    os.makedirs(args.out, exist_ok=True)
    manifest = folder_manifest(args, kind, model, tok, ckpt, device)
    old = pictures.read_sample_manifest(args.out)
    if old is None:
        if os.listdir(args.out):  # never mix samples into a folder of other files (nor touch them)
            raise UserError(f"--out {args.out} is a folder of other files, not a sample folder: "
                            "pick a new or empty one")
        pictures.write_sample_manifest(args.out, manifest)
    elif old.get("settings") != manifest["settings"]:
        # one line: the first setting that differs, both values, and the two ways out
        old_s = old.get("settings") or {}
        key = next(k for k in {**old_s, **manifest["settings"]}
                   if old_s.get(k) != manifest["settings"].get(k))
        raise UserError(f"--out {args.out} holds samples made with {key}={old_s.get(key)!r}, not "
                        f"{manifest['settings'].get(key)!r}: rerun with the settings it was made with to "
                        "continue it, or pick another --out")
    remove_stale_temp_files(args.out)  # the half-written chunk of a killed run
    total = pictures.num_chunks(args.n, args.chunk_size)
    start = pictures.chunks_done(args.out, manifest)
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
    except KeyboardInterrupt:
        # the chunks on disk are complete (atomic writes); the one being sampled is lost
        print(f"stopped: {args.out} keeps {pictures.chunks_done(args.out, manifest)} of {total} chunks; "
              "run the same command again to continue", flush=True)
        raise SystemExit(130) from None  # 128 + SIGINT, as a shell reports Ctrl-C
    return args.out


@one_line_errors
def main(argv=None):
    """Command line entry; argv a list of strings (None: sys.argv). Returns the output path.
    User mistakes end as one-line SystemExit("error: ..."), without a traceback."""
    args = get_parser().parse_args(argv)
    device = pick_device(args.device)  # no torchrun here: local rank 0
    ckpt_path = args.ckpt or os.path.join(args.runs_dir, "tiny-ar")
    # the transformer (EMA weights when kept) and the tokenizer it was trained on, hash-checked
    model, kind, tok, ckpt = runs.load_transformer(ckpt_path, device, args.tokenizer)
    check_args(args, model.config.num_classes)  # after loading: the class range comes from the model
    if kind == "nar" and args.steps > model.config.seq_len:  # each MaskGIT step fills >= 1 token
        raise UserError(f"--steps {args.steps} is more than the {model.config.seq_len} tokens of an "
                        f"image: use at most {model.config.seq_len} (MaskGIT fills at least one per "
                        "step)")
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
    """--help keeps the docstring's layout and shows each flag's default (guidance off: 1.0)."""


def get_parser():
    p = Parser(description=__doc__, formatter_class=HelpFormatter)
    # what to sample from: a transformer checkpoint; its tokenizer comes from the checkpoint
    p.add_argument("--ckpt", default=None, help="ar/nar checkpoint or run folder (default runs/tiny-ar)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--tokenizer", default=None, help="override the tokenizer path recorded in the checkpoint")
    p.add_argument("--out", default="runs/samples.png",
                   help=".png grid; .npz with uint8 images and labels (n <= --chunk-size); or a folder (no "
                        "extension): streamed chunk by chunk, resumable, for any n (50,000 for FID)")
    p.add_argument("--n", type=at_least(1), default=32, help="number of images")
    # ours: 1000 images = 197 MB of uint8 at 256 px between saves
    p.add_argument("--chunk-size", type=at_least(1), default=1000,
                   help="images per chunk file of a folder --out (the memory held: chunk x H x W x 3 bytes)")
    p.add_argument("--nrow", type=at_least(1), default=8, help="images per grid row")
    p.add_argument("--classes", type=int, nargs="*", default=None,
                   help="class labels, cycled (default: random). Built-in data: label = color * 8 + shape, "
                        "colors red, yellow, green, blue (0-3), shapes circle, square, triangle, ring, cross, "
                        "star, hexagon, crescent (0-7): 0 red circle, 9 yellow square, 31 blue crescent")
    # with the chunk index: the labels (when random), every draw
    p.add_argument("--seed", type=int, default=0, help="seed of the random labels and of every sampling draw")
    # sampling (Sec. 3.1 "Generation"; Sec. 3.2 names top-k/top-p and classifier-free guidance)
    p.add_argument("--temperature", type=number(0), default=1.0, help="softmax temperature (0 = greedy)")
    # AR only: top-k and top-p filter the next-token distribution (Sec. 3.2 names both)
    p.add_argument("--top-k", type=at_least(1), default=None, help="AR: keep the k most likely tokens")
    p.add_argument("--top-p", type=number(0, 1, low_open=True, high_open=False), default=None,
                   help="AR: nucleus sampling mass in (0, 1]")
    # logits = uncond + cfg_scale * (cond - uncond); needs a model trained with --class-dropout > 0
    p.add_argument("--cfg-scale", type=number(0), default=1.0,
                   help="classifier-free guidance (1 = off, 0 = unconditional)")
    # NAR (MaskGIT) only: 12 steps as in the paper (Tables 3, 4); choice temperature 4.5 is MaskGIT's
    p.add_argument("--steps", type=at_least(1), default=12, help="MaskGIT decoding steps (at most the tokens)")
    p.add_argument("--choice-temperature", type=number(0), default=4.5,
                   help="MaskGIT Gumbel temperature, annealed to 0")
    # system
    p.add_argument("--batch-size", type=at_least(1), default=64)  # images per forward pass; guidance doubles it
    p.add_argument("--device", default="auto")            # auto: CUDA, else Apple's MPS, else the CPU
    return p


if __name__ == "__main__":
    main()
