"""Every setting of `train.py`: its flag, default and help (the paper's value where it gives one, Sec. 3.1, 3.4,
4.1-4.3), the presets' values and the stages' rules. Later sources win: the flag's default, the preset's value
(shared, then the stage's), a stage's rule, your flag. `train.py --stage S --show-config` prints each one's source."""

import argparse
import os
from dataclasses import asdict

import losses
import transformer
import vq
from machine import PRECISIONS, Parser, UserError, at_least, number, pick_device, precision_choice

STAGES = ("classifier", "tokenizer", "decoder", "ar", "nar")
DEFAULT_PRESET = "tiny"
# --show-config prints a group for the stages that read it (a group not named here: every stage)
GROUP_STAGES = {**dict.fromkeys(("tokenizer", "perceptual loss", "GAN"), ("tokenizer", "decoder")),
                "classifier": ("classifier",), "transformer": ("ar", "nar"), "evaluation": STAGES[1:]}
# the tokenizer's flags whose defaults are the tokenizer preset's (vq.TOKENIZER_PRESETS)
TOKENIZER_FLAGS = ("image_size", "K", "nz", "l2_codes", "window", "entropy_weight", "entropy_temperature")


def parser(stage=None, preset=DEFAULT_PRESET, description=None):
    """The command line, its defaults the preset's values for `stage` (its shared ones alone when stage is None)."""
    p = Parser(prog="train.py", description=description, allow_abbrev=False, formatter_class=HelpFormatter,
               usage="train.py --stage STAGE [--preset PRESET] [options]")
    onoff = argparse.BooleanOptionalAction
    g = p.add_argument_group("run")
    g.add_argument("--stage", choices=STAGES, required=True, help="what to train")
    g.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS), help="tiny: CPU, minutes; small: a GPU")
    g.add_argument("--name", help="run name: runs/<name> (default <preset>-<stage>)")
    g.add_argument("--runs-dir", default="runs", help="folder holding all runs")
    g.add_argument("--resume", action="store_true", help="continue runs/<name> from its latest checkpoint")
    g.add_argument("--show-config", action="store_true", help="print each setting and its source, then exit")
    g = p.add_argument_group("data")  # the paper's (ImageNet, FFHQ, LSUN): --data folder --data-dir PATH
    g.add_argument("--data", default="folder", choices=["shapes", "cifar10", "folder"], help="dataset")
    g.add_argument("--data-dir", help="image folder (or one with train/ and val/), or CIFAR-10 root")
    g.add_argument("--data-seed", type=int, default=0, help="seed of the built-in dataset's images")
    g.add_argument("--n-train", type=at_least(1), default=10000, help="built-in dataset: training images")
    g.add_argument("--n-val", type=at_least(1), default=1000, help="built-in dataset: validation images")
    g.add_argument("--image-size", type=at_least(8), help="H = W")
    g.add_argument("--flip", action=onoff, default=False, help="random horizontal flips")
    g.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images instead of stopping")
    g.add_argument("--workers", type=at_least(0), help="DataLoader workers (default 0 for shapes, else up to 8)")
    g = p.add_argument_group("tokenizer")  # Eq. 1-3, Sec. 3.4, Fig. 7
    g.add_argument("--alpha", type=float, help="semantic ratio of Eq. 3 (default 1 in phase 1, 0 in phase 2)")
    g.add_argument("--entropy-weight", type=number(0), help="gamma of Sec. 3.4 (0 = off)")
    g.add_argument("--entropy-temperature", type=number(0, low_open=True), help="tau of softmax(-D/tau) (ours)")
    g.add_argument("--K", type=at_least(2), help="codebook size")
    g.add_argument("--nz", type=at_least(1), help="code dimension")
    g.add_argument("--l2-codes", action=onoff, help="ViT-VQGAN's l2-normalized code lookup (ours, Deviation 17)")
    g.add_argument("--decoder", choices=list(vq.DECODERS), help="conv (phase 1), seqgan (phase 2), or Table 1's")
    g.add_argument("--window", type=at_least(1), help="regional/dilated attention window side b")
    g.add_argument("--phase1", help="--stage decoder: the phase-1 run (default runs/<preset>-tokenizer)")
    g.add_argument("--init-from", help="--stage tokenizer: fine-tune this tokenizer run, its weights and D")
    g = p.add_argument_group("perceptual loss")  # Eq. 3's semantic network
    g.add_argument("--semantic", default="imagenet", choices=["classifier", "imagenet", "none", "random"],
                   help="ImageNet VGG16 (our reading of \"a pre-trained VGG\"), a small classifier (Deviation 3)")
    g.add_argument("--vgg-weights", help="local state_dict file of torchvision's vgg16 (offline use)")
    g.add_argument("--classifier-ckpt", help="small classifier (default: the shipped one, else the preset's run)")
    g.add_argument("--perceptual-norm", default="none", choices=["none", "grad"],
                   help="grad: each layer in the unit that pulls the image as hard as L1 (ours, Deviation 16)")
    g.add_argument("--perceptual-weight", type=number(0), default=1.0, help="w_per (Eq. 2 adds L_per unweighted)")
    g = p.add_argument_group("GAN")  # "following VQGAN" (Sec. 3.1): PatchGAN, hinge loss, adaptive weight
    g.add_argument("--disc-start", type=at_least(0), help="step at which the GAN loss starts (ours)")
    g.add_argument("--disc-weight", type=number(0), help="GAN weight, times VQGAN's adaptive weight (ours)")
    g.add_argument("--disc-ndf", type=at_least(1), default=64, help="PatchGAN base width (VQGAN's)")
    g.add_argument("--disc-layers", type=at_least(1), default=3, help="PatchGAN stride-2 layers (VQGAN's)")
    g.add_argument("--disc-norm", default="batch", choices=["batch", "none"], help="PatchGAN norm (VQGAN: batch)")
    g.add_argument("--disc-lr", type=number(0, low_open=True), help="D's learning rate (default: --lr)")
    g.add_argument("--disc-r1", type=number(0), default=0.0, help="R1 penalty weight on D (VQGAN: 0; MaskGIT: 10)")
    g.add_argument("--r1-every", type=at_least(1), default=1, help="R1 every N-th D step at N x its weight")
    g.add_argument("--lambda-every", type=at_least(1), default=1, help="VQGAN's adaptive weight every N steps")
    g.add_argument("--collapse-warn", type=float, default=0.5, help="warn below this val codebook usage")
    g = p.add_argument_group("classifier")  # ours: the small semantic network of the tiny preset
    g.add_argument("--classifier-labels", default="class", choices=["class", "texture"],
                   help="the dataset's classes, or (built-in data) class x background texture")
    g.add_argument("--classifier-pools", default="token-grid", choices=["token-grid", "vgg16"],
                   help="max-pools: relu5_3 on the token grid (Deviation 15), or after every stage (VGG16)")
    g = p.add_argument_group("transformer")  # Sec. 3.1
    g.add_argument("--tokenizer", help="tokenizer run (default: runs/<preset>-decoder, else -tokenizer)")
    g.add_argument("--transformer", default="base", choices=list(transformer.TRANSFORMER_PRESETS),
                   help="size (base ~171M and large ~306M are the paper's, Tables 3, 4)")
    g.add_argument("--conditional", action=onoff, default=False, help="class-conditional (the paper: ImageNet)")
    g.add_argument("--class-dropout", type=number(0, 1), default=0.1, help="label -> null class (for guidance)")
    g.add_argument("--dropout", type=number(0, 1), help="dropout (default: the transformer preset's)")
    g.add_argument("--ema", type=number(0, 1), default=0.9999, help="EMA decay, sampling's weights (0 = off; ours)")
    g = p.add_argument_group("optimization")  # a length given, --steps or --epochs, replaces the preset's
    g.add_argument("--steps", type=at_least(1), help="total training steps")
    g.add_argument("--epochs", type=number(0, low_open=True), help="passes over the training images (not flips)")
    g.add_argument("--batch-size", type=at_least(1), default=8, help="global batch size (ours)")
    g.add_argument("--grad-accum", type=at_least(1), default=1, help="micro-batches per step (same global batch)")
    g.add_argument("--lr", type=number(0, low_open=True), help="learning rate")
    g.add_argument("--warmup", type=at_least(0), help="warmup steps, then a cosine to 0.1 lr (unset: constant)")
    g = p.add_argument_group("logging")
    g.add_argument("--log-every", type=at_least(1), default=50, help="progress line and log.jsonl every N steps")
    g.add_argument("--ckpt-every", type=at_least(1), default=250, help="checkpoint every N steps, the end, Ctrl-C")
    g.add_argument("--keep", type=at_least(1), default=3, help="keep the newest N checkpoints")
    g = p.add_argument_group("evaluation")  # read by the tokenizer's and the transformers' stages
    g.add_argument("--eval-every", type=at_least(1), default=500, help="validation metrics every N steps")
    g.add_argument("--sample-every", type=at_least(1), default=500, help="image grid every N steps")
    g = p.add_argument_group("system")
    g.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:1, mps")
    g.add_argument("--seed", type=int, default=0, help="seed of the init, the data order and every random draw")
    g.add_argument("--threads", type=at_least(0), default=0, help="torch CPU threads (0 = torch's default)")
    g.add_argument("--compile", action="store_true", help="torch.compile the models")
    g.add_argument("--precision", default="auto", choices=list(PRECISIONS), help="auto: bf16 where native, else fp32")
    p.set_defaults(**{k: v for k, (v, _) in preset_values(stage, preset).items()})
    return p


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):  # "(default: ...)" only where a flag has one (the preset's, for a stage)
        return action.help if action.default is None else super()._get_help_string(action)


#### Presets, made the parser's defaults where they differ from the flags' (the paper-scale recipe's)
# each recipe's values, shared then per stage; a value the paper does not give is ours (Deviation 6), labelled so
PAPER_SCALE = {  # ffhq256: the base recipe; lsun256 and imagenet256 change what the paper does differently
    # paper: lr and iterations (Sec. 4.1, 4.2); ours: the GAN's start and weight 0.8 (VQGAN's), batch, warmup
    "tokenizer": dict(steps=500_000, lr=1e-4, disc_start=50_000, disc_weight=0.8),  # phase 1
    "decoder": dict(steps=200_000, lr=5e-5, disc_start=0, disc_weight=0.8),  # phase 2: its D is trained, GAN at once
    "ar": dict(steps=500_000, lr=1e-4, batch_size=32, warmup=5000),  # the unconditional transformers (Sec. 4.2)
    "nar": dict(steps=500_000, lr=1e-4, batch_size=32, warmup=5000),
}
PRESETS = {
    "tiny": dict(  # ours throughout: 32 px built-in shapes, 8x8 tokens, each stage in minutes on a laptop CPU
        data="shapes", semantic="classifier", batch_size=32, transformer="tiny", ema=0.99, conditional=True,
        perceptual_norm="grad",  # Eq. 3's layers in the units that pull as hard as L1, then w_per = 1 (Deviation 16)
        disc_norm="none", disc_r1=10.0,  # VQGAN's PatchGAN without BatchNorm, with MaskGIT's R1 (Deviation 9)
        r1_every=16, lambda_every=4,  # the GAN's extra passes less often: lazy R1, lambda held (Deviation 14)
        classifier=dict(steps=2500, lr=2e-3, batch_size=64, warmup=50),  # Eq. 3's stand-in net (Deviation 3)
        # phase 1: the GAN in its last 250 steps; phase 2: half its lr (as the paper's 5e-5 is of 1e-4); both: G's lr
        # decayed by a cosine (warmup 0) to 0.1x; transformers: lr 1e-3 for 0.84M weights, not 1e-4 (171M; Deviation 22)
        tokenizer=dict(steps=1500, lr=4e-4, warmup=0, disc_start=1250, disc_weight=0.1),
        decoder=dict(steps=500, lr=2e-4, warmup=0, disc_start=0, disc_weight=0.1),
        ar=dict(steps=2000, lr=1e-3, batch_size=64, warmup=100),
        nar=dict(steps=2000, lr=1e-3, batch_size=64, warmup=100),
    ),
    "small": dict(  # ours (Deviation 24): one GPU, hours; CIFAR-10 at 64 px, ImageNet VGG16 as the semantic net
        data="cifar10", batch_size=32, transformer="small", ema=0.999, conditional=True,
        classifier=dict(steps=5000, lr=1e-3, batch_size=128),
        tokenizer=dict(steps=100_000, lr=1e-4, disc_start=20_000, disc_weight=0.8),
        decoder=dict(steps=40_000, lr=5e-5, disc_start=0, disc_weight=0.8),
        ar=dict(steps=100_000, lr=3e-4, batch_size=128, warmup=2000),  # AR and NAR: one recipe (Sec. 4.2, 4.3)
        nar=dict(steps=100_000, lr=3e-4, batch_size=128, warmup=2000),
    ),
    "ffhq256": PAPER_SCALE,
    # paper (Sec. 4.1, after RQ-VAE): ImageNet's SeQ-GAN fine-tuned 1 epoch per LSUN set; ours: lr 1e-4, GAN at once
    "lsun256": {**PAPER_SCALE, "tokenizer": dict(init_from="{runs_dir}/imagenet256-tokenizer", epochs=1, lr=1e-4,
                                                 disc_start=0, disc_weight=0.8)},
    # paper (Sec. 4.3): class-conditional, lr 1e-4, 300 epochs; ours: warmup, MaskGIT's batch 256 (or --grad-accum)
    "imagenet256": {**PAPER_SCALE, "conditional": True, "ar": dict(epochs=300, lr=1e-4, batch_size=256, warmup=5000),
                    "nar": dict(epochs=300, lr=1e-4, batch_size=256, warmup=5000)},
}


def preset_values(stage, preset):
    """{flag: (value, source)} a preset sets for a stage: the tokenizer preset's, its shared values, its stage's."""
    tok = asdict(vq.TokenizerConfig(**vq.TOKENIZER_PRESETS[preset]))
    out = {k: (tok[k], f"the tokenizer preset (vq.TOKENIZER_PRESETS[{preset!r}])") for k in TOKENIZER_FLAGS}
    out.update({k: (v, f"preset {preset}") for k, v in PRESETS[preset].items() if k not in STAGES})
    out.update({k: (v, f"preset {preset}, {stage}") for k, v in PRESETS[preset].get(stage, {}).items()})
    return out


def parse(argv=None, description=None, **given):
    """argv -> (settings, {setting: source}, --show-config given); `given`: values set as if by flags."""
    first = Parser(prog="train.py", add_help=False, allow_abbrev=False)
    first.add_argument("--stage")
    first.add_argument("--preset", default=DEFAULT_PRESET)
    known = first.parse_known_args(argv)[0]  # --stage and --preset first: they choose every other default
    if known.preset not in PRESETS:
        raise UserError(f"unknown --preset {known.preset!r}: choose one of {', '.join(PRESETS)}")
    p = parser(known.stage, known.preset, description)
    args = p.parse_args(argv)
    marker = object()  # parsed again into a namespace of markers, where argparse fills no default: the rest was given
    flags = vars(p.parse_args(argv, argparse.Namespace(**dict.fromkeys(vars(args), marker))))
    vars(args).update(given)
    show = vars(args).pop("show_config")
    return (*rules(args, {k for k, v in flags.items() if v is not marker} | set(given)), show)


def rules(args, given):
    """The stage's rules, each where no flag set the value; then the checks the flags' types cannot make (at the
    start: a typo fails at once, not after an hour of training)."""
    source = {k: "default" for k in vars(args)}
    source.update({k: where for k, (_, where) in preset_values(args.stage, args.preset).items()})
    source.update(dict.fromkeys(given, "flag"))

    def rule(key, value, why):
        if key not in given:
            setattr(args, key, value)
            source[key] = f"rule: {why}"

    if "steps" in given:  # a length given (--steps or --epochs) replaces the preset's, whichever it is
        rule("epochs", None, "--steps given")
    elif "epochs" in given:
        rule("steps", None, "--epochs given")
    if args.init_from is not None:
        args.init_from = args.init_from.format(runs_dir=args.runs_dir)  # presets name a run under --runs-dir
    rule("decoder", "seqgan" if args.stage == "decoder" else "conv", "Fig. 7: conv in phase 1, SeQ-GAN's in phase 2")
    rule("alpha", 0.0 if args.stage == "decoder" else 1.0, "Fig. 7: alpha 1 in phase 1, 0 in phase 2")
    # shapes are cheap to draw in the main process; image files need workers to decode them
    rule("workers", 0 if args.data == "shapes" else min(8, os.cpu_count() or 1), "0 for shapes, else the cores")
    rule("dropout", transformer.TRANSFORMER_PRESETS[args.transformer].get("dropout", 0.0), "the transformer preset's")
    # a run on other data than its preset's (--data folder with tiny) never takes, nor reads, the preset's run names
    preset_data = parser(args.stage, args.preset).get_default("data")
    args.own_data = None if args.data == preset_data else \
        f"--data {args.data}" + (f" --data-dir {args.data_dir}" if args.data_dir else "")
    if args.name is None:
        if args.own_data:
            raise UserError(f"{args.own_data}: a run on your own data needs its own --name (runs/{args.preset}-"
                            f"{args.stage} is the {args.preset} preset's run on its own {preset_data} data)")
        rule("name", f"{args.preset}-{args.stage}", "<preset>-<stage>")
    if args.data_dir is not None and args.data == "shapes":
        raise UserError(f"--data-dir {args.data_dir} is read only with --data folder (or cifar10); the {args.preset} "
                        "preset trains on the built-in shapes: add --data folder and a --name for the run")
    if args.steps is None and args.epochs is None:
        if args.stage == "classifier" and args.semantic == "imagenet":
            raise UserError(f"the {args.preset} preset's semantic network is the pretrained ImageNet VGG16: it "
                            "trains no classifier (give --steps, --lr and --batch-size to train one anyway, and "
                            "--semantic classifier to use it)")
        raise UserError("give the length of the run: --steps N or --epochs E")
    if args.lr is None:
        raise UserError("give the learning rate: --lr")
    if args.batch_size % args.grad_accum != 0:
        raise UserError(f"--grad-accum {args.grad_accum} must divide --batch-size {args.batch_size}")
    try:
        losses.check_alpha(args.alpha)  # the one check of alpha, shared with SemanticPerceptualLoss
    except ValueError as e:
        raise UserError(f"--alpha {args.alpha}: {e}") from None
    return args, source


def show(args, source):
    """--show-config: the settings a stage reads, one per line, with their source."""
    lines = [f"settings of `train.py --stage {args.stage}` ({args.preset} preset), later sources win: default < "
             f"preset < rule < flag"]
    groups = [g for g in parser()._action_groups[2:] if args.stage in GROUP_STAGES.get(g.title, STAGES)]
    for action in [a for g in groups for a in g._group_actions if a.dest != "show_config"]:  # argparse's own record
        value, where = getattr(args, action.dest, None), source.get(action.dest)
        if action.dest == "precision":  # what "auto" picks on this machine, and why
            what, why = precision_choice(pick_device(args.device).type, value)
            value, where = f"{value} -> {what}", f"{where}; {why}"
        lines.append(f"  {action.dest:<20} {str(value):<28} {where}")
    return "\n".join(lines)
