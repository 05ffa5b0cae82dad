"""
The reproduction study at tiny scale: the paper's observations (Sec. 3.3, Table 1, Table 5,
Fig. 6, Fig. 8, and AR against NAR in Tables 4-6) re-run on the built-in shapes dataset, on a
CPU, by plain `train.py` commands, for several seeds.

    python study.py                   # train and evaluate everything; rerun to continue after a stop
    python study.py --seeds 0         # one seed only
    python study.py --transformers-on a1 a0 a0.5 conv-x2 attn-x2   # transformers on five (+1 h a seed)
    python study.py --dry-run         # print the training commands, run nothing
    python study.py --report          # rebuild runs/study/results.md from what has been evaluated

For every seed it trains, each run a `python train.py ...` command printed before it runs:
    tokenizers (phase 1)  a0        alpha = 0, conv decoder: L_low, the baseline of Table 1,
                                    Table 5 and Fig. 6
                          a0.5, a1  alpha = 0.5 and 1 (Fig. 6); a1 is SeQ-GAN's phase 1
                          conv-x2   alpha = 0 with Table 1's "+Conv x2" decoder, and
                          attn-x2   ... with its "+Attention x2" decoder, each trained from the
                                    start, jointly with encoder and codebook (Table 1)
                          a0-noent  a0 without the entropy penalty (Table 5)
    phase 2               dec-a1    a1's encoder and codebook frozen, SeQ-GAN's decoder, alpha = 0
    transformers          ar-<t>    an AR model and a MaskGIT on a1 and a0 (same preset and
                          nar-<t>   steps); --transformers-on adds a0.5, conv-x2 and attn-x2
and one semantic classifier for the loss (seed 0) and an evaluation classifier (seed 1): FIDs are
measured in the evaluation classifier's features, so that the tokenizers trained against the
loss classifier are not judged by the same network. The evaluation classifier has the layout of
the loss classifier (`losses.SMALL_VGG16`).

Then it measures, on the 1000 validation images:
    usage, perplexity   codebook usage over the split (Sec. 3.4, Table 5); code entropy =
                        ln(perplexity), the entropy of the token distribution in nats
    rFID                semantic FID(reconstructions, inputs) (Sec. 4's rFID, offline extractor)
    AR / NAR val loss   the transformers' final validation loss (their training logs; NAR's is
                        the masked-token cross-entropy without label smoothing, `val_ce`)
    GT-context acc      share of positions where the AR top-1 with GT context equals the GT token
                        (Sec. 3.2, EMA weights)
    gen FID AR / NAR    semantic FID(n samples, validation images): random classes, no guidance;
                        AR at temperature 1, top-k/top-p off; MaskGIT with its defaults (12
                        steps). dec-a1 decodes ar-a1's and nar-a1's samples (the same token
                        sequences: sampling does not depend on the decoder), so it isolates the
                        decoder's effect, as Fig. 8 does.

The report gives mean +- std over the seeds for every cell, and applies one rule, stated before
the numbers, to every comparison the paper makes (VERDICTS): a difference counts when it is
larger than twice the pooled standard deviation of the two cells; else it is within the spread.

The schedule is shorter than the tiny preset's (`STUDY_STEPS`), so that three seeds fit in 2.5
hours of a 2-core CPU (the README has the measured time). Results: runs/study/results.json (every
figure) and results.md (tables and verdicts). Semantic FIDs rank models on this dataset only;
they are not comparable to Inception FIDs.
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
import runs
import train
import visualize
from machine import UserError, pick_device

# The study's schedule (ours): shorter than the tiny preset's runs, so that three seeds of the
# default runs fit in 2.5 hours of a 2-core CPU. Measured per run on 2 cores: a tokenizer ~200 s,
# an AR model or a MaskGIT ~195 s, phase 2 ~150 s, one tokenizer's evaluation 10-40 s. The
# transformers on a0.5, conv-x2 and attn-x2 (Fig. 6(b)'s middle point, Table 1's generation side)
# would add about 20 minutes a seed each, so they are not trained by default (--transformers-on).
STUDY_STEPS = {
    "tokenizer": ["--steps", "600", "--disc-start", "400"],
    "decoder": ["--steps", "300"],
    "ar": ["--steps", "800"],
    "nar": ["--steps", "800"],
}

# phase-1 tokenizer variants: name -> train.py flags
TOKENIZERS = {
    "a1": ["--alpha", "1"],
    "a0": ["--alpha", "0"],
    "a0.5": ["--alpha", "0.5"],
    "conv-x2": ["--alpha", "0", "--decoder", "conv-x2"],
    "attn-x2": ["--alpha", "0", "--decoder", "attention-x2"],
    "a0-noent": ["--alpha", "0", "--entropy-weight", "0"],
}
TRANSFORMERS_ON = ("a1", "a0", "a0.5", "conv-x2", "attn-x2")  # the tokenizers an AR and a MaskGIT can learn
DEFAULT_TRANSFORMERS_ON = ("a1", "a0")  # Obs. 2's endpoints; dec-a1 decodes a1's samples (Fig. 8)


# ------------------------------------------------------------------------------------------
#### The runs
# ------------------------------------------------------------------------------------------


def jobs(args):
    """The training commands in the order they run: (run name, train.py argv)."""
    common = ["--runs-dir", args.runs_dir, *shlex.split(args.train_flags)]
    out = [
        ("tiny-classifier", ["--stage", "classifier", "--name", "tiny-classifier", "--seed", "0"]),
        ("eval-classifier", ["--stage", "classifier", "--name", "eval-classifier", "--seed", "1"]),
    ]
    for seed in args.seeds:
        s = ["--seed", str(seed)]
        tok = lambda t: f"{args.runs_dir}/{t}-s{seed}"  # noqa: E731
        # the most telling runs first: a stopped study has the alpha endpoints of every seed
        order = [("tokenizer", "a1"), ("tokenizer", "a0"), ("ar", "a1"), ("nar", "a1"), ("ar", "a0"),
                 ("nar", "a0"), ("tokenizer", "a0.5"), ("ar", "a0.5"), ("nar", "a0.5"), ("decoder", "a1"),
                 ("tokenizer", "attn-x2"), ("ar", "attn-x2"), ("nar", "attn-x2"),
                 ("tokenizer", "conv-x2"), ("ar", "conv-x2"), ("nar", "conv-x2"), ("tokenizer", "a0-noent")]
        for stage, t in order:
            if t not in args.variants:
                continue
            if stage == "tokenizer":
                out.append((f"{t}-s{seed}", ["--stage", "tokenizer", "--name", f"{t}-s{seed}", *TOKENIZERS[t],
                                             *STUDY_STEPS["tokenizer"], *s]))
            elif stage in ("ar", "nar"):
                if t not in args.transformers_on:
                    continue
                out.append((f"{stage}-{t}-s{seed}", ["--stage", stage, "--name", f"{stage}-{t}-s{seed}",
                                                     "--tokenizer", tok(t), *STUDY_STEPS[stage], *s]))
            else:
                out.append((f"dec-{t}-s{seed}", ["--stage", "decoder", "--name", f"dec-{t}-s{seed}",
                                                 "--phase1", tok(t), *STUDY_STEPS["decoder"], *s]))
    return [(name, [*argv, *common]) for name, argv in out]


def run_job(name, argv, args, state):
    """One `train.py` command, in this process; resumed when its folder exists (a finished run
    just says so). Its wall time is added to state["times"], even when a signal stops it (the run
    then saves its checkpoint and exits 0, and so does the study: rerun to continue)."""
    if name in state["done"]:
        return
    run_dir = os.path.join(args.runs_dir, name)
    if runs.latest_checkpoint(run_dir):
        argv = [*argv, "--resume"]
    print(f"\n$ python train.py {shlex.join(argv)}", flush=True)
    t0 = time.time()
    try:
        train.main(argv)  # user errors: SystemExit("error: ...")
        if name not in state["done"]:
            state["done"].append(name)
    finally:
        state["times"][name] = state["times"].get(name, 0.0) + time.time() - t0
        save_state(args, state)


# ------------------------------------------------------------------------------------------
#### Evaluation
# ------------------------------------------------------------------------------------------


def last_val(run_dir, key):
    """The last value of `key` that the run's log.jsonl recorded (its final validation)."""
    _, values = runs.read_log(run_dir).get(key, ([], []))  # sorted by step
    return values[-1] if values else None


@torch.no_grad()
def generate(model, tok, n, seed, device):
    """n samples (random classes, no guidance; AR at temperature 1, MaskGIT with its defaults)
    decoded by tok -> (n, 3, H, W)."""
    C = model.config.num_classes
    labels = torch.randint(C, (n,), generator=torch.Generator().manual_seed(seed)) if C > 0 else None
    labels = labels.to(device) if labels is not None else None
    return runs.sample_images(model, tok, n, labels, torch.Generator(device=device).manual_seed(seed), 250)


def batches(ds, batch_size=250):
    return torch.utils.data.DataLoader(ds, batch_size=batch_size)


def gen_fid(model, tok, n, seed, device, extractor, val_stats):
    images = generate(model, tok, n, seed, device)  # (n, 3, H, W) in [-1, 1]
    fake = metrics.compute_statistics(images.split(250), extractor, device)
    return metrics.frechet_distance(val_stats["mu"], val_stats["sigma"], fake["mu"], fake["sigma"])


def evaluate(args, state, device):
    """Every tokenizer whose runs are done (its transformers too, where they are planned) and that
    is not evaluated yet -> state["results"][name]. Called after every run, so that a study
    stopped half-way still has figures for what it finished."""
    done, results = state["done"], state["results"]
    extractor, val, val_stats = None, None, None
    for seed in args.seeds:
        for t in [*[t for t in TOKENIZERS if t in args.variants], "dec-a1"]:
            name = f"{t}-s{seed}"
            base = t.removeprefix("dec-")  # dec-a1: phase 2 of a1, sampled by ar-a1 and nar-a1
            models = {kind: f"{kind}-{base}-s{seed}" for kind in ("ar", "nar")
                      if base in args.transformers_on and base in args.variants}
            if name in results and all(f"{kind}_ckpt" in results[name] for kind in models):
                continue  # evaluated already (a rerun with more transformers evaluates it again)
            if name not in done or any(m not in done for m in models.values()):
                continue  # not ready
            t0 = time.time()
            if extractor is None:  # the evaluation network and the validation split, once
                eval_classifier = os.path.join(args.runs_dir, "eval-classifier")
                extractor = metrics.semantic_features_from_checkpoint(eval_classifier)
            path = runs.latest_checkpoint(os.path.join(args.runs_dir, name))
            tok, ckpt, _ = runs.load_tokenizer(path, device)
            if val is None:
                val = data.load_data("val", **data.recorded_data(ckpt))
                val_stats = metrics.compute_statistics(batches(val), extractor, device)
            r = metrics.reconstruction_metrics(tok, batches(val), device, extractor=extractor)
            r = {k: r[k] for k in ("rfid", "l1", "usage", "perplexity")}
            r.update(code_entropy=math.log(r["perplexity"]), seed=seed, tokenizer=t, ckpt=path)
            if t.startswith("dec-"):  # Fig. 8: phase 2 must not change a single token
                phase1 = runs.load_tokenizer(os.path.join(args.runs_dir, f"{base}-s{seed}"), device)[0]
                s1, _ = data.encode_dataset(phase1, val, device, flips=False)
                s2, _ = data.encode_dataset(tok, val, device, flips=False)
                r["same_tokens"] = [int((s1 == s2).all(1).sum()), len(s1)]
            for kind, model_name in models.items():
                run_dir = os.path.join(args.runs_dir, model_name)
                # the transformer of these tokens; dec-a1 shares a1's encoder and codebook, so the a1
                # models sample token sequences that dec-a1 decodes (the hash covers only those parts)
                model, _, _, _ = runs.load_transformer(run_dir, device, tokenizer=path)
                prefix = "" if kind == "ar" else "nar_"
                if not t.startswith("dec-"):
                    r[f"{kind}_val_loss"] = last_val(run_dir, "val_ce")
                    if kind == "ar":  # Sec. 3.2: one teacher-forced pass over every val image's GT tokens
                        pair = {"tok": tok, "model": model}
                        s, s_prime, _ = visualize.context_view_split(pair, val, device, "ar", None, seed)
                        r["gt_context_acc"] = visualize.token_accuracy(s, s_prime)
                r[f"{prefix}gen_fid"] = gen_fid(model, tok, args.n_gen, seed, device, extractor, val_stats)
                r[f"{kind}_ckpt"] = runs.latest_checkpoint(run_dir)
            r["eval_s"] = time.time() - t0
            results[name] = r
            figures = ", ".join(f"{k} {v:.4g}" for k, v in r.items() if isinstance(v, float))
            print(f"evaluated {name}: {figures}", flush=True)
            save_state(args, state)


# ------------------------------------------------------------------------------------------
#### Report: mean +- std over seeds, and the verdict rule
# ------------------------------------------------------------------------------------------

COLUMNS = [  # (key, header, format)
    ("usage", "val usage", lambda v: f"{100 * v:.1f}%"),
    ("perplexity", "perplexity", lambda v: f"{v:.1f}"),
    ("code_entropy", "code entropy (nats)", lambda v: f"{v:.2f}"),
    ("l1", "val L1", lambda v: f"{v:.3f}"),
    ("rfid", "rFID (sem.)", lambda v: f"{v:.2f}"),
    ("ar_val_loss", "AR val loss", lambda v: f"{v:.3f}"),
    ("gt_context_acc", "GT-context acc", lambda v: f"{100 * v:.1f}%"),
    ("gen_fid", "gen FID AR (sem.)", lambda v: f"{v:.1f}"),
    ("nar_val_loss", "NAR val CE", lambda v: f"{v:.3f}"),
    ("nar_gen_fid", "gen FID NAR (sem.)", lambda v: f"{v:.1f}"),
]
FORMATS = {key: fmt for key, _, fmt in COLUMNS}
ROW_NAMES = {
    "a0": "alpha 0 (L_low), conv", "a0.5": "alpha 0.5, conv", "a1": "alpha 1 (L_sem), conv",
    "conv-x2": "alpha 0, +Conv x2 decoder, one phase", "attn-x2": "alpha 0, +Attention x2 decoder, one phase",
    "a0-noent": "alpha 0, conv, no entropy penalty", "dec-a1": "alpha 1 + phase 2 (SeQ-GAN decoder)",
}

# The comparisons the paper makes: (what the paper says, (row a, figure), (row b, figure), the
# paper's direction of a against b: "<", ">", "=" (about equal) or ">=" (no lower)); each verdict
# compares a against b with the rule below, whatever the numbers are, then says whether a
# difference that counts goes the paper's way
VERDICTS = [
    ("Table 5: the entropy penalty raises codebook usage", ("a0", "usage"), ("a0-noent", "usage"), ">"),
    ("Fig. 6(b): generation improves with alpha (AR)", ("a1", "gen_fid"), ("a0", "gen_fid"), "<"),
    ("Fig. 6(b): generation improves with alpha (NAR)", ("a1", "nar_gen_fid"), ("a0", "nar_gen_fid"), "<"),
    ("Fig. 6(b): alpha 0.5 against 0 (AR)", ("a0.5", "gen_fid"), ("a0", "gen_fid"), "<"),
    ("Fig. 6(b): alpha 0.5 against 0 (NAR)", ("a0.5", "nar_gen_fid"), ("a0", "nar_gen_fid"), "<"),
    ("Fig. 6(b): rFID is best at an intermediate alpha", ("a0.5", "rfid"), ("a0", "rfid"), "<"),
    ("Table 6: L_sem alone reconstructs about as well as L_low (2.77, 3.45)", ("a1", "rfid"), ("a0", "rfid"), "="),
    ("Obs. 2's mechanism: semantic tokens are easier to predict", ("a1", "ar_val_loss"),
     ("a0", "ar_val_loss"), "<"),
    ("the confound: ... and carry less entropy", ("a1", "code_entropy"), ("a0", "code_entropy"), "<"),
    ("Table 1: +Conv x2 reconstructs better", ("conv-x2", "l1"), ("a0", "l1"), "<"),
    ("Table 1 / Obs. 1: ... and generates no better (AR)", ("conv-x2", "gen_fid"), ("a0", "gen_fid"), ">="),
    ("Table 1: +Attention x2 reconstructs better", ("attn-x2", "l1"), ("a0", "l1"), "<"),
    ("Table 1 / Obs. 1: ... and generates no better (AR)", ("attn-x2", "gen_fid"), ("a0", "gen_fid"), ">="),
    ("Fig. 8: phase 2 improves reconstruction", ("dec-a1", "rfid"), ("a1", "rfid"), "<"),
    ("Fig. 8: phase 2 improves generation on the same tokens (AR)", ("dec-a1", "gen_fid"), ("a1", "gen_fid"), "<"),
    ("Fig. 8: phase 2 improves generation on the same tokens (NAR)", ("dec-a1", "nar_gen_fid"),
     ("a1", "nar_gen_fid"), "<"),
    ("Tables 4-6 (ImageNet): NAR generates better than AR", ("dec-a1", "nar_gen_fid"), ("dec-a1", "gen_fid"), "<"),
    ("... on the phase-1 tokenizer alpha 1", ("a1", "nar_gen_fid"), ("a1", "gen_fid"), "<"),
    ("... on the baseline alpha 0", ("a0", "nar_gen_fid"), ("a0", "gen_fid"), "<"),
]
PERCENT = ("usage", "gt_context_acc")  # shown in %, differences in percentage points


def mean_std(values):
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    m = sum(values) / len(values)
    return m, (math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0)


def cell(results, row, key):
    """(mean, std, number of seeds) of one figure of one row, or None."""
    vals = [r[key] for r in results.values() if r["tokenizer"] == row and r.get(key) is not None]
    return (*mean_std(vals), len(vals)) if vals else None


def verdict(results, what, a, b, paper):
    """One comparison under the rule: it counts when |mean_a - mean_b| > 2 * sqrt((std_a^2 + std_b^2) / 2)."""
    (row_a, key_a), (row_b, key_b) = a, b
    ca, cb = cell(results, row_a, key_a), cell(results, row_b, key_b)
    if ca is None or cb is None:
        return None
    diff, pooled = ca[0] - cb[0], math.sqrt((ca[1] ** 2 + cb[1] ** 2) / 2)
    spread = min(ca[2], cb[2]) > 1
    if not spread:
        outcome = "one seed: no spread, no verdict"
    elif abs(diff) > 2 * pooled:
        with_paper = {"<": diff < 0, ">": diff > 0, "=": False, ">=": diff > 0}[paper]
        outcome = (f"**counts**: {'higher' if diff > 0 else 'lower'} for a, "
                   + ("as the paper says" if with_paper else "against the paper"))
    else:
        outcome = "within the spread"
    gap = (lambda v: f"{100 * v:.1f} pts") if key_a in PERCENT else FORMATS[key_a]
    side = lambda row, key, c: f"{row} {key}: {FORMATS[key](c[0])} ± {FORMATS[key](c[1])}"  # noqa: E731
    return (f"| {what} | {side(row_a, key_a, ca)} | {side(row_b, key_b, cb)} | {gap(abs(diff))} | "
            f"{gap(2 * pooled)} | {outcome} |")


def report(args, state):
    """results.md: means +- std over seeds, every run, the verdicts, and the measured wall time."""
    results = state["results"]
    seeds = sorted({r["seed"] for r in results.values()})
    schedule = ", ".join(f"{stage} `{' '.join(flags)}`" for stage, flags in STUDY_STEPS.items())
    lines = ["# Reproduction study (tiny preset, CPU)", "",
             f"Schedule: {schedule}; {args.n_gen} generated images per model; semantic FIDs in the features "
             "of runs/study/eval-classifier (a classifier the tokenizers never saw). "
             f"Seeds: {', '.join(map(str, seeds))}.", ""]
    header = "| tokenizer | seeds | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    rule = "|---|---|" + "---|" * len(COLUMNS)
    lines += ["## Mean ± std over seeds", "", header, rule]
    for t in ROW_NAMES:
        rows = [r for r in results.values() if r["tokenizer"] == t]
        if not rows:
            continue
        cells = []
        for key, _, fmt in COLUMNS:
            c = cell(results, t, key)
            cells.append("" if c is None else fmt(c[0]) + (f" ± {fmt(c[1])}" if c[2] > 1 else ""))
        row_seeds = ",".join(str(r["seed"]) for r in sorted(rows, key=lambda r: r["seed"]))
        lines.append(f"| {ROW_NAMES[t]} | {row_seeds} | " + " | ".join(cells) + " |")
    lines += ["", "## Verdicts", "",
              "The rule, fixed before any number: a difference between two cells counts when it is larger "
              "than twice their pooled standard deviation over seeds, 2 * sqrt((std_a^2 + std_b^2) / 2); "
              "otherwise it is within the spread, and no verdict is drawn from it.", "",
              "| the paper | a | b | difference | 2 x pooled std | verdict |", "|---|---|---|---|---|---|"]
    lines += [v for v in (verdict(results, *x) for x in VERDICTS) if v]
    lines += ["", "## Every run", "", header.replace("| seeds |", "| seed |"), rule]
    order = lambda n: (list(ROW_NAMES).index(results[n]["tokenizer"]), results[n]["seed"])  # noqa: E731
    for name in sorted(results, key=order):
        r = results[name]
        cells = [fmt(r[k]) if r.get(k) is not None else "" for k, _, fmt in COLUMNS]
        lines.append(f"| {ROW_NAMES[r['tokenizer']]} | {r['seed']} | " + " | ".join(cells) + " |")
    same = [(r["seed"], *r["same_tokens"]) for r in results.values() if "same_tokens" in r]
    if same:
        lines += ["", "Tokens before and after phase 2: " + "; ".join(
            f"seed {seed}: {a}/{b} val images have identical indices" for seed, a, b in sorted(same)) + "."]
    train_s = sum(state["times"].values())
    eval_s = sum(r.get("eval_s", 0.0) for r in results.values())
    lines += ["", f"Wall time measured by study.py: training {train_s / 60:.1f} min ({len(state['times'])} "
              f"runs), evaluation {eval_s / 60:.1f} min, total {(train_s + eval_s) / 60:.1f} min."]
    path = os.path.join(args.runs_dir, "results.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\n-> {path}")
    return path


# ------------------------------------------------------------------------------------------
#### State and CLI
# ------------------------------------------------------------------------------------------


def state_path(args):
    return os.path.join(args.runs_dir, "results.json")


def load_state(args):
    path = state_path(args)
    if not os.path.isfile(path):
        return {"done": [], "times": {}, "results": {}}
    with open(path) as f:
        return json.load(f)


def save_state(args, state):
    """results.json, replaced atomically: a stop mid-write keeps the previous figures."""
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
    p.add_argument("--transformers-on", nargs="*", default=list(DEFAULT_TRANSFORMERS_ON),
                   choices=list(TRANSFORMERS_ON),
                   help="the tokenizers an AR model and a MaskGIT are trained on (none: reconstruction only); "
                        "a later run with more evaluates those tokenizers again")
    p.add_argument("--n-gen", type=int, default=1000, help="generated images per model for gen FID")
    p.add_argument("--train-flags", default="",
                   help="extra flags for every train.py command (e.g. --threads 2)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dry-run", action="store_true", help="print the training commands only")
    p.add_argument("--report", action="store_true", help="only rebuild results.md from results.json")
    return p


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
        raise SystemExit(f"error: cannot create {args.runs_dir} ({e.strerror}): pick another --runs-dir") \
            from None
    state = load_state(args)
    if not args.report:
        try:
            device = pick_device(args.device)
            for name, argv in todo:
                run_job(name, argv, args, state)
                evaluate(args, state, device)
        except UserError as e:
            raise SystemExit(f"error: {e}") from None
    if not state["results"]:
        raise SystemExit(f"error: nothing evaluated yet in {args.runs_dir}: run `python study.py` first")
    return report(args, state)


if __name__ == "__main__":
    main()
