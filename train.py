"""
Training for every stage of SeQ-GAN (Gu et al., CVPR 2023, Sec. 3.4, Sec. 4, Fig. 7).

    python train.py --stage classifier   # ours: the small semantic network of the tiny preset
    python train.py --stage tokenizer    # phase 1: encoder + codebook + conv decoder, alpha = 1
    python train.py --stage decoder      # phase 2: frozen encoder/codebook, attention decoder, alpha = 0
    python train.py --stage ar           # the AR transformer (GPT) on the tokenizer's indices
    python train.py --stage nar          # the NAR transformer (MaskGIT)

With no other flag every stage runs the `tiny` preset on the built-in dataset, offline, on
the CPU in minutes. Layout: helpers (errors, runs and checkpoints, logging, data), then one
function per stage, then main(args) and argparse. Runs live in runs/<name>/: checkpoints
(ckpt_<step>.pt and a `latest` pointer), log.jsonl, PNG grids.

Deviations from the paper in the training recipe are marked where they happen and listed
in the README; the paper's values are the paper-scale presets' defaults.
"""

import argparse
import hashlib
import json
import math
import os
import random
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision

import data         # datasets and the (seed, step) -> batch sampler
import losses       # Eq. 3 perceptual loss, VGG16 features, PatchGAN, hinge losses, adaptive weight
import metrics      # codebook usage / perplexity counters
import transformer  # GPT (AR) and MaskGIT (NAR) of Sec. 3.1
import vq           # encoder, quantizer (Eq. 1, 2, Sec. 3.4), conv and attention decoders

# ------------------------------------------------------------------------------------------
#### Presets: what each stage does by default (flags override any field)
# ------------------------------------------------------------------------------------------
# The paper gives: Adam, lr 1e-4, 500k iterations for phase 1; lr 5e-5, 200k iterations for
# phase 2; transformers lr 1e-4 (Sec. 4.1-4.3); beta 0.25; gamma 0.01. Everything else (batch
# sizes, Adam betas, GAN weight and start, warmup, EMA, every `tiny` value) is ours.

# Each preset: fields shared by every stage, then one dict per --stage whose fields win over them
# (resolve() below). Every key is an argparse dest, so a flag given on the command line wins over both.
TRAIN_PRESETS = {
    # ours throughout: 32 px built-in shapes, 8x8 tokens, each stage in minutes on a laptop CPU
    "tiny": dict(
        data="shapes", semantic="classifier", batch_size=32, transformer="tiny", ema=0.99,
        # the stand-in semantic net of Eq. 3 (ours, DESIGN.md "Semantic network weights"): no download
        classifier=dict(steps=500, lr=2e-3, batch_size=64),
        # perceptual_weight 0.01 (ours): the small classifier's logit MSE is ~100x the L1 term at the
        # start; at weight 1 it drowns L1 within the few minutes a CPU run has (README, "Deviations")
        tokenizer=dict(steps=1500, lr=4e-4, disc_start=1000, disc_weight=0.1, perceptual_weight=0.01),
        decoder=dict(steps=500, lr=2e-4, disc_start=0, disc_weight=0.1, perceptual_weight=0.01),  # lr: 1/2, like 5e-5 / 1e-4
        # transformers: lr 1e-3 for a 0.84M-parameter model and 2000 steps, warmup then cosine decay (lr_at);
        # all ours (the paper: lr 1e-4 for 171M parameters)
        ar=dict(steps=2000, lr=1e-3, batch_size=64, warmup=100),
        nar=dict(steps=2000, lr=1e-3, batch_size=64, warmup=100),
    ),
    # ours: one GPU, hours; CIFAR-10 at 64 px with the paper's ImageNet VGG16 as the semantic net
    "small": dict(
        data="cifar10", semantic="imagenet", batch_size=32, transformer="small", ema=0.999,
        classifier=dict(steps=5000, lr=1e-3, batch_size=128),
        tokenizer=dict(steps=100_000, lr=1e-4, disc_start=20_000, disc_weight=0.8, perceptual_weight=1.0),
        decoder=dict(steps=40_000, lr=5e-5, disc_start=0, disc_weight=0.8, perceptual_weight=1.0),
        # AR and NAR share one recipe, as in the paper (Sec. 4.2, 4.3)
        ar=dict(steps=100_000, lr=3e-4, batch_size=128, warmup=2000),
        nar=dict(steps=100_000, lr=3e-4, batch_size=128, warmup=2000),
    ),
}
# The three paper-scale presets share one recipe (Sec. 4): ImageNet VGG16 as the semantic net.
for _name in ("ffhq256", "lsun256", "imagenet256"):
    TRAIN_PRESETS[_name] = dict(
        # batch sizes, EMA decay, GAN weight and start, warmup: ours (the paper leaves them to its
        # supplementary material); disc_weight 0.8 is VQGAN's
        data="folder", semantic="imagenet", batch_size=8, transformer="base", ema=0.9999,
        classifier=dict(steps=0, lr=0.0, batch_size=1),  # unused: the paper's VGG16 is pretrained
        tokenizer=dict(steps=500_000, lr=1e-4, disc_start=50_000, disc_weight=0.8, perceptual_weight=1.0),  # paper: lr, steps
        decoder=dict(steps=200_000, lr=5e-5, disc_start=0, disc_weight=0.8, perceptual_weight=1.0),  # paper: lr, steps
        ar=dict(steps=500_000, lr=1e-4, batch_size=32, warmup=5000),  # paper: lr, 500k uncond.
        nar=dict(steps=500_000, lr=1e-4, batch_size=32, warmup=5000),  # paper: the same lr and steps as AR (Sec. 4.2)
    )

# ------------------------------------------------------------------------------------------
#### Errors, distributed setup, seeds
# ------------------------------------------------------------------------------------------


class UserError(Exception):
    """A mistake the user can fix; main() prints it as one line, without a traceback."""


def setup_distributed():
    """(rank, world_size, local_rank). Under torchrun, join the process group; else (0, 1, 0)."""
    # plain `python train.py`: one process, no process group
    if "RANK" not in os.environ:
        return 0, 1, 0
    backend = "nccl" if torch.cuda.is_available() else "gloo"  # NCCL for GPUs; gloo for CPU-only runs (tests)
    if not dist.is_initialized():                              # a caller (a test) may have joined already
        dist.init_process_group(backend)
    # LOCAL_RANK: which GPU of its node this process drives (set by torchrun)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


@contextmanager
def rank0_first(args):
    """Under torchrun, rank 0 runs the block first (a download, a classifier to train, a file to
    write) and the other ranks run it after a barrier, when they find the result on disk."""
    # ranks 1.. wait here until rank 0 has run the block and reached the barrier below
    if args.world > 1 and args.rank != 0:
        dist.barrier()  # waits for rank 0's barrier below
    yield
    # rank 0 is done (the file is on disk): release the others
    if args.world > 1 and args.rank == 0:
        dist.barrier()  # the matching barrier


def pick_device(name, local_rank):
    # auto: this process's own GPU under torchrun (LOCAL_RANK), else the CPU
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    # fail at the start with a fixable message, not with a CUDA traceback at the first tensor
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible; use --device cpu")
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # default CUDA device of this process (matters under torchrun)
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls and convs on Ampere and later
        torch.backends.cudnn.allow_tf32 = True
    return device


def seed_everything(seed):
    # every RNG a stage draws from; torch covers init, dropout, MaskGIT masks and class dropout
    random.seed(seed)
    np.random.seed(seed % 2**32)  # NumPy seeds must fit in 32 bits
    torch.manual_seed(seed)


def rng_state():
    # all that set_rng_state needs to continue the random streams where the run stopped (DESIGN.md)
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()  # one state per visible GPU
    return state


def set_rng_state(state, rank=0):
    """Restore the saved RNG (rank 0's: only rank 0 writes checkpoints). Under torchrun the other
    ranks then branch off it by their rank, so their dropout and masks still differ."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    # ranks 1..: a fresh seed drawn from rank 0's restored stream, offset by the rank
    if rank > 0:
        seed_everything(int(torch.randint(2**62, (1,))) + rank)  # so ranks differ in dropout and masks


def autocast(device):
    """bf16 autocast on CUDA (the quantizer switches it off for itself); nothing on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


# ------------------------------------------------------------------------------------------
#### Runs and checkpoints
# ------------------------------------------------------------------------------------------


def atomic_write(path, write):
    """Write via a temp file in the same folder, flush + fsync, then rename: all or nothing."""
    tmp = f"{path}.tmp{os.getpid()}"  # pid in the name: two writers never share a temp file
    try:
        with open(tmp, "wb") as f:
            write(f)  # the caller's serializer: torch.save or raw bytes
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: a crash cannot leave a renamed empty file
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)  # only if write() or the rename failed


def remove_stale_temp_files(run_dir):
    """atomic_write's temp files left by a process killed mid-write (kill -9, power loss): the
    name ends in .tmp<pid>; remove those whose process is gone. A live writer's file stays."""
    for f in os.listdir(run_dir):
        # 'ckpt_00000500.pt.tmp1234' -> ('ckpt_00000500.pt', '.tmp', '1234')
        stem, _, pid = f.rpartition(".tmp")
        # not a temp file, or one of this process's own writes
        if not stem or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            os.remove(os.path.join(run_dir, f))
        except (PermissionError, OverflowError):
            pass  # alive under another user, or not a pid: leave it


def save_checkpoint(run_dir, state, keep):
    """ckpt_<step>.pt, then the `latest` pointer; keep the newest `keep` checkpoints."""
    name = f"ckpt_{state['step']:08d}.pt"  # zero-padded: names sort in step order
    remove_stale_temp_files(run_dir)
    # a finite loss can still leave non-finite weights (an absurd lr): never save those over good ones
    for key in ("model", "ema", "disc"):
        for k, v in (state.get(key) or {}).items():
            if v.is_floating_point() and not torch.isfinite(v).all():
                raise UserError(f"non-finite weights after step {state['step']}: {key} {k}; not saved, the last good "
                                "checkpoint is kept, lower --lr and --resume")
    atomic_write(os.path.join(run_dir, name), lambda f: torch.save(state, f))  # weights, optimizer, step, RNG, config
    # the pointer is written only after its checkpoint is complete on disk
    atomic_write(os.path.join(run_dir, "latest"), lambda f: f.write(name.encode()))
    # retention: delete all but the newest `keep`, oldest first, after the new one is safely on disk
    ckpts = sorted(f for f in os.listdir(run_dir) if f.startswith("ckpt_") and f.endswith(".pt"))
    for old in ckpts[:-keep]:
        os.remove(os.path.join(run_dir, old))
    return os.path.join(run_dir, name)


def latest_checkpoint(run_dir):
    """Path of the newest complete checkpoint of a run, or None."""
    pointer = os.path.join(run_dir, "latest")  # a text file: the newest checkpoint's file name
    if os.path.isfile(pointer):
        with open(pointer) as f:
            path = os.path.join(run_dir, f.read().strip())  # resolved inside the same run folder
        if os.path.isfile(path):
            return path
    # no pointer (or it names a removed file): fall back to the newest complete ckpt_*.pt
    ckpts = sorted(f for f in os.listdir(run_dir) if f.startswith("ckpt_") and f.endswith(".pt")) if os.path.isdir(run_dir) else []
    return os.path.join(run_dir, ckpts[-1]) if ckpts else None


def load_checkpoint(path, kind, what="--ckpt"):
    """Load a checkpoint (a file, or a run folder's latest) and check its kind."""
    # a run folder stands for its newest checkpoint, so `--ckpt runs/tiny-ar` works
    if path is not None and os.path.isdir(path):
        resolved = latest_checkpoint(path)
        if resolved is None:
            raise UserError(f"{what} {path}: the folder holds no checkpoint (ckpt_*.pt)")
        path = resolved
    if path is None or not os.path.isfile(path):
        raise UserError(f"{what} {path}: no such checkpoint file")
    try:
        # on the CPU first: a checkpoint written on a GPU loads on any machine; weights_only=False because
        # the dict also holds Python/NumPy RNG states and args (torch >= 2.6 defaults to True)
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"{what} {path}: not a readable checkpoint ({type(e).__name__})") from None
    # `kind` is classifier / tokenizer / ar / nar: a checkpoint of the wrong stage is refused by name
    found = ckpt.get("kind") if isinstance(ckpt, dict) else None
    kinds = (kind,) if isinstance(kind, str) else kind
    if found not in kinds:
        needed = " or ".join(kinds)
        article = "an" if needed[0] in "aeiou" else "a"
        raise UserError(f"{what} {path} is a {found!r} checkpoint, but {article} {needed} checkpoint is needed here")
    ckpt["path"] = path  # where it came from: printed, and recorded by stage 2
    return ckpt


def state_hash(state_dict):
    """Content hash of a model's weights: which tokenizer a transformer was trained on."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        h.update(k.encode())  # names too: a renamed layer changes the hash
        # the raw bytes of each tensor, keys in sorted order: equal weights hash equal, any changed byte differs
        h.update(state_dict[k].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def prepare_run_dir(args, rank):
    """runs/<name>; refuse to start over an existing run unless --resume (never lose a run)."""
    run_dir = os.path.join(args.runs_dir, args.name)
    existing = latest_checkpoint(run_dir)  # None for a new run
    if existing and not args.resume:
        raise UserError(
            f"{run_dir} already holds a run ({os.path.basename(existing)}): pass --resume to continue it, "
            "--name NEW to start another, or delete the folder"
        )
    if args.resume and not existing:
        raise UserError(f"--resume: {run_dir} holds no checkpoint to resume; drop --resume to start a new run")
    # Every rank checked for an existing run above (before anyone writes); rank 0 alone creates
    # the folder. Under torchrun the others wait for it here, and stop too if rank 0 could not.
    # error travels from rank 0 to every rank, so all of them stop with the same message
    error = None
    if rank == 0:
        try:
            os.makedirs(run_dir, exist_ok=True)
            # probe: fail now, not at the first checkpoint after hours of training
            probe = os.path.join(run_dir, ".write_test")
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as e:
            error = f"cannot write to the output folder {run_dir} ({e.strerror}): pick another --runs-dir"
    if args.world > 1:
        # a one-element list: broadcast_object_list fills it in place on ranks 1..
        box = [error]
        dist.broadcast_object_list(box, src=0)  # also the barrier: the folder exists after it
        error = box[0]
    if error:
        raise UserError(error)
    return run_dir, existing


# ------------------------------------------------------------------------------------------
#### Logging: one progress line every N steps, log.jsonl, image grids
# ------------------------------------------------------------------------------------------


class Logger:
    def __init__(self, run_dir, stage, total, start, rank):
        self.path, self.stage, self.total, self.rank = os.path.join(run_dir, "log.jsonl"), stage, total, rank
        self.t0, self.step0 = time.time(), start  # it/s counts from the start step

    def log(self, step, metrics_, line=True):
        """Append one JSON line; print `stage step/total | it/s | ETA | terms` on rank 0."""
        if self.rank != 0:
            return  # one writer: rank 0
        elapsed = time.time() - self.t0
        its = (step - self.step0) / max(elapsed, 1e-9)
        # one JSON line per call (DESIGN.md "Conventions"): the terms as given, plus time and speed
        record = {"stage": self.stage, "step": step, "time": round(elapsed, 2), "it_s": round(its, 3), **metrics_}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if line:                                        # line=False: into log.jsonl only
            eta = (self.total - step) / max(its, 1e-9)  # seconds left at the current speed
            # floats to 4 significant digits; strings (the collapse WARNING) and bools as they are
            terms = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics_.items())
            print(f"{self.stage} {step}/{self.total} | {its:.2f} it/s | ETA {fmt_time(eta)} | {terms}", flush=True)


def fmt_time(seconds):
    # e.g. 1h05m above an hour, else 4m07s
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def save_grid(images, path, nrow):
    """Images in [-1, 1] -> one PNG; small images are upscaled 2x (nearest) to be readable."""
    images = images.detach().float().cpu().clamp(-1, 1)  # (B, 3, H, W), fp32 even from bf16
    if images.shape[-1] < 64:
        images = F.interpolate(images, scale_factor=2, mode="nearest")  # (B, 3, 2H, 2W)
    # [-1, 1] -> [0, 1]; white padding between tiles
    torchvision.utils.save_image(images * 0.5 + 0.5, path, nrow=nrow, padding=2, pad_value=1.0)


# ------------------------------------------------------------------------------------------
#### Data and models from flags
# ------------------------------------------------------------------------------------------


def load_data(args, split):
    # DataError (a missing folder, an unreadable image, ...) -> one-line UserError, no traceback
    try:
        return data.build_dataset(args.data, split, args.image_size, args.data_dir, args.data_seed,
                                  args.skip_bad_images, args.n_train, args.n_val)
    except data.DataError as e:
        raise UserError(str(e)) from None


def ignore_sigint(worker_id):
    """In DataLoader workers: Ctrl-C reaches the whole process group, and a worker that dies of
    it would take the batch the main process still needs for its final checkpoint (Stop)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled once, by Stop, in the main process


def batches(ds, args, start, total, batch_size, rank, world, flip):
    """Batches of steps start..total-1, each a function of (seed, step) (data.step_batch)."""
    # the batch of step t is a function of (seed, t) alone: resuming at step t reads exactly the
    # batches an uninterrupted run would have read; each rank takes its share of the global batch
    sampler = data.StepSampler(len(ds), batch_size, args.seed, start, total, flip, rank, world)
    # generator: a DataLoader draws its workers' base seed when iterated, from the global torch
    # RNG by default; a resumed run iterates a new one, which would shift dropout, masks, ...
    # A private generator keeps the global stream exactly that of an uninterrupted run.
    return torch.utils.data.DataLoader(
        ds, batch_sampler=sampler, num_workers=args.workers, pin_memory=args.device_obj.type == "cuda",
        persistent_workers=False, generator=torch.Generator().manual_seed(args.seed),
        worker_init_fn=ignore_sigint if args.workers > 0 else None,  # workers ignore Ctrl-C (Stop handles it)
    )


def tokenizer_config(args):
    """TokenizerConfig from the preset, with flags overriding fields."""
    cfg = vq.TokenizerConfig(**vq.TOKENIZER_PRESETS[args.preset])
    cfg.image_size = args.image_size  # H = W; the preset's size unless --image-size
    # flags left at None keep the preset's value
    for field in ("K", "nz", "entropy_weight", "entropy_temperature", "window"):
        if getattr(args, field, None) is not None:
            setattr(cfg, field, getattr(args, field))
    # --attention: the decoder with attention from step 0 (Table 1's one-phase "+Attention" variant)
    cfg.attention = bool(args.attention)
    # the latent grid must be whole: h = H / f (Sec. 3.1)
    if cfg.image_size % cfg.f != 0:
        raise UserError(
            f"--image-size {cfg.image_size} is not divisible by the downsampling factor f={cfg.f} of preset "
            f"{args.preset!r}: use a multiple of {cfg.f}"
        )
    return cfg


def classifier_model(cfg):
    # rebuilt from the config stored in its checkpoint (STYLE.md rule 11)
    return losses.SmallVGG16(cfg["num_classes"], tuple(cfg["widths"]), cfg["hidden"])


def semantic_network(args, rank):
    """The VGG16 the perceptual loss reads: ImageNet VGG16 or the small classifier (printed)."""
    # the paper's choice (Sec. 3.3.2): torchvision's ImageNet VGG16, its relu layers and logits
    if args.semantic == "imagenet":
        try:
            with rank0_first(args):  # one download into torch's cache, not one per rank
                net = losses.imagenet_vgg16(args.vgg_weights)
        except RuntimeError as e:
            raise UserError(str(e)) from None
        where = args.vgg_weights or "torchvision IMAGENET1K_V1"
    # ours (DESIGN.md): offline, or on a dataset with its own classes, a small VGG16-shaped
    # classifier of those classes, same layer names, its own logits
    elif args.semantic == "classifier":
        path = args.classifier_ckpt or os.path.join(args.runs_dir, f"{args.preset}-classifier")
        with rank0_first(args):  # rank 0 trains a missing classifier; the others then load it
            if latest_checkpoint(path) is None and not os.path.isfile(path):  # no checkpoint yet
                if args.classifier_ckpt:  # a missing explicit path is a mistake, not a cue to train
                    raise UserError(f"--classifier-ckpt {path}: no such checkpoint")
                print(f"no semantic classifier at {path} yet: training it first (python train.py --stage classifier)")
                # the classifier stage runs in this process with the preset's classifier settings: this stage's
                # --steps, --lr, --batch-size must not leak into it (set to None, then filled by resolve())
                sub = argparse.Namespace(**{**vars(args), "stage": "classifier", "name": f"{args.preset}-classifier",
                                            "resume": False, "steps": None, "lr": None, "batch_size": None,
                                            "rank": 0, "world": 1})  # rank 0 alone
                train_classifier(resolve(sub))  # resolve(): steps, lr, batch size from the preset's classifier section
        ckpt = load_checkpoint(path, "classifier", "--classifier-ckpt")
        net = classifier_model(ckpt["config"])
        net.load_state_dict(ckpt["model"])
        where = f"small VGG16-shaped classifier {ckpt['path']} (val acc {ckpt.get('val_acc', float('nan')):.3f})"
    else:  # "random": tests only, never a silent fallback
        with torch.random.fork_rng(devices=[]):  # the same weights on every rank (seeds differ by rank)
            torch.manual_seed(args.seed)
            net = losses.SmallVGG16(8)  # 8 classes: an arbitrary head, never trained
        where = "RANDOM weights (tests only: the perceptual loss is meaningless)"
    if rank == 0:
        print(f"semantic network: {where}")
    # frozen and in eval mode for good (losses.VGG16Features): a fixed feature extractor
    return losses.VGG16Features(net).to(args.device_obj)


def wrap_ddp(model, args):
    if args.world > 1:
        # the GPU this rank owns; None on the CPU (gloo)
        ids = [args.device_obj.index] if args.device_obj.type == "cuda" else None
        # find_unused_parameters stays off: every trained parameter gets a gradient at every
        # step, and DDP does not track frozen ones (phase 2's encoder and codebook) at all
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return model


def maybe_compile(model, args):
    # compiled modules keep the original in _orig_mod (unwrap() reaches it for saving and sampling)
    return torch.compile(model) if args.compile else model


class Stop:
    """SIGINT / SIGTERM set a flag; the loop saves a checkpoint at the end of the step and exits 0."""

    def __init__(self):
        self.signal = None  # name of the signal received; None while running
        self.previous = {}  # handlers to restore on exit

    def __enter__(self):
        # Ctrl-C and SIGTERM (a cluster's time limit) both end the run cleanly
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self.handle)  # keep the old handler for __exit__
        return self

    def handle(self, signum, frame):
        self.signal = signal.Signals(signum).name  # only a flag: the loop stops at the end of the step

    def requested(self, args):
        """Stop after this step? Under torchrun: if any rank got a signal, so that every rank
        stops at the same step (a rank left in a collective alone would wait forever)."""
        if args.world > 1:
            device = args.device_obj if dist.get_backend() == "nccl" else "cpu"  # NCCL: CUDA tensors only
            flag = torch.tensor([self.signal is not None], dtype=torch.int32, device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # 1 if any rank got a signal
            if flag.item() and self.signal is None:
                self.signal = "a signal to another rank"
        return self.signal is not None

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)  # default Ctrl-C behaviour again after the stage


def check_finite(step, terms):
    """A NaN or inf loss ends the run with the term named; the last good checkpoint stays."""
    for name, value in terms.items():
        if torch.is_tensor(value) and not torch.isfinite(value).all():
            raise UserError(
                f"non-finite loss at step {step}: {name} = {value.item()}; the last good checkpoint is kept, "
                "lower --lr and --resume"
            )


def finish(stop, run_dir, state, args, logger, step):
    """Save a checkpoint on exit paths; say where."""
    # the last checkpoint is written on every exit path: done, Ctrl-C or SIGTERM
    path = save_checkpoint(run_dir, state, args.keep) if args.rank == 0 else None
    if args.rank == 0:
        reason = f"stopped by {stop.signal}" if stop.signal else "done"
        print(f"{logger.stage}: {reason} at step {step}; checkpoint {path}", flush=True)
    if stop.signal:  # interrupted: a clean exit, also out of a stage started by another one
        raise SystemExit(0)
    return path


# ------------------------------------------------------------------------------------------
#### Stage: the small semantic classifier (ours)
# ------------------------------------------------------------------------------------------


@torch.no_grad()
def classifier_accuracy(net, ds, device, batch_size=256):
    net.eval()  # BatchNorm running statistics, no dropout
    correct = 0
    for i in range(0, len(ds), batch_size):
        # (x, y) pairs of samples i .. i+b-1 straight from the dataset (no DataLoader, no flips)
        x, y = zip(*(ds[j] for j in range(i, min(i + batch_size, len(ds)))))
        # top-1 prediction == label, counted on the CPU
        correct += (net(torch.stack(x).to(device)).argmax(1).cpu() == torch.stack(y)).sum().item()
    net.train()
    return correct / len(ds)


def train_classifier(args):
    """Cross-entropy on the dataset's labels: a VGG16-shaped network that knows its classes."""
    run_dir, existing = prepare_run_dir(args, args.rank)
    train_ds, val_ds = load_data(args, "train"), load_data(args, "val")
    if train_ds.num_classes < 2:
        raise UserError("--stage classifier needs labelled data (sub-folders per class); use --semantic imagenet")
    # VGG16's five stages at 1/4 of its widths (64, 128, 256, 512, 512); hidden 256 (VGG16: 4096)
    config = {"num_classes": train_ds.num_classes, "widths": [16, 32, 64, 128, 128], "hidden": 256}
    net = classifier_model(config).to(args.device_obj)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)  # plain Adam (ours; the paper uses a pretrained VGG16)
    start = 0
    if existing:
        ckpt = load_checkpoint(existing, "classifier")
        check_config(ckpt["config"], config, existing)
        net.load_state_dict(ckpt["model"]), opt.load_state_dict(ckpt["optimizer"])
        start = ckpt["step"]
        set_rng_state(ckpt["rng"])  # continues the dropout stream where the run stopped
    if start >= args.steps:
        print(f"{run_dir} already finished ({start}/{args.steps} steps); nothing to do. Pass a larger --steps to continue.")
        return existing
    logger = Logger(run_dir, "classifier", args.steps, start, args.rank)

    def state(step):
        return {"kind": "classifier", "config": config, "model": net.state_dict(), "optimizer": opt.state_dict(),
                "step": step, "rng": rng_state(), "args": vars_of(args)}

    step = start
    with Stop() as stop:
        # rank 0 of world 1: under torchrun every rank reads the whole batch and trains its own copy
        # (no DDP; only rank 0's is saved); flips=True: horizontal flips as augmentation (ours)
        for step, (x, y) in enumerate(batches(train_ds, args, start, args.steps, args.batch_size, 0, 1, True), start + 1):
            x, y = x.to(args.device_obj), y.to(args.device_obj)  # x (B, 3, H, W) in [-1, 1], y (B,)
            loss = F.cross_entropy(net(x), y)                    # logits (B, K_cls) vs labels (B,)
            check_finite(step, {"ce": loss})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % args.log_every == 0 or step == args.steps:
                skipped = {"skipped": data.skipped_images(train_ds, val_ds)} if args.skip_bad_images else {}
                logger.log(step, {"ce": loss.item(), **skipped})
            if stop.signal:  # no collective to agree on: each copy runs alone
                break
            if step % args.ckpt_every == 0 and args.rank == 0:  # under torchrun every rank trains a copy
                save_checkpoint(run_dir, state(step), args.keep)
        # the final evaluation is inside Stop too: Ctrl-C during it still saves and exits 0
        acc = classifier_accuracy(net, val_ds, args.device_obj)
        logger.log(step, {"val_acc": acc})
        final = state(step)
        final["val_acc"] = acc
        return finish(stop, run_dir, final, args, logger, step)


# ------------------------------------------------------------------------------------------
#### Stages: the tokenizer, phase 1 (Sec. 3.4) and phase 2 (Fig. 7)
# ------------------------------------------------------------------------------------------


def tokenizer_losses(model, perceptual, disc, x, step, args):
    """All generator-side terms of one batch (Eq. 2 + Eq. 3 + GAN); returns (total, terms, s, x_hat).

    L = ||x - x_hat||_1 + codebook + beta*commit - gamma*H(D_bar)  (Eq. 2, Sec. 3.4, sign: vq.py)
        + w_per * L_per^alpha                                      (Eq. 3; w_per = 1 in the paper)
        + lambda * disc_weight * L_G                               (VQGAN, after disc_start)
    """
    x_hat, s, vq_terms = model(x)  # x_hat (B, 3, H, W), s (B, h, w); Eq. 1 inside
    l1 = (x - x_hat).abs().mean()  # Eq. 2, first term
    per = perceptual.terms(x_hat.float(), x.float())  # {"per": Eq. 3, "low", "sem"} (Sec. 3.3.2)
    l_per = per["per"]  # L_per^alpha = alpha * L_sem + (1 - alpha) * L_low (Eq. 3, losses.py)
    rec = l1 + args.perceptual_weight * l_per  # w_per: 1 at paper scale, 0.01 in `tiny` (ours)
    # the VQ terms come weighted from vq.py: beta on commit, -gamma on the entropy (our sign, DESIGN.md)
    total = rec + vq_terms["codebook"] + vq_terms["commit"] + vq_terms["entropy"]  # L_vq' of Eq. 2 + Sec. 3.4
    # every term separately for the log line; low and sem both logged, whatever alpha is
    terms = {"l1": l1, "per": l_per, "low": per["low"], "sem": per["sem"], **vq_terms}
    # GAN from disc_start on (the step is ours, as in VQGAN): reconstruction first, then realism
    if disc is not None and step >= args.disc_start and args.disc_weight > 0:
        g = losses.hinge_g_loss(disc(x_hat))  # -E[D(x_hat)]; reaches G through D
        last = unwrap(model).last_layer()     # the decoder's conv_out weight
        # VQGAN's adaptive weight lambda = ||grad L_rec|| / ||grad L_G|| at the decoder's last layer, times
        # disc_weight: keeps the GAN term on the scale of the reconstruction terms
        lam = losses.adaptive_weight(rec, g, last) * args.disc_weight
        total = total + lam * g     # lambda is detached: a plain number
        terms.update(g=g, lam=lam)  # g and lam also go to the log line
    return total, terms, s, x_hat


def discriminator_step(disc, opt_d, x, x_hat):
    """One hinge-loss step of D on real x and *detached* x_hat: no gradient reaches G."""
    # real and fake through D separately (VQGAN does the same; D's BatchNorm sees each batch alone)
    logits_real = disc(x.detach())
    logits_fake = disc(x_hat.detach())                      # detached: the hinge loss trains D only
    d_loss = losses.hinge_d_loss(logits_real, logits_fake)  # 0.5 * (E relu(1 - D(x)) + E relu(1 + D(x_hat)))
    opt_d.zero_grad(set_to_none=True)  # also drops what the generator step left in D
    d_loss.backward()
    opt_d.step()
    return d_loss.detach()  # for the log line


def unwrap(model):
    model = model.module if hasattr(model, "module") else model  # the DDP wrapper
    return getattr(model, "_orig_mod", model)  # torch.compile wrapper


@torch.no_grad()
def evaluate_tokenizer(model, perceptual, ds, args, batch_size=128):
    """Over the full validation split: L1, L_low, L_sem, codebook usage and perplexity, indices."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    K = model.cfg.K
    # usage and perplexity count codes over the whole split, not per batch (Table 2's "Usage")
    counter, sums, n, all_s = metrics.CodeCounter(K), {"l1": 0.0, "low": 0.0, "sem": 0.0}, 0, []
    idx = list(range(len(ds)))[args.rank :: args.world]  # each rank evaluates its share
    for i in range(0, len(idx), batch_size):
        x = torch.stack([ds[j][0] for j in idx[i : i + batch_size]]).to(args.device_obj)  # (b, 3, H, W)
        with autocast(args.device_obj):
            x_hat, s, _ = model(x)                # x_hat (b, 3, H, W), s (b, h, w)
        per = perceptual.terms(x_hat.float(), x)  # {"low": L_low, "sem": L_sem}
        b = x.shape[0]
        # sums of per-image means, divided by n at the end: the split mean, however the last batch falls
        sums["l1"] += (x - x_hat.float()).abs().mean().item() * b
        sums["low"] += per["low"].item() * b
        sums["sem"] += per["sem"].item() * b
        n += b
        counter.update(s)
        all_s.append(s.cpu())  # (b, h, w) on the CPU, for the phase-2 check
    if args.world > 1:  # usage over all ranks, losses averaged over all images
        counter.all_reduce()  # code counts of all ranks' images
        # one float64 all-reduce for the three sums and the image count
        t = torch.tensor([sums["l1"], sums["low"], sums["sem"], n], dtype=torch.float64, device=args.device_obj)
        dist.all_reduce(t)
        sums, n = {"l1": t[0].item(), "low": t[1].item(), "sem": t[2].item()}, int(t[3].item())
    model.train(was_training)
    out = {f"val_{k}": v / max(n, 1) for k, v in sums.items()}  # val_l1, val_low, val_sem
    out.update(val_usage=counter.usage(), val_perplexity=counter.perplexity())
    return out, torch.cat(all_s)


def train_tokenizer(args):
    """Phase 1 (--stage tokenizer) or phase 2 (--stage decoder) of Fig. 7."""
    phase = 2 if args.stage == "decoder" else 1  # Fig. 7: 1 = --stage tokenizer, 2 = --stage decoder
    run_dir, existing = prepare_run_dir(args, args.rank)
    dev = args.device_obj
    if not 0.0 <= args.alpha <= 1.0:
        raise UserError(f"--alpha {args.alpha}: the semantic ratio of Eq. 3 must be in [0, 1]")
    train_ds, val_ds = load_data(args, "train"), load_data(args, "val")

    if phase == 1:
        # phase 1 (Fig. 7, left): encoder, codebook and conv decoder trained jointly, alpha = 1
        cfg = tokenizer_config(args)
        model = vq.Tokenizer(cfg).to(dev)  # conv decoder, or attention with --attention
        source = None                      # no parent run
    else:
        # Phase 2: start from a phase-1 checkpoint; encoder and codebook stay frozen.
        phase1 = args.phase1 or os.path.join(args.runs_dir, f"{args.preset}-tokenizer")
        if not os.path.exists(phase1):
            raise UserError(
                f"--stage decoder needs a phase-1 tokenizer checkpoint; {phase1} does not exist: "
                "run `python train.py --stage tokenizer` first, or pass --phase1 PATH"
            )
        ckpt1 = load_checkpoint(phase1, "tokenizer", "--phase1")  # a file, or the run folder's latest
        # phase 2 fine-tunes a phase-1 tokenizer, never a phase-2 one (its decoder is enhanced already)
        if ckpt1.get("phase") != 1:
            raise UserError(f"--phase1 {ckpt1['path']} is a phase-{ckpt1.get('phase')} checkpoint; phase 2 starts from phase 1")
        base = vq.Tokenizer(vq.TokenizerConfig(**ckpt1["config"]))  # the phase-1 architecture, from its config
        base.load_state_dict(ckpt1["model"])
        model = vq.enhance_decoder(base, window=args.window).to(dev)  # Sec. 3.4: attention decoder
        cfg, source = model.cfg, ckpt1["path"]  # cfg.attention is True now
        # requires_grad False: no gradient, no Adam state, DDP skips them; so the index s of every image
        # (Eq. 1) stays what phase 1 made, and a transformer trained on phase-1 tokens still fits
        for p in list(model.encoder.parameters()) + list(model.quantizer.parameters()):
            p.requires_grad_(False)  # Fig. 7: encoder and codebook frozen in phase 2

    # Eq. 3 reads VGG16 features of x and x_hat; alpha = 1 in phase 1, 0 in phase 2 (resolve())
    features = semantic_network(args, args.rank)
    perceptual = losses.SemanticPerceptualLoss(features, args.alpha)                   # alpha: Fig. 7
    disc = losses.Discriminator(ndf=args.disc_ndf, n_layers=args.disc_layers).to(dev)  # PatchGAN, as in VQGAN
    # phase 1: everything; phase 2: the decoder only (its conv weights and the new attention blocks)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=args.lr, betas=(0.5, 0.9))  # betas: VQGAN's (ours)
    opt_d = torch.optim.Adam(disc.parameters(), lr=args.lr, betas=(0.5, 0.9))  # D: the same lr and betas as G (ours)
    start = 0
    if existing:
        ckpt = load_checkpoint(existing, "tokenizer")
        check_config(ckpt["config"], asdict(cfg), existing)  # refuse to resume into another model
        model.load_state_dict(ckpt["model"]), opt.load_state_dict(ckpt["optimizer"])
        disc.load_state_dict(ckpt["disc"]), opt_d.load_state_dict(ckpt["disc_optimizer"])
        start = ckpt["step"]
        set_rng_state(ckpt["rng"], args.rank)  # ranks branch off rank 0's stream
    elif phase == 2 and "disc" in ckpt1:       # a new phase-2 run
        disc.load_state_dict(ckpt1["disc"])  # the phase-1 discriminator is a good start
    if start >= args.steps:
        print(f"{run_dir} already finished ({start}/{args.steps} steps); nothing to do. Pass a larger --steps to continue.")
        return existing

    if args.rank == 0:
        # the total counts the frozen encoder/codebook too in phase 2; "trained" is what Adam updates
        n_params = sum(p.numel() for p in model.parameters())
        print(f"tokenizer phase {phase}: {n_params / 1e6:.2f}M parameters ({sum(p.numel() for p in params) / 1e6:.2f}M trained), "
              f"{cfg.latent_size}x{cfg.latent_size} tokens, K={cfg.K}, alpha={args.alpha}, gamma={cfg.entropy_weight}")
    before, s_before = None, None
    # phase-2 baseline: val metrics and every val image's indices, before the decoder changes
    if phase == 2 and start == 0:
        before, s_before = evaluate_tokenizer(model, perceptual, val_ds, args)  # (metrics, s (M, h, w))
        if args.rank == 0:
            print("before phase 2: " + " ".join(f"{k} {v:.4f}" for k, v in before.items()))

    ddp_model = maybe_compile(wrap_ddp(model, args), args)  # DDP first, then torch.compile
    # D's own step goes through DDP (same D on every rank); the generator step reads the bare D,
    # whose parameter gradients there are thrown away (discriminator_step zeroes them first)
    ddp_disc = wrap_ddp(disc, args)
    logger = Logger(run_dir, args.stage, args.steps, start, args.rank)
    # the same 16 val images in every recon grid, so grids of successive steps compare
    grid_x = torch.stack([val_ds[i][0] for i in range(min(16, len(val_ds)))]).to(dev)
    counter = metrics.CodeCounter(cfg.K)  # training usage since the last log line

    def state(step):
        # self-describing (STYLE.md rule 11): weights, both optimizers, D, step, RNG, config, parent run
        return {"kind": "tokenizer", "phase": phase, "config": asdict(cfg), "model": model.state_dict(),
                "optimizer": opt.state_dict(), "disc": disc.state_dict(), "disc_optimizer": opt_d.state_dict(),
                "step": step, "rng": rng_state(), "args": vars_of(args), "phase1": source}

    def grid(step):
        if args.rank == 0:
            with torch.no_grad():
                model.eval()
                x_hat = model(grid_x)[0].float()  # (16, 3, H, W) reconstructions
                model.train()
            pairs = torch.stack([grid_x, x_hat], 1).flatten(0, 1)  # input | reconstruction, side by side
            save_grid(pairs, os.path.join(run_dir, f"recon_{step:08d}.png"), nrow=8)  # 4 input | recon pairs per row

    step = start
    model.train()
    with Stop() as stop:
        # this rank's share of each global batch; flips only with --flip
        loader = batches(train_ds, args, start, args.steps, args.batch_size, args.rank, args.world, args.flip)
        for step, (x, _) in enumerate(loader, start + 1):
            x = x.to(dev, non_blocking=True)  # (B/world, 3, H, W) in [-1, 1]
            opt.zero_grad(set_to_none=True)
            # Gradient accumulation: the batch in k micro-batches, each loss scaled by 1/k, the
            # gradients summed (DDP all-reduces after the last one only). Exactly one step on
            # the whole batch for the per-image terms, not for two: D_bar of the entropy term is
            # the soft usage of a micro-batch (H of a mean is not the mean of H), and after
            # disc_start the adaptive weight and D's BatchNorm see micro-batches (README notes).
            micro, fakes, terms = x.chunk(args.grad_accum), [], {}  # k x (B/(world*k), 3, H, W)
            for i, xm in enumerate(micro):
                # DDP: skip the gradient all-reduce on all micro-batches but the last (no_sync)
                sync = ddp_model.no_sync() if args.world > 1 and i < len(micro) - 1 else nullcontext()
                with sync, autocast(dev):
                    total, terms_m, s, x_hat = tokenizer_losses(ddp_model, perceptual, disc, xm, step, args)
                check_finite(step, terms_m)
                (total / len(micro)).backward()  # 1/k: the k gradients sum to the batch mean's
                # training usage: the codes Eq. 1 picked, counted since the last log line
                counter.update(s)
                fakes.append(x_hat.detach())  # kept for D's step (no graph)
                terms = {k: terms.get(k, 0.0) + v.detach() / len(micro) for k, v in terms_m.items()}  # batch means
            # the generator step: encoder + codebook + decoder (phase 1) or the decoder alone (phase 2)
            opt.step()
            # then D's step on the same batch; the generator step above never received D's loss gradient
            # (STYLE.md "Avoid")
            if step >= args.disc_start and args.disc_weight > 0:
                with autocast(dev):  # D sees the whole batch, the x_hat the generator step made
                    terms["d"] = discriminator_step(ddp_disc, opt_d, x, torch.cat(fakes))
                check_finite(step, {"d": terms["d"]})  # a diverging D ends the run too
            if step % args.log_every == 0 or step == args.steps:
                if args.world > 1:
                    counter.all_reduce()  # code counts of all ranks
                # batch means of this rank as floats; usage pooled over the ranks
                line = {k: v.item() for k, v in terms.items()}
                line["usage"] = counter.usage()  # share of the K codes used since the last log line
                if args.skip_bad_images:  # unreadable images replaced so far (this rank's loaders)
                    line["skipped"] = data.skipped_images(train_ds, val_ds)
                logger.log(step, line)
                counter = metrics.CodeCounter(cfg.K)  # reset: usage per logging window
            # full val split: L1, L_low, L_sem, usage and perplexity; the WARNING key on codebook collapse
            if step % args.eval_every == 0 and step < args.steps:
                ev, _ = evaluate_tokenizer(model, perceptual, val_ds, args)
                logger.log(step, {**ev, **collapse_warning(ev["val_usage"], args)})
            if step % args.sample_every == 0:
                grid(step)            # recon_<step>.png: input | reconstruction
            if stop.requested(args):  # a signal on any rank stops all ranks at this step
                break
            # periodic checkpoint; the last one is written by finish() below, also after a Ctrl-C
            if step % args.ckpt_every == 0 and step < args.steps and args.rank == 0:
                save_checkpoint(run_dir, state(step), args.keep)
        # the final evaluation is inside Stop too: Ctrl-C during it still saves and exits 0
        after, s_after = evaluate_tokenizer(model, perceptual, val_ds, args)
        logger.log(step, {**after, **collapse_warning(after["val_usage"], args)})
        # Fig. 7's promise, checked: phase 2 changes the decoder only, so every val image keeps
        # its tokens (expected: True)
        if phase == 2 and s_before is not None and args.rank == 0:
            same = torch.equal(s_before, s_after)  # True expected: encoder and codebook frozen
            print(f"phase 2: token indices of all {len(s_after)} val images unchanged: {same}")
            print("after phase 2:  " + " ".join(f"{k} {v:.4f}" for k, v in after.items()))
            logger.log(step, {"indices_unchanged": same, **{f"before_{k}": v for k, v in before.items()}}, line=False)
        grid(step)
        return finish(stop, run_dir, state(step), args, logger, step)


def collapse_warning(usage, args):
    """Codebook collapse: say so in the log line when val usage falls below --collapse-warn."""
    # Table 2: VQGAN uses 42-44% of its 1024 codes, SeQ-GAN 100%; low usage = dead codes
    if usage < args.collapse_warn:
        return {"WARNING": f"codebook usage {usage:.0%} < {args.collapse_warn:.0%}: codebook collapse? raise --entropy-weight"}
    return {}


def check_config(saved, current, path):
    """Resume only into the same model: name the first field that differs."""
    for k in sorted(set(saved) | set(current)):
        a, b = saved.get(k), current.get(k)
        # a tuple and the equal list count as the same value (ch_mult is either, depending on where it came from)
        if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            raise UserError(f"{path} was trained with {k}={a}, but the flags give {k}={b}: use the same preset and flags to resume")


def vars_of(args):
    """The run's flags as plain values, for the checkpoint (no device objects)."""
    # plain values only: args.device_obj (a torch.device) and the like stay out of the checkpoint
    return {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None), list, tuple))}


# ------------------------------------------------------------------------------------------
#### Stages: the generative transformers (Sec. 3.1; AR = GPT, NAR = MaskGIT)
# ------------------------------------------------------------------------------------------


def default_tokenizer_path(args):
    """The newest tokenizer of this preset: phase 2 if it exists, else phase 1."""
    # phase 2 first: the same tokens as phase 1 (frozen encoder/codebook), the better decoder (Fig. 8)
    for stage in ("decoder", "tokenizer"):
        path = os.path.join(args.runs_dir, f"{args.preset}-{stage}")
        if latest_checkpoint(path):
            return path
    raise UserError(
        f"no tokenizer checkpoint in {args.runs_dir}/{args.preset}-decoder or -tokenizer: run "
        "`python train.py --stage tokenizer` first, or pass --tokenizer PATH"
    )


def token_hash(state_dict):
    """Hash of the weights that define the tokens: encoder and codebook, not the decoder.
    Phase 2 freezes both (Fig. 7), so phase 1 and its phase-2 fine-tune share this hash: a
    transformer trained on either one's tokens samples through the other's decoder."""
    # keys of the encoder and the codebook (quantizer.codebook.weight); decoder keys never count
    return state_hash({k: v for k, v in state_dict.items() if k.startswith(("encoder.", "quantizer."))})


def load_tokenizer(path, device):
    """A tokenizer checkpoint -> (Tokenizer in eval mode, checkpoint dict, token hash)."""
    ckpt = load_checkpoint(path, "tokenizer", "--tokenizer")
    model = vq.Tokenizer(vq.TokenizerConfig(**ckpt["config"]))  # rebuilt from the checkpoint alone
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt, token_hash(ckpt["model"])


@torch.no_grad()
def encode_dataset(tok, ds, device, flips, batch_size=256, workers=0, rank=0, world=1):
    """All images of a split -> token sequences (M, N) and labels (M,); with flips, M = 2n, the
    unflipped images first. Under torchrun, this rank's share: positions rank, rank + world, ...
    `workers` DataLoader processes read and decode the images (the bottleneck on a GPU)."""
    # (image index, flip) pairs: all images unflipped, then all flipped; this rank takes every world-th
    pairs = [(j, flip) for flip in ((False, True) if flips else (False,)) for j in range(len(ds))][rank::world]
    loader = torch.utils.data.DataLoader(
        # batch_sampler as a plain list of index lists, in order: row m of the output is pairs[m]
        ds, batch_sampler=[pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size)],
        num_workers=workers, pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # workers' seeds from a private generator: the global RNG stays put
    )
    # (0, N) and (0,) starters: torch.cat also works for a rank whose share is empty
    seqs, labels = [torch.zeros(0, tok.cfg.latent_size**2, dtype=torch.long)], [torch.zeros(0, dtype=torch.long)]
    for x, y in loader:
        with autocast(device):
            _, s, _ = tok.encode(x.to(device, non_blocking=True))  # s (b, h, w), Eq. 1
        seqs.append(s.flatten(1).cpu())  # (b, N) raster order
        labels.append(y)  # (b,)
    return torch.cat(seqs), torch.cat(labels)


def token_cache(args, tok, tok_hash, tok_path, phase1_path=None):
    """Encode train (with flips) and val once; cached beside the tokenizer, reused by every run.

    Under torchrun each rank encodes its share, rank 0 merges the shares and writes the file, and
    every rank reads it after a barrier. Indices are stored as int16 (K <= 32768): ImageNet's
    2 x 1.28M sequences of 256 tokens take 1.3 GB per process instead of 5.2 GB as int64.
    """
    # one file per (tokens, data, resolution), beside the tokenizer
    name = f"tokens_{tok_hash[:16]}_{args.data}_{args.image_size}.pt"
    path = os.path.join(os.path.dirname(tok_path), name)
    # a phase-2 tokenizer makes its phase-1 run's tokens (same hash): reuse that run's file if it has one
    if phase1_path and not os.path.isfile(path) and os.path.isfile(os.path.join(os.path.dirname(phase1_path), name)):
        path = os.path.join(os.path.dirname(phase1_path), name)
    if not os.path.isfile(path):  # every rank looks before rank 0 can write it (barriers below)
        t0 = time.time()
        train_ds, val_ds = load_data(args, "train"), load_data(args, "val")
        # int16 holds every id when K <= 32768 (the paper's K = 1024)
        index_dtype = torch.int16 if tok.cfg.K <= 2**15 else torch.int32
        cache = {"tokenizer_hash": tok_hash}  # the hash is stored in the file too
        # train: each image and its mirror image (2n sequences); val: unflipped only
        for split, ds, flips in (("train", train_ds, True), ("val", val_ds, False)):
            s, y = encode_dataset(tok, ds, args.device_obj, flips, workers=args.workers, rank=args.rank, world=args.world)
            cache[split] = (s.to(index_dtype), y)  # (n or 2n, N) int16, (n or 2n,)
        if args.world > 1:  # rank r encoded positions r::world; rank 0 interleaves the shares
            # each rank writes its share to a part file; rank 0 merges them once all are on disk
            part = lambda r: f"{path}.part{r}"
            atomic_write(part(args.rank), lambda f: torch.save(cache, f))
            dist.barrier()  # every part file is on disk
            if args.rank == 0:
                parts = [torch.load(part(r), weights_only=False) for r in range(args.world)]
                for split in ("train", "val"):
                    n = sum(len(p[split][0]) for p in parts)
                    s = torch.empty(n, parts[0][split][0].shape[1], dtype=index_dtype)  # (n, N)
                    y = torch.empty(n, dtype=torch.long)                                # (n,)
                    for r, p in enumerate(parts):
                        s[r :: args.world], y[r :: args.world] = p[split]  # undo the r::world split
                    cache[split] = (s, y)
                for r in range(args.world):
                    os.remove(part(r))  # the merged file replaces the parts
        skipped = f", {data.skipped_images(train_ds, val_ds)} unreadable images skipped" if args.skip_bad_images else ""
        if args.rank == 0:
            atomic_write(path, lambda f: torch.save(cache, f))  # rank 0 alone writes the final file
            print(f"token cache: encoded {len(cache['train'][0])} train + {len(cache['val'][0])} val sequences "
                  f"in {time.time() - t0:.0f}s{skipped} -> {path}")
    if args.world > 1:
        dist.barrier()  # rank 0 has written the cache
    cache = torch.load(path, weights_only=False)  # every rank reads the whole cache
    if args.rank == 0:
        print(f"token cache: {path} ({len(cache['train'][0])} train sequences)")
    return cache


# the config dict of a checkpoint -> GPT (AR) or MaskGIT (NAR); sample.py rebuilds through it too
def build_transformer(kind, tconfig):
    return (transformer.GPT if kind == "ar" else transformer.MaskGIT)(transformer.TransformerConfig(**tconfig))


@torch.no_grad()
def evaluate_transformer(model, kind, seqs, labels, args, batch_size=256):
    """Val loss and top-1 token accuracy (AR: teacher-forced = GT context of Sec. 3.2;
    NAR: on masked positions, with masks drawn from a fixed seed so evaluations compare)."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    # a private generator: the same val masks at every evaluation, the training RNG stream untouched
    g = torch.Generator().manual_seed(1234)
    loss_sum, correct, count = 0.0, 0, 0
    for i in range(0, len(seqs), batch_size):
        # int16 cache -> long ids s (B, N); labels y (B,)
        s, y = seqs[i : i + batch_size].to(args.device_obj).long(), labels[i : i + batch_size].to(args.device_obj)
        y = y if model.config.num_classes > 0 else None  # unconditional: the null class
        if kind == "ar":
            # AR: one teacher-forced pass = the GT context of Sec. 3.2; the argmax of each position is s',
            # so val_acc = mean(s' == s), the token accuracy of the GT-context view
            logits, loss = model(s, y, targets=s)
            mask = torch.ones_like(s, dtype=torch.bool)  # every position is predicted
        else:
            # NAR: masks drawn as in training (transformer.random_mask), from the private generator
            B, N = s.shape
            r = torch.rand(B, 1, generator=g)  # (B, 1) progress r ~ U(0, 1)
            n_masked = torch.ceil(transformer.cosine_schedule(r) * N).clamp(min=1)  # (B, 1)
            ranks = torch.rand(B, N, generator=g).argsort(1).argsort(1)  # (B, N) a random permutation's ranks
            mask = (ranks < n_masked).to(args.device_obj)  # True = masked (to predict)
            logits, loss = model(s, y, targets=s, mask=mask)  # loss on the masked positions only
        loss_sum += loss.item() * len(s)                      # the loss is a batch mean: weight by B
        # top-1 accuracy over the predicted positions only (True in mask)
        correct += ((logits.argmax(-1) == s) & mask).sum().item()
        count += mask.sum().item()  # positions scored
    model.train(was_training)
    return {"val_loss": loss_sum / len(seqs), "val_acc": correct / max(count, 1)}


def sample_images(model, kind, tok, n, num_classes, device, seed=0, **kw):
    """n images from a transformer (classes round-robin when conditional) -> (B, 3, H, W)."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    # the same seed at every call: grids of successive steps show the same draws
    g = torch.Generator(device=device).manual_seed(seed)
    y = torch.arange(n, device=device) % num_classes if num_classes > 0 else None  # labels 0, 1, 2, ... round robin
    s = model.generate(y, num_samples=n, generator=g, **kw)  # (n, N) ids, default sampling settings
    model.train(was_training)
    with torch.no_grad():
        return tok.decode_indices(s).float()  # (n, 3, H, W)


def lr_at(step, lr, warmup, total):
    """Learning rate of the transformers at 0-based `step` (ours; the paper states the lr only):
    linear warmup from lr/warmup to lr over `warmup` steps, then a cosine decay to 0.1 * lr at
    step `total`."""
    if step < warmup:  # linear from lr/warmup up to lr
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)                 # 0 .. 1 over the post-warmup steps
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))  # cosine from lr down to 0.1 * lr


@torch.no_grad()
def ema_update(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter (ours: sampling uses it)."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1 - decay)  # ema + (1 - decay) * (model - ema)


def train_transformer(args):
    """--stage ar / nar: token classification loss on the tokenizer's index sequences (Sec. 3.1)."""
    kind = args.stage  # "ar" (GPT) or "nar" (MaskGIT)
    run_dir, existing = prepare_run_dir(args, args.rank)
    dev = args.device_obj
    tok_path = args.tokenizer or default_tokenizer_path(args)  # default: phase 2 if present, else phase 1
    tok, tok_ckpt, tok_hash = load_tokenizer(tok_path, dev)
    if args.rank == 0:
        print(f"tokenizer: {tok_ckpt['path']} (phase {tok_ckpt.get('phase')}, hash {tok_hash[:12]})")
    if args.image_size != tok.cfg.image_size:  # else sequences of another length than the model's
        raise UserError(f"--image-size {args.image_size} differs from the {tok.cfg.image_size} px the tokenizer "
                        f"{tok_ckpt['path']} was trained on: pass --image-size {tok.cfg.image_size}")
    # read early, for the hash check below (before minutes of encoding)
    resumed = load_checkpoint(existing, kind) if existing else None
    if resumed is not None and resumed["tokenizer_hash"] != tok_hash:  # checked before encoding the data
        raise UserError(
            f"{existing} was trained on tokenizer {resumed['tokenizer_path']} (hash {resumed['tokenizer_hash'][:12]}), "
            f"not on {tok_ckpt['path']} (hash {tok_hash[:12]}): pass --tokenizer {resumed['tokenizer_path']}"
        )
    if resumed is not None and resumed["step"] >= args.steps:  # before minutes of encoding, too
        print(f"{run_dir} already finished ({resumed['step']}/{args.steps} steps); nothing to do. "
              "Pass a larger --steps to continue.")
        return existing
    # encodes once per tokenizer, then reuses the file
    cache = token_cache(args, tok, tok_hash, tok_ckpt["path"], tok_ckpt.get("phase1"))
    train_s, train_y = cache["train"]                           # (M, N) int16 ids, (M,) labels; M = 2n (flips)
    val_s, val_y = cache["val"]                                 # (n_val, N), (n_val,)
    # class-conditional only with --conditional and real labels (a dataset without classes gives
    # all zeros); 0 classes = unconditional, the null class alone
    num_classes = int(train_y.max().item()) + 1 if args.conditional and train_y.max() > 0 else 0
    # K and N come from the tokenizer, the sizes (L, H, D, dropout) from the transformer preset
    tconfig = dict(vocab_size=tok.cfg.K, seq_len=tok.cfg.latent_size**2, num_classes=num_classes,
                   class_dropout=args.class_dropout, **transformer.TRANSFORMER_PRESETS[args.transformer])
    if args.dropout is not None:
        tconfig["dropout"] = args.dropout             # --dropout overrides the preset's
    model = build_transformer(kind, tconfig).to(dev)  # GPT or MaskGIT
    # EMA copy (ours): eval mode for good, never trained directly; sampling and the final eval use it
    ema = build_transformer(kind, tconfig).to(dev).eval() if args.ema > 0 else None
    if ema is not None:
        ema.load_state_dict(model.state_dict())  # starts equal to the model
        ema.requires_grad_(False)
    # AdamW, weight decay 0.01 on Linear weights only, betas (0.9, 0.95): the paper gives only the lr
    opt = unwrap(model).configure_optimizer(weight_decay=0.01, lr=args.lr, betas=(0.9, 0.95))  # ours
    start = 0
    if existing:
        ckpt = resumed  # loaded above for the hash check
        check_config(ckpt["config"], tconfig, existing)
        model.load_state_dict(ckpt["model"]), opt.load_state_dict(ckpt["optimizer"])
        if ema is not None and ckpt.get("ema"):
            ema.load_state_dict(ckpt["ema"])
        start = ckpt["step"]
        set_rng_state(ckpt["rng"], args.rank)
    if start >= args.steps:
        print(f"{run_dir} already finished ({start}/{args.steps} steps); nothing to do. Pass a larger --steps to continue.")
        return existing
    if args.rank == 0:
        print(f"{kind}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, N={tconfig['seq_len']} "
              f"tokens, K={tconfig['vocab_size']}, {num_classes} classes, {len(train_s)} train sequences")

    ddp_model = maybe_compile(wrap_ddp(model, args), args)  # DDP first, then torch.compile
    logger = Logger(run_dir, kind, args.steps, start, args.rank)

    def state(step):
        # tokenizer_hash ties the model to its tokens: sample.py refuses a tokenizer whose hash differs
        return {"kind": kind, "config": tconfig, "model": model.state_dict(),
                "ema": ema.state_dict() if ema is not None else None, "optimizer": opt.state_dict(), "step": step,
                "rng": rng_state(), "args": vars_of(args), "tokenizer_path": os.path.abspath(tok_ckpt["path"]),
                "tokenizer_hash": tok_hash}

    def grid(step):
        if args.rank == 0:
            net = ema if ema is not None else model                       # EMA weights when kept: what sample.py uses
            images = sample_images(net, kind, tok, 16, num_classes, dev)  # (16, 3, H, W), classes round robin
            save_grid(images, os.path.join(run_dir, f"samples_{step:08d}.png"), nrow=8)

    step = start
    model.train()  # dropout and class dropout on
    with Stop() as stop:
        # flip=False: the flips are already in the token cache; each rank takes its share of the global batch
        for step, pairs in enumerate(
            data.StepSampler(len(train_s), args.batch_size, args.seed, start, args.steps, False, args.rank, args.world),
            start + 1,
        ):
            idx = torch.tensor([i for i, _ in pairs])  # this rank's dataset positions
            s, y = train_s[idx].to(dev).long(), train_y[idx].to(dev)  # the cache holds int16
            y = y if num_classes > 0 else None  # unconditional: the null class
            # set by hand every step: a resumed run continues the warmup/cosine schedule where it stopped
            for group in opt.param_groups:
                group["lr"] = lr_at(step - 1, args.lr, args.warmup, args.steps)
            opt.zero_grad(set_to_none=True)
            # gradient accumulation as in train_tokenizer: k micro-batches (B/(world*k), N), loss / k
            micro_s, micro_y = s.chunk(args.grad_accum), (y.chunk(args.grad_accum) if y is not None else [None] * args.grad_accum)
            loss_sum = 0.0  # gradient accumulation: each micro-batch's mean loss scaled by 1/k
            for i, (sm, ym) in enumerate(zip(micro_s, micro_y)):
                # DDP: all-reduce the gradients on the last micro-batch only
                sync = ddp_model.no_sync() if args.world > 1 and i < len(micro_s) - 1 else nullcontext()
                with sync, autocast(dev):
                    _, loss = ddp_model(sm, ym, targets=sm)  # Sec. 3.1: the tokens are input and label
                check_finite(step, {"loss": loss})
                (loss / len(micro_s)).backward()          # 1/k: the k gradients sum to the batch mean's
                loss_sum += loss.detach() / len(micro_s)  # for the log line
            loss = loss_sum  # this rank's batch mean, for the log line
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # before clipping
            opt.step()  # AdamW on the clipped gradients
            if ema is not None:
                ema_update(ema, model, args.ema)  # EMA of the weights (ours): sampling uses it
            if step % args.log_every == 0 or step == args.steps:
                logger.log(step, {"loss": loss.item(), "grad_norm": grad_norm.item(), "lr": opt.param_groups[0]["lr"]})
            # mid-run evaluation on the trained weights; the final one below uses the EMA weights
            if step % args.eval_every == 0 and step < args.steps:
                logger.log(step, evaluate_transformer(model, kind, val_s, val_y, args))
            if step % args.sample_every == 0:
                grid(step)
            if stop.requested(args):  # any rank signalled: all stop here
                break
            if step % args.ckpt_every == 0 and step < args.steps and args.rank == 0:
                save_checkpoint(run_dir, state(step), args.keep)
        # the final evaluation is inside Stop too: Ctrl-C during it still saves and exits 0
        ev = evaluate_transformer(ema if ema is not None else model, kind, val_s, val_y, args)
        logger.log(step, ev)  # final val metrics (EMA weights when kept)
        grid(step)
        return finish(stop, run_dir, state(step), args, logger, step)


# ------------------------------------------------------------------------------------------
#### main(args) and the command line
# ------------------------------------------------------------------------------------------

# --stage -> function; tokenizer and decoder share one function (phase 1 and phase 2 of Fig. 7)
STAGES = {"classifier": train_classifier, "tokenizer": train_tokenizer, "decoder": train_tokenizer,
          "ar": train_transformer, "nar": train_transformer}


def resolve(args):
    """Fill every flag left at None from the preset (stage section first, then the preset)."""
    if args.preset not in TRAIN_PRESETS:
        raise UserError(f"unknown --preset {args.preset!r}: choose one of {', '.join(TRAIN_PRESETS)}")
    preset = TRAIN_PRESETS[args.preset]
    stage_key = args.stage
    # the stage's own section last: its values win over the shared ones; a flag given (not None) wins over both
    for key, value in {**preset, **preset[stage_key]}.items():
        if key in STAGES:  # the stage sub-dicts are not flags
            continue
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.name is None:
        args.name = f"{args.preset}-{args.stage}"  # e.g. runs/tiny-tokenizer
    if args.image_size is None:
        args.image_size = vq.TOKENIZER_PRESETS[args.preset]["image_size"]  # 32 px tiny, 64 small, 256 at paper scale
    if args.alpha is None:
        args.alpha = 0.0 if args.stage == "decoder" else 1.0  # Fig. 7: alpha = 1 in phase 1, 0 in phase 2
    if args.workers is None:
        # shapes are cheap to draw in the main process; image files need workers to decode them
        args.workers = 0 if args.data == "shapes" else min(8, os.cpu_count() or 1)
    # every flag checked once, here: a typo fails at the start, not after an hour of training
    checks = [
        (args.steps is not None and args.steps >= 1, f"--steps must be >= 1, got {args.steps}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
        (0 < args.lr < math.inf or args.stage == "classifier" and args.steps == 0, f"--lr must be > 0, got {args.lr}"),
        (args.grad_accum >= 1 and args.batch_size % args.grad_accum == 0,
         f"--grad-accum {args.grad_accum} must be >= 1 and divide --batch-size {args.batch_size}"),
        (0.0 <= args.alpha <= 1.0, f"--alpha {args.alpha}: the semantic ratio of Eq. 3 must be in [0, 1]"),
        (args.entropy_weight is None or args.entropy_weight >= 0, f"--entropy-weight must be >= 0, got {args.entropy_weight}"),
        (args.image_size >= 8, f"--image-size must be >= 8, got {args.image_size}"),
        (args.keep >= 1, f"--keep must be >= 1, got {args.keep}"),
        (0.0 <= args.ema < 1.0, f"--ema must be in [0, 1), got {args.ema}"),
        (args.entropy_temperature is None or args.entropy_temperature > 0,
         f"--entropy-temperature must be > 0, got {args.entropy_temperature}"),
        (0.0 <= args.class_dropout < 1.0, f"--class-dropout must be in [0, 1), got {args.class_dropout}"),
        (args.workers >= 0, f"--workers must be >= 0 (0 = load in the main process), got {args.workers}"),
        *[(getattr(args, f"{k}_every") >= 1, f"--{k}-every must be >= 1, got {getattr(args, f'{k}_every')}")
          for k in ("log", "eval", "sample", "ckpt")],
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    return args


def main(args):
    """Run one stage. Returns the path of the final checkpoint. User mistakes -> SystemExit."""
    try:
        args = resolve(args)
        # (0, 1, 0) without torchrun
        args.rank, args.world, local_rank = setup_distributed()
        args.device_obj = pick_device(args.device, local_rank)  # cuda:<local_rank> or cpu
        seed_everything(args.seed + args.rank)  # per-rank offset: different dropout/masks per rank
        if args.threads:
            torch.set_num_threads(args.threads)  # a fixed CPU thread count; without the flag torch picks
        if args.batch_size % (args.world * args.grad_accum) != 0:  # equal micro-batches on every rank
            raise UserError(f"--batch-size {args.batch_size} (global) must divide into {args.world} processes x "
                            f"--grad-accum {args.grad_accum} equal micro-batches")
        return STAGES[args.stage](args)  # the final checkpoint's path
    except (UserError, data.DataError) as e:
        raise SystemExit(f"error: {e}") from None  # one line, no traceback
    finally:
        if dist.is_available() and dist.is_initialized():  # torchrun: leave the process group cleanly
            dist.destroy_process_group()


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True, choices=list(STAGES), help="what to train")
    p.add_argument("--preset", default="tiny", help=f"one of {', '.join(TRAIN_PRESETS)}")
    p.add_argument("--name", default=None, help="run name: runs/<name> (default <preset>-<stage>)")
    p.add_argument("--runs-dir", default="runs", help="folder holding all runs")
    p.add_argument("--resume", action="store_true", help="continue runs/<name> from its latest checkpoint")
    # data
    # the paper's datasets (ImageNet, FFHQ, LSUN) load with --data folder --data-dir PATH
    p.add_argument("--data", default=None, choices=["shapes", "cifar10", "folder"], help="dataset (default: preset)")
    p.add_argument("--data-dir", default=None, help="image folder (or one with train/ and val/), or CIFAR-10 root")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the built-in dataset's images")
    p.add_argument("--n-train", type=int, default=10000, help="built-in dataset: training images")
    p.add_argument("--n-val", type=int, default=1000, help="built-in dataset: validation images")
    p.add_argument("--image-size", type=int, default=None, help="H = W (default: preset)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False, help="random horizontal flips")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images instead of stopping")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 0 for shapes, else 8)")
    # tokenizer (Eq. 2, Eq. 3, Sec. 3.4)
    # None = the preset's value (resolve()); the paper: alpha 1 then 0 (Fig. 7), gamma 0.01 (Sec. 3.4)
    p.add_argument("--alpha", type=float, default=None, help="semantic ratio of Eq. 3 (default 1 in phase 1, 0 in phase 2)")
    p.add_argument("--entropy-weight", type=float, default=None, help="gamma of Sec. 3.4 (default 0.01; 0 = off)")
    p.add_argument("--entropy-temperature", type=float, default=None, help="tau of softmax(-D/tau) (ours; default 1)")
    p.add_argument("--K", type=int, default=None, help="codebook size (default: preset)")
    p.add_argument("--nz", type=int, default=None, help="code dimension (default: preset)")
    p.add_argument("--attention", action="store_true", help="attention-enhanced decoder from the start (Table 1's one-phase variant)")
    p.add_argument("--window", type=int, default=None, help="regional/dilated window side b (default: preset)")
    # phase 2 (Fig. 7) starts from this phase-1 run
    p.add_argument("--phase1", default=None, help="--stage decoder: phase-1 checkpoint or run folder (default runs/<preset>-tokenizer)")
    # the semantic network of Eq. 3: "imagenet" is the paper's; "classifier" is ours; "random" is for tests
    p.add_argument("--semantic", default=None, choices=["classifier", "imagenet", "random"], help="VGG16 of the perceptual loss")
    p.add_argument("--vgg-weights", default=None, help="local state_dict file of torchvision's vgg16 (offline use)")
    p.add_argument("--classifier-ckpt", default=None, help="small classifier checkpoint (default runs/<preset>-classifier)")
    p.add_argument("--perceptual-weight", type=float, default=None, help="w_per times L_per^alpha (paper: 1; tiny: 0.01, ours)")
    # the GAN "following VQGAN" (Sec. 3.1): PatchGAN + hinge loss + adaptive weight; start and weight ours
    p.add_argument("--disc-start", type=int, default=None, help="step at which the GAN loss starts (ours)")
    p.add_argument("--disc-weight", type=float, default=None, help="GAN weight, times VQGAN's adaptive weight (ours)")
    p.add_argument("--disc-ndf", type=int, default=64, help="PatchGAN base width")
    p.add_argument("--disc-layers", type=int, default=3, help="PatchGAN stride-2 layers")
    p.add_argument("--collapse-warn", type=float, default=0.5, help="warn when val codebook usage falls below this share")
    # transformers (Sec. 3.1)
    p.add_argument("--tokenizer", default=None, help="tokenizer checkpoint or run folder (default: newest of the preset)")
    # sizes: transformer.TRANSFORMER_PRESETS; "base" (~171M) and "large" (~306M) are the paper's (Tables 3, 4)
    p.add_argument("--transformer", default=None, help=f"transformer preset: {', '.join(transformer.TRANSFORMER_PRESETS)}")
    p.add_argument("--conditional", action=argparse.BooleanOptionalAction, default=True, help="class-conditional when labels exist")
    # classifier-free guidance at sampling needs the null class seen in training (sample.py --cfg-scale)
    p.add_argument("--class-dropout", type=float, default=0.1, help="label -> null class probability (for cfg)")
    p.add_argument("--dropout", type=float, default=None, help="transformer dropout (default: preset)")
    p.add_argument("--warmup", type=int, default=None, help="linear lr warmup steps")
    p.add_argument("--ema", type=float, default=None, help="EMA decay of transformer weights (0 = off)")
    # optimization
    # None = the stage's preset value; the paper-scale presets hold the paper's lr and steps (Sec. 4)
    p.add_argument("--steps", type=int, default=None, help="total training steps")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (same global batch)")
    p.add_argument("--lr", type=float, default=None, help="learning rate")
    # logging and checkpoints
    p.add_argument("--log-every", type=int, default=50, help="progress line and log.jsonl every N steps")
    p.add_argument("--eval-every", type=int, default=500, help="validation metrics every N steps")
    p.add_argument("--sample-every", type=int, default=500, help="image grid every N steps")
    # checkpoints also at the end and on Ctrl-C / SIGTERM (Stop)
    p.add_argument("--ckpt-every", type=int, default=250, help="checkpoint every N steps")
    p.add_argument("--keep", type=int, default=3, help="keep the newest N checkpoints")
    # system
    # auto: cuda:<LOCAL_RANK> when a GPU is visible, else cpu
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--compile", action="store_true", help="torch.compile the models")
    return p


if __name__ == "__main__":
    main(get_parser().parse_args())
