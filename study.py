"""
The reproduction study at tiny scale: the paper's observations (Sec. 3.3, Tables 1, 5, 6, Fig. 6,
Fig. 8, and AR against NAR) re-run on the built-in shapes dataset, on a CPU, by plain `train.py`
commands, for three seeds; its FIDs are semantic FIDs in small classifiers (Deviation 8), which rank
models on this dataset only and are not comparable to Inception FIDs.

    python study.py                   # the core study; rerun to continue after a stop
    python study.py --extras          # then: the generator's capacity, AR against MaskGIT over training
    python study.py --seeds 0         # one seed only
    python study.py --dry-run         # print the training commands, run nothing
    python study.py --report          # train nothing: evaluate what has finished, write results.md

The design, written down before any generation figure was looked at. Observation 2: tokens learned
with L_sem (alpha 1) are easier for a generative transformer than tokens learned with L_low (alpha 0).
- The precondition, checked first (three seeds, both evaluation spaces): alpha 1's rFID at most
  PRECONDITION (1.5) times alpha 0's; the paper's ends differ by about a fifth (Table 6: 2.77 against
  3.45). Without it a generation gap only repeats a reconstruction gap, and the report says the
  Observation 2 rows test nothing.
- The rows that test it (OBSERVATION_2), expected "alpha 1 lower", AR and MaskGIT: a1 against a0 in
  generator-only FID (the samples against the same tokenizer's reconstructions: the decoder taken
  out), and dec-a1 against dec-a0 in gen FID (both token spaces decoded by equal phase-2 decoders).
- The rule (compare): a difference between two cells counts when it is larger than twice their pooled
  standard deviation over the seeds; anything smaller is within the spread, and no verdict is drawn
  from it. A FID comparison counts only when both evaluation spaces agree. The paper's other
  comparisons (PAPER) and our own checks (OURS) are judged alike.

Results: runs/study/results.json (every figure), results.md (tables and verdicts), extras.md.
"""


import argparse
import json
import math
import os
import shlex
import time

import torch

import data
import metrics
import pictures
import runlog
import runs
import train
import visualize
from machine import UserError, eval_mode, one_line_errors, pick_device

TOKENIZERS = {  # phase-1 tokenizer variants: name -> train.py flags
    # Fig. 6's alpha = 1, 0 and 0.5, conv decoder; a1 is SeQ-GAN's phase 1
    "a1": ["--alpha", "1"], "a0": ["--alpha", "0"], "a0.5": ["--alpha", "0.5"],
    # Table 1's "+Conv x2" and "+Attention x2" decoders, trained from the start with encoder and codebook
    "conv-x2": ["--alpha", "0", "--decoder", "conv-x2"], "attn-x2": ["--alpha", "0", "--decoder", "attention-x2"],
    "a0-noent": ["--alpha", "0", "--entropy-weight", "0"],  # Table 5: without the entropy penalty
}
# phase 2 (Fig. 7) on alpha 1 and on alpha 0, the same schedule: equal decoders, so that dec-a1
# against dec-a0 compares the token spaces alone (Obs. 2)
PHASE2_ON = ("a1", "a0")
TRANSFORMERS_ON = ("a1", "a0", "a0.5", "conv-x2", "attn-x2")  # the tokenizers an AR and a MaskGIT can learn
DEFAULT_TRANSFORMERS_ON = ("a1", "a0")  # Obs. 2's endpoints; dec-a1 and dec-a0 decode their samples

# The networks the study trains first: the loss's semantic classifier, and two evaluation networks
# that no loss ever reads. Every FID is measured in both evaluation spaces:
#   cls  eval-classifier: the loss classifier's layout (relu5_3 on the token grid), another seed;
#   tex  eval-texture: VGG16's pooling (a max-pool after every stage), trained on class x background
#        texture (160 classes), so that it sees the backgrounds that L_sem may drop.
CLASSIFIERS = {
    "tiny-classifier": ["--seed", "0"], "eval-classifier": ["--seed", "1"],
    "eval-texture": ["--seed", "2", "--classifier-labels", "texture", "--classifier-pools", "vgg16"],
}
SPACES = {"cls": "eval-classifier", "tex": "eval-texture"}
PRECONDITION = 1.5  # alpha 1's rFID at most this many times alpha 0's, in both spaces (our threshold)


#### The runs
def job(stage, name, *flags):
    return name, ["--stage", stage, "--name", name, *flags]


def with_common_flags(args, todo):  # the study's folder and --train-flags at the end of every command
    return [(name, [*argv, "--runs-dir", args.runs_dir, *shlex.split(args.train_flags)]) for name, argv in todo]


def jobs(args):
    """(run name, train.py argv) in run order: the classifiers, alpha 1 and alpha 0 of every seed (the
    precondition's), what stands on them, then the rest: a study stopped early has its main verdict, with its spread."""
    # the study's own loss classifier (trained first), not the shipped one `tiny` reads by default
    own = ["--classifier-ckpt", f"{args.runs_dir}/tiny-classifier"]

    def tokenizer(t, seed):
        return job("tokenizer", f"{t}-s{seed}", *TOKENIZERS[t], "--seed", str(seed), *own)

    def downstream(t, seed):  # the transformers and phase 2 that stand on tokenizer t of this seed
        phase1, s = f"{args.runs_dir}/{t}-s{seed}", ["--seed", str(seed)]
        out = [job(kind, f"{kind}-{t}-s{seed}", "--tokenizer", phase1, *s)
               for kind in ("ar", "nar") if t in args.transformers_on]
        if t in PHASE2_ON:
            out.append(job("decoder", f"dec-{t}-s{seed}", "--phase1", phase1, *s, *own))
        return out

    endpoints = [t for t in ("a1", "a0") if t in args.variants]
    others = [t for t in TOKENIZERS if t in args.variants and t not in endpoints]
    out = [job("classifier", name, *flags) for name, flags in CLASSIFIERS.items()]
    out += [tokenizer(t, seed) for seed in args.seeds for t in endpoints]
    out += [j for seed in args.seeds for t in endpoints for j in downstream(t, seed)]
    out += [j for seed in args.seeds for t in others for j in [tokenizer(t, seed), *downstream(t, seed)]]
    return with_common_flags(args, out)


def run_job(name, argv, args, state):
    """One `train.py` command, in this process, resumed when its folder exists; its wall time goes to
    state["times"] even when a signal stops it (the run saves and exits 0, so does the study: rerun)."""
    if name in state["done"]:
        return
    if runs.latest_checkpoint(os.path.join(args.runs_dir, name)):
        argv = [*argv, "--resume"]
    print(f"\n$ python train.py {shlex.join(argv)}", flush=True)
    t0 = time.time()
    try:
        train.main(argv)  # user errors: SystemExit("error: ...")
        state["done"].append(name)
    finally:
        state["times"][name] = state["times"].get(name, 0.0) + time.time() - t0
        save_state(args, state)


#### Evaluation
def last_val(run_dir, key):
    """The last value of `key` that the run's log.jsonl recorded (its final validation)."""
    _, values = runlog.read_log(run_dir).get(key, ([], []))  # sorted by step
    return values[-1] if values else None


def figures(r):
    return ", ".join(f"{k} {v:.4g}" for k, v in r.items() if isinstance(v, float))


@torch.no_grad()
def generate(model, tok, n, seed, device):
    """n samples (random classes, no guidance; AR at temperature 1, MaskGIT with its defaults)
    decoded by tok -> (images (n, 3, H, W), the classes asked for (n,))."""
    labels = torch.randint(model.config.num_classes, (n,), generator=torch.Generator().manual_seed(seed))
    g = torch.Generator(device=device).manual_seed(seed)
    return pictures.sample_images(model, tok, n, labels.to(device), g, 250), labels


@torch.no_grad()
def reconstruct(tok, images, device):
    """Every image through a tokenizer (or a floor) -> (x_hat (n, 3, H, W) clamped to [-1, 1], on
    the CPU; s (n, h, w) or None for a floor without tokens)."""
    x_hat, s = [], []
    with eval_mode(tok):
        for x, _ in torch.utils.data.DataLoader(images, batch_size=250):
            out, idx, _ = tok(x.to(device))
            x_hat.append(out.float().clamp(-1, 1).cpu())
            s.append(idx.cpu() if idx is not None else None)
    return torch.cat(x_hat), (torch.cat(s) if s[0] is not None else None)


class Spaces:
    """The two evaluation networks (SPACES), the validation split a checkpoint records, its statistics."""

    def __init__(self, args, ckpt, device):
        self.device, self.val = device, data.load_data("val", **data.recorded_data(ckpt))
        self.extractors = {sp: metrics.semantic_features_from_checkpoint(os.path.join(args.runs_dir, run))
                           for sp, run in SPACES.items()}
        self.images = torch.stack([x for x, _ in self.val])
        self.real = {sp: self.stats(self.images, sp) for sp in SPACES}
        # whether an image shows its class's shape, in the classifier of space cls (a measure beside FID)
        self.labels = torch.stack([torch.as_tensor(y) for _, y in self.val])  # (n,)
        self.shape_net = runs.load_classifier(os.path.join(args.runs_dir, SPACES["cls"]))[0].to(device)

    def shape(self, images, labels):
        return metrics.shape_color_accuracy(self.shape_net, images, labels, self.device)["shape"]

    def stats(self, images, sp):
        return metrics.compute_statistics(images.split(250), self.extractors[sp], self.device)

    @staticmethod
    def fid(a, b):
        return metrics.frechet_distance(a["mu"], a["sigma"], b["mu"], b["sigma"])

    def generation(self, images, labels, recon, prefix=""):
        """Samples -> shape accuracy, gen FID, generator-only FID (against the tokenizer's recon)."""
        r = {f"{prefix}shape": self.shape(images, labels)}
        for sp in SPACES:
            fake = self.stats(images, sp)
            r[f"{prefix}gen_fid_{sp}"] = self.fid(self.real[sp], fake)
            r[f"{prefix}gen_only_fid_{sp}"] = self.fid(recon[sp], fake)
        return r

    def reconstruction(self, tok):
        """A tokenizer's L1, usage, perplexity, code entropy, rFID -> (figures, its reconstructions' stats)."""
        x_hat, s = reconstruct(tok, self.val, self.device)
        r = {"l1": (x_hat - self.images).abs().mean().item()}
        if s is not None:
            r.update(usage=metrics.codebook_usage(s, tok.cfg.K), perplexity=metrics.perplexity(s, tok.cfg.K))
            r["code_entropy"] = math.log(r["perplexity"])
        recon = {sp: self.stats(x_hat, sp) for sp in SPACES}
        r.update({f"rfid_{sp}": self.fid(self.real[sp], recon[sp]) for sp in SPACES})
        r["recon_shape"] = self.shape(x_hat, self.labels)  # the ceiling of its token models' shape accuracy
        return r, recon


def evaluate_floors(args, state, spaces, ckpt):
    """The reference rows (metrics.floor_tokenizers), once: each image's mean color, the k-means of raw
    patches with the study's K and token grid, and the unquantized block average."""
    if any(r["tokenizer"].startswith("floor") for r in state["results"].values()):
        return
    t0, cfg = time.time(), runs.tokenizer_config(ckpt)
    train_ds = data.load_data("train", **data.recorded_data(ckpt))
    for name, tok in metrics.floor_tokenizers(train_ds, cfg.K, cfg.f).items():
        r, _ = spaces.reconstruction(tok.to(spaces.device))
        r.update(tokenizer=FLOORS[name], seed=0)
        state["results"][FLOORS[name]] = r
        print(f"evaluated {FLOORS[name]}: {figures(r)}")
    state["results"]["floor-kmeans"]["eval_s"] = time.time() - t0
    save_state(args, state)


def evaluate(args, state, device):
    """Every finished tokenizer -> state["results"][name]: its reconstruction figures once it is done
    (all the precondition needs), again with each transformer of its tokens once that is done."""
    done, results, spaces = state["done"], state["results"], None
    for seed in args.seeds:
        for t in [*TOKENIZERS, *[f"dec-{t}" for t in PHASE2_ON]]:
            name, base = f"{t}-s{seed}", t.removeprefix("dec-")  # dec-a1: phase 2 of a1, sampled by ar-a1, nar-a1
            if base not in args.variants or name not in done:
                continue
            planned = {kind: f"{kind}-{base}-s{seed}" for kind in ("ar", "nar") if base in args.transformers_on}
            models = {kind: m for kind, m in planned.items() if m in done}  # the transformers finished so far
            if name in results and all(f"{kind}_ckpt" in results[name] for kind in models):
                continue  # evaluated already with every finished transformer
            t0, run_dir = time.time(), os.path.join(args.runs_dir, name)
            path = runs.latest_checkpoint(run_dir)
            tok, ckpt, _ = runs.load_tokenizer(path, device)
            if spaces is None:  # the evaluation networks and the validation split, once
                spaces = Spaces(args, ckpt, device)
                evaluate_floors(args, state, spaces, ckpt)
            r, recon = spaces.reconstruction(tok)
            # L_low and L_sem on the validation images, in the loss network's units (the run's last eval)
            r.update(low=last_val(run_dir, "val_low"), sem=last_val(run_dir, "val_sem"), seed=seed, tokenizer=t,
                     ckpt=path)
            if t.startswith("dec-"):  # Fig. 7: phase 2 must not change a single token
                phase1 = runs.load_tokenizer(os.path.join(args.runs_dir, f"{base}-s{seed}"), device)[0]
                s1, _ = data.encode_dataset(phase1, spaces.val, device, flips=False)
                s2, _ = data.encode_dataset(tok, spaces.val, device, flips=False)
                r["same_tokens"] = [int((s1 == s2).all(1).sum()), len(s1)]
            for kind, model_name in models.items():
                model_dir = os.path.join(args.runs_dir, model_name)
                # dec-* shares its phase-1 encoder and codebook (the token hash covers only those): the
                # phase-1 models sample token sequences that it decodes
                model, _, _, _ = runs.load_transformer(model_dir, device, tokenizer=path)
                if not t.startswith("dec-"):
                    r[f"{kind}_val_loss"] = last_val(model_dir, "val_ce")
                    if kind == "ar":  # Sec. 3.2: one teacher-forced pass over every val image's GT tokens
                        pair = {"tok": tok, "model": model}
                        s, s_prime, _ = visualize.context_view_split(pair, spaces.val, device, "ar", None, seed)
                        r["gt_context_acc"] = visualize.token_accuracy(s, s_prime)
                images, labels = generate(model, tok, args.n_gen, seed, device)  # same tokens for dec-*
                r.update(spaces.generation(images, labels, recon, "" if kind == "ar" else "nar_"))
                r[f"{kind}_ckpt"] = runs.latest_checkpoint(model_dir)
            r["eval_s"] = time.time() - t0
            results[name] = r
            print(f"evaluated {name}: {figures(r)}", flush=True)
            save_state(args, state)


@torch.no_grad()
def evaluate_generation_references(args, state, device):
    """Beside the AR models on alpha 0 and alpha 1, what a token model gets at either end (AR columns
    only: they belong to no sampler): "unigram-<t>" learns no context, every token drawn on its own
    at its frequency among the validation tokens; "perfect-<t>" samples real token grids, the
    reconstructions of the first n_gen training images (its generator-only FID: FID's sampling noise)."""
    results, spaces = state["results"], None
    for seed in args.seeds:
        for t in [t for t in DEFAULT_TRANSFORMERS_ON if t in args.transformers_on and t in args.variants]:
            names = {kind: f"{kind}-{t}-s{seed}" for kind in ("unigram", "perfect")}
            if f"{t}-s{seed}" not in state["done"] or all(n in results for n in names.values()):
                continue
            t0, run_dir = time.time(), os.path.join(args.runs_dir, f"{t}-s{seed}")
            tok, ckpt, _ = runs.load_tokenizer(runs.latest_checkpoint(run_dir), device)
            if spaces is None:
                spaces = Spaces(args, ckpt, device)
            x_hat, s_val = reconstruct(tok, spaces.val, device)
            recon = {sp: spaces.stats(x_hat, sp) for sp in SPACES}
            s = metrics.tokens_without_context(s_val, tok.cfg.K, args.n_gen, seed)
            with eval_mode(tok):
                unigram = torch.cat([tok.decode_indices(c.to(device)).float().clamp(-1, 1).cpu() for c in s.split(250)])
            train_ds = data.load_data("train", **data.recorded_data(ckpt))
            train_ds = torch.utils.data.Subset(train_ds, range(min(args.n_gen, len(train_ds))))
            perfect, _ = reconstruct(tok, train_ds, device)
            # the classes: the drawn grids keep the labels of the validation images whose counts they draw
            # from (a model that learns nothing is right by chance); the real grids, their own images'
            labels = {"unigram": spaces.labels[torch.arange(args.n_gen) % len(spaces.labels)],
                      "perfect": torch.stack([torch.as_tensor(y) for _, y in train_ds])}
            for kind, images in (("unigram", unigram), ("perfect", perfect)):
                results[names[kind]] = {"tokenizer": f"{kind}-{t}", "seed": seed,
                                        **spaces.generation(images, labels[kind], recon)}
            results[names["perfect"]]["eval_s"] = time.time() - t0
            print(f"evaluated the references of {t}-s{seed}: " + "; ".join(
                f"{n} gen-only FID cls {results[n]['gen_only_fid_cls']:.4g}" for n in names.values()), flush=True)
            save_state(args, state)


#### Report: mean +- std over seeds, and the verdict rule
FLOORS = {"mean color": "floor-mean", "k-means": "floor-kmeans", "block average": "floor-block"}


def pct(v):
    return f"{100 * v:.1f}%"


def fid_columns(prefix, who):
    return [(f"{prefix}{key}_{sp}", f"{who} {head} {sp}", "{:.2f}".format)
            for key, head in (("gen_fid", "gen FID"), ("gen_only_fid", "gen-only FID")) for sp in SPACES]


RECONSTRUCTION = [  # (key, header, format)
    ("usage", "val usage", pct), ("perplexity", "perplexity", "{:.1f}".format),
    ("code_entropy", "code entropy (nats)", "{:.2f}".format), ("l1", "val L1", "{:.3f}".format),
    *[(f"rfid_{sp}", f"rFID {sp}", "{:.2f}".format) for sp in SPACES], ("recon_shape", "recon shape acc", pct),
    ("low", "L_low", "{:.4f}".format), ("sem", "L_sem", "{:.4f}".format),
]
GENERATION = [
    ("ar_val_loss", "AR val loss", "{:.3f}".format), ("gt_context_acc", "GT-context acc", pct),
    *fid_columns("", "AR"), ("shape", "AR shape acc", pct),
    ("nar_val_loss", "NAR val CE", "{:.3f}".format), *fid_columns("nar_", "NAR"), ("nar_shape", "NAR shape acc", pct),
]
FORMATS = {key: fmt for key, _, fmt in RECONSTRUCTION + GENERATION}
ROW_NAMES = {
    "floor-mean": "reference: each image's mean color", "floor-kmeans": "reference: k-means of raw patches",
    "floor-block": "reference: block average, unquantized",
    "unigram-a0": "reference: alpha 0's tokens drawn on their own at their frequencies (no context)",
    "unigram-a1": "reference: alpha 1's tokens drawn on their own at their frequencies (no context)",
    "perfect-a0": "reference: alpha 0's reconstructions of training images (a perfect token model)",
    "perfect-a1": "reference: alpha 1's reconstructions of training images (a perfect token model)",
    "a0": "alpha 0 (L_low), conv", "a0.5": "alpha 0.5, conv", "a1": "alpha 1 (L_sem), conv",
    "conv-x2": "alpha 0, +Conv x2 decoder, one phase", "attn-x2": "alpha 0, +Attention x2 decoder, one phase",
    "a0-noent": "alpha 0, conv, no entropy penalty", "dec-a1": "alpha 1 + phase 2 (SeQ-GAN decoder)",
    "dec-a0": "alpha 0 + phase 2 (SeQ-GAN decoder)",
}
# the figures measured in each evaluation space: key -> key_cls, key_tex
SPACED = ("rfid", "gen_fid", "gen_only_fid", "nar_gen_fid", "nar_gen_only_fid")

# The comparisons: (what, (row a, figure), (row b, figure), the expected direction of a against b:
# "<", ">", "=" (about equal), ">=" (no lower), or None (a check of ours with no expected side)).
OBSERVATION_2 = [  # the paper's central claim, with the decoder taken out or made equal
    ("Obs. 2: the AR model learns alpha 1's tokens better (generator-only FID)", ("a1", "gen_only_fid"),
     ("a0", "gen_only_fid"), "<"),
    ("Obs. 2: ... MaskGIT (generator-only FID)", ("a1", "nar_gen_only_fid"), ("a0", "nar_gen_only_fid"), "<"),
    ("Obs. 2: alpha 1 + phase 2 generates better than alpha 0 + phase 2 (AR)", ("dec-a1", "gen_fid"),
     ("dec-a0", "gen_fid"), "<"),
    ("Obs. 2: ... MaskGIT", ("dec-a1", "nar_gen_fid"), ("dec-a0", "nar_gen_fid"), "<"),
]
PAPER = [  # the paper's other comparisons, in its words
    ("Fig. 6(b): generation improves with alpha (AR, one phase)", ("a1", "gen_fid"), ("a0", "gen_fid"), "<"),
    ("Fig. 6(b): ... (MaskGIT, one phase)", ("a1", "nar_gen_fid"), ("a0", "nar_gen_fid"), "<"),
    ("Fig. 6(b): alpha 0.5 against 0 (AR)", ("a0.5", "gen_fid"), ("a0", "gen_fid"), "<"),
    ("Fig. 6(b): rFID is best at an intermediate alpha: 0.5 against 0", ("a0.5", "rfid"), ("a0", "rfid"), "<"),
    ("Fig. 6(b): ... 0.5 against 1", ("a0.5", "rfid"), ("a1", "rfid"), "<"),
    ("Table 6: L_sem alone reconstructs better than L_low (rFID 2.77 against 3.45)", ("a1", "rfid"),
     ("a0", "rfid"), "<"),
    ("Table 5: the entropy penalty raises codebook usage (100% against 43.5%)", ("a0", "usage"),
     ("a0-noent", "usage"), ">"),
    ("Table 1: +Conv x2 reconstructs better (rFID 3.22 against 3.45)", ("conv-x2", "rfid"), ("a0", "rfid"), "<"),
    ("Table 1 / Obs. 1: ... and generates no better (AR)", ("conv-x2", "gen_fid"), ("a0", "gen_fid"), ">="),
    ("Table 1: +Attention x2 reconstructs better (rFID 2.90 against 3.45)", ("attn-x2", "rfid"), ("a0", "rfid"), "<"),
    ("Table 1 / Obs. 1: ... and generates no better (AR)", ("attn-x2", "gen_fid"), ("a0", "gen_fid"), ">="),
    ("Fig. 8(b): phase 2 improves generation on the same tokens (AR)", ("dec-a1", "gen_fid"), ("a1", "gen_fid"), "<"),
    ("Fig. 8(b): ... (MaskGIT)", ("dec-a1", "nar_gen_fid"), ("a1", "nar_gen_fid"), "<"),
    ("Table 4: at equal size NAR generates better than AR (229M on ImageNet: 4.99 against 7.55)",
     ("dec-a1", "nar_gen_fid"), ("dec-a1", "gen_fid"), "<"),
    ("... on alpha 0 + phase 2", ("dec-a0", "nar_gen_fid"), ("dec-a0", "gen_fid"), "<"),
]
OURS = [  # our own checks: the paper measures none of these
    ("ours: phase 2 improves reconstruction (the paper shows colors restored, Fig. 8(a), no rFID)",
     ("dec-a1", "rfid"), ("a1", "rfid"), "<"),
    ("ours: ... on alpha 0", ("dec-a0", "rfid"), ("a0", "rfid"), "<"),
    ("ours, of the paper's argument (Sec. 3.3.1): alpha 1's tokens are easier to predict (AR val loss)",
     ("a1", "ar_val_loss"), ("a0", "ar_val_loss"), "<"),
    ("ours: ... GT-context accuracy (Sec. 3.2)", ("a1", "gt_context_acc"), ("a0", "gt_context_acc"), ">"),
    ("ours: alpha 1's tokens carry as much information (code entropy)", ("a1", "code_entropy"),
     ("a0", "code_entropy"), None),
    ("ours: Eq. 3 bites: alpha 1 ends lower on L_sem", ("a1", "sem"), ("a0", "sem"), "<"),
    ("ours: ... and alpha 0 lower on L_low", ("a0", "low"), ("a1", "low"), "<"),
]
# shown in %, differences in percentage points
PERCENT = ("usage", "gt_context_acc", "recon_shape", "shape", "nar_shape")


def mean_std(values):
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    m = sum(values) / len(values)
    return m, (math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0)


def cell(results, row, key):
    """(mean, std, number of seeds) of one figure of one row, or None."""
    vals = [r[key] for r in results.values() if r["tokenizer"] == row and r.get(key) is not None]
    return (*mean_std(vals), len(vals)) if vals else None


def compare(results, a, b):
    """One figure of two rows under the rule: |mean_a - mean_b| > 2 * sqrt((std_a^2 + std_b^2) / 2)
    -> (outcome word, sign, text of a, text of b, gap texts), or None when a cell is missing."""
    ca, cb = cell(results, *a), cell(results, *b)
    if ca is None or cb is None:
        return None
    diff, pooled = ca[0] - cb[0], math.sqrt((ca[1] ** 2 + cb[1] ** 2) / 2)
    word = ("one seed: no spread, no verdict" if min(ca[2], cb[2]) < 2
            else "counts" if abs(diff) > 2 * pooled else "within the spread")
    key = a[1]
    fmt = FORMATS.get(key, FORMATS.get(key.rsplit("_", 1)[0], lambda v: f"{v:.3g}"))
    gap = (lambda v: f"{100 * v:.1f} pts") if key in PERCENT else fmt
    sides = [f"{row} {k}: {fmt(c[0])} ± {fmt(c[1])}" for (row, k), c in ((a, ca), (b, cb))]
    return word, (diff > 0) - (diff < 0), *sides, gap(abs(diff)), gap(2 * pooled)


def outcome(word, sign, paper):
    """compare's word as the verdict's text: a difference that counts says its side, and if the paper expected it."""
    if word != "counts":
        return word
    text = f"**counts**: {'higher' if sign > 0 else 'lower'} for a"
    if paper is None:
        return text
    with_paper = {"<": sign < 0, ">": sign > 0, "=": False, ">=": sign > 0}[paper]
    return text + (", as expected" if with_paper else ", against the expectation")


def verdict(results, what, a, b, paper):
    """One comparison as a table row, or None when a row was not run. For a figure measured in both
    evaluation spaces (SPACED), it counts only when the two spaces agree; else it says they do not."""
    (row_a, key_a), (row_b, key_b) = a, b
    if key_a not in SPACED:
        c = compare(results, a, b)
        return None if c is None else f"| {what} | {' | '.join(c[2:])} | {outcome(c[0], c[1], paper)} |"
    per = {sp: compare(results, (row_a, f"{key_a}_{sp}"), (row_b, f"{key_b}_{sp}")) for sp in SPACES}
    if any(c is None for c in per.values()):
        return None
    words = {(c[0], c[1] if c[0] == "counts" else 0) for c in per.values()}
    if len(words) == 1:
        text = outcome(*words.pop(), paper) + " (both spaces)"
    else:
        text = "the spaces disagree: " + "; ".join(f"{sp}: {outcome(c[0], c[1], paper)}" for sp, c in per.items())
    return f"| {what} | " + " | ".join("<br>".join(c[i] for c in per.values()) for i in range(2, 6)) + f" | {text} |"


def precondition(results):
    """Our threshold on Table 6's rFIDs, checked before any generation figure: alpha 1's at most PRECONDITION
    times alpha 0's (means over seeds), in each space -> (the report's lines, met in both)."""
    lines, met = [], True
    for sp in SPACES:
        a1, a0 = cell(results, "a1", f"rfid_{sp}"), cell(results, "a0", f"rfid_{sp}")
        if a1 is None or a0 is None:
            return [], False
        ok = a1[0] <= PRECONDITION * a0[0]
        met &= ok and min(a1[2], a0[2]) >= 3
        lines.append(f"| {sp} | {a1[0]:.2f} ± {a1[1]:.2f} | {a0[0]:.2f} ± {a0[1]:.2f} | {a1[0] / a0[0]:.2f} | "
                     f"{'met' if ok else 'NOT met'} ({min(a1[2], a0[2])} seeds) |")
    return lines, met


def table(results, columns, rows):
    """Mean ± std over seeds, one line per row that has any of the columns' figures."""
    lines = ["| tokenizer | seeds | " + " | ".join(h for _, h, _ in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for t in rows:
        cells = [cell(results, t, key) for key, _, _ in columns]
        if all(c is None for c in cells):
            continue
        # the seeds with any of these figures; a cell from fewer of them says how many
        seeds = sorted(r["seed"] for r in results.values()
                       if r["tokenizer"] == t and any(r.get(key) is not None for key, _, _ in columns))
        text = ["" if c is None else fmt(c[0]) + (f" ± {fmt(c[1])}" if c[2] > 1 else "")
                + (f" (n={c[2]})" if c[2] < len(seeds) else "") for c, (_, _, fmt) in zip(cells, columns)]
        seeds = "-" if t.startswith("floor") else ",".join(map(str, seeds))
        lines.append(f"| {ROW_NAMES[t]} | {seeds} | " + " | ".join(text) + " |")
    return lines


def report(args, state):
    """results.md: the precondition, means +- std over seeds, the verdicts, every run, the wall time."""
    results = state["results"]
    seeds = sorted({r["seed"] for r in results.values() if not r["tokenizer"].startswith("floor")})
    lines = ["# Reproduction study (tiny preset, CPU)", "",
             f"Schedule: the tiny preset's lengths; {args.n_gen} generated images per model; semantic FIDs in two "
             "networks that no loss reads: cls (runs/study/eval-classifier, the loss classifier's layout) and tex "
             "(runs/study/eval-texture, VGG16's pooling, trained on class x background texture). "
             f"Seeds: {', '.join(map(str, seeds))}.", ""]
    pre, met = precondition(results)
    lines += ["## The precondition (our threshold)", "",
              f"Alpha 1 must reconstruct about as well as alpha 0 before their generation is compared: its rFID "
              f"at most {PRECONDITION}x alpha 0's (means over seeds), in both spaces.", "",
              "| space | alpha 1 rFID | alpha 0 rFID | ratio | |", "|---|---|---|---|---|", *pre, "",
              "Precondition " + ("met in both spaces: Observation 2 is tested below." if met else
                                 "NOT met: the Observation 2 rows below do not test the paper's claim."), ""]
    lines += ["## Reconstruction: mean ± std over seeds", "", *table(results, RECONSTRUCTION, ROW_NAMES), "",
              "## Generation: mean ± std over seeds", "", *table(results, GENERATION, ROW_NAMES), ""]
    rule = ("The rule, fixed before any number: a difference between two cells counts when it is larger than "
            "twice their pooled standard deviation over seeds, 2 * sqrt((std_a^2 + std_b^2) / 2); otherwise it "
            "is within the spread, and no verdict is drawn from it. A FID comparison counts only when both "
            "evaluation spaces agree.")
    head = ["| comparison | a | b | difference | 2 x pooled std | verdict |", "|---|---|---|---|---|---|"]
    for title, group in (("Observation 2", OBSERVATION_2), ("The paper's other comparisons", PAPER),
                         ("Our own checks", OURS)):
        rows = [v for v in (verdict(results, *x) for x in group) if v]
        if rows:
            lines += [f"## Verdicts: {title}", "", rule, "", *head, *rows, ""]
    columns = RECONSTRUCTION + GENERATION
    lines += ["## Every run", "", "| run | seed | " + " | ".join(h for _, h, _ in columns) + " |",
              "|---|---|" + "---|" * len(columns)]
    for name in sorted(results, key=lambda n: (list(ROW_NAMES).index(results[n]["tokenizer"]), results[n]["seed"])):
        r = results[name]
        cells = [fmt(r[k]) if r.get(k) is not None else "" for k, _, fmt in columns]
        lines.append(f"| {name} | {r['seed']} | " + " | ".join(cells) + " |")
    same = [(r["tokenizer"], r["seed"], *r["same_tokens"]) for r in results.values() if "same_tokens" in r]
    if same:
        lines += ["", "Tokens before and after phase 2: " + "; ".join(
            f"{t} seed {seed}: {a}/{b} val images have identical indices" for t, seed, a, b in sorted(same)) + "."]
    return write_report(args, "results.md", lines, list(state["times"].values()),
                        [r.get("eval_s", 0.0) for r in results.values()])


def write_report(args, filename, lines, train_times, eval_times):
    """lines + the wall time -> runs_dir/filename (and the screen); returns its path."""
    train_s, eval_s = sum(train_times), sum(eval_times)
    lines = [*lines, "", f"Wall time measured by study.py: training {train_s / 60:.1f} min ({len(train_times)} "
             f"runs), evaluation {eval_s / 60:.1f} min, total {(train_s + eval_s) / 60:.1f} min."]
    path = os.path.join(args.runs_dir, filename)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\n-> {path}")
    return path


#### Beyond the core: the generator's capacity, and AR against MaskGIT over training
# `python study.py --extras` reads the core's classifiers, tokenizers and default-width AR cells, and
# keeps its own state (extras.json) and report (extras.md), so it may run beside the core.
#   capacity  AR at half and double the width on alpha 0 and alpha 1 tokens, seed 0; seeds 1 and 2 too
#             where seed 0 says the width matters (capacity_triggered). Our reading of the paper's
#             argument predicts alpha 1's advantage grows as the generator shrinks.
#   curves    an AR model and a MaskGIT on the shipped phase-2 run, CURVE_STEPS steps each, gen FID
#             every 1000 steps, sampled as in the core.
WIDTHS = ("tiny-half", "tiny-2x")  # transformer.TRANSFORMER_PRESETS
CURVE_STEPS = 4000


def extras_jobs(args, seeds_by_width):
    """(run name, train.py argv) of the extras, in order."""
    out = [job("ar", f"ar-{width}-{t}-s{seed}", "--transformer", width, "--tokenizer", f"{args.runs_dir}/{t}-s{seed}",
               "--seed", str(seed)) for width in WIDTHS for seed in seeds_by_width[width] for t in ("a1", "a0")]
    out += [job(kind, f"curve-{kind}", "--tokenizer", args.curve_tokenizer, "--steps", str(CURVE_STEPS),
                "--ckpt-every", "1000", "--keep", "4", "--seed", "0") for kind in ("ar", "nar")]
    return with_common_flags(args, out)


def evaluate_model(args, state, spaces, name, model_path, tok_path, seed):
    """One transformer checkpoint's generation figures -> state["extras"][name]."""
    if name in state["extras"]:
        return
    t0 = time.time()
    model, _, tok, _ = runs.load_transformer(model_path, spaces.device, tokenizer=tok_path)
    _, recon = spaces.reconstruction(tok)
    r = spaces.generation(*generate(model, tok, args.n_gen, seed, spaces.device), recon)
    r["eval_s"] = time.time() - t0
    state["extras"][name] = r
    print(f"evaluated {name}: {figures(r)}", flush=True)
    save_state(args, state)


def capacity_triggered(core, extras, width):
    """True when seed 0 at this width puts alpha 1 and alpha 0 further apart (generator-only FID) than
    twice the pooled std of the default-width cells, in either space."""
    for key in (f"gen_only_fid_{sp}" for sp in SPACES):
        a1, a0 = cell(core, "a1", key), cell(core, "a0", key)
        r1, r0 = extras.get(f"ar-{width}-a1-s0"), extras.get(f"ar-{width}-a0-s0")
        if a1 and a0 and r1 and r0 and abs(r1[key] - r0[key]) > 2 * math.sqrt((a1[1] ** 2 + a0[1] ** 2) / 2):
            return True
    return False


def extras(args, state, device):
    """Train and evaluate the extras, resumably; seeds 1 and 2 of a width only when seed 0 asks."""
    state.setdefault("extras", {})
    core = load_state(args, extras=False)["results"]  # read only: the core may still be running
    ready = [f"{t}-s{seed}" for t in ("a1", "a0") for seed in args.seeds]
    if not all(name in core for name in ready):
        raise UserError(f"--extras reads the core study's tokenizers and AR cells: run `python study.py` first "
                        f"(missing: {', '.join(n for n in ready if n not in core)})")
    spaces = Spaces(args, runs.load_checkpoint(core[ready[0]]["ckpt"], "tokenizer"), device)
    seeds_by_width, done = {w: [0] for w in WIDTHS}, set()
    while todo := [(n, a) for n, a in extras_jobs(args, seeds_by_width) if n not in done]:
        for name, argv in todo:
            run_job(name, argv, args, state)
            done.add(name)
            if name.startswith("curve-"):
                for step in range(1000, CURVE_STEPS + 1, 1000):
                    path = os.path.join(args.runs_dir, name, f"ckpt_{step:08d}.pt")
                    evaluate_model(args, state, spaces, f"{name}-{step}", path, args.curve_tokenizer, 0)
            else:
                seed, t = int(name.rsplit("-s", 1)[1]), name.split("-")[-2]
                evaluate_model(args, state, spaces, name, os.path.join(args.runs_dir, name),
                               os.path.join(args.runs_dir, f"{t}-s{seed}"), seed)
        core = load_state(args, extras=False)["results"]  # the core's latest, if it ran beside us
        for width in WIDTHS:  # three seeds where seed 0 says the width matters
            if seeds_by_width[width] == [0] and capacity_triggered(core, state["extras"], width):
                seeds_by_width[width] = [0, 1, 2]
    return extras_report(args, state)


def extras_report(args, state):
    """extras.md: the capacity table beside the default width, and the curves."""
    ex, core = state["extras"], load_state(args, extras=False)["results"]
    lines = ["# Beyond the core study", "", "## The generator's capacity (AR, generator-only FID and gen FID)", "",
             "| width | tokenizer | seeds | " + " | ".join(f"gen-only FID {sp} | gen FID {sp}" for sp in SPACES) + " |",
             "|---|---|---|" + "---|---|" * len(SPACES)]
    for width in ("tiny", *WIDTHS):
        for t in ("a1", "a0"):
            if width == "tiny":
                rows = [r for r in core.values() if r["tokenizer"] == t and "gen_fid_cls" in r]
            else:
                rows = [r for n, r in ex.items() if n.startswith(f"ar-{width}-{t}-s")]
            if not rows:
                continue
            keys = [key for sp in SPACES for key in (f"gen_only_fid_{sp}", f"gen_fid_{sp}")]
            cells = [f"{m:.2f}" + (f" ± {sd:.2f}" if len(rows) > 1 else "") for m, sd in
                     (mean_std([r[key] for r in rows]) for key in keys)]
            lines.append(f"| {width} | {t} | {len(rows)} | " + " | ".join(cells) + " |")
    lines += ["", f"## AR against MaskGIT over training ({args.curve_tokenizer}, {args.n_gen} samples, seed 0)", "",
              "| step | " + " | ".join(f"{k} gen FID {sp}" for k in ("AR", "MaskGIT") for sp in SPACES) + " |",
              "|---|" + "---|" * 2 * len(SPACES)]
    for step in range(1000, CURVE_STEPS + 1, 1000):
        cells = [f"{ex[f'curve-{k}-{step}'][f'gen_fid_{sp}']:.2f}" if f"curve-{k}-{step}" in ex else ""
                 for k in ("ar", "nar") for sp in SPACES]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    names = [n for n in state["times"] if n.startswith(("ar-tiny-", "curve-"))]
    return write_report(args, "extras.md", lines, [state["times"][n] for n in names],
                        [r.get("eval_s", 0.0) for r in ex.values()])


#### State and CLI
def state_path(args, extras=None):
    """results.json, the core's state; extras.json, --extras's own: both commands may run at once."""
    return os.path.join(args.runs_dir, "extras.json" if (args.extras if extras is None else extras) else "results.json")


def load_state(args, extras=None):
    path = state_path(args, extras)
    if not os.path.isfile(path):
        return {"done": [], "times": {}, "results": {}}
    with open(path) as f:
        return json.load(f)


def save_state(args, state):
    """The state, replaced atomically: a stop mid-write keeps the previous figures."""
    path = state_path(args)
    with open(path + ".tmp", "w") as f:
        json.dump(state, f, indent=1)
    os.replace(path + ".tmp", path)


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-dir", default="runs/study", help="folder of the study's runs and results")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(TOKENIZERS), choices=list(TOKENIZERS),
                   help="which tokenizers (and their transformers) to train")
    p.add_argument("--transformers-on", nargs="*", default=list(DEFAULT_TRANSFORMERS_ON), choices=list(TRANSFORMERS_ON),
                   help="the tokenizers an AR model and a MaskGIT are trained on (none: reconstruction only)")
    p.add_argument("--n-gen", type=int, default=1000, help="generated images per model for gen FID")
    p.add_argument("--train-flags", default="", help="extra flags for every train.py command (e.g. --threads 2)")
    p.add_argument("--device", default="auto")
    p.add_argument("--extras", action="store_true", help="after the core study: the extras (extras.md)")
    p.add_argument("--curve-tokenizer", default="pretrained/tiny-decoder", help="--extras: the curves' tokenizer")
    p.add_argument("--dry-run", action="store_true", help="print the training commands only")
    p.add_argument("--report", action="store_true", help="train nothing: evaluate what finished, write results.md")
    return p


@one_line_errors
def main(argv=None):
    """Command line entry; argv a list of strings (None: sys.argv). Returns the report's path."""
    args = get_parser().parse_args(argv)
    if args.n_gen < 2:
        raise SystemExit(f"error: --n-gen must be >= 2 (a covariance needs two samples), got {args.n_gen}")
    todo = jobs(args)
    if args.dry_run:
        for _, argv in todo:
            print(f"python train.py {shlex.join(argv)}")
        return None
    try:
        os.makedirs(args.runs_dir, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"error: cannot create {args.runs_dir} ({e.strerror}): pick another --runs-dir") from None
    state = load_state(args)
    device = pick_device(args.device)
    if args.extras:
        return extras(args, state, device)
    for name, argv in todo:  # --report trains nothing: evaluates what finished (a second call finds nothing new)
        if not args.report:
            run_job(name, argv, args, state)
        evaluate(args, state, device)
        evaluate_generation_references(args, state, device)
    if not state["results"]:
        raise SystemExit(f"error: nothing evaluated yet in {args.runs_dir}: run `python study.py` first")
    return report(args, state)


if __name__ == "__main__":
    main()
