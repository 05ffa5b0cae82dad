"""
The reproduction study at tiny scale: the paper's observations (Sec. 3.3, Table 1, Table 5,
Fig. 6, Fig. 8) re-run on the built-in shapes dataset, on a CPU, by plain `train.py` commands.

    python study.py                   # train and evaluate everything; rerun to continue after a stop
    python study.py --seeds 0         # one seed only
    python study.py --dry-run         # print the training commands, run nothing
    python study.py --report          # rebuild runs/study/results.md from what has been evaluated

For every seed it trains, each run a `python train.py ...` command printed before it runs:
    tokenizers (phase 1)  a0        alpha = 0, conv decoder: VQGAN's L_low, the baseline of
                                    Table 1, Table 5 and Fig. 6
                          a0.5, a1  alpha = 0.5 and 1 (Fig. 6); a1 is SeQ-GAN's phase 1
                          conv-x2   alpha = 0 with Table 1's "+Conv x2" decoder, and
                          attn-x2   ... with its "+Attention x2" decoder, each trained from the
                                    start, jointly with encoder and codebook (Table 1)
                          a0-noent  a0 without the entropy penalty (Table 5)
    phase 2               dec-a1    a1's encoder and codebook frozen, SeQ-GAN's decoder, alpha = 0
    AR transformers       ar-<t>    one per tokenizer a0, a0.5, a1, conv-x2, attn-x2 (same preset
                                    and steps)
and one semantic classifier for the loss (seed 0) and an evaluation classifier (seed 1): FIDs are
measured in the evaluation classifier's features, so that the tokenizers trained against the
loss classifier are not judged by the same network.

Then it measures, on the 1000 validation images:
    usage, perplexity   codebook usage over the split (Sec. 3.4, Table 5)
    rFID                semantic FID(reconstructions, inputs) (Sec. 4's rFID, offline extractor)
    AR val loss         teacher-forced cross-entropy of the AR model (its training log)
    GT-context acc      share of positions where the AR top-1 with GT context equals the GT token
                        (Sec. 3.2, EMA weights)
    gen FID             semantic FID(n AR samples, validation images); random classes, temperature
                        1, no guidance, top-k/top-p off. dec-a1 decodes ar-a1's samples (the same
                        token sequences: sampling does not depend on the decoder), so it isolates
                        the decoder's effect, as Fig. 8 does.

The schedule is shorter than the tiny preset's (`STUDY_STEPS`), so that the study fits in a few
hours of a 2-core CPU (the README has the measured time). Results: runs/study/results.json (every
figure) and results.md (tables).
Semantic FIDs rank models on this dataset only; they are not comparable to Inception FIDs.
"""

import argparse
import json
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

# The study's schedule (ours): about 2/3 of the tiny preset's tokenizer and half its AR steps,
# so that the whole study fits in a few hours of a 2-core CPU.
STUDY_STEPS = {
    "tokenizer": ["--steps", "1000", "--disc-start", "600"],
    "decoder": ["--steps", "300"],
    "ar": ["--steps", "1000"],
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
AR_ON = ("a1", "a0", "a0.5", "conv-x2", "attn-x2")  # the tokenizers an AR model is trained on


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
        order = [("tokenizer", "a1"), ("tokenizer", "a0"), ("ar", "a1"), ("ar", "a0"),
                 ("tokenizer", "a0.5"), ("ar", "a0.5"), ("decoder", "a1"),
                 ("tokenizer", "attn-x2"), ("ar", "attn-x2"), ("tokenizer", "conv-x2"), ("ar", "conv-x2"),
                 ("tokenizer", "a0-noent")]
        for stage, t in order:
            if t not in args.variants:
                continue
            if stage == "tokenizer":
                out.append((f"{t}-s{seed}", ["--stage", "tokenizer", "--name", f"{t}-s{seed}", *TOKENIZERS[t],
                                             *STUDY_STEPS["tokenizer"], *s]))
            elif stage == "ar":
                out.append((f"ar-{t}-s{seed}", ["--stage", "ar", "--name", f"ar-{t}-s{seed}", "--tokenizer", tok(t),
                                                *STUDY_STEPS["ar"], *s]))
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
    """n AR samples (random classes, temperature 1, no guidance) decoded by tok -> (n, 3, H, W)."""
    C = model.config.num_classes
    labels = torch.randint(C, (n,), generator=torch.Generator().manual_seed(seed)).to(device) if C > 0 else None
    return runs.sample_images(model, tok, n, labels, torch.Generator(device=device).manual_seed(seed), 250)


def evaluate(args, state, device):
    """Every tokenizer whose runs are done (its AR model too, where one is planned) and that is
    not evaluated yet -> state["results"][name]. Called after every run, so that a study stopped
    half-way still has figures for what it finished."""
    done, results = state["done"], state["results"]
    extractor, val, val_stats = None, None, None
    for seed in args.seeds:
        for t in [*[t for t in TOKENIZERS if t in args.variants], "dec-a1"]:
            name = f"{t}-s{seed}"
            base = t.removeprefix("dec-")                    # dec-a1: phase 2 of a1, sampled by ar-a1
            ar_name = f"ar-{base}-s{seed}" if base in AR_ON and base in args.variants else None
            if name in results or name not in done or (ar_name and ar_name not in done):
                continue  # evaluated already, or not ready
            t0 = time.time()
            if extractor is None:  # the evaluation network and the validation split, once
                extractor = metrics.semantic_features_from_checkpoint(os.path.join(args.runs_dir, "eval-classifier"))
            path = runs.latest_checkpoint(os.path.join(args.runs_dir, name))
            tok, ckpt, _ = runs.load_tokenizer(path, device)
            if val is None:
                val = data.load_data("val", **data.recorded_data(ckpt))
                val_stats = metrics.compute_statistics(torch.utils.data.DataLoader(val, batch_size=250), extractor, device)
            r = metrics.reconstruction_metrics(tok, torch.utils.data.DataLoader(val, batch_size=250), device,
                                               extractor=extractor)
            r = {k: r[k] for k in ("rfid", "l1", "usage", "perplexity")}
            r.update(seed=seed, tokenizer=t, ckpt=path)
            if ar_name:
                ar_run = os.path.join(args.runs_dir, ar_name)
                # the AR model of these tokens; dec-a1 shares a1's encoder and codebook, so ar-a1
                # samples token sequences that dec-a1 decodes (the hash covers only those parts)
                model, _, _, _ = runs.load_transformer(ar_run, device, tokenizer=path)
                if t.startswith("dec-"):  # Fig. 8: phase 2 must not change a single token
                    s1, _ = data.encode_dataset(runs.load_tokenizer(os.path.join(args.runs_dir, f"{base}-s{seed}"),
                                                                    device)[0], val, device, flips=False)
                    s2, _ = data.encode_dataset(tok, val, device, flips=False)
                    r["same_tokens"] = [int((s1 == s2).all(1).sum()), len(s1)]
                else:  # Sec. 3.2: one teacher-forced pass over the GT tokens of every val image
                    s, s_prime, _ = visualize.context_view_split({"tok": tok, "model": model}, val, device, "ar", None, seed)
                    r["gt_context_acc"] = visualize.token_accuracy(s, s_prime)
                    r["ar_val_loss"] = last_val(ar_run, "val_loss")
                images = generate(model, tok, args.n_gen, seed, device)  # (n, 3, H, W) in [-1, 1]
                fake = metrics.compute_statistics(images.split(250), extractor, device)
                r["gen_fid"] = metrics.frechet_distance(val_stats["mu"], val_stats["sigma"], fake["mu"], fake["sigma"])
                r["ar_ckpt"] = runs.latest_checkpoint(ar_run)
            r["eval_s"] = time.time() - t0
            results[name] = r
            print(f"evaluated {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in r.items() if isinstance(v, float)), flush=True)
            save_state(args, state)


# ------------------------------------------------------------------------------------------
#### Report
# ------------------------------------------------------------------------------------------

COLUMNS = [  # (key, header, format)
    ("usage", "val usage", lambda v: f"{100 * v:.1f}%"),
    ("perplexity", "perplexity", lambda v: f"{v:.1f}"),
    ("l1", "val L1", lambda v: f"{v:.4f}"),
    ("rfid", "rFID (sem.)", lambda v: f"{v:.3g}"),
    ("ar_val_loss", "AR val loss", lambda v: f"{v:.3f}"),
    ("gt_context_acc", "GT-context acc", lambda v: f"{100 * v:.1f}%"),
    ("gen_fid", "gen FID (sem.)", lambda v: f"{v:.3g}"),
]
ROW_NAMES = {
    "a0": "alpha 0 (L_low), conv", "a0.5": "alpha 0.5, conv", "a1": "alpha 1 (L_sem), conv",
    "conv-x2": "alpha 0, +Conv x2 decoder, one phase", "attn-x2": "alpha 0, +Attention x2 decoder, one phase",
    "a0-noent": "alpha 0, conv, no entropy penalty", "dec-a1": "alpha 1 + phase 2 (SeQ-GAN decoder)",
}


def mean_spread(values):
    """'mean +- half the range' over seeds, the range being the honest spread for 2-3 seeds."""
    m = sum(values) / len(values)
    return m, (max(values) - min(values)) / 2


def report(args, state):
    """results.md: one table per seed, one of means over seeds, and the measured wall time."""
    results = state["results"]
    lines = ["# Reproduction study (tiny preset, CPU)", "",
             f"Schedule: tokenizer `{' '.join(STUDY_STEPS['tokenizer'])}`, phase 2 `{' '.join(STUDY_STEPS['decoder'])}`, "
             f"AR `{' '.join(STUDY_STEPS['ar'])}`; {args.n_gen} generated images per AR model; semantic FIDs in the "
             "features of runs/study/eval-classifier (a classifier the tokenizers never saw).", ""]
    header = "| tokenizer | seeds | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    rule = "|---|---|" + "---|" * len(COLUMNS)
    lines += ["## Mean over seeds (+- half the range)", "", header, rule]
    for t in ROW_NAMES:
        rows = [r for r in results.values() if r["tokenizer"] == t]
        if not rows:
            continue
        cells = []
        for key, _, fmt in COLUMNS:
            vals = [r[key] for r in rows if r.get(key) is not None]
            if not vals:
                cells.append("")
                continue
            m, h = mean_spread(vals)
            cells.append(fmt(m) + (f" +- {fmt(h)}" if len(vals) > 1 else ""))
        seeds = ",".join(str(r["seed"]) for r in sorted(rows, key=lambda r: r["seed"]))
        lines.append(f"| {ROW_NAMES[t]} | {seeds} | " + " | ".join(cells) + " |")
    lines += ["", "## Every run", "", header.replace("| seeds |", "| seed |"), rule]
    for name in sorted(results, key=lambda n: (list(ROW_NAMES).index(results[n]["tokenizer"]), results[n]["seed"])):
        r = results[name]
        cells = [fmt(r[k]) if r.get(k) is not None else "" for k, _, fmt in COLUMNS]
        lines.append(f"| {ROW_NAMES[r['tokenizer']]} | {r['seed']} | " + " | ".join(cells) + " |")
    same = [(r["seed"], *r["same_tokens"]) for r in results.values() if "same_tokens" in r]
    if same:
        lines += ["", "Tokens before and after phase 2: " + "; ".join(
            f"seed {seed}: {a}/{b} val images have identical indices" for seed, a, b in sorted(same)) + "."]
    train_s = sum(state["times"].values())
    eval_s = sum(r.get("eval_s", 0.0) for r in results.values())
    lines += ["", f"Wall time measured by study.py: training {train_s / 60:.1f} min ({len(state['times'])} runs), "
              f"evaluation {eval_s / 60:.1f} min, total {(train_s + eval_s) / 60:.1f} min."]
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
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--variants", nargs="+", default=list(TOKENIZERS), choices=list(TOKENIZERS),
                   help="which tokenizers (and their AR models) to train")
    p.add_argument("--n-gen", type=int, default=1000, help="generated images per AR model for gen FID")
    p.add_argument("--train-flags", default="", help="extra flags for every train.py command (e.g. --threads 2)")
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
        raise SystemExit(f"error: cannot create {args.runs_dir} ({e.strerror}): pick another --runs-dir") from None
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
