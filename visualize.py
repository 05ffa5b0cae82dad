"""
The GT-context view of Sec. 3.2 (Fig. 4), its side-by-side comparison of tokenizers (Fig. 1, 5,
6), codebook-usage histograms and loss curves.

Paper: Gu et al., "Rethinking the Objectives of Vector-Quantized Tokenizers for Image Synthesis"
(CVPR 2024). Random samples mix the tokenizer with the sampler (top-k, top-p, guidance, ...).
Sec. 3.2 removes the sampler: encode a real image x to its GT index sequence s, feed s to the
AR transformer ONCE with teacher forcing (causal attention: position i sees the GT context
s_<i, never s_i itself), take the top-1 index at every position -> s', and decode s and s'
with the tokenizer's decoder. decode(s) is the tokenizer's reconstruction; decode(s') is the
"upper limit" of what the AR model can predict for this image. Nothing is sampled.

    python visualize.py                              # newest runs/tiny-ar (+ every other tiny AR run)
    python visualize.py --pairs runs/ar-alpha1 runs/ar-alpha0 --names "alpha=1" "alpha=0"   # Fig. 6
    python visualize.py --mode nar --pairs runs/tiny-nar --mask-ratio 0.5   # same view, MaskGIT
    python visualize.py --usage-hist                 # + sorted code frequencies per tokenizer
    python visualize.py --curves runs/tiny-tokenizer/log.jsonl runs/tiny-ar  # loss curves only
    python visualize.py --recon runs/tiny-tokenizer runs/tiny-decoder    # phase 1 | phase 2, same images
    python visualize.py --usage runs/tiny-tokenizer runs/tiny-noent      # usage with / without entropy

Each entry of --pairs is a transformer checkpoint (or run folder); its tokenizer is the one
recorded in the checkpoint (path and encoder+codebook hash, checked by runs.load_transformer; --tokenizer
points to a copy elsewhere, and a tokenizer with other weights is refused). All pairs are
shown on the same validation images: the val split of the dataset the first transformer was
trained on.

Ours, not the paper's:
  - the MaskGIT variant (--mode nar): a random share `mask_ratio` of the GT tokens is masked and
    predicted in one pass from the rest; the paper shows the view for AR models only;
  - the token accuracy (share of positions where s' = s) printed beside every view, over the
    shown images and over the whole val split;
  - the error map: the h x w token grid with the positions where s' != s in red.

Shape legend:
  B batch, H x W image, h x w token grid, N = h*w tokens (raster order), K codebook size,
  M images in the validation split.
"""

import argparse
import json
import math
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display: must come before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import data  # noqa: E402
import metrics  # noqa: E402
import runlog  # noqa: E402
import runs  # noqa: E402
import transformer  # noqa: E402
from machine import Parser, UserError, at_least, eval_mode, number, one_line_errors, pick_device  # noqa: E402

# ------------------------------------------------------------------------------------------
#### The GT-context predictions (Sec. 3.2, Fig. 4)
# ------------------------------------------------------------------------------------------


@torch.no_grad()
def gt_context_predictions(gpt: transformer.GPT, s: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Sec. 3.2: s (B, N) or (B, h, w) GT indices, y (B,) labels or None -> s' (B, N) long.

    ONE teacher-forced forward pass: logits[:, i] = p(s_i | y, s_<i) (causal attention, see
    GPT.forward), s'_i = argmax_k logits[:, i, k]. Top-1 at every position, nothing sampled."""
    # >>> exercise 6: the GT-context predictions and token accuracy
    if not isinstance(gpt, transformer.GPT):
        raise TypeError("the GT-context view of Sec. 3.2 needs the causal AR model (GPT)")
    s = s.flatten(1)                     # (B, N) raster order
    # an unconditional model has only the null class: it takes no labels
    y = y if gpt.config.num_classes > 0 else None
    # eval: no class dropout (the label must not be swapped for the null class), no dropout
    with eval_mode(gpt):
        logits, _ = gpt(s, y)            # (B, N, K)  the one forward pass
    return logits.argmax(dim=-1)         # (B, N)
    # <<< exercise 6


@torch.no_grad()
def maskgit_context_predictions(model: transformer.MaskGIT, s: torch.Tensor, y: torch.Tensor | None,
                                mask_ratio: float, generator: torch.Generator | None = None):
    """The same view for MaskGIT (ours): mask round(mask_ratio * N) GT tokens per image, chosen
    uniformly (CPU `generator`, or the global RNG), predict them in one pass from the unmasked
    GT context, top-1 at the masked positions, GT everywhere else.
    s (B, N) or (B, h, w) -> (s' (B, N) long, mask (B, N) bool, True = masked (to predict))."""
    if not isinstance(model, transformer.MaskGIT):
        raise TypeError("maskgit_context_predictions needs the bidirectional model (MaskGIT)")
    if not 0.0 < mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1], got {mask_ratio}")
    s = s.flatten(1)                                                 # (B, N)
    B, N = s.shape
    # at least one masked token, so that there is something to predict
    n_masked = max(1, round(mask_ratio * N))
    # a uniform random permutation per image: the n_masked lowest ranks are masked
    ranks = torch.rand(B, N, generator=generator).argsort(1).argsort(1)  # (B, N) on the CPU
    mask = (ranks < n_masked).to(s.device)                          # (B, N) True = masked (to predict)
    y = y if model.config.num_classes > 0 else None
    # MaskGIT.forward replaces the masked inputs by [MASK]; no targets: no loss, no random mask
    with eval_mode(model):  # no class dropout
        logits, _ = model(s, y, mask=mask)                           # (B, N, K)
    # top-1 where masked (True = masked: predicted), the GT token where it was given
    s_prime = torch.where(mask, logits.argmax(dim=-1), s)           # (B, N)
    return s_prime, mask


def token_accuracy(s: torch.Tensor, s_prime: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Share of positions where s' = s; with a mask (True = masked (predicted)) only over the
    masked positions. s, s' (B, N) or (B, h, w). NaN when no position counts."""
    # >>> exercise 6: the GT-context predictions and token accuracy
    correct = s.flatten(1) == s_prime.flatten(1)  # (B, N)
    if mask is not None:
        correct = correct[mask.flatten(1)]        # (M,) the predicted positions only
    return correct.float().mean().item() if correct.numel() else float("nan")
    # <<< exercise 6


# ------------------------------------------------------------------------------------------
#### Models, images and the view over a whole split
# ------------------------------------------------------------------------------------------

def run_stage(run_dir):
    """The stage ("ar", "nar", "tokenizer", ...) a run folder logged, read from log.jsonl's first
    line (cheap: no checkpoint is loaded); None when there is no log."""
    path = os.path.join(run_dir, "log.jsonl")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        first = f.readline()
    try:
        return json.loads(first).get("stage")
    except json.JSONDecodeError:
        return None


def default_pairs(runs_dir, kind):
    """No --pairs: runs/tiny-<kind> first, then every other tiny-* run of the same kind."""
    if not os.path.isdir(runs_dir):
        names = []
    else:
        names = sorted(d for d in os.listdir(runs_dir)
                       if d.startswith("tiny") and run_stage(os.path.join(runs_dir, d)) == kind)
    # the preset's own run leads the figure
    names.sort(key=lambda d: d != f"tiny-{kind}")
    if not names:
        raise UserError(f"no tiny {kind} run in {runs_dir}: train one with `python train.py --stage {kind}` "
                        "or pass --pairs")
    return [os.path.join(runs_dir, d) for d in names]


def tokenizer_meta(path):
    """(run name, description) of a tokenizer checkpoint for the figure's labels. mmap: only the
    small entries we read are loaded from disk, not the weights."""
    if os.path.isdir(path):
        path = runs.latest_checkpoint(path) or path
    ckpt = runs.load_checkpoint(path, "tokenizer", "--tokenizer", mmap=True)
    alpha = (ckpt.get("args") or {}).get("alpha")
    decoder = f"{ckpt['config']['decoder']} decoder"
    alpha_text = f", \u03b1={alpha:g}" if alpha is not None else ""
    return (os.path.basename(os.path.dirname(os.path.abspath(path))),
            f"phase {ckpt.get('phase')}{alpha_text}, {decoder}")


def load_pair(path, tokenizer, mode, device):
    """A transformer checkpoint and its tokenizer (hash-checked by runs.load_transformer) -> dict."""
    model, kind, tok, ckpt = runs.load_transformer(path, device, tokenizer, what="--pairs")
    if kind != mode:
        model_name = {"ar": "AR (GPT)", "nar": "NAR (MaskGIT)"}
        raise UserError(f"{ckpt['path']} is an {model_name[kind]} checkpoint, but --mode {mode} needs an "
                              f"{model_name[mode]} one: pass --mode {kind}")
    tok_path = tokenizer or ckpt["tokenizer_path"]
    tok_run, tok_desc = tokenizer_meta(tok_path)
    ar_run = os.path.basename(os.path.dirname(os.path.abspath(ckpt["path"])))
    # runs.load_transformer loads the EMA weights when the run kept them: the view shows the model
    # that samples, and says which weights it is
    weights = "EMA weights" if ckpt.get("ema") else "trained weights (no EMA)"
    return {"model": model, "kind": kind, "tok": tok, "ckpt": ckpt, "name": f"{tok_run} + {ar_run}",
            "tok_name": tok_run, "weights": weights,
            "desc": f"{tok_desc}, K={tok.cfg.K}, {tok.cfg.latent_size}x{tok.cfg.latent_size} tokens; "
                    f"{ar_run}: {weights}"}


def same_data(pairs):
    """All pairs must have been trained on the same dataset, so that they show the same images."""
    first = pairs[0]["ckpt"].get("args") or {}
    for p in pairs[1:]:
        saved = p["ckpt"].get("args") or {}
        for k in data.DATA_KEYS:
            if saved.get(k) != first.get(k):
                raise UserError(
                    f"{p['ckpt']['path']} was trained with {k}={saved.get(k)!r}, {pairs[0]['ckpt']['path']} "
                    f"with {k}={first.get(k)!r}: the pairs must share the dataset to show the same images"
                )


@torch.no_grad()
def context_view_split(pair, ds, device, mode, mask_ratio, seed, batch_size=256):
    """The GT-context view of every image of a split: s, s' (M, N) and mask (M, N) or None."""
    # Fig. 4, step 1: GT index sequences s of all images (no flips)
    # (M, N), (M,)
    s_all, y_all = data.encode_dataset(pair["tok"], ds, device, flips=False, batch_size=batch_size)
    # the MaskGIT masks come from one seeded CPU generator: reproducible on any device
    g = torch.Generator().manual_seed(seed)
    s_prime, masks = [], []
    for i in range(0, len(s_all), batch_size):
        s, y = s_all[i:i + batch_size].to(device), y_all[i:i + batch_size].to(device)  # (b, N), (b,)
        if mode == "ar":
            # Fig. 4, step 2: one teacher-forced pass, top-1 at every position
            s_prime.append(gt_context_predictions(pair["model"], s, y).cpu())         # (b, N)
        else:
            sp, mask = maskgit_context_predictions(pair["model"], s, y, mask_ratio, g)  # (b, N) each
            s_prime.append(sp.cpu()), masks.append(mask.cpu())
    return s_all, torch.cat(s_prime), (torch.cat(masks) if masks else None)


# ------------------------------------------------------------------------------------------
#### Figures
# ------------------------------------------------------------------------------------------


def to_numpy_image(x):
    """(3, H, W) in [-1, 1] -> (H, W, 3) float array in [0, 1] for imshow."""
    return (x.detach().float().cpu().clamp(-1, 1) * 0.5 + 0.5).permute(1, 2, 0).numpy()


def bare(ax):
    """No ticks and no frame, but keep the axis labels (they carry per-panel text)."""
    ax.set_xticks([]), ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def draw_error_map(ax, image, wrong, masked=None):
    """The input dimmed, the h x w token grid on top, cells where s' != s in red; with a
    MaskGIT mask (True = masked (predicted)), the given (unmasked) cells in grey."""
    h, w = wrong.shape
    # dimmed input, stretched over token coordinates: one cell = one token
    ax.imshow(0.35 * image + 0.65, extent=(0, w, h, 0), interpolation="nearest")
    cells = np.zeros((h, w, 4))                     # (h, w, RGBA), transparent
    if masked is not None:
        cells[~masked] = (0.45, 0.45, 0.45, 0.55)   # given GT context: cannot be wrong
    cells[wrong] = (0.9, 0.0, 0.0, 0.6)             # s' != s (the input still shows through)
    ax.imshow(cells, extent=(0, w, h, 0), interpolation="nearest")
    # thin grid lines at the token borders
    ax.hlines(np.arange(1, h), 0, w, color="black", linewidth=0.3, alpha=0.35)
    ax.vlines(np.arange(1, w), 0, h, color="black", linewidth=0.3, alpha=0.35)
    ax.set_xlim(0, w), ax.set_ylim(h, 0)


def figure_gt_context(x, labels, indices, pairs, views, mode, mask_ratio, path):
    """Fig. 1/5/6 layout: one row per image; an input column, then per pair a column group
    reconstruction | top-1 prediction | error map, headed by the pair's name and accuracies.
    x (n, 3, H, W); views[j] = dict(x_rec, x_pred (n, 3, H, W), wrong (n, h, w), masked or None,
    acc_shown, acc_val, M)."""
    n, P = len(x), len(pairs)
    panel, gap = 1.55, 0.25                                   # inches
    head, foot = 1.75, 0.55                                   # room for titles, caption
    # columns: input, then [spacer, rec, pred, errors] per pair
    widths = [1.0] + [gap / panel, 1.0, 1.0, 1.0] * P
    grid_w = panel * sum(widths) * 1.04                      # + the 5% gaps between panels
    # at least 10 inches, so that the titles fit above a single pair; the grid stays centred
    fig_w = max(grid_w + 0.85, 10.0)
    margin = (fig_w - grid_w) / 2
    # rows get 12% extra height for the "k/N wrong" line under each error map
    fig_h = panel * n * 1.12 + head + foot
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=110)
    # a grid in figure fractions; 0.25 in shifted right for the row labels on the left
    grid = fig.add_gridspec(n, len(widths), width_ratios=widths, left=(margin + 0.25) / fig_w,
                            right=1 - (margin - 0.25) / fig_w, top=1 - head / fig_h, bottom=foot / fig_h,
                            wspace=0.05, hspace=0.12)
    pred_name = "AR top-1" if mode == "ar" else "MaskGIT top-1"
    for r in range(n):
        # the input x, shared by all pairs (the same val image in every column group)
        ax = fig.add_subplot(grid[r, 0])
        ax.imshow(to_numpy_image(x[r]), interpolation="nearest")
        bare(ax)
        ax.set_ylabel(f"val #{indices[r]}" + (f"\n{labels[r]}" if labels is not None else ""), fontsize=9)
        if r == 0:
            ax.set_title("input x", fontsize=10)
        for j, v in enumerate(views):
            # first column of this pair's group: its spacer
            c = 1 + 4 * j
            # the tokenizer's reconstruction decode(s) and the transformer's decode(s')
            for k, (img, title) in enumerate([(v["x_rec"][r], "reconstruction\ndecode(s)"),
                                              (v["x_pred"][r], f"{pred_name}\ndecode(s')")]):
                ax = fig.add_subplot(grid[r, c + 1 + k])
                ax.imshow(to_numpy_image(img), interpolation="nearest")
                bare(ax)
                if r == 0:
                    ax.set_title(title, fontsize=10)
            # where the top-1 prediction misses the GT index, on the h x w grid
            ax = fig.add_subplot(grid[r, c + 3])
            masked = v["masked"][r] if v["masked"] is not None else None  # (h, w) or None
            draw_error_map(ax, to_numpy_image(x[r]), v["wrong"][r], masked)
            bare(ax)
            # predicted positions: all N for the AR view, the masked ones for MaskGIT
            n_pred = int(masked.sum()) if masked is not None else v["wrong"][r].size
            ax.set_xlabel(f"{int(v['wrong'][r].sum())}/{n_pred} wrong", fontsize=8, labelpad=1)
            if r == 0:
                ax.set_title("s' \u2260 s (red)"
                             + ("\ngrey: given" if masked is not None else "\non the token grid"),
                             fontsize=10)
    # one header per pair, centred over its three columns: name, tokenizer, accuracies
    for j, (p, v) in enumerate(zip(pairs, views)):
        # row 0's axes were added in the order input, then (rec, pred, errors) per pair
        x0 = fig.axes[1 + 3 * j].get_position().x0            # reconstruction column of row 0
        x1 = fig.axes[3 + 3 * j].get_position().x1            # error-map column of row 0
        # baseline of the header: 0.55 in above the column titles' band
        xc, y0 = (x0 + x1) / 2, 1 - (head - 0.55) / fig_h
        fig.text(xc, y0 + 0.62 / fig_h, p["name"], ha="center", va="bottom", fontsize=12, weight="bold")
        fig.text(xc, y0 + 0.42 / fig_h, p["desc"], ha="center", va="bottom", fontsize=9, color="0.3")
        # which accuracy is which: the shown rows, then every image of the val split
        which = "s' = s" if mode == "ar" else f"s' = s, {mask_ratio:.0%} masked"
        fig.text(xc, y0 + 0.05 / fig_h,
                 f"token accuracy ({which}): {v['acc_shown']:.1%} on these {n} images\n"
                 f"{v['acc_val']:.1%} on the whole val split ({v['M']} images)",
                 ha="center", va="bottom", fontsize=10, color="darkred")
    # the title on top, the caption (what s and s' are) at the bottom
    what = ("one teacher-forced AR pass on the GT sequence s\n(index i sees the GT context s<i), "
            "top-1 at every position" if mode == "ar" else
            f"MaskGIT predicts {mask_ratio:.0%} randomly masked GT indices\nin one pass from the others, "
            "top-1")
    fig.text(0.5, 1 - 0.12 / fig_h, "GT-context view (Sec. 3.2, Fig. 4): reconstruction vs. top-1 prediction",
             ha="center", va="top", fontsize=13, weight="bold")
    fig.text(0.5, 0.08 / fig_h, f"s = tokenizer indices of x;  s' = {what}.  Nothing is sampled.",
             ha="center", va="bottom", fontsize=9, color="0.25")
    fig.savefig(path)
    plt.close(fig)
    return path


def figure_usage_hist(curves, M, path):
    """Sorted code frequencies over the val split, one curve per (name, CodeCounter) in `curves`
    (Sec. 3.4 and Table 5: usage)."""
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    for name, counter in curves:
        # frequency of each code, most used first; unused codes are 0 (off a log axis)
        freq = np.sort(counter.counts.double().numpy())[::-1] / max(counter.counts.sum().item(), 1)  # (K,)
        K = counter.K
        label = f"{name}: usage {counter.usage():.1%} of K={K}, perplexity {counter.perplexity():.1f}"
        line, = ax.step(np.arange(1, K + 1), np.where(freq > 0, freq, np.nan), where="mid", label=label)
        # the uniform distribution every code would have at 100% usage and perplexity K
        ax.axhline(1 / K, color=line.get_color(), linestyle=":", linewidth=1)
    # log scale: the long tail of rare codes is what collapse looks like
    ax.set_yscale("log")
    ax.set_xlabel("code rank (most frequent first)")
    ax.set_ylabel("share of val tokens")
    ax.set_title(f"Codebook usage over the whole val split ({M} images); dotted: uniform 1/K", fontsize=11)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def figure_curves(logs, path, only=None):
    """Every numeric key of one or more log.jsonl files over step; train keys in the first
    rows of panels, val keys (val_*) below them; one colour per log."""
    # each log is named by its run folder
    named = []
    for p in logs:
        try:
            series = runlog.read_log(p)
        except UserError as e:
            raise UserError(f"--curves {e}") from None
        # a run folder or its log.jsonl: the run's name; any other log file: its own name
        log = os.path.abspath(p)
        name = os.path.basename(log if os.path.isdir(log) else os.path.dirname(log)) \
            if os.path.isdir(log) or os.path.basename(log) == "log.jsonl" \
            else os.path.splitext(os.path.basename(log))[0]
        named.append((name, series))
    keys = sorted({k for _, s in named for k in s})
    if only:  # --keys: these panels alone, in this order
        missing = [k for k in only if k not in keys]
        if missing:
            raise UserError(f"--keys {' '.join(missing)}: not in {', '.join(logs)} "
                            f"(they hold {', '.join(keys)})")
        keys = list(only)
    if not keys:
        raise UserError(f"--curves: no numeric values in {', '.join(logs)}")
    # validation metrics (val_*, and phase 2's before_val_*) get their own panels, below
    train_keys = [k for k in keys if "val_" not in k]
    val_keys = [k for k in keys if "val_" in k]
    cols = 4
    rows_t, rows_v = math.ceil(len(train_keys) / cols), math.ceil(len(val_keys) / cols)
    fig, axes = plt.subplots(rows_t + rows_v, cols, figsize=(4 * cols, 2.9 * (rows_t + rows_v) + 0.6),
                             dpi=100, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # one slot per panel: train keys, padding to a full row, then val keys (None = empty panel)
    slots = [(k, "train") for k in train_keys] + [None] * (rows_t * cols - len(train_keys)) + \
            [(k, "val") for k in val_keys] + [None] * (rows_v * cols - len(val_keys))
    for ax, slot in zip(axes.flat, slots):
        if slot is None:
            ax.axis("off")
            continue
        key, split = slot
        # one curve per log that has this key, in the log's colour
        for i, (name, series) in enumerate(named):
            if key in series:
                steps, values = series[key]
                ax.plot(steps, values, marker="." if len(steps) < 30 else None, color=colors[i % len(colors)],
                        label=name)
        # "val: l1" rather than "val: val_l1"
        ax.set_title(f"{split}: {key.replace('val_', '', 1) if split == 'val' else key}", fontsize=11,
                     color="black" if split == "train" else "darkblue")
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        # plain tick labels (no "1e-8 + 4.85e-2" offsets), whole steps
        ax.ticklabel_format(useOffset=False)
        # positive values over more than two decades (the adaptive weight lam, say): a log axis
        shown = [v for _, s in named if key in s for v in s[key][1]]
        if min(shown) > 0 and max(shown) > 100 * min(shown):
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        lo, hi = ax.get_xlim()
        if hi - lo < 2:  # a single logged step: a window of +-1 step around it
            ax.set_xlim((lo + hi) / 2 - 1, (lo + hi) / 2 + 1)
        ax.grid(alpha=0.3)
    # one legend for the whole figure, on top: colour -> run
    handles = [plt.Line2D([], [], color=colors[i % len(colors)], label=name)
               for i, (name, _) in enumerate(named)]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(named), 4), fontsize=10, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------
#### main(argv) and the command line
# ------------------------------------------------------------------------------------------


def out_path(args, default_name):
    """--out, or runs/<default_name>; the folder is created."""
    path = args.out or os.path.join(args.runs_dir, default_name)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return path


def pair_view(p, ds, indices, args, device):
    """One pair's column group: decoded s and s' of the shown images, the error maps, the
    accuracies (shown images and whole split) and the code counts of the whole split."""
    # s, s' (and the mask) of every val image: the accuracy over the whole split
    s, s_prime, mask = context_view_split(p, ds, device, args.mode, args.mask_ratio, args.seed,
                                          args.batch_size)
    # the shown images are rows of the same tensors
    rows = torch.tensor(indices)
    s_n, sp_n = s[rows], s_prime[rows]                                  # (n, N)
    mask_n = mask[rows] if mask is not None else None                   # (n, N) True = masked (predicted)
    h = p["tok"].cfg.latent_size
    with torch.no_grad():
        # Fig. 4, step 3: decode s (reconstruction) and s' (prediction) with the same decoder
        x_rec = p["tok"].decode_indices(s_n.to(device)).float().cpu()   # (n, 3, H, W)
        x_pred = p["tok"].decode_indices(sp_n.to(device)).float().cpu()  # (n, 3, H, W)
    view = {"x_rec": x_rec, "x_pred": x_pred, "M": len(s),
            "acc_shown": token_accuracy(s_n, sp_n, mask_n), "acc_val": token_accuracy(s, s_prime, mask),
            "wrong": (s_n != sp_n).view(-1, h, h).numpy(),                # (n, h, w)
            "masked": mask_n.view(-1, h, h).numpy() if mask_n is not None else None}
    # codebook usage over the whole split (Sec. 3.4), for --usage-hist
    counter = metrics.CodeCounter(p["tok"].cfg.K)
    counter.update(s)
    return view, counter


def visualize(args):
    """The GT-context figure (and the usage histogram). Returns the written paths."""
    device = pick_device(args.device)
    paths = args.pairs or default_pairs(args.runs_dir, args.mode)
    tokenizers = args.tokenizer or [None] * len(paths)
    if len(tokenizers) != len(paths):
        raise UserError(f"--tokenizer needs one entry per --pairs entry ({len(paths)}), "
                        f"got {len(tokenizers)}")
    if args.names and len(args.names) != len(paths):
        raise UserError(f"--names needs one name per pair ({len(paths)}), got {len(args.names)}")
    # each pair: transformer + the tokenizer it was trained on ("-" = the recorded one)
    pairs = [load_pair(p, None if t in (None, "-") else t, args.mode, device)
             for p, t in zip(paths, tokenizers)]
    # --names replace both the group titles and the histogram's labels
    for p, name in zip(pairs, args.names or []):
        p["name"] = p["tok_name"] = name
    # every column group must show the same images
    same_data(pairs)
    # the validation images: the val split of the first transformer's dataset, for every pair
    flags = data.recorded_data(pairs[0]["ckpt"], args.data_seed)
    if flags["data"] == "shapes" and flags["n_val"] < 1:
        raise UserError(f"{pairs[0]['ckpt']['path']}: its val split is empty (n_val={flags['n_val']})")
    ds = data.load_data("val", **flags)
    M = len(ds)
    if M == 0 or not 0 <= args.start < M:
        raise UserError(f"no validation images to show: the val split has {M}, --start is {args.start}")
    # the shown images: n consecutive val images from --start, the same for every pair
    indices = list(range(args.start, min(args.start + args.n, M)))
    x, y = map(torch.stack, zip(*(ds[i] for i in indices)))  # (n, 3, H, W), (n,)
    views, counters = [], []
    for p in pairs:
        # --tokenizer may point to a tokenizer of another resolution
        if p["tok"].cfg.image_size != flags["image_size"]:
            raise UserError(f"{p['name']}: tokenizer for {p['tok'].cfg.image_size} px, val images are "
                            f"{flags['image_size']} px")
        view, counter = pair_view(p, ds, indices, args, device)
        views.append(view), counters.append(counter)
        print(f"{p['name']} ({p['weights']}): token accuracy {view['acc_shown']:.2%} on {len(indices)} "
              f"shown images, {view['acc_val']:.2%} on all {M} val images; val codebook usage "
              f"{counter.usage():.1%}, perplexity {counter.perplexity():.1f}")
    # row labels: the class (by name for the built-in dataset)
    labels = None
    if flags["data"] == "shapes":
        labels = [f"{data.CLASSES[c]} (y={c})" for c in y.tolist()]
    elif pairs[0]["model"].config.num_classes > 0:
        labels = [f"y={c}" for c in y.tolist()]
    written = [figure_gt_context(x, labels, indices, pairs, views, args.mode, args.mask_ratio,
                                 out_path(args, "gt_context.png"))]
    if args.usage_hist is not None:
        # --usage-hist alone: beside the main figure
        hist = args.usage_hist or os.path.splitext(written[0])[0] + "_usage.png"
        os.makedirs(os.path.dirname(os.path.abspath(hist)), exist_ok=True)
        # one curve per tokenizer (by token hash: phase 1 and 2 share their tokens),
        # however many transformers use it
        curves = {p["ckpt"]["tokenizer_hash"]: (p["tok_name"], c) for p, c in zip(pairs, counters)}
        written.append(figure_usage_hist(list(curves.values()), M, hist))
    return written


def figure_reconstructions(x, recons, names, subtitles, path):
    """Input | reconstruction by each tokenizer, the same val images in every column.
    x (n, 3, H, W); recons[j] (n, 3, H, W) by tokenizer j, headed by names[j] and subtitles[j]."""
    n, cols = len(x), 1 + len(recons)
    fig, axes = plt.subplots(n, cols, figsize=(1.7 * cols + 0.4, 1.7 * n + 0.9), dpi=110, squeeze=False)
    for r in range(n):
        for c, (img, title) in enumerate([(x[r], "input x")] + [(rec[r], f"{nm}\n{sub}") for rec, nm, sub
                                                                 in zip(recons, names, subtitles)]):
            ax = axes[r, c]
            ax.imshow(to_numpy_image(img), interpolation="nearest")
            bare(ax)
            if r == 0:
                ax.set_title(title, fontsize=8)
    fig.suptitle("Reconstructions x_hat = G(q(E(x))) of the same validation images", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def tokenizer_figures(args):
    """--recon and/or --usage: figures of tokenizers alone (no transformer), over the val split of
    the first one's dataset: reconstructions side by side, and codebook usage histograms."""
    device = pick_device(args.device)
    paths = args.recon or args.usage
    if args.recon and args.usage and args.recon != args.usage:
        raise UserError("--recon and --usage together need the same tokenizers; draw them in two calls")
    if args.names and len(args.names) != len(paths):
        raise UserError(f"--names needs one name per tokenizer ({len(paths)}), got {len(args.names)}")
    loaded = [runs.load_tokenizer(p, device) for p in paths]  # (tokenizer, checkpoint, hash) each
    names = args.names or [os.path.basename(os.path.dirname(os.path.abspath(ckpt["path"])))
                           for _, ckpt, _ in loaded]
    # every column must show the same images: the tokenizers must share their dataset
    first = data.recorded_data(loaded[0][1], args.data_seed)
    for _, ckpt, _ in loaded[1:]:
        if data.recorded_data(ckpt, args.data_seed) != first:
            raise UserError(f"{ckpt['path']} was trained on another dataset than {loaded[0][1]['path']}: "
                            "the figure shows the same images for every tokenizer")
    ds = data.load_data("val", **first)
    if not 0 <= args.start < len(ds):
        raise UserError(f"no validation images to show: the val split has {len(ds)}, --start is {args.start}")
    # every val image through every tokenizer: L1, usage and perplexity over the whole split
    figures = []
    for (tok, ckpt, _), name in zip(loaded, names):
        batches = (torch.stack([ds[j][0] for j in range(i, min(i + args.batch_size, len(ds)))])
                   for i in range(0, len(ds), args.batch_size))
        m = metrics.reconstruction_metrics(tok, batches, device)
        counter = metrics.CodeCounter(tok.cfg.K)
        counter.update(m["s"])
        figures.append((tok, counter, m))
        print(f"{name} ({ckpt['path']}): val L1 {m['l1']:.4f}, codebook usage {m['usage']:.1%}, "
              f"perplexity {m['perplexity']:.1f} of {tok.cfg.K} ({m['n']} val images)")
    written = []
    if args.recon:
        indices = list(range(args.start, min(args.start + args.n, len(ds))))
        x = torch.stack([ds[i][0] for i in indices])  # (n, 3, H, W)
        with torch.no_grad():
            # (n, 3, H, W) each
            recons = [tok(x.to(device))[0].float().clamp(-1, 1).cpu() for tok, _, _ in figures]
        subtitles = [f"val L1 {m['l1']:.3f}" for _, _, m in figures]
        written.append(figure_reconstructions(x, recons, names, subtitles, out_path(args, "recon.png")))
    if args.usage:
        path = (out_path(args, "usage.png") if not args.recon
                else os.path.splitext(written[0])[0] + "_usage.png")
        written.append(figure_usage_hist([(nm, c) for nm, (_, c, _) in zip(names, figures)], len(ds), path))
    return written


@one_line_errors
def main(argv=None):
    """Command line entry; argv a list of strings (None: sys.argv). Returns the written paths.
    User mistakes end as one-line SystemExit("error: ..."), without a traceback."""
    args = get_parser().parse_args(argv)
    if args.curves:  # needs no model: it only reads log files
        written = [figure_curves(args.curves, out_path(args, "curves.png"), args.keys)]
    elif args.recon or args.usage:  # tokenizers alone
        written = tokenizer_figures(args)
    else:
        written = visualize(args)
    for path in written:
        print(f"wrote {path}")
    return written


def get_parser():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # which models: one column group per transformer checkpoint
    p.add_argument("--pairs", nargs="+", default=None,
                   help="transformer checkpoints or run folders, one column group each (default: "
                        "runs/tiny-ar and every other tiny AR run); each brings the tokenizer it was "
                        "trained on")
    p.add_argument("--tokenizer", nargs="+", default=None,
                   help="override the recorded tokenizer, one per pair ('-' = recorded); its "
                        "encoder+codebook hash must match")
    p.add_argument("--names", nargs="+", default=None,
                   help="titles, one per pair (or per tokenizer with --recon/--usage)")
    p.add_argument("--mode", choices=["ar", "nar"], default="ar",
                   help="ar: Sec. 3.2 teacher-forced top-1; nar: MaskGIT top-1 on masked GT tokens (ours)")
    p.add_argument("--mask-ratio", type=number(0, 1, low_open=True, high_open=False), default=0.5,
                   help="--mode nar: share of the GT tokens masked")
    # which images
    p.add_argument("--n", type=at_least(1), default=6, help="validation images to show (one row each)")
    p.add_argument("--start", type=int, default=0, help="index of the first shown val image")
    p.add_argument("--data-seed", type=int, default=None,
                   help="built-in dataset: other images (default: the run's)")
    p.add_argument("--seed", type=int, default=0, help="--mode nar: seed of the masks")
    # other figures
    p.add_argument("--usage-hist", nargs="?", const="", default=None,
                   help="also draw the codebook-usage histogram (optional PNG path; default <out>_usage.png)")
    p.add_argument("--curves", nargs="+", default=None,
                   help="only draw loss curves from these log.jsonl files (or run folders)")
    p.add_argument("--keys", nargs="+", default=None, help="--curves: only these keys (e.g. d g lam)")
    p.add_argument("--recon", nargs="+", default=None,
                   help="only draw reconstructions of these tokenizers (checkpoints or run folders), "
                        "side by side")
    p.add_argument("--usage", nargs="+", default=None,
                   help="only draw the codebook-usage histogram of these tokenizers (with --recon: "
                        "the same ones)")
    # output and hardware
    p.add_argument("--out", default=None, help="PNG path (default runs/gt_context.png, or runs/curves.png)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--batch-size", type=at_least(1), default=256, help="images per batch over the val split")
    p.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:1, mps")
    return p


if __name__ == "__main__":
    main()
