"""
Every setting of `train.py`, in one place: what it is, its default, what each preset changes, and
which rule of a stage fills it. The command-line flags are made from these fields.

Where a value comes from, later wins (`python train.py --stage S --show-config` prints each
value with its source):

    1. the field's default below (the paper's value where it gives one, Sec. 3.1, 3.4, 4.1-4.3);
    2. the preset's shared value, then its value for the stage (PRESETS);
    3. a rule of the stage (resolve(): alpha 1 in phase 1 and 0 in phase 2, the decoder, the name,
       the image size, the data workers);
    4. the flag given on the command line.

A field left at None after all four takes the model's own preset: the tokenizer's fields (K, nz,
window, ...) vq.TOKENIZER_PRESETS[preset], the transformer's (dropout) TRANSFORMER_PRESETS.
"""

import argparse
import os
from dataclasses import asdict, dataclass, field, fields

import losses
import transformer
import vq
from machine import PRECISIONS, Parser, UserError, at_least, number, pick_device, precision_choice

STAGES = ("classifier", "tokenizer", "decoder", "ar", "nar")
TOKENIZER_STAGES = ("tokenizer", "decoder")
TRANSFORMER_STAGES = ("ar", "nar")


def setting(default, help, group, stages=STAGES, **flag):
    """A field: its default, its help (shown by --help, with each preset's value), its help group,
    the stages that read it (for --show-config), and argparse's keywords for its flag."""
    return field(default=default, metadata=dict(help=help, group=group, stages=stages, flag=flag))


TOK, TRF = TOKENIZER_STAGES, TRANSFORMER_STAGES
ONOFF = dict(action=argparse.BooleanOptionalAction)


@dataclass
class Settings:
    # ---- the run
    stage: str = setting(None, "what to train", "run", choices=STAGES, required=True)
    preset: str = setting("tiny", "the recipe: tiny (CPU, minutes), small (one GPU, hours), or the paper's "
                          "ffhq256, lsun256, imagenet256", "run")
    name: str = setting(None, "run name: runs/<name> (default <preset>-<stage>)", "run")
    runs_dir: str = setting("runs", "folder holding all runs", "run")
    resume: bool = setting(False, "continue runs/<name> from its latest checkpoint", "run", action="store_true")
    # ---- data (the paper's datasets, ImageNet, FFHQ, LSUN, load with --data folder --data-dir PATH)
    data: str = setting("folder", "dataset", "data", choices=["shapes", "cifar10", "folder"])
    data_dir: str = setting(None, "image folder (or one with train/ and val/), or CIFAR-10 root", "data")
    data_seed: int = setting(0, "seed of the built-in dataset's images", "data", type=int)
    n_train: int = setting(10000, "built-in dataset: training images", "data", type=at_least(1))
    n_val: int = setting(1000, "built-in dataset: validation images", "data", type=at_least(1))
    image_size: int = setting(None, "H = W (default: the tokenizer preset's)", "data", type=at_least(8))
    flip: bool = setting(False, "random horizontal flips", "data", **ONOFF)
    skip_bad_images: bool = setting(False, "skip unreadable images instead of stopping", "data",
                                    action="store_true")
    workers: int = setting(None, "DataLoader workers (default 0 for shapes, else up to 8)", "data",
                           type=at_least(0))
    # ---- the tokenizer (Eq. 1-3, Sec. 3.4); None = the tokenizer preset's value
    alpha: float = setting(None, "semantic ratio of Eq. 3 (default 1 in phase 1, 0 in phase 2: Fig. 7)",
                           "tokenizer", TOK, type=float)
    entropy_weight: float = setting(None, "gamma of Sec. 3.4 (0 = off)", "tokenizer", TOK,
                                    type=number(0))
    entropy_temperature: float = setting(None, "tau of softmax(-D/tau) in the entropy penalty (ours)", "tokenizer",
                                         TOK, type=number(0, low_open=True))
    K: int = setting(None, "codebook size", "tokenizer", TOK, type=at_least(2))
    nz: int = setting(None, "code dimension", "tokenizer", TOK, type=at_least(1))
    l2_codes: bool = setting(None, "ViT-VQGAN's l2-normalized code lookup (ours, Deviation 17)", "tokenizer",
                             TOK, **ONOFF)
    decoder: str = setting(None, "decoder: conv (Table 1's baselineVQ, phase 1), conv-x2 or attention-x2 (Table "
                           "1's, trained in one phase), seqgan (phase 2); default conv in phase 1, seqgan in phase 2",
                           "tokenizer", TOK, choices=list(vq.DECODERS))
    window: int = setting(None, "regional/dilated attention window side b", "tokenizer", TOK, type=at_least(1))
    phase1: str = setting(None, "--stage decoder: the phase-1 checkpoint or run folder it starts from (default "
                          "runs/<preset>-tokenizer)", "tokenizer", ("decoder",))
    init_from: str = setting(None, "--stage tokenizer: start from this tokenizer run's weights and D "
                             "(fine-tuning; lsun256's default)", "tokenizer", ("tokenizer",))
    # ---- Eq. 3's semantic network and the perceptual loss
    semantic: str = setting("imagenet", "VGG16 of the perceptual loss: imagenet (torchvision's ImageNet VGG16, our "
                            "reading of the paper's \"pre-trained VGG\"), classifier (ours, Deviation 3: tiny's "
                            "shipped one by default), none (no perceptual loss), random (tests)",
                            "perceptual loss", TOK, choices=["classifier", "imagenet", "none", "random"])
    vgg_weights: str = setting(None, "local state_dict file of torchvision's vgg16 (offline use)",
                               "perceptual loss", TOK)
    classifier_ckpt: str = setting(None, "small classifier checkpoint (default: tiny's shipped "
                                   "pretrained/tiny-classifier when it knows the run's images, else "
                                   "<runs-dir>/<preset>-classifier, trained first)",
                                   "perceptual loss", TOK)
    classifier_labels: str = setting("class", "--stage classifier: what it learns to tell apart: the dataset's "
                                     "classes, or (built-in data only) class x background texture, 160 classes",
                                     "perceptual loss", ("classifier",), choices=["class", "texture"])
    classifier_pools: str = setting("token-grid", "--stage classifier: max-pools where relu5_3 lands on the token "
                                    "grid (Deviation 15), or after every stage as in VGG16", "perceptual loss",
                                    ("classifier",), choices=["token-grid", "vgg16"])
    perceptual_norm: str = setting("none", "grad: each VGG layer in units where its gradient at the image equals "
                                   "L1's (ours, Deviation 16); rms: in units of its RMS; none: Eq. 3 as written",
                                   "perceptual loss", TOK, choices=["none", "grad", "rms"])
    perceptual_weight: float = setting(None, "w_per times L_per^alpha (Eq. 2 adds L_per unweighted: 1)",
                                       "perceptual loss", TOK, type=number(0))
    # ---- the GAN, "following VQGAN" (Sec. 3.1): PatchGAN, hinge loss, adaptive weight
    disc_start: int = setting(None, "step at which the GAN loss starts (ours)", "GAN", TOK, type=at_least(0))
    disc_weight: float = setting(None, "GAN weight, times VQGAN's adaptive weight (ours)", "GAN", TOK,
                                 type=number(0))
    disc_ndf: int = setting(64, "PatchGAN base width (VQGAN's)", "GAN", TOK, type=at_least(1))
    disc_layers: int = setting(3, "PatchGAN stride-2 layers (VQGAN's)", "GAN", TOK, type=at_least(1))
    disc_norm: str = setting("batch", "PatchGAN norm (VQGAN: batch)", "GAN", TOK, choices=["batch", "none"])
    disc_lr: float = setting(None, "discriminator learning rate (default: --lr)", "GAN", TOK,
                             type=number(0, low_open=True))
    disc_r1: float = setting(0.0, "R1 penalty weight on D (VQGAN: 0; MaskGIT: 10)", "GAN", TOK,
                             type=number(0))
    r1_every: int = setting(1, "R1 on every N-th D step, weighted N x --disc-r1 (lazy R1, StyleGAN2)", "GAN", TOK,
                            type=at_least(1))
    lambda_every: int = setting(1, "recompute VQGAN's adaptive weight every N steps, reuse it in between", "GAN",
                                TOK, type=at_least(1))
    collapse_warn: float = setting(0.5, "warn when val codebook usage falls below this share", "GAN", TOK,
                                   type=float)
    # ---- the transformers (Sec. 3.1)
    tokenizer: str = setting(None, "tokenizer checkpoint or run folder (default: runs/<preset>-decoder, else "
                             "-tokenizer)", "transformer", TRF)
    transformer: str = setting("base", "transformer size: " + ", ".join(transformer.TRANSFORMER_PRESETS) +
                               " (base ~171M and large ~306M are the paper's, Tables 3, 4)", "transformer", TRF,
                               choices=list(transformer.TRANSFORMER_PRESETS))
    conditional: bool = setting(False, "class-conditional when labels exist (the paper: ImageNet only)",
                                "transformer", TRF, **ONOFF)
    class_dropout: float = setting(0.1, "label -> null class probability (for classifier-free guidance)",
                                   "transformer", TRF, type=number(0, 1))
    dropout: float = setting(None, "transformer dropout (default: the transformer preset's)", "transformer", TRF,
                             type=number(0, 1))
    ema: float = setting(0.9999, "EMA decay of the transformer weights, used for sampling (0 = off; ours)",
                         "transformer", TRF, type=number(0, 1))
    # ---- optimization (a length given here, --steps or --epochs, replaces the preset's)
    steps: int = setting(None, "total training steps", "optimization", type=at_least(1))
    epochs: float = setting(None, "train this many epochs over the training images (flips not counted) instead "
                            "of --steps", "optimization", type=number(0, low_open=True))
    batch_size: int = setting(8, "global batch size (the paper's are in its supplementary: ours)", "optimization",
                              type=at_least(1))
    grad_accum: int = setting(1, "micro-batches per step (same global batch)", "optimization",
                              type=at_least(1))
    lr: float = setting(None, "learning rate", "optimization", type=number(0, low_open=True))
    warmup: int = setting(None, "linear lr warmup steps, then cosine decay to 0.1 lr (tokenizer stages: unset is "
                          "a constant lr, the paper's)", "optimization", type=at_least(0))
    # ---- logging and checkpoints
    log_every: int = setting(50, "progress line and log.jsonl every N steps", "logging", type=at_least(1))
    eval_every: int = setting(500, "validation metrics every N steps", "logging", (*TOK, *TRF), type=at_least(1))
    sample_every: int = setting(500, "image grid every N steps", "logging", (*TOK, *TRF), type=at_least(1))
    ckpt_every: int = setting(250, "checkpoint every N steps (also at the end, and on Ctrl-C / SIGTERM)",
                              "logging", type=at_least(1))
    keep: int = setting(3, "keep the newest N checkpoints", "logging", type=at_least(1))
    # ---- the machine
    device: str = setting("auto", "auto (CUDA, else Apple's MPS, else CPU), cpu, cuda, cuda:1, mps", "system")
    seed: int = setting(0, "seed of the init, the data order and every random draw", "system", type=int)
    threads: int = setting(0, "torch CPU threads (0 = torch's default)", "system", type=at_least(0))
    compile: bool = setting(False, "torch.compile the models", "system", action="store_true")
    # the quantizer and the VGG stay fp32 inside bf16 autocast (machine.cpu_has_bf16 decides "auto" on a CPU)
    precision: str = setting("auto", "autocast: auto (bf16 on CUDA and on CPUs with native bf16, else fp32), "
                             "bf16 (on any device), fp32", "system", choices=list(PRECISIONS))


# ------------------------------------------------------------------------------------------
#### Presets: the fields each recipe changes (shared, then one dict per stage that wins)
# ------------------------------------------------------------------------------------------
# The defaults above are the paper-scale recipe's shared values. What the paper gives: phase 1
# Adam, lr 1e-4, 500k iterations; phase 2 (Sec. 3.4) lr 5e-5, 200k iterations; LSUN tokenizers
# fine-tuned from the ImageNet one for one epoch (all Sec. 4.1); transformers lr 1e-4, 500k
# iterations unconditional (Sec. 4.2), 300 epochs on ImageNet (Sec. 4.3). Every other value is
# ours (Deviation 6), and says why where it is set.

PAPER_SCALE = {  # ffhq256: the base recipe; lsun256 and imagenet256 change what the paper does differently
    # phase 1 -- paper: lr 1e-4, 500k iterations; ours: the GAN's start and weight 0.8 (VQGAN's);
    # w_per 1: Eq. 2 adds L_per unweighted
    "tokenizer": dict(steps=500_000, lr=1e-4, disc_start=50_000, disc_weight=0.8, perceptual_weight=1.0),
    # phase 2 -- paper: lr 5e-5, 200k iterations; ours: the GAN on from the start (its D is trained)
    "decoder": dict(steps=200_000, lr=5e-5, disc_start=0, disc_weight=0.8, perceptual_weight=1.0),
    # unconditional transformers -- paper: lr 1e-4, 500k iterations (Sec. 4.2); ours: batch, warmup
    "ar": dict(steps=500_000, lr=1e-4, batch_size=32, warmup=5000),
    "nar": dict(steps=500_000, lr=1e-4, batch_size=32, warmup=5000),
}

PRESETS = {
    # ours throughout: 32 px built-in shapes, 8x8 tokens, each stage in minutes on a laptop CPU
    "tiny": dict(
        data="shapes", semantic="classifier", batch_size=32, transformer="tiny", ema=0.99, conditional=True,
        # Eq. 3's units (ours, Deviation 16): each VGG layer in the unit that makes it pull the image as
        # hard as L1 does, at each image's mean color; then w_per = 1, as in the paper. In units of
        # their RMS ("rms") the layers pulled 4-29x as hard as L1 and the tokenizer lost every
        # background (val L1 0.34, worse than each image's mean color)
        perceptual_norm="grad",
        # VQGAN's PatchGAN without BatchNorm, with MaskGIT's R1 penalty (10): VQGAN's BatchNorm D
        # separates real from fake by a margin within ~20 steps here (hinge loss 0, lambda ~1e-3)
        # and stops learning; this one stays near d ~ 0.8 (Deviation 9)
        disc_norm="none", disc_r1=10.0,
        # the GAN's extra passes, paid less often (Deviation 14): R1 on every 16th D step with 16x its
        # weight (StyleGAN2's lazy regularization), VQGAN's adaptive weight every 4th step, held between
        r1_every=16, lambda_every=4,
        # the stand-in semantic net of Eq. 3 (Deviation 3): no download; losses.SMALL_VGG16 with relu5_3
        # on the token grid (Deviation 15). 2500 steps, warmup then cosine decay, no dropout: 96% val
        # accuracy on the 32 classes (2000 steps: 95-96.6%; 1000 at a constant lr with dropout 0.5: 76-80%)
        classifier=dict(steps=2500, lr=2e-3, batch_size=64, warmup=50),
        # phase 1: 1500 steps, the GAN for the last 250, G's lr decayed by a cosine (warmup 0) to 0.1x:
        # the design chosen by cost at equal reconstruction (docs/benchmarks.md; Deviation 22)
        tokenizer=dict(steps=1500, lr=4e-4, warmup=0, disc_start=1250, disc_weight=0.1, perceptual_weight=1.0),
        # phase 2: lr 1/2 of phase 1's (as the paper's 5e-5 is of 1e-4), decayed the same way: at a constant
        # lr it ended above phase 1's val L1 (0.1213 against 0.1189)
        decoder=dict(steps=500, lr=2e-4, warmup=0, disc_start=0, disc_weight=0.1, perceptual_weight=1.0),
        # transformers: lr 1e-3 for a 0.84M-parameter model and 2000 steps (the paper: 1e-4 for 171M)
        ar=dict(steps=2000, lr=1e-3, batch_size=64, warmup=100),
        nar=dict(steps=2000, lr=1e-3, batch_size=64, warmup=100),
    ),
    # ours: one GPU, hours; CIFAR-10 at 64 px with ImageNet VGG16 (our reading of the paper's
    # "pre-trained VGG") as the semantic net; VQGAN's PatchGAN and adaptive weight (the defaults)
    "small": dict(  # Deviation 24
        data="cifar10", batch_size=32, transformer="small", ema=0.999, conditional=True,
        classifier=dict(steps=5000, lr=1e-3, batch_size=128),
        tokenizer=dict(steps=100_000, lr=1e-4, disc_start=20_000, disc_weight=0.8, perceptual_weight=1.0),
        decoder=dict(steps=40_000, lr=5e-5, disc_start=0, disc_weight=0.8, perceptual_weight=1.0),
        # AR and NAR share one recipe, as in the paper (Sec. 4.2, 4.3)
        ar=dict(steps=100_000, lr=3e-4, batch_size=128, warmup=2000),
        nar=dict(steps=100_000, lr=3e-4, batch_size=128, warmup=2000),
    ),
    "ffhq256": PAPER_SCALE,
    "lsun256": {
        **PAPER_SCALE,
        # paper (Sec. 4.1, after RQ-VAE): the ImageNet SeQ-GAN fine-tuned for one epoch on each LSUN
        # set; ours: lr 1e-4 (phase 1's), the GAN on from the start (its D comes along)
        "tokenizer": dict(init_from="{runs_dir}/imagenet256-tokenizer", epochs=1, lr=1e-4, disc_start=0,
                          disc_weight=0.8, perceptual_weight=1.0),
    },
    "imagenet256": {
        **PAPER_SCALE,
        "conditional": True,  # paper: class-conditional on ImageNet (Sec. 4.3)
        # paper (Sec. 4.3): lr 1e-4 for 300 epochs; ours: batch 256 (MaskGIT's, whose schedule the
        # paper matches; use --grad-accum on a small GPU) and the warmup
        "ar": dict(epochs=300, lr=1e-4, batch_size=256, warmup=5000),
        "nar": dict(epochs=300, lr=1e-4, batch_size=256, warmup=5000),
    },
}


# ------------------------------------------------------------------------------------------
#### Resolving a run's settings, and the command line made from the fields
# ------------------------------------------------------------------------------------------

DEFAULTS = {f.name: f.default for f in fields(Settings)}


def preset_value(preset, stage, key):
    """(value, source) of `key` in a preset: its stage's dict first, then its shared values."""
    p = PRESETS[preset]
    if key in p.get(stage, {}):
        return p[stage][key], f"preset {preset}, {stage}"
    if key in p and key not in STAGES:
        return p[key], f"preset {preset}"
    return DEFAULTS[key], "default"


def on_own_data(s):
    """True when a run reads another kind of dataset than its preset's (`--data folder` with the
    built-in `tiny`). Such a run never takes, nor silently reads, the preset's default run names
    (runs/tiny-tokenizer, ...). The paper-scale presets read a folder: --data-dir names it."""
    return s.data != preset_value(s.preset, s.stage, "data")[0]


def own_data_flags(s):
    return f"--data {s.data}" + (f" --data-dir {s.data_dir}" if s.data_dir else "")


def resolve(given, stage, preset="tiny"):
    """The settings of one run -> (Settings, {field: source}). given: {field: value} from the
    command line (or a caller); the rest from the preset, the stage's rules and the defaults."""
    if preset not in PRESETS:
        raise UserError(f"unknown --preset {preset!r}: choose one of {', '.join(PRESETS)}")
    values, source = {}, {}
    for key in DEFAULTS:
        values[key], source[key] = preset_value(preset, stage, key)
    values.update(stage=stage, preset=preset)
    source.update(stage="flag", preset="flag" if "preset" in given else "default")
    for key, value in given.items():
        values[key], source[key] = value, "flag"
    s = Settings(**values)

    def rule(key, value, why):
        if source[key] != "flag":
            setattr(s, key, value)
            source[key] = f"rule: {why}"

    # a length given on the command line (--steps or --epochs) replaces the preset's, whichever it is
    if "steps" in given:
        rule("epochs", None, "--steps given")
    elif "epochs" in given:
        rule("steps", None, "--epochs given")
    if s.init_from is not None:
        s.init_from = s.init_from.format(runs_dir=s.runs_dir)  # presets name a run under --runs-dir
    rule("decoder", "seqgan" if stage == "decoder" else "conv", "Fig. 7: conv in phase 1, SeQ-GAN's in phase 2")
    rule("alpha", 0.0 if stage == "decoder" else 1.0, "Fig. 7: alpha 1 in phase 1, 0 in phase 2")
    rule("image_size", vq.TOKENIZER_PRESETS[preset]["image_size"], "the tokenizer preset's")
    # shapes are cheap to draw in the main process; image files need workers to decode them
    rule("workers", 0 if s.data == "shapes" else min(8, os.cpu_count() or 1), "0 for shapes, else the cores")
    if s.name is None:
        if on_own_data(s):  # the default names hold the preset's own dataset's runs: never mix the two
            raise UserError(f"{own_data_flags(s)}: a run on your own data needs its own --name "
                            f"(runs/{preset}-{stage} is the {preset} preset's run on its own "
                            f"{preset_value(preset, stage, 'data')[0]} data)")
        rule("name", f"{preset}-{stage}", "<preset>-<stage>")
    check(s)
    return s, source


def check(s):
    """What the flags' own types cannot check: the values of presets, and flags taken together.
    Every check runs here, once: a typo fails at the start, not after an hour of training."""
    checks = [
        (s.data_dir is None or s.data != "shapes",
         f"--data-dir {s.data_dir} is read only with --data folder (or cifar10); the {s.preset} preset "
         f"trains on the built-in shapes: add --data folder and a --name for the run"),
        (s.stage != "classifier" or s.semantic != "imagenet" or s.steps is not None or s.epochs is not None,
         f"the {s.preset} preset's semantic network is the pretrained ImageNet VGG16: it trains no classifier "
         "(give --steps, --lr and --batch-size to train one anyway, and --semantic classifier to use it)"),
        (s.steps is not None or s.epochs is not None, "give the length of the run: --steps N or --epochs E"),
        (s.lr is not None, "give the learning rate: --lr"),
        (s.batch_size % s.grad_accum == 0, f"--grad-accum {s.grad_accum} must divide --batch-size {s.batch_size}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    try:
        losses.check_alpha(s.alpha)  # the one check of alpha, shared with SemanticPerceptualLoss
    except ValueError as e:
        raise UserError(f"--alpha {s.alpha}: {e}") from None


def preset_help(key, preset="tiny"):
    """The default preset's value of a field, where it sets one: "[tiny: 32; classifier 64]" (shared,
    then per stage). --show-config gives any preset's."""
    p = PRESETS[preset]
    values = [f"{p[key]}"] if key in p and key not in STAGES else []
    values += [f"{st} {p[st][key]}" for st in STAGES if key in p.get(st, {})]
    return f" [{preset}: {'; '.join(values)}]" if values else ""


def parser(prog="train.py", description=None):
    """The command line, made from the fields: one flag each, in groups, with its default and each
    preset's value in its help. Flags not given stay out of the namespace (argparse.SUPPRESS), so
    that resolve() knows what the user gave."""
    p = Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
               argument_default=argparse.SUPPRESS, usage=f"{prog} --stage STAGE [--preset PRESET] [options]")
    groups = {}
    for f in fields(Settings):
        meta = f.metadata
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], p.add_argument_group(meta["group"]))
        preset = preset_help(f.name)  # what a run without the flag takes: tiny's value, else the default
        default = "" if preset or f.default is None or meta["flag"].get("action") == "store_true" \
            or f.name == "stage" else f" (default {f.default})"
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, help=meta["help"] + default + preset,
                           **meta["flag"])
    p.add_argument("--show-config", action="store_true",
                   help="print every setting of this stage with where its value comes from, then exit")
    return p


def show(s, source):
    """The resolved settings of a stage, one per line, with their source (--show-config)."""
    tok = asdict(vq.TokenizerConfig(**vq.TOKENIZER_PRESETS[s.preset]))  # the preset, then the class defaults
    lines = [f"settings of `train.py --stage {s.stage}` ({s.preset} preset), later sources win: default < "
             f"preset < rule < flag"]
    for f in fields(Settings):
        if s.stage not in f.metadata["stages"]:
            continue
        value, where = getattr(s, f.name), source[f.name]
        if value is None and f.name in tok:
            value, where = tok[f.name], f"the tokenizer preset (vq.TOKENIZER_PRESETS[{s.preset!r}])"
        elif value is None and f.name == "dropout":
            value = transformer.TRANSFORMER_PRESETS[s.transformer].get("dropout", 0.0)
            where = f"the transformer preset (transformer.TRANSFORMER_PRESETS[{s.transformer!r}])"
        if f.name == "precision":  # what "auto" picks on this machine, and why
            what, why = precision_choice(pick_device(s.device).type, value)
            value, where = f"{value} -> {what}", f"{where}; {why}"
        lines.append(f"  {f.name:<20} {str(value):<28} {where}")
    return "\n".join(lines)
