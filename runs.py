"""What lives in runs/<name>/, and how every script finds, reads and rebuilds it. Not from the paper.
A run folder holds ckpt_<step>.pt (self-describing: kind, config, weights and EMA, optimizers, step, RNG states,
the run's flags; a transformer's also its tokenizer's path and hash), `latest` (the newest complete one), log.jsonl
and *.png grids. Loading never runs code: torch.load(..., weights_only=True) reads tensors and plain types only;
checkpoints of older versions (NumPy's RNG state as an ndarray) are converted once by `python runs.py convert`."""

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


#### Run folders and checkpoints
def prepare_run_dir(run_dir, resume, rank=0, world=1):
    """runs/<name>, never started over unless --resume -> (run_dir, checkpoint to resume or None)."""
    existing = latest_checkpoint(run_dir)
    if existing and not resume:
        raise UserError(f"{run_dir} already holds a run ({os.path.basename(existing)}): pass --resume to continue "
                        "it, --name NEW to start another, or delete the folder")
    if resume and not existing:
        raise UserError(f"--resume: {run_dir} holds no checkpoint to resume; drop --resume to start a new run")
    # rank 0 alone creates the folder; under torchrun its error reaches every rank, so all stop alike
    error = None
    if rank == 0:
        try:
            os.makedirs(run_dir, exist_ok=True)
            probe = os.path.join(run_dir, ".write_test")  # fail now, not at the first checkpoint hours later
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as e:
            error = f"cannot write to the output folder {run_dir} ({e.strerror}): pick another --runs-dir"
    if world > 1:
        box = [error]  # broadcast_object_list fills it in place on ranks 1..
        dist.broadcast_object_list(box, src=0)  # also the barrier: the folder exists after it
        error = box[0]
    if error:
        raise UserError(error)
    return run_dir, existing


def remove_empty_run(run_dir):
    """Remove the folder of a run that failed before writing anything (a stale temp file aside)."""
    if os.path.isdir(run_dir):
        remove_stale_temp_files(run_dir)
        if not os.listdir(run_dir):
            os.rmdir(run_dir)


def checkpoint_names(folder):
    """The ckpt_*.pt file names in a folder, oldest first (zero-padded steps sort in order)."""
    return sorted(f for f in os.listdir(folder) if f.startswith("ckpt_") and f.endswith(".pt"))


def save_checkpoint(run_dir, state, keep):
    """ckpt_<step>.pt, then the `latest` pointer; then delete all but the newest `keep` checkpoints."""
    name = f"ckpt_{state['step']:08d}.pt"
    remove_stale_temp_files(run_dir)
    # a finite loss can still leave non-finite weights (an absurd lr): never save those over good ones
    for key in ("model", "ema", "disc"):
        for k, v in (state.get(key) or {}).items():
            if v.is_floating_point() and not torch.isfinite(v).all():
                raise UserError(f"non-finite weights after step {state['step']}: {key} {k}; not saved, "
                                "the last good checkpoint is kept, lower --lr and --resume")
    atomic_write(os.path.join(run_dir, name), lambda f: torch.save(state, f))
    atomic_write(os.path.join(run_dir, "latest"), lambda f: f.write(name.encode()))  # once its checkpoint is complete
    for old in checkpoint_names(run_dir)[:-keep]:
        os.remove(os.path.join(run_dir, old))
    return os.path.join(run_dir, name)


def latest_checkpoint(run_dir):
    """Path of the newest complete checkpoint of a run, or None."""
    pointer = os.path.join(run_dir, "latest")  # a text file: the newest checkpoint's name in the folder
    if os.path.isfile(pointer):
        with open(pointer) as f:
            path = os.path.join(run_dir, f.read().strip())
        if os.path.isfile(path):
            return path
    ckpts = checkpoint_names(run_dir) if os.path.isdir(run_dir) else []  # no pointer, or it names a removed file
    return os.path.join(run_dir, ckpts[-1]) if ckpts else None


def safe_load(path, what, fix, mmap=False):
    """torch.load on the CPU, weights_only=True: a crafted file cannot run code. A refusal is one line, with `fix`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        # only a refused global means objects inside; random or truncated bytes fail on an opcode
        if "Weights only load failed" not in str(e) or "Unsupported global" not in str(e):
            raise UserError(f"{what} {path}: not a readable checkpoint ({type(e).__name__}: "
                            f"{unpickler_reason(e)[:80]})") from None
        raise UserError(f"{what} {path}: holds objects that a safe load (torch.load weights_only=True) will not "
                        f"unpickle, since unpickling them could run code; nothing was loaded. {fix}") from None
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"{what} {path}: not a readable checkpoint ({type(e).__name__})") from None


def load_checkpoint(path, kind, what="--ckpt", mmap=False):
    """A checkpoint (a file, or a run folder's latest) of `kind`: "classifier", "tokenizer", "ar", "nar", or a tuple."""
    if path is not None and os.path.isdir(path):
        resolved = latest_checkpoint(path)
        if resolved is None:
            raise UserError(f"{what} {path}: the folder holds no checkpoint (ckpt_*.pt)")
        path = resolved
    if path is None or not os.path.isfile(path):
        raise UserError(f"{what} {path}: no such checkpoint file")
    ckpt = safe_load(path, what, "If you trust it (say, a checkpoint of an older version of this code), convert it "
                     f"once with `python runs.py convert {path}`; else get it again from a trusted source.", mmap)
    found = ckpt.get("kind") if isinstance(ckpt, dict) else None
    kinds = (kind,) if isinstance(kind, str) else kind
    if found not in kinds:  # a checkpoint of the wrong stage is refused by name
        needed = " or ".join(kinds)
        raise UserError(f"{what} {path} is a {found!r} checkpoint, but {'an' if needed[0] in 'aeiou' else 'a'} "
                        f"{needed} checkpoint is needed here")
    ckpt["path"] = path  # where it came from: printed, and recorded by stage 2
    return ckpt


def check_config(saved, current, path):
    """Resume only into the same model: name the first field that differs."""
    for k in sorted(set(saved) | set(current)):
        a, b = saved.get(k), current.get(k)
        # a tuple and the equal list count as the same value (ch_mult is either, depending on its source)
        if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            raise UserError(f"{path} was trained with {k}={a}, but the flags give {k}={b}: "
                            "use the same preset and flags to resume")


def resume(ckpt, config, states, rank=0):
    """ckpt (None: a new run) -> its step, with `states` ({key: module or optimizer; None: skipped}) and RNG loaded."""
    if ckpt is None:
        return 0
    check_config(ckpt["config"], config, ckpt["path"])
    for key, obj in states.items():
        if obj is not None and ckpt.get(key) is not None:
            try:
                obj.load_state_dict(ckpt[key])
            except (RuntimeError, ValueError, KeyError) as e:  # e.g. another --disc-layers than the run's
                first = str(e).strip().splitlines()[0][:160]
                raise UserError(f"{ckpt['path']}: its {key} does not fit what the flags build ({first}); "
                                "resume with the flags the run was started with") from None
    set_rng_state(ckpt["rng"], rank)
    return ckpt["step"]


def run_progress(ckpt):
    """(step, total steps) of a checkpoint's run: "total_steps" (older checkpoints: their --steps), or None."""
    return ckpt["step"], ckpt.get("total_steps") or (ckpt.get("args") or {}).get("steps")


def check_finished(ckpt, given, what):
    """A stage reads only finished runs, or a checkpoint *file* `given` as it is (said so); else the fix is named."""
    step, total = run_progress(ckpt)
    if total is None or step >= total:
        return
    if os.path.isfile(given):
        print(f"note: {what} {ckpt['path']} stopped at step {step} of {total}; used as given")
        return
    stage = {"tokenizer": "decoder" if ckpt.get("phase") == 2 else "tokenizer"}.get(ckpt["kind"], ckpt["kind"])
    run_dir = os.path.dirname(ckpt["path"])
    raise UserError(f"{what} {given}: that run is unfinished (stopped at step {step} of {total}). Finish it: python "
                    f"train.py --stage {stage} --runs-dir {os.path.dirname(run_dir) or '.'} --name "
                    f"{os.path.basename(run_dir)} --resume (with the other flags it was started with); or pass its "
                    f"checkpoint file ({ckpt['path']}) to use it as it is")


def finished(run_dir, start, steps):
    """True (and says so) when a resumed run has already done its `steps`."""
    if start >= steps:
        print(f"{run_dir} already finished ({start}/{steps} steps); nothing to do. Pass a larger --steps to continue.")
    return start >= steps


def finish(stop, run_dir, state, keep, rank, stage, step):
    """A stage's exit, done or stopped (machine.Stop): the last checkpoint, and a line that says
    where it is. A stopped run then exits 0, also out of a stage started by another one."""
    path = save_checkpoint(run_dir, state, keep) if rank == 0 else None
    if rank == 0:
        reason = f"stopped by {stop.signal}" if stop.signal else "done"
        print(f"{stage}: {reason} at step {step}; checkpoint {path}", flush=True)
    if stop.signal:
        raise SystemExit(0)
    return path


#### Which run a stage reads: its phase-1 run, its tokenizer, its semantic classifier
def default_tokenizer(runs_dir, preset):
    """A preset's tokenizer run: phase 2 if any (the same tokens, the better decoder: Fig. 8), else phase 1."""
    for stage in ("decoder", "tokenizer"):
        path = os.path.join(runs_dir, f"{preset}-{stage}")
        if latest_checkpoint(path):
            return path
    raise UserError(f"no tokenizer checkpoint in {runs_dir}/{preset}-decoder or -tokenizer: run "
                    "`python train.py --stage tokenizer` first, or pass --tokenizer PATH")


def phase1_run(args):
    """The finished phase-1 checkpoint --stage decoder starts from: --phase1, else <runs-dir>/<preset>-tokenizer."""
    if args.phase1 is None and args.own_data:
        raise UserError(f"{args.own_data}: pass --phase1 {os.path.join(args.runs_dir, 'NAME')}, the phase-1 tokenizer "
                        f"trained on your data ({os.path.join(args.runs_dir, args.preset + '-tokenizer')} is the "
                        "built-in dataset's)")
    phase1 = args.phase1 or os.path.join(args.runs_dir, f"{args.preset}-tokenizer")
    if not os.path.exists(phase1):
        raise UserError(f"--stage decoder needs a phase-1 tokenizer checkpoint; {phase1} does not exist: "
                        "run `python train.py --stage tokenizer` first, or pass --phase1 PATH")
    init = load_checkpoint(phase1, "tokenizer", "--phase1")
    check_finished(init, phase1, "--phase1" if args.phase1 else "the phase-1 tokenizer")
    return init


def transformer_tokenizer(args, device, rank=0):
    """The tokenizer whose tokens a transformer learns -> (tokenizer, its checkpoint, token hash)."""
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
    """A preset's narrow VGG16: relu5_3 on the token grid as VGG16's at paper scale (Deviation 15), or VGG16's pools."""
    f = vq.TokenizerConfig(**vq.TOKENIZER_PRESETS[preset]).f
    where = losses.pools_for_token_grid(f) if pools == "token-grid" else [True] * 5
    return {**losses.SMALL_VGG16, "num_classes": num_classes, "pools": where}


# `tiny`'s semantic network, trained before the tokenizer as the paper's VGG16 is ("a pre-trained VGG", Sec. 3.3.2)
SHIPPED_CLASSIFIER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained", "tiny-classifier")
CLASSIFIER_DATA = ("data", "data_dir", "image_size", "data_seed")  # the flags that choose its images, not how many


def classifier_path(args, labelled):
    """Eq. 3's small classifier: --classifier-ckpt; else `tiny`'s shipped one, on its data; else the preset's run."""
    if args.classifier_ckpt is not None:  # the user's choice, used as given
        return args.classifier_ckpt
    if args.own_data:
        runs_dir_flag = "" if args.runs_dir == "runs" else f" --runs-dir {args.runs_dir}"
        how = (f"train it first (python train.py --stage classifier {args.own_data}{runs_dir_flag} --name "
               f"my-classifier) and pass --classifier-ckpt {os.path.join(args.runs_dir, 'my-classifier')}, or use"
               if labelled else "your images have no class labels (no sub-folders per class), so no classifier can "
               "learn them: use")
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
        raise UserError(f"{resumed['path']} was trained on tokenizer {resumed['tokenizer_path']} (hash "
                        f"{resumed['tokenizer_hash'][:12]}), not on {tok_path} (hash {tok_hash[:12]}): pass "
                        f"--tokenizer {resumed['tokenizer_path']}")


#### Rebuilding a model from its checkpoint alone
def classifier_model(cfg):
    """losses.SmallVGG16 from a checkpoint's config; older ones lack "pools" and "dropout": VGG16's, five and 0.5."""
    pools = tuple(cfg.get("pools", [True] * 5))
    return losses.SmallVGG16(cfg["num_classes"], tuple(cfg["widths"]), cfg["hidden"], pools, cfg.get("dropout", 0.5))


def load_classifier(path, what="--classifier-ckpt"):
    """A classifier checkpoint or run folder -> (SmallVGG16 with its weights, checkpoint)."""
    ckpt = load_checkpoint(path, "classifier", what)
    net = classifier_model(ckpt["config"])
    net.load_state_dict(ckpt["model"])
    return net, ckpt


def load_semantic_classifier(path, data_flags, explicit):
    """Eq. 3's small classifier -> (SmallVGG16, a line saying which); unfinished or on other data only if explicit."""
    net, ckpt = load_classifier(path, "--classifier-ckpt")
    check_finished(ckpt, path, "--classifier-ckpt" if explicit else "the semantic classifier")
    trained_on = {k: (ckpt.get("args") or {}).get(k) for k in data_flags}
    if trained_on != data_flags:
        differ = ", ".join(f"{k} {trained_on[k]} (here {data_flags[k]})" for k in data_flags
                           if trained_on[k] != data_flags[k])
        if not explicit:
            runs_dir = os.path.dirname(os.path.normpath(path))
            raise UserError(f"{path} was trained on other data ({differ}): train one on this data (python train.py "
                            f"--stage classifier --runs-dir {runs_dir} --name NAME with your data flags) and pass "
                            f"--classifier-ckpt {os.path.join(runs_dir, 'NAME')}, or pass --classifier-ckpt {path} "
                            "to use it anyway, or --semantic imagenet / none")
        print(f"note: {path} was trained with other data flags: {differ}; used as given")
    return net, f"small VGG16-shaped classifier {ckpt['path']} (val acc {ckpt.get('val_acc', float('nan')):.3f})"


def state_hash(state_dict):
    """Content hash of a model's weights: names and raw bytes, so any renamed layer or changed byte differs."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        h.update(k.encode())
        # flattened first: a 0-d tensor (BatchNorm's step counter) cannot be viewed as bytes
        h.update(state_dict[k].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def token_hash(state_dict):
    """Hash of the weights that define the tokens: encoder and codebook, not the decoder. Phase 2 freezes both
    (Fig. 7), so phase 1 and its phase-2 run share it: a transformer of either one's tokens decodes with the other."""
    return state_hash({k: v for k, v in state_dict.items() if k.startswith(("encoder.", "quantizer."))})


def tokenizer_config(ckpt):
    """A tokenizer checkpoint's TokenizerConfig; one of the layout before Table 1's (other fields) is refused."""
    if set(ckpt["config"]) != set(vq.TokenizerConfig.__dataclass_fields__):
        raise UserError(f"{ckpt['path']} was made by an older tokenizer layout (before the paper's Table 1 layout of "
                        "this version): its weights do not fit; retrain it with `python train.py --stage tokenizer`")
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
    """A transformer checkpoint's config dict -> TransformerConfig (older ones call K vocab_size, may lack fields)."""
    saved = dict(saved)
    if "vocab_size" in saved:
        saved["K"] = saved.pop("vocab_size")
    return transformer.TransformerConfig(**saved)


def build_transformer(kind, config):
    """A TransformerConfig (or a checkpoint's config dict) -> GPT (kind "ar") or MaskGIT ("nar")."""
    if isinstance(config, dict):
        config = transformer_config(config)
    return (transformer.GPT if kind == "ar" else transformer.MaskGIT)(config)


def load_transformer(path, device, tokenizer=None, what="--ckpt"):
    """A transformer checkpoint or run folder -> (model in eval mode, EMA weights if kept, kind, tokenizer, checkpoint).
    The tokenizer: the recorded one or `tokenizer` (a copy, or its phase-2 run: same tokens, better decoder, Fig. 8)."""
    ckpt = load_checkpoint(path, ("ar", "nar"), what)
    kind = ckpt["kind"]
    if not os.path.isabs(ckpt["tokenizer_path"]):  # a shipped model's (pretrained/): relative to its folder
        ckpt["tokenizer_path"] = os.path.normpath(os.path.join(os.path.dirname(ckpt["path"]), ckpt["tokenizer_path"]))
    model = build_transformer(kind, ckpt["config"])  # from the stored config: no preset or flag is needed
    model.load_state_dict(ckpt["ema"] if ckpt.get("ema") else ckpt["model"])
    tok_path = tokenizer or ckpt["tokenizer_path"]
    if not os.path.exists(tok_path):  # checked before any sampling
        raise UserError(f"the tokenizer {tok_path} this model was trained on is gone: pass --tokenizer PATH to a copy")
    tok, _, tok_hash = load_tokenizer(tok_path, device)
    # the same codes: token_hash passes the phase-2 run of the same tokenizer (Fig. 7), any other fails
    if tok_hash != ckpt["tokenizer_hash"]:
        raise UserError(f"{tok_path} does not make the tokens {ckpt['path']} was trained on (encoder+codebook hash "
                        f"{tok_hash[:12]} != {ckpt['tokenizer_hash'][:12]}): pass --tokenizer with that tokenizer "
                        "or its phase-2 run")
    return model.to(device).eval(), kind, tok, ckpt  # eval: no dropout, no class dropout


#### Shipped models (pretrained/): a run's final weights, small, and loaded as safely as any run
# the final validation values each kind of run ships with, which tests/test_pretrained.py reproduces
RECORDED = {"classifier": ("val_acc",), "tokenizer": ("val_l1", "val_usage", "val_perplexity"),
            "ar": ("val_loss", "val_acc"), "nar": ("val_loss", "val_acc")}


def shipped_state(ckpt):
    """A checkpoint's (EMA) weights in fp16, but for BatchNorm's statistics and what must stay bit for bit: a
    tokenizer's encoder and codebook (they make the tokens) and the classifier (Eq. 3 reads it in fp32, as its run)."""
    weights = ckpt["ema"] if ckpt.get("ema") else ckpt["model"]
    keep = {"tokenizer": ("encoder.", "quantizer."), "classifier": ("",)}.get(ckpt["kind"], ())
    return {k: v.half() if v.is_floating_point() and not k.startswith(keep) and "running_" not in k else v
            for k, v in weights.items()}


def export_main(paths, out_dir):
    """`python runs.py export`: each run's final weights to out_dir/<run name>/ (a transformer: with its tokenizer)."""
    loaded = {path: load_checkpoint(path, ("classifier", "tokenizer", "ar", "nar"), "export", mmap=True)
              for path in paths}
    tokenizers = sorted((p for p, c in loaded.items() if c["kind"] == "tokenizer"),
                        key=lambda p: -(loaded[p].get("phase") or 1))  # phase 2 first: the better decoder
    written = []
    for path, ckpt in loaded.items():
        if ckpt["kind"] in ("ar", "nar"):
            match = [p for p in tokenizers if token_hash(loaded[p]["model"]) == ckpt["tokenizer_hash"]]
            if not match:
                raise UserError(f"{path}: none of the tokenizers exported with it makes its tokens; "
                                f"export its tokenizer ({ckpt['tokenizer_path']}) in the same command")
        log = read_log(path)
        weights = shipped_state(ckpt)
        shipped = {"kind": ckpt["kind"], "config": ckpt["config"], "step": ckpt["step"], "args": ckpt.get("args"),
                   "model": weights, "recorded": {k: log[k][1][-1] for k in RECORDED[ckpt["kind"]] if k in log},
                   "exported_from": os.path.abspath(path)}
        shipped.update({k: ckpt[k] for k in ("phase", "val_acc", "token_check", "total_steps") if k in ckpt})
        if ckpt["kind"] in ("ar", "nar"):
            # the EMA weights, under both names (one storage on disk): sampling and the views read "ema"
            shipped.update(ema=weights, tokenizer_hash=ckpt["tokenizer_hash"],
                           tokenizer_path=os.path.join("..", os.path.basename(os.path.normpath(match[0]))))
        folder = os.path.join(out_dir, os.path.basename(os.path.normpath(path)))
        os.makedirs(folder, exist_ok=True)
        written.append(save_checkpoint(folder, shipped, keep=1))
        print(f"{path} -> {written[-1]} ({os.path.getsize(written[-1]) / 2**20:.2f} MiB)")
    return written


#### Converting a trusted checkpoint of an older version to the safe format
def unpickler_reason(error):
    """The one sentence of torch's weights-only refusal that names what was refused."""
    text = " ".join(str(error).split())
    reason = text.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation", 1)[0].strip()
    return reason.split(". Please use", 1)[0][:200]


def convert_checkpoint(path):
    """Re-save a checkpoint whose NumPy RNG state is an ndarray (original: <path>.unsafe); the new one loads safely."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # under the names NumPy 1 and NumPy 2 pickle it by
    array_globals = [(reconstruct, "numpy.core.multiarray._reconstruct"),
                     (reconstruct, "numpy._core.multiarray._reconstruct"),
                     np.ndarray, np.dtype, type(np.dtype(np.uint32))]  # the keys array is uint32 (its dtype class too)
    try:
        with torch.serialization.safe_globals(array_globals):
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
    try:
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)  # the converted file must load safely
    except pickle.UnpicklingError:
        raise UserError(f"{path}: holds NumPy arrays outside the RNG state; not converted") from None
    backup = path + ".unsafe"
    os.replace(path, backup)  # the original, byte for byte, stays beside the new file
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return backup


def get_parser():
    p = argparse.ArgumentParser(description="convert: re-save trusted checkpoints of an older version in the safe "
                                            "format (originals kept as *.unsafe). export: ship runs' final weights.")
    p.add_argument("command", choices=["convert", "export"])
    p.add_argument("paths", nargs="+", help="convert: checkpoint files or run folders; export: run folders")
    p.add_argument("--out", default="pretrained", help="export: the folder of the shipped models")
    return p


@one_line_errors
def main(argv=None):
    """python runs.py convert PATH... / export RUN... --out DIR; user mistakes end in one line."""
    args = get_parser().parse_args(argv)
    if args.command == "export":
        return export_main(args.paths, args.out)
    files = []
    for path in args.paths:
        if not os.path.isdir(path) and not os.path.isfile(path):
            raise SystemExit(f"error: {path}: no such file or folder")
        files += [os.path.join(path, f) for f in checkpoint_names(path)] if os.path.isdir(path) else [path]
    print("Converting checkpoints of an older version: each is read with a safe load that also allows NumPy arrays "
          "(and nothing else), then re-saved with plain types. Convert only checkpoints you trust.", flush=True)
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
            raise SystemExit(f"error: {path}: cannot be read ({type(e).__name__}); nothing converted") from None
        print(f"{path}: converted (original kept as {backup})")
    return files


if __name__ == "__main__":
    main()
