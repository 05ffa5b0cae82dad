"""
Images in and out of runs: PNG grids (of reconstructions while a tokenizer trains, of samples
while a transformer trains), images sampled from a transformer through its tokenizer (Sec. 3.1,
"Generation"), and sample folders, which sample.py writes a chunk at a time and metrics.py reads.

Shape legend: B batch, H x W image, N = h*w tokens.
"""

import json
import os

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from machine import UserError, atomic_write, eval_mode


def save_grid(images, path, nrow):
    """Images in [-1, 1] -> one PNG; small images are upscaled 2x (nearest) to be readable."""
    images = images.detach().float().cpu().clamp(-1, 1)  # (B, 3, H, W), fp32 even from bf16
    if images.shape[-1] < 64:
        images = F.interpolate(images, scale_factor=2, mode="nearest")  # (B, 3, 2H, 2W)
    # [-1, 1] -> [0, 1]; white padding between tiles
    torchvision.utils.save_image(images * 0.5 + 0.5, path, nrow=nrow, padding=2, pad_value=1.0)


def to_uint8(images):
    """Images (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3) NumPy array, channels last: the form
    of sample files (metrics.py reads them back as x = u / 127.5 - 1)."""
    images = images.detach().float().cpu().clamp(-1, 1)  # (B, 3, H, W)
    # [-1, 1] -> [0, 255], rounded to the nearest level
    return ((images.permute(0, 2, 3, 1) + 1) * 127.5).round().to(torch.uint8).numpy()  # (B, H, W, 3)


@torch.no_grad()
def iter_samples(model, tok, n, labels=None, generator=None, batch_size=64, **sampling):
    """n images from a transformer and its tokenizer (Sec. 3.1, "Generation"), one batch at a
    time: index sequences s from model.generate (AR or MaskGIT; `sampling` holds its keyword
    arguments), then the codebook lookup and the decoder. labels (n,) long, or None
    (unconditional). One `generator` for all batches: the same seed and batch size give the same
    images. Yields (b, 3, H, W) in [-1, 1] on the CPU, b <= batch_size."""
    with eval_mode(model):  # no dropout, no class dropout
        for i in range(0, n, batch_size):
            b = min(batch_size, n - i)
            y = labels[i : i + b] if labels is not None else None  # (b,) labels, or None
            s = model.generate(y, num_samples=b, generator=generator, **sampling)  # (b, N) ids
            # s -> codebook lookup -> decoder: the index-to-image mapping of Sec. 3.1
            yield tok.decode_indices(s).float().clamp(-1, 1).cpu()  # (b, 3, H, W)


def sample_images(model, tok, n, labels=None, generator=None, batch_size=64, **sampling):
    """iter_samples, all batches at once: (n, 3, H, W) in [-1, 1] on the CPU. For small n only
    (n x 3 x H x W floats); sample.py streams large sets to a folder instead."""
    return torch.cat(list(iter_samples(model, tok, n, labels, generator, batch_size, **sampling)))


@torch.no_grad()
def save_recon_grid(model, x, run_dir, step):
    """recon_<step>.png: 16 images x (B, 3, H, W) beside their reconstructions, 4 pairs per row."""
    with eval_mode(model):
        x_hat = model(x)[0].float()  # (B, 3, H, W)
    pairs = torch.stack([x, x_hat], 1).flatten(0, 1)  # input | reconstruction, side by side
    save_grid(pairs, os.path.join(run_dir, f"recon_{step:08d}.png"), nrow=8)


def save_sample_grid(model, tok, num_classes, run_dir, step):
    """samples_<step>.png: the same 16 draws (seed 0) at every grid, labels 0, 1, 2, ... round robin."""
    device = tok.quantizer.codebook.weight.device
    y = torch.arange(16, device=device) % num_classes if num_classes > 0 else None
    images = sample_images(model, tok, 16, y, torch.Generator(device=device).manual_seed(0))
    save_grid(images, os.path.join(run_dir, f"samples_{step:08d}.png"), nrow=8)


# ------------------------------------------------------------------------------------------
#### Sample folders: sample.py writes them a chunk at a time, metrics.py reads them
# ------------------------------------------------------------------------------------------

# A sample folder (`sample.py --out DIR`) holds
#     samples.json        the manifest: n, chunk size, image size, and every setting that
#                         determines the images (checkpoint and tokenizer weight hashes, seed,
#                         classes, sampling flags, batch size, device type)
#     chunk_000000.npz    images uint8 (M, H, W, 3) and labels (M,) of images
#     chunk_000001.npz    c * chunk_size ... c * chunk_size + M - 1; M = chunk_size but in the last
# Each chunk is written all or nothing (atomic_write), so a chunk file on disk is complete.
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
        raise UserError(f"{path}: not a readable sample manifest ({type(e).__name__}); delete the folder and "
                        "sample again") from None


def write_sample_manifest(folder, manifest):
    atomic_write(os.path.join(folder, SAMPLE_MANIFEST),
                 lambda f: f.write(json.dumps(manifest, indent=1).encode()))


def chunks_done(folder, manifest):
    """How many chunks, from chunk 0 on without a gap, are on disk (each file is complete)."""
    total = num_chunks(manifest["n"], manifest["chunk_size"])
    c = 0
    while c < total and os.path.isfile(chunk_path(folder, c)):
        c += 1
    return c


def write_sample_chunk(folder, c, images, labels=None):
    """uint8 images (M, H, W, 3) and labels (M,) or None -> chunk_<c>.npz, all or nothing."""
    arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
    # uncompressed: fast to write and read
    atomic_write(chunk_path(folder, c), lambda f: np.savez(f, **arrays))


