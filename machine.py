"""
The machine side of a run, nothing in it from the paper: user errors and argparse's range checks, devices
and precision, torchrun, seeds and RNG states, Ctrl-C, all-or-nothing files, two model helpers. It imports
nothing from the project, so every other file may import it.
"""

import argparse
import functools
import math
import os
import random
import signal
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


class UserError(Exception):
    """A mistake the user can fix; the scripts print it as one line `error: ...`, no traceback."""


def one_line_errors(main):
    """Every script's main(argv): a UserError ends it as SystemExit("error: ..."), one line."""
    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:  # data.DataError is one too
            raise SystemExit(f"error: {e}") from None
    return wrapped


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes end in one line, `error: ...`, like every other user error."""

    def error(self, message):
        # a range check's "argument --lr: must be > 0, got 0" reads "--lr must be > 0, got 0"
        flag, _, rest = message.partition(": ")
        if flag.startswith("argument ") and rest.startswith("must "):
            raise SystemExit(f"error: {flag.removeprefix('argument ')} {rest}")
        raise SystemExit(f"error: {message} (python {self.prog} --help)")


def at_least(minimum):
    """argparse type=: an int >= minimum."""
    def parse(text):
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def number(low, high=math.inf, low_open=False, high_open=True):
    """argparse type=: a float in [low, high) (each end open or closed as told); NaN never."""
    def parse(text):
        value = float(text)
        if not ((value > low if low_open else value >= low) and (value < high if high_open else value <= high)):
            if high == math.inf:
                raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low:g}, got {text}")
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            raise argparse.ArgumentTypeError(f"must be in {left}{low:g}, {high:g}{right}, got {text}")
        return value
    return parse


#### Devices and precision
def pick_device(name, local_rank=0):
    """--device -> torch.device. "auto": this process's own GPU under torchrun (LOCAL_RANK), else
    Apple's MPS GPU (macOS on Apple silicon), else the CPU."""
    if name == "auto":  # one GPU per Mac: torchrun's local rank does not apply to MPS
        name = (f"cuda:{local_rank}" if torch.cuda.is_available() else
                "mps" if torch.backends.mps.is_available() else "cpu")
    # fail at the start with a fixable message, not with a backend traceback at the first tensor
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible; use --device cpu")
    if name.startswith("mps") and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: Apple's MPS backend is not available here (it needs an "
                        "Apple-silicon Mac and a torch built with MPS); use --device cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # "gpu", "cuda0", ...
        raise UserError(f"--device {name}: not a device name; use auto, cpu, cuda, cuda:1 or mps") from None
    if device.type == "cuda":
        torch.cuda.set_device(device)  # default CUDA device of this process (matters under torchrun)
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls and convs on Ampere and later
        torch.backends.cudnn.allow_tf32 = True
    return device


PRECISIONS = {"auto": "auto", "bf16": torch.bfloat16, "fp32": None}  # --precision -> autocast's dtype


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast trains faster
    than fp32 (docs/benchmarks.md); elsewhere the CPU would emulate bf16, slower than fp32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: assume none
        return False


def precision_choice(device_type, precision):
    """--precision on a device type -> (what training computes in, why): what "auto" picks here."""
    if precision == "bf16":
        return "bf16 autocast", "--precision bf16"
    if precision == "fp32":
        return "fp32", "--precision fp32"
    if device_type == "cuda":
        return "bf16 autocast", "auto: CUDA computes bf16 natively"
    if device_type == "cpu" and cpu_has_bf16():
        return "bf16 autocast", "auto: this CPU computes bf16 natively (AVX512-BF16 or AMX)"
    if device_type == "cpu":
        return "fp32", "auto: this CPU has no native bf16 (no AVX512-BF16 or AMX), where bf16 would be slower"
    return "fp32", f"auto: {device_type} trains in fp32 here"


def run_line(device, precision, threads):
    """The line a run starts with: where and how it computes (device, precision and why, threads)."""
    what, why = precision_choice(device.type, precision)
    line = f"device {device}, {what} ({why})"
    if device.type == "cpu":
        n = torch.get_num_threads()
        line += (f", {n} CPU threads (--threads {threads})" if threads else
                 f", {n} CPU threads (torch's default; on a busy machine --threads 1 can be much faster)")
    return line


def autocast(device, dtype="auto"):
    """Mixed precision for the block, on `device` (a torch.device or a device type, "cuda" ...). dtype:
    "auto": bf16 on CUDA and on a CPU with native bf16, nothing on MPS or another CPU (training's default);
    "portable": bf16 on CUDA only (evaluation, token encoding): a figure or token measured on one CPU is
    the same on every CPU; torch.bfloat16: bf16 on any device, the CPU included (the tests run CUDA's
    mixed-precision path this way); None or torch.float32: plain fp32.
    MPS runs in fp32 (ours): its fp16 autocast would need a gradient scaler the training loops do not
    have, and its bf16 autocast depends on the macOS version and covers fewer ops."""
    device_type = device if isinstance(device, str) else device.type
    if dtype == "auto":
        dtype = torch.bfloat16 if device_type == "cuda" or device_type == "cpu" and cpu_has_bf16() else None
    elif dtype == "portable":
        dtype = torch.bfloat16 if device_type == "cuda" else None
    if dtype is None or dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type, dtype=dtype)


#### torchrun: process group, rank 0 first, DDP and torch.compile wrappers
@dataclass(frozen=True)
class Proc:
    """This process's rank, the number of processes (0 and 1 without torchrun) and its device."""
    rank: int
    world: int
    device: torch.device


def setup_distributed():
    """(rank, world_size, local_rank). Under torchrun, join the process group; else (0, 1, 0)."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    if not dist.is_initialized():  # a caller (a test) may have joined already; gloo for CPU-only runs
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


@contextmanager
def rank0_first(rank, world):
    """Under torchrun, rank 0 runs the block first (a download, a classifier to train, a file to
    write) and the other ranks run it after a barrier, when they find the result on disk."""
    if world > 1 and rank != 0:
        dist.barrier()  # waits for rank 0's barrier below
    yield
    if world > 1 and rank == 0:
        dist.barrier()  # rank 0 is done: release the others


def wrap_ddp(model, world, device):
    """DistributedDataParallel under torchrun; the model itself otherwise."""
    if world <= 1:
        return model
    # find_unused_parameters stays off: every trained parameter gets a gradient at every step, and DDP
    # does not track frozen ones (phase 2's encoder and codebook) at all
    ids = [device.index] if device.type == "cuda" else None  # the GPU this rank owns; None on the CPU (gloo)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def maybe_compile(model, enabled):
    # compiled modules keep the original in _orig_mod (unwrap() reaches it for saving and sampling)
    return torch.compile(model) if enabled else model


def unwrap(model):
    """The plain module inside DDP and torch.compile wrappers."""
    model = model.module if hasattr(model, "module") else model  # the DDP wrapper
    return getattr(model, "_orig_mod", model)  # torch.compile wrapper


#### Seeds and RNG states
def seed_everything(seed):
    # every RNG a stage draws from; torch covers init, dropout, MaskGIT masks and class dropout
    random.seed(seed)
    np.random.seed(seed % 2**32)  # NumPy seeds must fit in 32 bits
    torch.manual_seed(seed)


def rng_state():
    """All that set_rng_state needs to continue the random streams, as tensors and plain Python types
    only: a checkpoint holding it loads with torch.load(..., weights_only=True), which never runs code."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = {"bit_generator": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                   "cached_gaussian": float(cached_gaussian)}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()  # one state per visible GPU
    if torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()  # dropout, masks, ... drawn on the Apple GPU
    return state


def set_rng_state(state, rank=0):
    """Restore the saved RNG (rank 0's: only rank 0 writes checkpoints). Under torchrun the other
    ranks then branch off it by their rank, so their dropout and masks still differ."""
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["bit_generator"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])
    if rank > 0:  # a fresh seed drawn from rank 0's restored stream, offset by the rank
        seed_everything(int(torch.randint(2**62, (1,))) + rank)


#### Signals and files
class Stop:
    """SIGINT / SIGTERM (Ctrl-C, a cluster's time limit) set a flag: the loop saves a checkpoint and exits 0."""

    def __init__(self):
        self.signal = None  # name of the signal received; None while running
        self.previous = {}  # handlers to restore on exit

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame):
        self.signal = signal.Signals(signum).name  # only a flag: the loop stops at the end of the step

    def requested(self, world=1, device=None):
        """Stop after this step? Under torchrun: if any rank got a signal, so that every rank
        stops at the same step (a rank left in a collective alone would wait forever)."""
        if world > 1:
            device = device if dist.get_backend() == "nccl" else "cpu"  # NCCL: CUDA tensors only
            flag = torch.tensor([self.signal is not None], dtype=torch.int32, device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # 1 if any rank got a signal
            if flag.item() and self.signal is None:
                self.signal = "a signal to another rank"
        return self.signal is not None

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def ignore_sigint(worker_id):
    """In DataLoader workers: Ctrl-C reaches the whole process group, and a worker that dies of it
    would take the batch the main process still needs for its final checkpoint (Stop handles it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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


def remove_stale_temp_files(folder):
    """Remove atomic_write's temp files (*.tmp<pid>) whose writer was killed mid-write; a live writer's stay."""
    for f in os.listdir(folder):
        stem, _, pid = f.rpartition(".tmp")  # 'ckpt_00000500.pt.tmp1234' -> ('ckpt_00000500.pt', '.tmp', '1234')
        if not stem or not pid.isdigit() or int(pid) == os.getpid():  # not a temp file, or this process's own
            continue
        try:
            os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            os.remove(os.path.join(folder, f))
        except (PermissionError, OverflowError):
            pass  # alive under another user, or not a pid: leave it


#### Two model helpers
def num_params(model: torch.nn.Module) -> int:
    """Number of parameters; works on the meta device (no memory is allocated there)."""
    return sum(p.numel() for p in model.parameters())


@contextmanager
def eval_mode(model: torch.nn.Module):
    """model.eval() inside the block (no dropout or class dropout, BatchNorm's running statistics)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
