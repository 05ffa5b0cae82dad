"""Images in and out of runs: PNG grids while a stage trains, images sampled through a tokenizer (Sec. 3.1,
"Generation"), and the sample folders sample.py writes and metrics.py reads. B batch, H x W image, N tokens."""

import json
import os

import numpy as np
import torch
import torchvision

from machine import UserError, atomic_write, eval_mode


def save_grid(images, path, nrow):
    """Images in [-1, 1] -> one PNG; small images are upscaled 2x (nearest) to be readable."""
    images = images.detach().float().cpu().clamp(-1, 1)  # (B, 3, H, W), fp32 even from bf16
    if images.shape[-1] < 64:
        images = torch.nn.functional.interpolate(images, scale_factor=2, mode="nearest")  # (B, 3, 2H, 2W)
    torchvision.utils.save_image(images * 0.5 + 0.5, path, nrow=nrow, padding=2, pad_value=1.0)  # white padding


def to_uint8(images):
    """Images (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3), the form of sample files (x = u / 127.5 - 1)."""
    images = images.detach().float().cpu().clamp(-1, 1).permute(0, 2, 3, 1)  # (B, H, W, 3)
    return ((images + 1) * 127.5).round().to(torch.uint8).numpy()  # the nearest of 256 levels


@torch.no_grad()
def iter_samples(model, tok, n, labels=None, generator=None, batch_size=64, **sampling):
    """n images (b, 3, H, W) on the CPU a batch at a time, from model.generate(labels (n,) or None, **sampling) and
    the tokenizer. One `generator` for all batches: the same seed and batch size give the same images."""
    with eval_mode(model):  # no dropout, no class dropout
        for i in range(0, n, batch_size):
            b = min(batch_size, n - i)
            y = labels[i : i + b] if labels is not None else None
            s = model.generate(y, num_samples=b, generator=generator, **sampling)  # (b, N) ids
            yield tok.decode_indices(s).float().clamp(-1, 1).cpu()  # codebook lookup + decoder (Sec. 3.1)


def sample_images(model, tok, n, labels=None, generator=None, batch_size=64, **sampling):
    """iter_samples, all batches at once: (n, 3, H, W) on the CPU; for small n (sample.py streams large sets)."""
    return torch.cat(list(iter_samples(model, tok, n, labels, generator, batch_size, **sampling)))


@torch.no_grad()
def save_recon_grid(model, x, run_dir, step):
    """recon_<step>.png: 16 images x (B, 3, H, W) beside their reconstructions, 4 pairs per row."""
    with eval_mode(model):
        pairs = torch.stack([x, model(x)[0].float()], 1).flatten(0, 1)  # input | reconstruction, side by side
    save_grid(pairs, os.path.join(run_dir, f"recon_{step:08d}.png"), nrow=8)


def save_sample_grid(model, tok, num_classes, run_dir, step):
    """samples_<step>.png: the same 16 draws (seed 0) at every grid, labels 0, 1, 2, ... round robin."""
    device = tok.quantizer.codebook.weight.device
    y = torch.arange(16, device=device) % num_classes if num_classes > 0 else None
    images = sample_images(model, tok, 16, y, torch.Generator(device=device).manual_seed(0))
    save_grid(images, os.path.join(run_dir, f"samples_{step:08d}.png"), nrow=8)


#### Sample folders (docs/evaluation.md): samples.json and chunk_<c>.npz files, each written all or nothing
SAMPLE_MANIFEST = "samples.json"


def chunk_path(folder, c):
    return os.path.join(folder, f"chunk_{c:06d}.npz")


def num_chunks(n, chunk_size):
    return -(-n // chunk_size)  # ceil(n / chunk_size)


def read_sample_manifest(folder):
    """The manifest of a sample folder, or None when the folder has none."""
    path = os.path.join(folder, SAMPLE_MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({type(e).__name__}); delete the folder and sample again") from None


def write_sample_manifest(folder, manifest):
    atomic_write(os.path.join(folder, SAMPLE_MANIFEST), lambda f: f.write(json.dumps(manifest, indent=1).encode()))


def chunks_done(folder, manifest):
    """How many chunks, from chunk 0 on without a gap, are on disk (each file is complete)."""
    total = num_chunks(manifest["n"], manifest["chunk_size"])
    return next((c for c in range(total) if not os.path.isfile(chunk_path(folder, c))), total)


def write_sample_chunk(folder, c, images, labels=None):
    """uint8 images (M, H, W, 3) and labels (M,) or None -> chunk_<c>.npz (uncompressed), all or nothing."""
    arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
    atomic_write(chunk_path(folder, c), lambda f: np.savez(f, **arrays))
