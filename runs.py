"""
What lives in runs/<name>/, and how every script finds, reads and rebuilds it.

A run folder holds
    ckpt_<step>.pt   self-describing checkpoints: kind, config, weights (and EMA), optimizers,
                     step, RNG states, the run's flags, and for a transformer the path and
                     hash of the tokenizer it was trained on
    latest           a text file naming the newest complete checkpoint
    log.jsonl        one JSON line of metrics per log step (runlog.py)
    *.png            image grids of reconstructions and samples (pictures.py)

This file holds, in that order: run folders and checkpoints (save, find, load with a kind
check, resume); which run a stage reads (the phase-1 run of --stage decoder, a transformer's
tokenizer, the semantic classifier of Eq. 3); rebuilding each model from its checkpoint alone
(classifier, tokenizer, transformer; the token hash that ties a transformer to its tokenizer's
encoder and codebook); shipping or converting checkpoints. Nothing here is from the paper; train.py, sample.py,
visualize.py, metrics.py and study.py all read checkpoints through it.

Loading never runs code: every file is read with torch.load(..., weights_only=True), which
unpickles tensors and plain Python types only, and checkpoints hold nothing else (the RNG
states included, see machine.rng_state). A file that holds anything else is refused with a
one-line error. Checkpoints written before this rule (NumPy's RNG state as an ndarray) are
converted once by

    python runs.py convert runs/<name>            # every ckpt_*.pt in the folder, or single files

Shape legend: B batch, H x W image, N = h*w tokens, K codebook size.
"""

import argparse
import hashlib
import io
import os
import pickle

import numpy as np
import torch
import torch.distributed as dist

import data
import losses
import transformer
import vq
from machine import UserError, atomic_write, one_line_errors, remove_stale_temp_files, set_rng_state
from runlog import read_log

# torch.load(..., weights_only=True) refuses a file with a "Weights only load failed" UnpicklingError
UNSAFE = "Weights only load failed"

# ------------------------------------------------------------------------------------------
#### Run folders and checkpoints
# ------------------------------------------------------------------------------------------


def prepare_run_dir(run_dir, resume, rank=0, world=1):
    """runs/<name>; refuse to start over an existing run unless --resume (never lose a run).
    Returns (run_dir, path of the checkpoint to resume or None)."""
    existing = latest_checkpoint(run_dir)  # None for a new run
    if existing and not resume:
        raise UserError(
            f"{run_dir} already holds a run ({os.path.basename(existing)}): pass --resume to continue it, "
            "--name NEW to start another, or delete the folder"
        )
    if resume and not existing:
        raise UserError(f"--resume: {run_dir} holds no checkpoint to resume; drop --resume to start a "
                        "new run")
    # Every rank checked for an existing run above (before anyone writes); rank 0 alone creates
    # the folder. Under torchrun the others wait for it here, and stop too if rank 0 could not:
    # the error travels from rank 0 to every rank, so all of them stop with the same message.
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
    if world > 1:
        # a one-element list: broadcast_object_list fills it in place on ranks 1..
        box = [error]
        dist.broadcast_object_list(box, src=0)  # also the barrier: the folder exists after it
        error = box[0]
    if error:
        raise UserError(error)
    return run_dir, existing


def remove_empty_run(run_dir):
    """Remove the folder of a run that failed before writing anything (a stale temp file aside), so
    that a failed start leaves no empty run behind. A folder with anything in it stays."""
    if os.path.isdir(run_dir):
        remove_stale_temp_files(run_dir)
        if not os.listdir(run_dir):
            os.rmdir(run_dir)


def save_checkpoint(run_dir, state, keep):
    """ckpt_<step>.pt, then the `latest` pointer; keep the newest `keep` checkpoints."""
    name = f"ckpt_{state['step']:08d}.pt"  # zero-padded: names sort in step order
    remove_stale_temp_files(run_dir)
    # a finite loss can still leave non-finite weights (an absurd lr): never save those over good ones
    for key in ("model", "ema", "disc"):
        for k, v in (state.get(key) or {}).items():
            if v.is_floating_point() and not torch.isfinite(v).all():
                raise UserError(f"non-finite weights after step {state['step']}: {key} {k}; not saved, "
                                "the last good checkpoint is kept, lower --lr and --resume")
    # weights, optimizer, step, RNG, config
    atomic_write(os.path.join(run_dir, name), lambda f: torch.save(state, f))
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
    ckpts = (sorted(f for f in os.listdir(run_dir) if f.startswith("ckpt_") and f.endswith(".pt"))
             if os.path.isdir(run_dir) else [])
    return os.path.join(run_dir, ckpts[-1]) if ckpts else None


def safe_load(path, what, fix, mmap=False):
    """torch.load(path) on the CPU with weights_only=True: tensors and plain Python types only, so a
    crafted file cannot run code here. A file that needs more is refused with a one-line
    UserError that names it and says what to do (`fix`); so is an unreadable one."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        # only a refused global means objects inside; random or truncated bytes fail on an opcode
        if UNSAFE not in str(e) or "Unsupported global" not in str(e):
            raise UserError(f"{what} {path}: not a readable checkpoint ({type(e).__name__}: "
                            f"{unpickler_reason(e)[:80]})") from None
        raise UserError(f"{what} {path}: holds objects that a safe load (torch.load weights_only=True) "
                        "will not unpickle, since unpickling them could run code; "
                        f"nothing was loaded. {fix}") from None
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"{what} {path}: not a readable checkpoint ({type(e).__name__})") from None


def load_checkpoint(path, kind, what="--ckpt", mmap=False):
    """Load a checkpoint (a file, or a run folder's latest) and check its kind.
    kind: "classifier", "tokenizer", "ar", "nar", or a tuple of them. mmap: map the tensors
    from disk instead of reading them (cheap, when only the small entries are needed)."""
    # a run folder stands for its newest checkpoint, so `--ckpt runs/tiny-ar` works
    if path is not None and os.path.isdir(path):
        resolved = latest_checkpoint(path)
        if resolved is None:
            raise UserError(f"{what} {path}: the folder holds no checkpoint (ckpt_*.pt)")
        path = resolved
    if path is None or not os.path.isfile(path):
        raise UserError(f"{what} {path}: no such checkpoint file")
    # on the CPU first: a checkpoint written on a GPU loads on any machine
    ckpt = safe_load(path, what, "If you trust it (say, a checkpoint of an older version of this code), "
                     f"convert it once with `python runs.py convert {path}`; else get it again from a "
                     "trusted source.", mmap)
    # a checkpoint of the wrong stage is refused by name
    found = ckpt.get("kind") if isinstance(ckpt, dict) else None
    kinds = (kind,) if isinstance(kind, str) else kind
    if found not in kinds:
        needed = " or ".join(kinds)
        article = "an" if needed[0] in "aeiou" else "a"
        raise UserError(f"{what} {path} is a {found!r} checkpoint, but {article} {needed} checkpoint is "
                        "needed here")
    ckpt["path"] = path  # where it came from: printed, and recorded by stage 2
    return ckpt


def check_config(saved, current, path):
    """Resume only into the same model: name the first field that differs."""
    for k in sorted(set(saved) | set(current)):
        a, b = saved.get(k), current.get(k)
        # a tuple and the equal list count as the same value
        # (ch_mult is either, depending on where it came from)
        if ((list(a) if isinstance(a, (list, tuple)) else a)
                != (list(b) if isinstance(b, (list, tuple)) else b)):
            raise UserError(f"{path} was trained with {k}={a}, but the flags give {k}={b}: "
                            "use the same preset and flags to resume")


def resume(ckpt, config, states, rank=0):
    """Continue a run from its checkpoint `ckpt` (None: a new run, step 0). Refuses another model
    (check_config), loads every state named in `states` ({checkpoint key: module or optimizer};
    a key the checkpoint holds as None, like a missing EMA, is skipped) and restores the RNG
    streams (rank 0's; other ranks branch off it). Returns the step to continue from."""
    if ckpt is None:
        return 0
    check_config(ckpt["config"], config, ckpt["path"])  # refuse to resume into another model
    for key, obj in states.items():
        if obj is not None and ckpt.get(key) is not None:
            try:
                obj.load_state_dict(ckpt[key])
            except (RuntimeError, ValueError, KeyError) as e:  # e.g. another --disc-layers than the run's
                first = str(e).strip().splitlines()[0][:160]
                raise UserError(f"{ckpt['path']}: its {key} does not fit what the flags build ({first}); "
                                "resume with the flags the run was started with") from None
    set_rng_state(ckpt["rng"], rank)  # the random streams continue where the run stopped
    return ckpt["step"]


def run_progress(ckpt):
    """(step, total steps) of the run a checkpoint belongs to. The total is what the run was started
    for ("total_steps"; older checkpoints: their --steps), None when the checkpoint does not say."""
    return ckpt["step"], ckpt.get("total_steps") or (ckpt.get("args") or {}).get("steps")


def resume_command(ckpt):
    """The command that finishes the run a checkpoint belongs to."""
    stage = {"tokenizer": "decoder" if ckpt.get("phase") == 2 else "tokenizer"}.get(ckpt["kind"], ckpt["kind"])
    run_dir = os.path.dirname(ckpt["path"])
    return (f"python train.py --stage {stage} --runs-dir {os.path.dirname(run_dir) or '.'} --name "
            f"{os.path.basename(run_dir)} --resume (with the other flags it was started with)")


def check_finished(ckpt, given, what):
    """A stage reads only finished runs: a run stopped part-way (Ctrl-C, a crash) is refused with the
    command that finishes it. `given`: the path as the user gave it; a checkpoint *file* is taken as
    it is (said so), which is how to use a stopped run on purpose."""
    step, total = run_progress(ckpt)
    if total is None or step >= total:
        return
    if os.path.isfile(given):
        print(f"note: {what} {ckpt['path']} stopped at step {step} of {total}; used as given")
        return
    raise UserError(f"{what} {given}: that run is unfinished (stopped at step {step} of {total}). Finish it: "
                    f"{resume_command(ckpt)}; or pass its checkpoint file ({ckpt['path']}) to use it as it is")


def finished(run_dir, start, steps):
    """True (and says so) when a resumed run has already done its `steps`."""
    if start >= steps:
        print(f"{run_dir} already finished ({start}/{steps} steps); nothing to do. Pass a larger --steps "
              "to continue.")
        return True
    return False


def finish(stop, run_dir, state, keep, rank, stage, step):
    """A stage's exit, done or stopped (machine.Stop): the last checkpoint, and a line that says
    where it is. A stopped run then exits 0, also out of a stage started by another one."""
    path = save_checkpoint(run_dir, state, keep) if rank == 0 else None  # on every exit path
    if rank == 0:
        reason = f"stopped by {stop.signal}" if stop.signal else "done"
        print(f"{stage}: {reason} at step {step}; checkpoint {path}", flush=True)
    if stop.signal:  # interrupted: a clean exit
        raise SystemExit(0)
    return path


# ------------------------------------------------------------------------------------------
#### Which run a stage reads: its phase-1 run, its tokenizer, its semantic classifier
# ------------------------------------------------------------------------------------------


def default_tokenizer(runs_dir, preset):
    """The newest tokenizer run of a preset: phase 2 if it exists, else phase 1. Phase 2 first:
    the same tokens as phase 1 (frozen encoder and codebook), the better decoder (Fig. 8)."""
    for stage in ("decoder", "tokenizer"):
        path = os.path.join(runs_dir, f"{preset}-{stage}")
        if latest_checkpoint(path):
            return path
    raise UserError(f"no tokenizer checkpoint in {runs_dir}/{preset}-decoder or -tokenizer: run "
                    "`python train.py --stage tokenizer` first, or pass --tokenizer PATH")


def phase1_run(args):
    """The finished phase-1 checkpoint that --stage decoder starts from: --phase1, else the preset's
    run <runs-dir>/<preset>-tokenizer (never on another dataset than the preset's own)."""
    if args.phase1 is None and args.own_data:
        raise UserError(f"{args.own_data}: pass --phase1 {os.path.join(args.runs_dir, 'NAME')}, the "
                        f"phase-1 tokenizer trained on your data "
                        f"({os.path.join(args.runs_dir, args.preset + '-tokenizer')} is the built-in dataset's)")
    phase1 = args.phase1 or os.path.join(args.runs_dir, f"{args.preset}-tokenizer")
    if not os.path.exists(phase1):
        raise UserError(f"--stage decoder needs a phase-1 tokenizer checkpoint; {phase1} does not exist: "
                        "run `python train.py --stage tokenizer` first, or pass --phase1 PATH")
    init = load_checkpoint(phase1, "tokenizer", "--phase1")  # a file, or the run folder's latest
    check_finished(init, phase1, "--phase1" if args.phase1 else "the phase-1 tokenizer")
    return init


def transformer_tokenizer(args, device, rank=0):
    """The tokenizer whose tokens a transformer learns -> (tokenizer, its checkpoint, token hash)."""
    # phase 2 if present, else phase 1
    if args.tokenizer is None and args.own_data:
        raise UserError(f"{args.own_data}: pass --tokenizer {os.path.join(args.runs_dir, 'NAME')}, a "
                        f"tokenizer trained on your data ({os.path.join(args.runs_dir, args.preset + '-decoder')} "
                        "and -tokenizer are the built-in dataset's)")
    path = args.tokenizer or default_tokenizer(args.runs_dir, args.preset)
    tok, ckpt, tok_hash = load_tokenizer(path, device)
    check_finished(ckpt, path, "--tokenizer" if args.tokenizer else "the tokenizer")
    if rank == 0:
        print(f"tokenizer: {ckpt['path']} (phase {ckpt.get('phase')}, hash {tok_hash[:12]})")
    trained_on = data.recorded_data(ckpt)
    if (trained_on["data"], trained_on["data_dir"]) != (args.data, args.data_dir):  # tokens of other images
        there, here = ([f"--data {d['data']}" + (f" --data-dir {d['data_dir']}" if d["data_dir"] else "")
                        for d in (trained_on, vars(args))])
        raise UserError(f"{ckpt['path']} was trained on {there}, this run reads {here}: pass the data flags "
                        "the tokenizer was trained with")
    if args.image_size != tok.cfg.image_size:  # else sequences of another length than the model's
        raise UserError(f"--image-size {args.image_size} differs from the {tok.cfg.image_size} px the "
                        f"tokenizer {ckpt['path']} was trained on: pass --image-size {tok.cfg.image_size}")
    return tok, ckpt, tok_hash


def classifier_config(num_classes, preset, pools="token-grid"):
    """The small classifier of a preset (losses.SMALL_VGG16): a narrow VGG16 whose relu5_3 lies on
    the preset's token grid, as VGG16's does at paper scale (Deviation 15); pools="vgg16": a
    max-pool after every stage, as VGG16 has (the study's second evaluation network)."""
    f = vq.TokenizerConfig(**vq.TOKENIZER_PRESETS[preset]).f
    where = losses.pools_for_token_grid(f) if pools == "token-grid" else [True] * 5
    return {**losses.SMALL_VGG16, "num_classes": num_classes, "pools": where}


# `tiny`'s semantic network: the shipped classifier (pretrained/tiny-classifier), a network trained
# before the tokenizer as the paper's VGG16 is ("a pre-trained VGG", Sec. 3.3.2); the flags that
# choose the images it must know (the number of images drawn does not change what they look like)
SHIPPED_CLASSIFIER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained", "tiny-classifier")
CLASSIFIER_DATA = ("data", "data_dir", "image_size", "data_seed")


def runs_dir_flag(args):
    return "" if args.runs_dir == "runs" else f" --runs-dir {args.runs_dir}"


def classifier_path(args, labelled):
    """Which small classifier Eq. 3 reads: --classifier-ckpt; else, for `tiny` on its built-in
    data, the shipped one; else the preset's own run, <runs-dir>/<preset>-classifier (said why)."""
    if args.classifier_ckpt is not None:  # the user's choice, used as given
        return args.classifier_ckpt
    if args.own_data:
        how = (f"train it first (python train.py --stage classifier {args.own_data}"
               f"{runs_dir_flag(args)} --name my-classifier) and pass --classifier-ckpt "
               f"{os.path.join(args.runs_dir, 'my-classifier')}, or use" if labelled else
               "your images have no class labels (no sub-folders per class), so no classifier can learn "
               "them: use")
        raise UserError(f"{args.own_data}: the {args.preset} preset's semantic network is a "
                        f"classifier of your data's own classes: {how} --semantic imagenet (ImageNet VGG16, or "
                        "--vgg-weights FILE) or --semantic none")
    if args.preset == "tiny":
        if latest_checkpoint(SHIPPED_CLASSIFIER) is None:
            print(f"the shipped classifier {SHIPPED_CLASSIFIER} is missing: using this preset's own run")
        else:
            shipped = data.recorded_data(load_checkpoint(SHIPPED_CLASSIFIER, "classifier", mmap=True))
            differ = [f"{k} {shipped[k]} (here {getattr(args, k)})" for k in CLASSIFIER_DATA
                      if shipped[k] != getattr(args, k)]
            if not differ:
                return SHIPPED_CLASSIFIER
            print(f"the shipped classifier was trained on other images ({', '.join(differ)}): using this "
                  "preset's own run")
    return os.path.join(args.runs_dir, f"{args.preset}-classifier")


def check_same_tokenizer(resumed, tok_path, tok_hash):
    """A resumed transformer run continues on the tokens it was trained on, or not at all."""
    if resumed is not None and resumed["tokenizer_hash"] != tok_hash:
        raise UserError(
            f"{resumed['path']} was trained on tokenizer {resumed['tokenizer_path']} (hash "
            f"{resumed['tokenizer_hash'][:12]}), not on {tok_path} (hash {tok_hash[:12]}): pass --tokenizer "
            f"{resumed['tokenizer_path']}")


# ------------------------------------------------------------------------------------------
#### Rebuilding a model from its checkpoint alone
# ------------------------------------------------------------------------------------------


def classifier_model(cfg):
    """The small semantic classifier (losses.SmallVGG16) from the config its checkpoint stores."""
    # "pools": which of the five stages end in a max-pool (VGG16: all; checkpoints before it: all)
    pools = tuple(cfg.get("pools", [True] * 5))
    # "dropout": in the head while it trains (checkpoints before it: VGG16's 0.5)
    return losses.SmallVGG16(cfg["num_classes"], tuple(cfg["widths"]), cfg["hidden"], pools, cfg.get("dropout", 0.5))


def load_classifier(path, what="--classifier-ckpt"):
    """A classifier checkpoint or run folder -> (SmallVGG16 with its weights, checkpoint)."""
    ckpt = load_checkpoint(path, "classifier", what)
    net = classifier_model(ckpt["config"])
    net.load_state_dict(ckpt["model"])
    return net, ckpt


def load_semantic_classifier(path, data_flags, explicit):
    """The small classifier of Eq. 3's perceptual loss (ours) -> (SmallVGG16, a line saying which).

    A classifier is never used silently on other data than it learned (data_flags: this run's
    dataset flags to compare, some of data.DATA_KEYS), nor unfinished. An explicit --classifier-ckpt
    is the user's choice, used as given, and said so."""
    net, ckpt = load_classifier(path, "--classifier-ckpt")
    check_finished(ckpt, path, "--classifier-ckpt" if explicit else "the semantic classifier")
    trained_on = {k: (ckpt.get("args") or {}).get(k) for k in data_flags}
    if trained_on != data_flags:
        differ = ", ".join(f"{k} {trained_on[k]} (here {data_flags[k]})" for k in data_flags
                           if trained_on[k] != data_flags[k])
        if not explicit:
            runs_dir = os.path.dirname(os.path.normpath(path))
            raise UserError(
                f"{path} was trained on other data ({differ}): train one on this data (python train.py "
                f"--stage classifier --runs-dir {runs_dir} --name NAME with your data flags) and pass "
                f"--classifier-ckpt {os.path.join(runs_dir, 'NAME')}, or pass --classifier-ckpt {path} to use it "
                "anyway, or --semantic imagenet / none")
        print(f"note: {path} was trained with other data flags: {differ}; used as given")
    return net, (f"small VGG16-shaped classifier {ckpt['path']} "
                 f"(val acc {ckpt.get('val_acc', float('nan')):.3f})")


def state_hash(state_dict):
    """Content hash of a model's weights."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        h.update(k.encode())  # names too: a renamed layer changes the hash
        # the raw bytes of each tensor, keys in sorted order: equal weights hash equal,
        # any changed byte differs
        # (flattened first: a 0-d tensor, BatchNorm's step counter, cannot be viewed as bytes)
        h.update(state_dict[k].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def token_hash(state_dict):
    """Hash of the weights that define the tokens: encoder and codebook, not the decoder.
    Phase 2 freezes both (Fig. 7), so phase 1 and its phase-2 fine-tune share this hash: a
    transformer trained on either one's tokens samples through the other's decoder."""
    return state_hash({k: v for k, v in state_dict.items() if k.startswith(("encoder.", "quantizer."))})


def tokenizer_config(ckpt):
    """The TokenizerConfig a tokenizer checkpoint was trained with. A checkpoint of the layout
    before Table 1's (its config has other fields) is refused in one line: its weights do not
    fit this code's modules, so it must be retrained."""
    fields = set(vq.TokenizerConfig.__dataclass_fields__)
    if set(ckpt["config"]) != fields:
        raise UserError(f"{ckpt['path']} was made by an older tokenizer layout (before the paper's Table 1 "
                        "layout of this version): its weights do not fit; retrain it with "
                        "`python train.py --stage tokenizer`")
    return vq.TokenizerConfig(**ckpt["config"])


def build_tokenizer(ckpt):
    """A tokenizer checkpoint (loaded) -> the Tokenizer with its weights, rebuilt from it alone."""
    model = vq.Tokenizer(tokenizer_config(ckpt))
    model.load_state_dict(ckpt["model"])
    return model


def load_tokenizer(path, device, what="--tokenizer"):
    """A tokenizer checkpoint or run folder -> (Tokenizer in eval mode, checkpoint, token hash)."""
    ckpt = load_checkpoint(path, "tokenizer", what)
    return build_tokenizer(ckpt).to(device).eval(), ckpt, token_hash(ckpt["model"])


def transformer_config(saved):
    """A transformer checkpoint's config dict -> TransformerConfig. Checkpoints before the codebook
    size had one name call it vocab_size, and may lack fields that kept their defaults."""
    saved = dict(saved)
    if "vocab_size" in saved:
        saved["K"] = saved.pop("vocab_size")
    return transformer.TransformerConfig(**saved)


def build_transformer(kind, config):
    """A TransformerConfig (or a checkpoint's config dict) -> GPT (kind "ar") or MaskGIT ("nar")."""
    if isinstance(config, dict):
        config = transformer_config(config)
    return (transformer.GPT if kind == "ar" else transformer.MaskGIT)(config)


def recorded_tokenizer(ckpt):
    """The tokenizer a transformer checkpoint records: an absolute path (a run's), or one relative
    to the checkpoint's own folder (a shipped model's, `pretrained/`: it moves with the folder)."""
    path = ckpt["tokenizer_path"]
    if os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(os.path.dirname(ckpt["path"]), path))


def load_transformer(path, device, tokenizer=None, what="--ckpt"):
    """A transformer checkpoint or run folder -> (model in eval mode, kind, its tokenizer, checkpoint).

    The EMA weights are loaded when the run kept them (what sampling uses). The tokenizer is the
    one recorded at training time, or `tokenizer` (a moved copy, or the phase-2 run of the same
    tokenizer: same tokens, the attention-enhanced decoder, Fig. 8); its encoder+codebook hash
    must match the one the transformer was trained on."""
    ckpt = load_checkpoint(path, ("ar", "nar"), what)
    kind = ckpt["kind"]
    ckpt["tokenizer_path"] = recorded_tokenizer(ckpt)
    # rebuilt from the config dict stored in the checkpoint: no preset or flag is needed
    model = build_transformer(kind, ckpt["config"])
    model.load_state_dict(ckpt["ema"] if ckpt.get("ema") else ckpt["model"])  # EMA weights when kept (ours)
    tok_path = tokenizer or ckpt["tokenizer_path"]
    if not os.path.exists(tok_path):  # checked before any sampling
        raise UserError(f"the tokenizer {tok_path} this model was trained on is gone: pass --tokenizer PATH "
                        "to a copy")
    tok, _, tok_hash = load_tokenizer(tok_path, device)
    # the tokens must mean the same codes: the hash covers encoder and codebook only, so a phase-2
    # run of the same tokenizer passes (both frozen in phase 2, Fig. 7) and any other tokenizer fails
    if tok_hash != ckpt["tokenizer_hash"]:
        raise UserError(
            f"{tok_path} does not make the tokens {ckpt['path']} was trained on (encoder+codebook hash "
            f"{tok_hash[:12]} != {ckpt['tokenizer_hash'][:12]}): pass --tokenizer with that tokenizer or its "
            "phase-2 run"
        )
    return model.to(device).eval(), kind, tok, ckpt  # eval: no dropout, no class dropout


# ------------------------------------------------------------------------------------------
#### Shipped models (pretrained/): a run's final weights, small, and loaded as safely as any run
# ------------------------------------------------------------------------------------------

# what each kind of run records of its final validation (its log's last values), for the check
# that the shipped weights still reproduce them (tests/test_pretrained.py)
RECORDED = {"classifier": ("val_acc",), "tokenizer": ("val_l1", "val_usage", "val_perplexity"),
            "ar": ("val_loss", "val_acc"), "nar": ("val_loss", "val_acc")}


def shipped_state(ckpt):
    """A checkpoint's weights for shipping: fp16 wherever the tokens do not depend on them. A
    tokenizer keeps its encoder and codebook in fp32 (they make the tokens, and their token_hash
    ties the shipped transformers to them: both must stay bit for bit); the classifier stays fp32
    whole (it is `tiny`'s semantic network, which Eq. 3 reads in fp32: the shipped file is the
    trained run's network bit for bit, so a tokenizer trained against either is the same run); the
    decoder and the transformers (their EMA weights, what sampling uses) go to fp16. BatchNorm's
    statistics and counters stay as they are."""
    weights = ckpt["ema"] if ckpt.get("ema") else ckpt["model"]
    keep = {"tokenizer": ("encoder.", "quantizer."), "classifier": ("",)}.get(ckpt["kind"], ())
    return {k: v.half() if v.is_floating_point() and not k.startswith(keep) and "running_" not in k else v
            for k, v in weights.items()}


def export_run(run_dir, out_dir, tokenizer_name=None):
    """Run folder -> out_dir/<run name>/ckpt_<step>.pt (+ `latest`), weights only: no optimizer,
    no discriminator, no RNG state. A transformer's tokenizer is recorded as the shipped sibling
    folder `tokenizer_name`, relative to its own folder. Returns the file written."""
    ckpt = load_checkpoint(run_dir, ("classifier", "tokenizer", "ar", "nar"), "export")
    log = read_log(run_dir)
    recorded = {k: log[k][1][-1] for k in RECORDED[ckpt["kind"]] if k in log}  # fp32, end of training
    weights = shipped_state(ckpt)
    shipped = {"kind": ckpt["kind"], "config": ckpt["config"], "step": ckpt["step"], "args": ckpt.get("args"),
               "model": weights, "recorded": recorded, "exported_from": os.path.abspath(run_dir)}
    for key in ("phase", "val_acc", "token_check", "total_steps"):
        if key in ckpt:
            shipped[key] = ckpt[key]
    if ckpt["kind"] in ("ar", "nar"):
        # the EMA weights, under both names (one storage on disk): sampling and the views read "ema"
        shipped.update(ema=weights, tokenizer_hash=ckpt["tokenizer_hash"],
                       tokenizer_path=os.path.join("..", tokenizer_name))
    folder = os.path.join(out_dir, os.path.basename(os.path.normpath(run_dir)))
    os.makedirs(folder, exist_ok=True)
    return save_checkpoint(folder, shipped, keep=1)


# ------------------------------------------------------------------------------------------
#### Converting a trusted checkpoint of an older version to the safe format
# ------------------------------------------------------------------------------------------


def unpickler_reason(error):
    """The one sentence of torch's weights-only refusal that names what was refused."""
    text = " ".join(str(error).split())
    reason = text.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation", 1)[0].strip()
    return reason.split(". Please use", 1)[0][:200]


def numpy_array_globals():
    """The few globals a pickled NumPy array needs, and nothing else: its reconstructor (under the
    names NumPy 1 and NumPy 2 pickle it by), the ndarray class and dtype. Array contents are data;
    any other object inside would still have to pass the weights-only unpickler."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy(._)core.multiarray._reconstruct
    return [(reconstruct, "numpy.core.multiarray._reconstruct"),
            (reconstruct, "numpy._core.multiarray._reconstruct"),
            np.ndarray, np.dtype, type(np.dtype(np.uint32))]  # the keys array is uint32 (its dtype class too)


def convert_checkpoint(path):
    """Re-save a checkpoint written before the safe format, whose NumPy RNG state is an ndarray.
    It is read with weights_only=True plus the NumPy array globals alone (numpy_array_globals),
    so even this load runs no code; anything else unsafe inside is refused, not converted. The
    original is kept as <path>.unsafe; the new file is written atomically and must load safely."""
    try:
        with torch.serialization.safe_globals(numpy_array_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"{path}: holds objects other than NumPy arrays that a safe load refuses "
                        f"({unpickler_reason(e)}); not converted") from None
    if not isinstance(ckpt, dict) or "kind" not in ckpt:
        raise UserError(f"{path}: not a checkpoint of this project; not converted")
    rng = ckpt.get("rng") or {}
    if isinstance(rng.get("numpy"), tuple):  # ('MT19937', keys ndarray, pos, has_gauss, cached_gaussian)
        name, keys, pos, has_gauss, cached = rng["numpy"]
        rng["numpy"] = {"bit_generator": str(name), "keys": [int(k) for k in keys], "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)  # the converted file must load safely
    except pickle.UnpicklingError:
        raise UserError(f"{path}: holds NumPy arrays outside the RNG state; not converted") from None
    backup = path + ".unsafe"
    os.replace(path, backup)  # the original, byte for byte, stays beside the new file
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return backup


def export_main(paths, out_dir):
    """python runs.py export RUN... --out DIR: each run's final weights, shipped (export_run). The
    transformers record the exported tokenizer of their tokens (phase 2 first: the better decoder)."""
    loaded = {path: load_checkpoint(path, ("classifier", "tokenizer", "ar", "nar"), "export", mmap=True)
              for path in paths}
    tokenizers = sorted((p for p, c in loaded.items() if c["kind"] == "tokenizer"),
                        key=lambda p: -(loaded[p].get("phase") or 1))  # phase 2 first
    written = []
    for path, ckpt in loaded.items():
        name = None
        if ckpt["kind"] in ("ar", "nar"):
            match = [p for p in tokenizers if token_hash(loaded[p]["model"]) == ckpt["tokenizer_hash"]]
            if not match:
                raise UserError(f"{path}: none of the tokenizers exported with it makes its tokens; "
                                f"export its tokenizer ({ckpt['tokenizer_path']}) in the same command")
            name = os.path.basename(os.path.normpath(match[0]))
        written.append(export_run(path, out_dir, name))
        size = os.path.getsize(written[-1]) / 2**20
        print(f"{path} -> {written[-1]} ({size:.2f} MiB)")
    return written


def get_parser():
    p = argparse.ArgumentParser(description="convert: re-save trusted checkpoints of an older version of "
                                            "this project (NumPy RNG state as an array) in the safe format, "
                                            "the originals kept as *.unsafe. export: ship runs' final "
                                            "weights (pretrained/, fp16 where the tokens do not depend on "
                                            "them).")
    p.add_argument("command", choices=["convert", "export"])
    p.add_argument("paths", nargs="+", help="convert: checkpoint files or run folders (every ckpt_*.pt in "
                                            "them); export: run folders")
    p.add_argument("--out", default="pretrained", help="export: the folder of the shipped models")
    return p


@one_line_errors
def main(argv=None):
    """python runs.py convert PATH... / export RUN... --out DIR; user mistakes end as one-line
    SystemExit("error: ...")."""
    args = get_parser().parse_args(argv)
    if args.command == "export":
        return export_main(args.paths, args.out)
    files = []
    for path in args.paths:
        if os.path.isdir(path):
            files += sorted(os.path.join(path, f) for f in os.listdir(path)
                            if f.startswith("ckpt_") and f.endswith(".pt"))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise SystemExit(f"error: {path}: no such file or folder")
    print("Converting checkpoints of an older version: each is read with a safe load that also allows NumPy "
          "arrays (and nothing else), then re-saved with plain types. Convert only checkpoints you trust.",
          flush=True)
    for path in files:
        try:
            safe_load(path, "checkpoint", "")
            print(f"{path}: already loads safely; left as it is")
            continue
        except UserError:
            pass  # unsafe or unreadable: try to convert
        try:
            backup = convert_checkpoint(path)
        except UserError:
            raise
        except Exception as e:  # not a torch file at all
            raise SystemExit(f"error: {path}: cannot be read ({type(e).__name__}); "
                             "nothing converted") from None
        print(f"{path}: converted (original kept as {backup})")
    return files


if __name__ == "__main__":
    main()
