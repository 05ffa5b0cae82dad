"""The GT-context view of Sec. 3.2 (Fig. 4), side by side for several tokenizers (Fig. 1, 5, 6), and codebook-usage
histograms, reconstructions and loss curves. Sec. 3.2 takes the sampler out of the comparison: a real image's GT
indices s go ONCE through the AR transformer with teacher forcing (position i sees the GT context s_<i, never s_i),
top-1 at every position -> s'. decode(s) is the tokenizer's reconstruction, decode(s') the "upper limit" of what the
AR model can predict for this image. Nothing is sampled.

    python visualize.py                              # newest runs/tiny-ar (+ every other tiny AR run)
    python visualize.py --pairs runs/ar-alpha1 runs/ar-alpha0 --names "alpha=1" "alpha=0"   # Fig. 6
    python visualize.py --mode nar --pairs runs/tiny-nar --mask-ratio 0.5   # same view, MaskGIT
    python visualize.py --usage-hist                 # + sorted code frequencies per tokenizer
    python visualize.py --curves runs/tiny-tokenizer/log.jsonl runs/tiny-ar  # loss curves only
    python visualize.py --recon runs/tiny-tokenizer runs/tiny-decoder    # phase 1 | phase 2, same images
    python visualize.py --usage runs/tiny-tokenizer runs/tiny-noent      # usage with / without entropy

Each --pairs entry brings the tokenizer its checkpoint records (--tokenizer: a hash-checked copy); all pairs show
the first one's val split. Ours, not the paper's: --mode nar (MaskGIT predicts a random share of masked GT tokens in
one pass), the token accuracy (share of s' = s), the error map (s' != s in red). Shapes: B batch, H x W image, h x w
token grid, N = h*w tokens (raster order), K codebook size, M val images."""

import argparse
import json
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


#### The GT-context predictions (Sec. 3.2, Fig. 4)
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
    """The view for MaskGIT (ours): round(mask_ratio * N) uniformly chosen GT tokens per image (`generator`: CPU)
    masked, predicted in one pass. s (B, N) or (B, h, w) -> s' (B, N), top-1 where masked, and mask (B, N)."""
    if not isinstance(model, transformer.MaskGIT):
        raise TypeError("maskgit_context_predictions needs the bidirectional model (MaskGIT)")
    if not 0.0 < mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1], got {mask_ratio}")
    s = s.flatten(1)                                                 # (B, N)
    # a uniform random permutation per image: its lowest ranks are masked, at least one
    ranks = torch.rand(*s.shape, generator=generator).argsort(1).argsort(1)  # (B, N) on the CPU
    mask = (ranks < max(1, round(mask_ratio * s.shape[1]))).to(s.device)
    y = y if model.config.num_classes > 0 else None
    # MaskGIT.forward replaces the masked inputs by [MASK]; no targets: no loss, no random mask
    with eval_mode(model):  # no class dropout
        logits, _ = model(s, y, mask=mask)                           # (B, N, K)
    return torch.where(mask, logits.argmax(dim=-1), s), mask


def token_accuracy(s: torch.Tensor, s_prime: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Share of positions where s' = s; with a mask (True = masked (predicted)) only over the
    masked positions. s, s' (B, N) or (B, h, w). NaN when no position counts."""
    # >>> exercise 6: the GT-context predictions and token accuracy
    correct = s.flatten(1) == s_prime.flatten(1)  # (B, N)
    if mask is not None:
        correct = correct[mask.flatten(1)]        # (M,) the predicted positions only
    return correct.float().mean().item() if correct.numel() else float("nan")
    # <<< exercise 6


#### Models, images and the view over a whole split
def run_stage(run_dir):
    """The stage a run folder logged (log.jsonl's first line: no checkpoint is loaded), or None."""
    try:
        with open(os.path.join(run_dir, "log.jsonl")) as f:
            return json.loads(f.readline()).get("stage")
    except (OSError, json.JSONDecodeError):
        return None


def default_pairs(runs_dir, kind):
    """No --pairs: runs/tiny-<kind> first, then every other tiny-* run of the same kind."""
    names = sorted(d for d in (os.listdir(runs_dir) if os.path.isdir(runs_dir) else [])
                   if d.startswith("tiny") and run_stage(os.path.join(runs_dir, d)) == kind)
    names.sort(key=lambda d: d != f"tiny-{kind}")  # the preset's own run leads the figure
    if not names:
        raise UserError(f"no tiny {kind} run in {runs_dir}: train one with `python train.py --stage {kind}` "
                        "or pass --pairs")
    return [os.path.join(runs_dir, d) for d in names]


def run_name(path):
    return os.path.basename(os.path.dirname(os.path.abspath(path)))


def load_pair(path, tokenizer, mode, device):
    """A transformer checkpoint and its tokenizer (hash-checked by runs.load_transformer) -> dict."""
    model, kind, tok, ckpt = runs.load_transformer(path, device, tokenizer, what="--pairs")
    if kind != mode:
        model_name = {"ar": "AR (GPT)", "nar": "NAR (MaskGIT)"}
        raise UserError(f"{ckpt['path']} is an {model_name[kind]} checkpoint, but --mode {mode} needs an "
                        f"{model_name[mode]} one: pass --mode {kind}")
    # the tokenizer's labels; mmap: only the small entries read leave the disk, not the weights
    tok_ckpt = runs.load_checkpoint(tokenizer or ckpt["tokenizer_path"], "tokenizer", "--tokenizer", mmap=True)
    alpha = (tok_ckpt.get("args") or {}).get("alpha")
    alpha_text = f", \u03b1={alpha:g}" if alpha is not None else ""
    tok_run, ar_run = run_name(tok_ckpt["path"]), run_name(ckpt["path"])
    weights = "EMA weights" if ckpt.get("ema") else "trained weights (no EMA)"  # those runs.load_transformer loaded
    return {"model": model, "kind": kind, "tok": tok, "ckpt": ckpt, "name": f"{tok_run} + {ar_run}",
            "tok_name": tok_run, "weights": weights,
            "desc": f"phase {tok_ckpt.get('phase')}{alpha_text}, {tok_ckpt['config']['decoder']} decoder, "
                    f"K={tok.cfg.K}, {tok.cfg.latent_size}x{tok.cfg.latent_size} tokens; {ar_run}: {weights}"}


@torch.no_grad()
def context_view_split(pair, ds, device, mode, mask_ratio, seed, batch_size=256):
    """The GT-context view of every image of a split: s, s' (M, N) and mask (M, N) or None."""
    # Fig. 4, step 1: GT index sequences s (M, N) and labels (M,) of all images (no flips)
    s_all, y_all = data.encode_dataset(pair["tok"], ds, device, flips=False, batch_size=batch_size)
    g = torch.Generator().manual_seed(seed)  # MaskGIT's masks on a CPU generator: the same on any device
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


#### Figures
def to_numpy_image(x):
    """(3, H, W) in [-1, 1] -> (H, W, 3) float array in [0, 1] for imshow."""
    return (x.detach().float().cpu().clamp(-1, 1) * 0.5 + 0.5).permute(1, 2, 0).numpy()


def bare(ax, image=None, title=None, fontsize=10):
    """No ticks and no frame (the axis labels stay: they carry per-panel text); an image (3, H, W) and a title."""
    if image is not None:
        ax.imshow(to_numpy_image(image), interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])
    ax.spines[:].set_visible(False)
    if title is not None:
        ax.set_title(title, fontsize=fontsize)


def save(fig, path):
    fig.savefig(path)
    plt.close(fig)
    return path


def draw_error_map(ax, image, wrong, masked=None):
    """The input dimmed under the h x w token grid: s' != s in red, MaskGIT's given (unmasked) cells in grey."""
    h, w = wrong.shape
    ax.imshow(0.35 * image + 0.65, extent=(0, w, h, 0), interpolation="nearest")  # one cell = one token
    cells = np.zeros((h, w, 4))                     # (h, w, RGBA), transparent
    if masked is not None:
        cells[~masked] = (0.45, 0.45, 0.45, 0.55)   # given GT context: cannot be wrong
    cells[wrong] = (0.9, 0.0, 0.0, 0.6)             # s' != s (the input still shows through)
    ax.imshow(cells, extent=(0, w, h, 0), interpolation="nearest")
    ax.hlines(np.arange(1, h), 0, w, color="black", linewidth=0.3, alpha=0.35)
    ax.vlines(np.arange(1, w), 0, h, color="black", linewidth=0.3, alpha=0.35)
    ax.set_xlim(0, w), ax.set_ylim(h, 0)


def figure_gt_context(x, labels, indices, pairs, views, mode, mask_ratio, path):
    """Fig. 1/5/6: a row per image x (n, 3, H, W): the input, then per pair (headed by name and accuracies) its
    reconstruction | top-1 prediction | error map, from views[j]: x_rec, x_pred, wrong (n, h, w), masked, acc_*, M."""
    n, P = len(x), len(pairs)
    panel, gap, head, foot = 1.55, 0.25, 1.75, 0.55           # inches: panel, spacer, titles, caption
    widths = [1.0] + [gap / panel, 1.0, 1.0, 1.0] * P         # input, then [spacer, rec, pred, errors] per pair
    grid_w = panel * sum(widths) * 1.04                      # + the 5% gaps between panels
    fig_w = max(grid_w + 0.85, 10.0)                         # room for the titles of a single pair
    margin = (fig_w - grid_w) / 2
    fig_h = panel * n * 1.12 + head + foot                   # + 12% per row for "k/N wrong"
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=110)
    # a grid in figure fractions; 0.25 in shifted right for the row labels on the left
    grid = fig.add_gridspec(n, len(widths), width_ratios=widths, left=(margin + 0.25) / fig_w,
                            right=1 - (margin - 0.25) / fig_w, top=1 - head / fig_h, bottom=foot / fig_h,
                            wspace=0.05, hspace=0.12)
    pred_name = "AR top-1" if mode == "ar" else "MaskGIT top-1"
    for r in range(n):
        ax = fig.add_subplot(grid[r, 0])
        bare(ax, x[r], "input x" if r == 0 else None)
        ax.set_ylabel(f"val #{indices[r]}" + (f"\n{labels[r]}" if labels is not None else ""), fontsize=9)
        for j, v in enumerate(views):
            c = 1 + 4 * j  # this pair's spacer column
            bare(fig.add_subplot(grid[r, c + 1]), v["x_rec"][r], "reconstruction\ndecode(s)" if r == 0 else None)
            bare(fig.add_subplot(grid[r, c + 2]), v["x_pred"][r], f"{pred_name}\ndecode(s')" if r == 0 else None)
            ax = fig.add_subplot(grid[r, c + 3])
            masked = v["masked"][r] if v["masked"] is not None else None  # (h, w) or None
            draw_error_map(ax, to_numpy_image(x[r]), v["wrong"][r], masked)
            given = "\ngrey: given" if masked is not None else "\non the token grid"
            bare(ax, title="s' \u2260 s (red)" + given if r == 0 else None)
            n_pred = int(masked.sum()) if masked is not None else v["wrong"][r].size  # AR: all N; MaskGIT: the masked
            ax.set_xlabel(f"{int(v['wrong'][r].sum())}/{n_pred} wrong", fontsize=8, labelpad=1)
    # one header per pair, centred over its three columns: name, tokenizer, accuracies
    which = "s' = s" if mode == "ar" else f"s' = s, {mask_ratio:.0%} masked"
    for j, (p, v) in enumerate(zip(pairs, views)):
        # row 0's axes were added in the order input, then (rec, pred, errors) per pair
        x0, x1 = fig.axes[1 + 3 * j].get_position().x0, fig.axes[3 + 3 * j].get_position().x1
        xc, y0 = (x0 + x1) / 2, 1 - (head - 0.55) / fig_h  # 0.55 in above the column titles
        fig.text(xc, y0 + 0.62 / fig_h, p["name"], ha="center", va="bottom", fontsize=12, weight="bold")
        fig.text(xc, y0 + 0.42 / fig_h, p["desc"], ha="center", va="bottom", fontsize=9, color="0.3")
        fig.text(xc, y0 + 0.05 / fig_h, f"token accuracy ({which}): {v['acc_shown']:.1%} on these {n} images\n"
                 f"{v['acc_val']:.1%} on the whole val split ({v['M']} images)",
                 ha="center", va="bottom", fontsize=10, color="darkred")
    what = ("one teacher-forced AR pass on the GT sequence s\n(index i sees the GT context s<i), "
            "top-1 at every position" if mode == "ar" else
            f"MaskGIT predicts {mask_ratio:.0%} randomly masked GT indices\nin one pass from the others, top-1")
    fig.text(0.5, 1 - 0.12 / fig_h, "GT-context view (Sec. 3.2, Fig. 4): reconstruction vs. top-1 prediction",
             ha="center", va="top", fontsize=13, weight="bold")
    fig.text(0.5, 0.08 / fig_h, f"s = tokenizer indices of x;  s' = {what}.  Nothing is sampled.",
             ha="center", va="bottom", fontsize=9, color="0.25")
    return save(fig, path)


def figure_usage_hist(curves, M, path):
    """Sorted code frequencies over the val split, a curve per (name, CodeCounter) (Sec. 3.4, Table 5: usage)."""
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    for name, c in curves:
        freq = np.sort(c.counts.double().numpy())[::-1] / max(c.counts.sum().item(), 1)  # (K,) most used first
        label = f"{name}: usage {c.usage():.1%} of K={c.K}, perplexity {c.perplexity():.1f}"
        # unused codes are NaN, off the log axis: its long tail of rare codes is what collapse looks like
        line, = ax.step(np.arange(1, c.K + 1), np.where(freq > 0, freq, np.nan), where="mid", label=label)
        # the uniform distribution every code would have at 100% usage and perplexity K
        ax.axhline(1 / c.K, color=line.get_color(), linestyle=":", linewidth=1)
    ax.set(yscale="log", xlabel="code rank (most frequent first)", ylabel="share of val tokens")
    ax.set_title(f"Codebook usage over the whole val split ({M} images); dotted: uniform 1/K", fontsize=11)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return save(fig, path)


def figure_reconstructions(x, recons, names, subtitles, path):
    """Input x | reconstruction recons[j] by each tokenizer (n, 3, H, W), headed by names[j] and subtitles[j]."""
    n, cols = len(x), 1 + len(recons)
    fig, axes = plt.subplots(n, cols, figsize=(1.7 * cols + 0.4, 1.7 * n + 0.9), dpi=110, squeeze=False)
    titles = ["input x"] + [f"{name}\n{sub}" for name, sub in zip(names, subtitles)]
    for r in range(n):
        for c, img in enumerate([x[r]] + [rec[r] for rec in recons]):
            bare(axes[r, c], img, titles[c] if r == 0 else None, fontsize=8)
    fig.suptitle("Reconstructions x_hat = G(q(E(x))) of the same validation images", fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def figure_curves(logs, path, only=None):
    """log.jsonl files (or run folders): each numeric key over step, a colour per log; val_*, before_val_* below."""
    named = []
    for p in logs:
        try:
            series = runlog.read_log(p)
        except UserError as e:
            raise UserError(f"--curves {e}") from None
        # a run folder or its log.jsonl: the run's name; any other log file: its own name
        log = os.path.abspath(os.path.join(p, "log.jsonl") if os.path.isdir(p) else p)
        run_log = os.path.basename(log) == "log.jsonl"
        named.append((run_name(log) if run_log else os.path.splitext(os.path.basename(log))[0], series))
    keys = sorted({k for _, s in named for k in s})
    missing = [k for k in only or [] if k not in keys]
    if missing:
        raise UserError(f"--keys {' '.join(missing)}: not in {', '.join(logs)} (they hold {', '.join(keys)})")
    keys = list(only) if only else keys  # --keys: these panels alone, in this order
    if not keys:
        raise UserError(f"--curves: no numeric values in {', '.join(logs)}")
    train_keys, val_keys = [k for k in keys if "val_" not in k], [k for k in keys if "val_" in k]
    # one slot per panel, 4 a row: train keys, padding to a full row, then val keys (None = empty panel)
    slots = [(k, "train") for k in train_keys] + [None] * (-len(train_keys) % 4) + [(k, "val") for k in val_keys]
    slots += [None] * (-len(slots) % 4)
    fig, axes = plt.subplots(len(slots) // 4, 4, figsize=(16, 2.9 * (len(slots) // 4) + 0.6), dpi=100, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, slot in zip(axes.flat, slots):
        if slot is None:
            ax.axis("off")
            continue
        key, split = slot
        for i, (name, series) in enumerate(named):
            if key in series:
                steps, values = series[key]
                ax.plot(steps, values, marker="." if len(steps) < 30 else None, color=colors[i % len(colors)])
        ax.set_title(f"{split}: {key.replace('val_', '', 1) if split == 'val' else key}", fontsize=11,
                     color="black" if split == "train" else "darkblue")  # "val: l1", not "val: val_l1"
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.ticklabel_format(useOffset=False)  # plain tick labels, no "1e-8 + 4.85e-2" offsets
        # positive values over more than two decades (the adaptive weight lam, say): a log axis
        shown = [v for _, s in named if key in s for v in s[key][1]]
        if min(shown) > 0 and max(shown) > 100 * min(shown):
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        lo, hi = ax.get_xlim()
        if hi - lo < 2:  # a single logged step: a window of +-1 step around it
            ax.set_xlim((lo + hi) / 2 - 1, (lo + hi) / 2 + 1)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colors[i % len(colors)], label=name) for i, (name, _) in enumerate(named)]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(named), 4), fontsize=10, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    return save(fig, path)


#### main(argv) and the command line
def out_path(args, default_name):
    """--out, or runs/<default_name>; the folder is created."""
    path = args.out or os.path.join(args.runs_dir, default_name)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return path


def pair_view(p, ds, indices, flags, args, device):
    """One pair's column group (decoded s and s', error maps, accuracies) and its code counts (Sec. 3.4)."""
    if p["tok"].cfg.image_size != flags["image_size"]:  # a --tokenizer of another resolution
        raise UserError(f"{p['name']}: tokenizer for {p['tok'].cfg.image_size} px, val images are "
                        f"{flags['image_size']} px")
    s, s_prime, mask = context_view_split(p, ds, device, args.mode, args.mask_ratio, args.seed, args.batch_size)
    rows = torch.tensor(indices)  # the shown images are rows of the split's tensors
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
    counter = metrics.CodeCounter(p["tok"].cfg.K)
    counter.update(s)
    print(f"{p['name']} ({p['weights']}): token accuracy {view['acc_shown']:.2%} on {len(indices)} shown images, "
          f"{view['acc_val']:.2%} on all {len(ds)} val images; val codebook usage {counter.usage():.1%}, "
          f"perplexity {counter.perplexity():.1f}")
    return view, counter


def visualize(args):
    """The GT-context figure (and the usage histogram). Returns the written paths."""
    device = pick_device(args.device)
    paths = args.pairs or default_pairs(args.runs_dir, args.mode)
    tokenizers = args.tokenizer or [None] * len(paths)  # "-": the tokenizer the transformer records
    if len(tokenizers) != len(paths):
        raise UserError(f"--tokenizer needs one entry per --pairs entry ({len(paths)}), got {len(tokenizers)}")
    if args.names and len(args.names) != len(paths):
        raise UserError(f"--names needs one name per pair ({len(paths)}), got {len(args.names)}")
    pairs = [load_pair(p, None if t in (None, "-") else t, args.mode, device) for p, t in zip(paths, tokenizers)]
    for p, name in zip(pairs, args.names or []):  # --names title the groups and the histogram's curves
        p["name"] = p["tok_name"] = name
    first = pairs[0]["ckpt"].get("args") or {}
    for p, k in ((p, k) for p in pairs[1:] for k in data.DATA_KEYS):  # one dataset: the same images everywhere
        saved = p["ckpt"].get("args") or {}
        if saved.get(k) != first.get(k):
            raise UserError(f"{p['ckpt']['path']} was trained with {k}={saved.get(k)!r}, {pairs[0]['ckpt']['path']} "
                            f"with {k}={first.get(k)!r}: the pairs must share the dataset to show the same images")
    flags = data.recorded_data(pairs[0]["ckpt"], args.data_seed)
    if flags["data"] == "shapes" and flags["n_val"] < 1:
        raise UserError(f"{pairs[0]['ckpt']['path']}: its val split is empty (n_val={flags['n_val']})")
    ds = data.load_data("val", **flags)
    if not 0 <= args.start < len(ds):
        raise UserError(f"no validation images to show: the val split has {len(ds)}, --start is {args.start}")
    indices = list(range(args.start, min(args.start + args.n, len(ds))))  # the same images for every pair
    x, y = map(torch.stack, zip(*(ds[i] for i in indices)))  # (n, 3, H, W), (n,)
    views, counters = zip(*(pair_view(p, ds, indices, flags, args, device) for p in pairs))
    labels = ([f"{data.CLASSES[c]} (y={c})" for c in y.tolist()] if flags["data"] == "shapes" else
              [f"y={c}" for c in y.tolist()] if pairs[0]["model"].config.num_classes > 0 else None)
    written = [figure_gt_context(x, labels, indices, pairs, views, args.mode, args.mask_ratio,
                                 out_path(args, "gt_context.png"))]
    if args.usage_hist is not None:
        hist = args.usage_hist or os.path.splitext(written[0])[0] + "_usage.png"
        os.makedirs(os.path.dirname(os.path.abspath(hist)), exist_ok=True)
        # one curve per tokenizer (by token hash: phase 1 and 2 share their tokens), however many use it
        curves = {p["ckpt"]["tokenizer_hash"]: (p["tok_name"], c) for p, c in zip(pairs, counters)}
        written.append(figure_usage_hist(list(curves.values()), len(ds), hist))
    return written


def tokenizer_figures(args):
    """--recon and/or --usage: tokenizers alone over the first one's val split: reconstructions, usage histogram."""
    device = pick_device(args.device)
    paths = args.recon or args.usage
    if args.recon and args.usage and args.recon != args.usage:
        raise UserError("--recon and --usage together need the same tokenizers; draw them in two calls")
    if args.names and len(args.names) != len(paths):
        raise UserError(f"--names needs one name per tokenizer ({len(paths)}), got {len(args.names)}")
    loaded = [runs.load_tokenizer(p, device) for p in paths]  # (tokenizer, checkpoint, hash) each
    names = args.names or [run_name(ckpt["path"]) for _, ckpt, _ in loaded]
    first = data.recorded_data(loaded[0][1], args.data_seed)
    for _, ckpt, _ in loaded[1:]:
        if data.recorded_data(ckpt, args.data_seed) != first:
            raise UserError(f"{ckpt['path']} was trained on another dataset than {loaded[0][1]['path']}: "
                            "the figure shows the same images for every tokenizer")
    ds = data.load_data("val", **first)
    if not 0 <= args.start < len(ds):
        raise UserError(f"no validation images to show: the val split has {len(ds)}, --start is {args.start}")
    figures = []  # every val image through every tokenizer: L1, usage and perplexity over the whole split
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
        x = torch.stack([ds[i][0] for i in range(args.start, min(args.start + args.n, len(ds)))])  # (n, 3, H, W)
        with torch.no_grad():
            recons = [tok(x.to(device))[0].float().clamp(-1, 1).cpu() for tok, _, _ in figures]
        written.append(figure_reconstructions(x, recons, names, [f"val L1 {m['l1']:.3f}" for _, _, m in figures],
                                              out_path(args, "recon.png")))
    if args.usage:
        path = os.path.splitext(written[0])[0] + "_usage.png" if args.recon else out_path(args, "usage.png")
        written.append(figure_usage_hist([(nm, c) for nm, (_, c, _) in zip(names, figures)], len(ds), path))
    return written


@one_line_errors
def main(argv=None):
    """argv: a list of strings (None: sys.argv) -> the written paths; user mistakes end in one line."""
    args = get_parser().parse_args(argv)
    if args.curves:  # needs no model: it only reads log files
        written = [figure_curves(args.curves, out_path(args, "curves.png"), args.keys)]
    elif args.recon or args.usage:
        written = tokenizer_figures(args)
    else:
        written = visualize(args)
    for path in written:
        print(f"wrote {path}")
    return written


def get_parser():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", nargs="+", help="transformer checkpoints or run folders, one column group each")
    p.add_argument("--tokenizer", nargs="+", help="one per pair ('-' = the recorded one); its hash must match")
    p.add_argument("--names", nargs="+", help="titles, one per pair (or per tokenizer with --recon/--usage)")
    p.add_argument("--mode", choices=["ar", "nar"], default="ar", help="ar: Sec. 3.2's view; nar: MaskGIT's (ours)")
    p.add_argument("--mask-ratio", type=number(0, 1, low_open=True, high_open=False), default=0.5,
                   help="--mode nar: share of the GT tokens masked")
    p.add_argument("--n", type=at_least(1), default=6, help="validation images to show (one row each)")
    p.add_argument("--start", type=int, default=0, help="index of the first shown val image")
    p.add_argument("--data-seed", type=int, help="built-in dataset: other images (default: the run's)")
    p.add_argument("--seed", type=int, default=0, help="--mode nar: seed of the masks")
    p.add_argument("--usage-hist", nargs="?", const="", help="also the usage histogram (default: <out>_usage.png)")
    p.add_argument("--curves", nargs="+", help="only loss curves of these log.jsonl files (or run folders)")
    p.add_argument("--keys", nargs="+", help="--curves: only these keys (e.g. d g lam)")
    p.add_argument("--recon", nargs="+", help="only reconstructions by these tokenizers, side by side")
    p.add_argument("--usage", nargs="+", help="only the codebook-usage histogram of these tokenizers")
    p.add_argument("--out", help="PNG path (default runs/gt_context.png, or runs/curves.png)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--batch-size", type=at_least(1), default=256, help="images per batch over the val split")
    p.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:1, mps")
    return p


if __name__ == "__main__":
    main()
