"""Datasets: the built-in procedural shapes, image folders (FFHQ, LSUN, ImageNet layout), CIFAR-10. Each returns (x,
y): x a float image (3, H, W) in [-1, 1], y a class label (long; 0 for unlabelled folders). The paper trains on
ImageNet, FFHQ and LSUN (Sec. 4.1); the built-in dataset is ours (Deviation 10), so the pipeline runs offline on a
laptop CPU. Its class (semantics) is the shape times its color family; the exact shade, size, position, rotation and
a textured background are details. So a tokenizer trained on semantics alone (alpha = 1) keeps shapes and color
families and may lose exact shades and backgrounds: the "some loss of color fidelity" of Sec. 3.4, not all of it.
Each image is a pure function of (seed, index), and each training batch of (seed, step) (StepSampler): a resumed run
sees exactly the batches of an uninterrupted one."""

import hashlib
import json
import os
import pickle
import time

import numpy as np
import torch
import torch.distributed as dist
import torchvision
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from machine import UserError, atomic_write, autocast, ignore_sigint

#### The built-in procedural dataset
SHAPES = ["circle", "square", "triangle", "ring", "cross", "star", "hexagon", "crescent"]
COLORS = {"red": 0, "yellow": 55, "green": 120, "blue": 225}  # family -> hue in degrees, +-15 (the shade: a detail)
CLASSES = [f"{color} {shape}" for color in COLORS for shape in SHAPES]  # family * 8 + shape: 0-7 red, 8-15 yellow
TEXTURES = ["flat", "stripes", "checks", "gradient", "noise"]
SUPERSAMPLE = 2  # render at 2x and average-pool: anti-aliased edges


def _polygon_radius(theta, n):
    """Distance from the center to the edge of a regular n-gon (circumradius 1) at angle theta."""
    return np.cos(np.pi / n) / np.cos((theta % (2 * np.pi / n)) - np.pi / n)  # 2 pi / n: one sector


def _shape_mask(name, u, v):
    """Inside-test of a unit-size shape in its own (rotated, scaled) coordinates u, v."""
    r, theta = np.hypot(u, v), np.arctan2(v, u)
    if name == "circle":
        return r <= 1.0
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if name == "triangle":
        return r <= _polygon_radius(theta + np.pi / 2, 3)  # one vertex pointing up
    if name == "ring":
        return (r <= 1.0) & (r >= 0.6)
    if name == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    if name == "star":  # five points: the radius swings between 0.45 and 1 around the circle
        phase = np.abs(((theta + np.pi / 2) % (2 * np.pi / 5)) / (2 * np.pi / 5) - 0.5) * 2  # 1 at tips
        return r <= 0.45 + 0.55 * phase**2
    if name == "hexagon":
        return r <= _polygon_radius(theta, 6)
    if name == "crescent":
        return (r <= 1.0) & (np.hypot(u - 0.45, v) > 0.8)
    raise ValueError(name)


def _family_color(rng, hue_degrees):
    """An RGB color in [0, 1] of the given hue family: hue +-15 degrees, saturation and value 0.6-1."""
    h = ((hue_degrees + rng.uniform(-15, 15)) % 360) / 60  # sector of the HSV hexcone, in [0, 6)
    s, v = rng.uniform(0.6, 1.0, size=2)
    x = 1 - abs(h % 2 - 1)  # the second-largest channel, relative
    rgb = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][int(h)]
    return v * (1 - s + s * np.array(rgb))  # (3,)


def _background(rng, texture, S):
    """A (S, S, 3) background in [0, 1]: one of TEXTURES with random colors and frequencies."""
    c1, c2 = rng.uniform(0.0, 0.8, size=3), rng.uniform(0.0, 0.8, size=3)
    yy, xx = np.mgrid[0:S, 0:S] / S  # (S, S) each, in [0, 1)
    if texture == "flat":
        t = np.zeros((S, S))
    elif texture == "stripes":
        angle, freq = rng.uniform(0, np.pi), rng.uniform(2, 6)
        t = (np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle))) > 0).astype(float)
    elif texture == "checks":
        n = rng.integers(2, 6)
        t = ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(float)
    elif texture == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(angle) + yy * np.sin(angle)
        t = (t - t.min()) / (t.max() - t.min() + 1e-8)
    else:  # "noise": smooth random blobs, white noise on a coarse grid upsampled
        t = np.kron(rng.uniform(0, 1, size=(4, 4)), np.ones((S // 4, S // 4)))
    return c1 * (1 - t[..., None]) + c2 * t[..., None]  # (S, S, 3)


def render_shape(seed, index, image_size=32):
    """One image of the built-in dataset, pure in (seed, index): (uint8 (H, W, 3), class label, background
    texture (an index into TEXTURES), the share of each pixel the shape covers (H, W) float32)."""
    rng = np.random.default_rng([seed, index])
    shape, family = int(rng.integers(len(SHAPES))), int(rng.integers(len(COLORS)))
    label = family * len(SHAPES) + shape  # an index into CLASSES
    S = image_size * SUPERSAMPLE
    texture = int(rng.integers(len(TEXTURES)))
    bg = _background(rng, TEXTURES[texture], S)
    # the shape: size 25-45% of the image, anywhere it fits, any rotation, a bright color
    size = rng.uniform(0.25, 0.45) * S
    cx, cy = rng.uniform(size, S - size, size=2)
    rot = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:S, 0:S] + 0.5
    dx, dy = (xx - cx) / size, (yy - cy) / size
    u, v = dx * np.cos(rot) + dy * np.sin(rot), -dx * np.sin(rot) + dy * np.cos(rot)
    mask = _shape_mask(SHAPES[shape], u, v).astype(float)[..., None]  # (S, S, 1)
    color = _family_color(rng, list(COLORS.values())[family])
    if np.abs(color - bg.mean((0, 1))).sum() < 0.6:  # keep the shape visible: darken its background
        bg = 0.35 * bg
    img = bg * (1 - mask) + color * mask  # (S, S, 3)
    img = img.reshape(image_size, SUPERSAMPLE, image_size, SUPERSAMPLE, 3).mean((1, 3))  # (H, W, 3)
    cover = mask.reshape(image_size, SUPERSAMPLE, image_size, SUPERSAMPLE).mean((1, 3))   # (H, W)
    return (img * 255 + 0.5).astype(np.uint8), label, texture, cover.astype(np.float32)


_RENDERED = {}  # (split, image_size, n_train, n_val, seed) -> (images, labels, textures, masks), once per process


class ShapesDataset(Dataset):
    """The built-in dataset, rendered once per process: "train" is indices [0, n_train), "val" the next n_val."""

    def __init__(self, split="train", image_size=32, n_train=10000, n_val=1000, seed=0):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        key = (split, image_size, n_train, n_val, seed)
        if key not in _RENDERED:
            start, n = (0, n_train) if split == "train" else (n_train, n_val)
            rendered = [render_shape(seed, start + i, image_size) for i in range(n)]
            images = np.stack([r[0] for r in rendered]) if n else np.zeros((0, image_size, image_size, 3), np.uint8)
            masks = np.stack([r[3] for r in rendered]) if n else np.zeros((0, image_size, image_size), np.float32)
            _RENDERED[key] = (torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),  # (n, 3, H, W) uint8
                              torch.tensor([r[1] for r in rendered], dtype=torch.long),  # (n,)
                              torch.tensor([r[2] for r in rendered], dtype=torch.long),  # (n,)
                              torch.from_numpy(masks))  # (n, H, W) float32
        self.images, self.labels, self.textures, self.masks = _RENDERED[key]
        self.num_classes = len(CLASSES)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, item):
        i, flip = item if isinstance(item, tuple) else (item, False)
        x = self.images[i].float() / 127.5 - 1.0  # (3, H, W) in [-1, 1]
        return (x.flip(-1) if flip else x), self.labels[i]


#### Image folders (FFHQ, LSUN, ImageNet layout) and CIFAR-10
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


class DataError(UserError):
    """A user-fixable problem with the data (the scripts print it as a one-line error)."""

    def __init__(self, message):
        # from a DataLoader worker it arrives as DataError(the worker's traceback): keep our message, its last line
        if "Original Traceback" in message:
            message = message.strip().splitlines()[-1].split("DataError: ", 1)[-1]
        super().__init__(message)


class ImageFolderDataset(Dataset):
    """All images below `root` (recursively) in RGB, the shorter side resized to `image_size`, the center cropped.
    Labels: the first-level sub-folders when every image sits in one (ImageNet's root/<class>/<image>), else 0."""

    def __init__(self, root, image_size, skip_bad_images=False, flag="--data-dir"):  # flag: named the folder
        if not os.path.isdir(root):
            raise DataError(f"data folder {root!r} does not exist: pass {flag} with a folder of images")
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root, followlinks=True) for f in fs
                       if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root!r}: point {flag} at a "
                            "folder that holds them")
        rel = [os.path.relpath(f, root) for f in files]
        labelled = all(os.sep in r for r in rel)  # ImageNet layout: every image in a class folder
        self.classes = sorted({r.split(os.sep)[0] for r in rel}) if labelled else []
        index = {c: i for i, c in enumerate(self.classes)}
        self.labels = [index[r.split(os.sep)[0]] if labelled else 0 for r in rel]
        self.files, self.image_size, self.skip_bad, self.flag = files, image_size, skip_bad_images, flag
        self.num_classes = len(self.classes)
        # unreadable images seen so far, in shared memory: workers load images, the main process counts them
        self.bad_flags = torch.zeros(len(files), dtype=torch.bool).share_memory_()

    def __len__(self):
        return len(self.files)

    def __getitem__(self, item):
        i, flip = item if isinstance(item, tuple) else (item, False)
        # --skip-bad-images: a bad image is replaced by the next readable one, so the order stays a function of i
        for k in [i] + [(i + j) % len(self.files) for j in range(1, len(self.files))]:
            try:
                with Image.open(self.files[k]) as f:
                    # RGB; resize short side + center crop (the paper does not say how: Deviation 19)
                    im = ImageOps.fit(f.convert("RGB"), (self.image_size,) * 2, Image.BICUBIC)
                break
            except (OSError, ValueError, SyntaxError) as e:
                if not self.skip_bad:
                    raise DataError(f"cannot read image {self.files[k]!r} ({type(e).__name__}): remove or fix it, "
                                    "or pass --skip-bad-images") from None
                if not self.bad_flags[k]:  # once per image: say which one is skipped
                    print(f"skipping unreadable image {self.files[k]!r} (--skip-bad-images)", flush=True)
                self.bad_flags[k] = True
        else:
            root = os.path.commonpath(self.files) if len(self.files) > 1 else os.path.dirname(self.files[0])
            raise DataError(f"no readable image among the {len(self.files)} files under {root!r}: point "
                            f"{self.flag} at a folder of valid images")
        x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 127.5 - 1.0  # (3, H, W)
        return (x.flip(-1) if flip else x), torch.tensor(self.labels[i])


class CIFAR10Dataset(Dataset):
    """torchvision's CIFAR-10 (32 px, 10 classes), downloaded to `root` on first use."""

    def __init__(self, root, split="train", image_size=32):
        try:
            self.ds = torchvision.datasets.CIFAR10(root, train=(split == "train"), download=True)
        except Exception as e:  # URLError, a broken archive, ...
            raise DataError(f"cannot download CIFAR-10 into {root!r} ({type(e).__name__}): connect to the "
                            "internet once, or put the extracted cifar-10-batches-py folder there yourself") from None
        self.image_size, self.num_classes = image_size, 10

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, item):
        i, flip = item if isinstance(item, tuple) else (item, False)
        im, y = self.ds[i]
        x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 127.5 - 1.0  # (3, 32, 32)
        if self.image_size != x.shape[-1]:
            x = torch.nn.functional.interpolate(x[None], size=self.image_size, mode="bicubic", antialias=True)[0]
        return (x.flip(-1) if flip else x), torch.tensor(y)


def build_dataset(name, split, image_size, data_dir=None, seed=0, skip_bad_images=False, n_train=10000, n_val=1000):
    """By name: "shapes" (built-in), "cifar10", or "folder" (its val split: data_dir/val if train/ and val/ exist)."""
    if name == "shapes":
        return ShapesDataset(split, image_size, n_train, n_val, seed)
    if name == "cifar10":
        return CIFAR10Dataset(data_dir or "data/cifar10", split, image_size)
    if name == "folder":
        if data_dir is None:
            raise DataError("--data folder needs --data-dir PATH (a folder of images, or one with train/ and val/)")
        if os.path.isdir(os.path.join(data_dir, "train")) and os.path.isdir(os.path.join(data_dir, "val")):
            return ImageFolderDataset(os.path.join(data_dir, split), image_size, skip_bad_images)
        ds = ImageFolderDataset(data_dir, image_size, skip_bad_images)
        # else every 100th of the sorted files (at least the last one): spread over the class folders in
        # proportion to their sizes, where the last 1% would all come from the last folder
        val = list(range(99, len(ds), 100)) or [len(ds) - 1]
        train = sorted(set(range(len(ds))) - set(val)) or [0]  # one image: in both splits
        if split == "val" and len(val) < 100:  # a warning: figures over so few are noise
            seen = len({ds.labels[i] for i in val})
            classes = f", {seen} of its {ds.num_classes} classes" if ds.num_classes > 1 else ""
            print(f"warning: {data_dir} has no train/ and val/, so its validation split is every 100th file: "
                  f"{len(val)} image(s){classes}. Validation figures (L1, usage, FID) over so few are noise; "
                  "for a real split make train/ and val/ sub-folders", flush=True)
        return Subset(ds, val if split == "val" else train)
    raise DataError(f"unknown dataset {name!r}: use shapes, cifar10 or folder")


class TextureLabels(Dataset):
    """Built-in images labelled class * 5 + texture: the study's second evaluation network sees what L_sem may drop."""

    def __init__(self, ds):
        if not isinstance(ds, ShapesDataset):
            raise DataError("--classifier-labels texture needs the built-in dataset (--data shapes): only it "
                            "knows each image's background texture")
        self.ds, self.num_classes = ds, ds.num_classes * len(TEXTURES)

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, item):
        x, y = self.ds[item]
        i = item[0] if isinstance(item, tuple) else item  # (index, flip) pairs from the samplers
        return x, y * len(TEXTURES) + self.ds.textures[i]


class Subset(Dataset):
    """A fixed list of indices into a dataset (keeps num_classes, passes (index, flip) through)."""

    def __init__(self, ds, indices):
        self.ds, self.indices, self.num_classes = ds, indices, ds.num_classes

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, item):
        i, flip = item if isinstance(item, tuple) else (item, False)
        return self.ds[(self.indices[i], flip)]


def skipped_images(*datasets):
    """How many distinct unreadable images the datasets skipped so far (--skip-bad-images)."""
    bad = set()
    for ds in datasets:
        ds = ds.ds if isinstance(ds, Subset) else ds
        if isinstance(ds, ImageFolderDataset):  # only image folders can hold bad files
            bad |= {ds.files[i] for i in ds.bad_flags.nonzero().flatten().tolist()}
    return len(bad)


#### Reproducible data order: the batch of step t is a function of (seed, t)
def step_batch(n, batch_size, seed, step, flip=False, rank=0, world_size=1):
    """The (index, flip) pairs of this rank's share of the global batch at `step`. Epoch e = step //
    steps_per_epoch draws its own permutation from (seed, e): no iterator state, so resuming at any step
    reproduces the data stream exactly. Ranks take interleaved slices of the same global batch."""
    steps_per_epoch = max(1, n // batch_size)
    epoch, j = divmod(step, steps_per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    if n < batch_size:  # tiny datasets: repeat the permutation to fill a batch
        perm = perm.repeat(batch_size // n + 1)
    idx = perm[j * batch_size : (j + 1) * batch_size]  # (batch,)
    flips = torch.rand(len(perm), generator=g)[j * batch_size : (j + 1) * batch_size] < 0.5 if flip else None
    pairs = [(int(i), bool(flips[k]) if flip else False) for k, i in enumerate(idx)]
    return pairs[rank::world_size]


class StepSampler(torch.utils.data.Sampler):
    """Batch sampler for DataLoader: yields step_batch(...) for steps start, start+1, ..., total-1."""

    def __init__(self, n, batch_size, seed, start_step, total_steps, flip=False, rank=0, world_size=1):
        self.args, self.start, self.total = (n, batch_size, seed), start_step, total_steps
        self.flip, self.rank, self.world = flip, rank, world_size

    def __len__(self):
        return max(0, self.total - self.start)

    def __iter__(self):
        for step in range(self.start, self.total):
            yield step_batch(*self.args, step, self.flip, self.rank, self.world)


def step_loader(ds, seed, start, total, batch_size, rank=0, world=1, flip=False, workers=0, pin_memory=False):
    """A DataLoader over the batches of steps start..total-1 (step_batch), this rank's share of each."""
    sampler = StepSampler(len(ds), batch_size, seed, start, total, flip, rank, world)
    # generator: else each new iterator (a resumed run's too) draws a seed from the global RNG and shifts its stream
    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                                       persistent_workers=False, generator=torch.Generator().manual_seed(seed),
                                       worker_init_fn=ignore_sigint if workers > 0 else None)  # (Ctrl-C: Stop)


#### Datasets from a run's flags (DATA_KEYS, argparse dests) or from a checkpoint (its `args` records them)
DATA_KEYS = ("data", "data_dir", "image_size", "n_train", "n_val", "data_seed", "skip_bad_images")


def data_flags(args):
    """The flags of a run (argparse.Namespace) that define its dataset, as a dict: DATA_KEYS."""
    return {k: getattr(args, k) for k in DATA_KEYS}


def recorded_data(ckpt, data_seed=None):
    """The DATA_KEYS a checkpoint's run recorded in its `args`, for load_data; data_seed: other built-in images."""
    saved = ckpt.get("args") or {}
    missing = [k for k in DATA_KEYS if k not in saved]
    if missing:
        raise UserError(f"{ckpt['path']} does not record its dataset (missing {', '.join(missing)})")
    flags = {k: saved[k] for k in DATA_KEYS}
    return flags if data_seed is None else {**flags, "data_seed": data_seed}


def load_data(split, data, data_dir, image_size, n_train, n_val, data_seed, skip_bad_images):
    """A split of the dataset DATA_KEYS name: load_data("val", **data_flags(args)), or **recorded_data(ckpt)."""
    return build_dataset(data, split, image_size, data_dir, data_seed, skip_bad_images, n_train, n_val)


#### Token sequences: a dataset encoded once by a tokenizer (stage 2 trains on these)
PROGRESS_EVERY_S = 10  # a progress line at least this often in a long loop without one of its own


@torch.no_grad()
def encode_dataset(tok, ds, device, flips, batch_size=256, workers=0, rank=0, world=1):
    """All images of a split -> token sequences (M, N) and labels (M,); with flips, M = 2n, the unflipped images first.
    Under torchrun, this rank's share: positions rank, rank + world, ... `workers`: processes decoding the images."""
    pairs = [(j, flip) for flip in ((False, True) if flips else (False,)) for j in range(len(ds))][rank::world]
    batches = [pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size)]  # in order: row m is pairs[m]
    loader = torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=workers,  # generator: as step_loader's
                                         pin_memory=device.type == "cuda", generator=torch.Generator())
    # (0, N) and (0,) starters: torch.cat also works for a rank whose share is empty
    seqs, labels = [torch.zeros(0, tok.cfg.latent_size**2, dtype=torch.long)], [torch.zeros(0, dtype=torch.long)]
    t0 = shown = time.time()
    for i, (x, y) in enumerate(loader, 1):
        with autocast(device, "portable"):  # the same tokens on every CPU
            _, s, _ = tok.encode(x.to(device, non_blocking=True))  # s (b, h, w), Eq. 1
        seqs.append(s.flatten(1).cpu())  # (b, N) raster order
        labels.append(y)  # (b,)
        if rank == 0 and (time.time() - shown > PROGRESS_EVERY_S or i == len(loader) and i > 1):
            shown, done = time.time(), sum(len(q) for q in seqs)
            print(f"  encoded {done}/{len(pairs)} images | {done / (shown - t0):.0f} img/s | "
                  f"ETA {(len(pairs) - done) / done * (shown - t0):.0f}s", flush=True)
    return torch.cat(seqs), torch.cat(labels)


def token_cache(flags, tok, tok_hash, tok_path, phase1_path, device, workers=0, rank=0, world=1):
    """Encode train (each image and its mirror image) and val once, cached beside the tokenizer for every run;
    phase1_path: a phase-2 tokenizer's phase-1 checkpoint, whose folder may hold the tokens. Under torchrun each rank
    encodes its share, rank 0 merges. int16 indices (K <= 32768): ImageNet's tokens: 1.3 GB a process, 5.2 as int64."""
    # every DATA_KEYS flag (size and seed too): a cache of a 64-image run must never feed a run on the whole dataset
    data = {k: flags[k] for k in DATA_KEYS}
    data_id = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:8]
    name = f"tokens_{tok_hash[:16]}_{flags['data']}_{flags['image_size']}_{data_id}.pt"
    path = os.path.join(os.path.dirname(tok_path), name)
    # a phase-2 tokenizer makes its phase-1 run's tokens (same hash): reuse that run's file if it has one
    if phase1_path and not os.path.isfile(path) and os.path.isfile(os.path.join(os.path.dirname(phase1_path), name)):
        path = os.path.join(os.path.dirname(phase1_path), name)
    if not os.path.isfile(path):  # every rank looks before rank 0 can write it (barriers below)
        t0 = time.time()
        train_ds, val_ds = load_data("train", **flags), load_data("val", **flags)
        if rank == 0:
            print(f"token cache: encoding {len(train_ds)} training images and their mirror images, and "
                  f"{len(val_ds)} validation images (once per tokenizer and dataset) -> {path}", flush=True)
        index_dtype = torch.int16 if tok.cfg.K <= 2**15 else torch.int32
        cache = {"tokenizer_hash": tok_hash, "data": data}  # both stored in the file too
        for split, ds, flips in (("train", train_ds, True), ("val", val_ds, False)):
            s, y = encode_dataset(tok, ds, device, flips, workers=workers, rank=rank, world=world)
            cache[split] = (s.to(index_dtype), y)  # (n or 2n, N) int16, (n or 2n,)
        if world > 1:  # each rank writes its share (positions r::world) to a part file; rank 0 interleaves them
            part = lambda r: f"{path}.part{r}"
            atomic_write(part(rank), lambda f: torch.save(cache, f))
            dist.barrier()  # every part file is on disk
            if rank == 0:
                parts = [torch.load(part(r), map_location="cpu", weights_only=True) for r in range(world)]
                for split in ("train", "val"):
                    n = sum(len(p[split][0]) for p in parts)
                    s = torch.empty(n, parts[0][split][0].shape[1], dtype=index_dtype)  # (n, N)
                    y = torch.empty(n, dtype=torch.long)                                # (n,)
                    for r, p in enumerate(parts):
                        s[r::world], y[r::world] = p[split]  # undo the r::world split
                    cache[split] = (s, y)
                for r in range(world):
                    os.remove(part(r))  # the merged file replaces the parts
        skipped = f", {skipped_images(train_ds, val_ds)} unreadable images skipped" if flags["skip_bad_images"] else ""
        if rank == 0:
            atomic_write(path, lambda f: torch.save(cache, f))  # rank 0 alone writes the final file
            print(f"token cache: encoded {len(cache['train'][0])} train + {len(cache['val'][0])} val "
                  f"sequences in {time.time() - t0:.0f}s{skipped} -> {path}")
    if world > 1:
        dist.barrier()  # rank 0 has written the cache
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True)  # every rank, whole; safely
    except pickle.UnpicklingError:
        raise UserError(f"token cache {path}: holds objects that a safe load (torch.load weights_only=True) "
                        "will not unpickle, since unpickling them could run code; nothing was loaded. Delete "
                        "the file: the next run encodes the data again") from None
    if cache.get("tokenizer_hash") != tok_hash or cache.get("data") != data:
        raise UserError(f"token cache {path} holds the tokens of another tokenizer or dataset than this run's "
                        f"(its name says otherwise): delete the file, and the next run encodes the data again")
    if rank == 0:
        print(f"token cache: {path} ({len(cache['train'][0])} train sequences)")
    return cache
