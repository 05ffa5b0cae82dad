"""Training for every stage of SeQ-GAN (Gu et al., CVPR 2024, Sec. 3.4, Sec. 4, Fig. 7).

    python train.py --stage classifier   # ours: the small semantic network of the tiny preset
    python train.py --stage tokenizer    # phase 1: encoder + codebook + conv decoder, alpha = 1
    python train.py --stage decoder      # phase 2: frozen encoder/codebook, SeQ-GAN's decoder, alpha = 0
    python train.py --stage ar           # the AR transformer (GPT) on the tokenizer's indices
    python train.py --stage nar          # the NAR transformer (MaskGIT)

With no other flag a stage runs the `tiny` preset on the built-in dataset, offline, on the CPU in minutes;
`--show-config` prints each setting and its source (config.py). One function per stage, each with its loop
written out: the tokenizer's takes G's step, then D's (Fig. 7), the transformers' one AdamW step.
Runs live in runs/<name>/ (checkpoints, log.jsonl, PNG grids); "Deviation N" marks a deviation (docs/deviations.md).
"""

import math
import os
from contextlib import nullcontext
from dataclasses import asdict

import torch
import torch.distributed as dist
import torch.nn.functional as F

import config       # every setting: its flag, default, the presets, the stage rules
import data         # datasets, the (seed, step) -> batch order, the token cache
import losses       # the tokenizer's objective: Eq. 3, L1 + VQ terms + GAN (tokenizer_objective), PatchGAN
import metrics      # codebook usage, reconstruction metrics over a split, Fig. 7's token check
import pictures     # image grids of reconstructions and samples
import runlog       # the progress line and log.jsonl
import runs         # runs/<name>/: checkpoints, resume, rebuilding models, which run a stage reads
import transformer  # GPT (AR) and MaskGIT (NAR) of Sec. 3.1
import vq           # encoder, quantizer (Eq. 1, 2, Sec. 3.4), conv and attention decoders
from machine import (PRECISIONS, Proc, Stop, UserError, autocast, maybe_compile, num_params, one_line_errors,
                     pick_device, rank0_first, rng_state, run_line, seed_everything, set_rng_state,
                     setup_distributed, unwrap, wrap_ddp)


#### Models, the semantic network and the run's length, from the settings
def tokenizer_config(args):
    """TokenizerConfig: the preset's architecture, with the values of the run's tokenizer flags (whose
    defaults are the preset's, config.py). --decoder: Table 1's variants train from step 0 (one phase)."""
    flags = {k: getattr(args, k) for k in (*config.TOKENIZER_FLAGS, "decoder")}
    cfg = vq.TokenizerConfig(**{**vq.TOKENIZER_PRESETS[args.preset], **flags})
    try:
        cfg.check()  # the latent grid must be whole: h = H / f (Sec. 3.1)
    except ValueError as e:
        raise UserError(str(e)) from None
    return cfg


# what a classifier run started by a tokenizer stage takes over from it (the rest: the preset's classifier's)
CLASSIFIER_INHERITS = (*data.DATA_KEYS, "runs_dir", "seed", "workers", "device", "threads", "precision",
                       "log_every", "ckpt_every", "keep")


def own_classifier(args, path, device):
    """The preset's own classifier run at `path`: trained first when missing, finished first when it
    was stopped part-way (never read unfinished), left as it is when done."""
    ckpt = runs.load_checkpoint(path, "classifier") if runs.latest_checkpoint(path) else None
    step, total = runs.run_progress(ckpt) if ckpt is not None else (0, 1)
    if total is None or step >= total:
        return
    why = f"it stopped at step {step} of {total}: finishing it first" if ckpt is not None else "training it first"
    settings = config.parse(["--stage", "classifier", "--preset", args.preset], name=f"{args.preset}-classifier",
                            resume=ckpt is not None, **{key: getattr(args, key) for key in CLASSIFIER_INHERITS})[0]
    print(f"semantic classifier {path}: {why} ({settings.steps} steps, the {args.preset} preset's classifier: "
          "--steps sets this stage's length only; python train.py --stage classifier is the same run)")
    # seeded as its own run (`python train.py --stage classifier` bit for bit); this stage's stream goes on after
    outer = rng_state()
    seed_everything(args.seed)
    train_classifier(settings, Proc(0, 1, device))  # rank 0 alone
    set_rng_state(outer)


def perceptual_loss(args, proc, train_ds):
    """Eq. 3's loss on the VGG16 it reads, ImageNet's or the small classifier (printed), with each
    layer in its unit for --perceptual-norm grad; None for --semantic none."""
    # our reading of the paper's "pre-trained VGG" (Sec. 3.3.2): torchvision's ImageNet VGG16
    if args.semantic == "imagenet":
        try:
            with rank0_first(proc.rank, proc.world):  # one download into torch's cache, not one per rank
                net = losses.imagenet_vgg16(args.vgg_weights)
        except RuntimeError as e:
            raise UserError(str(e)) from None
        where = args.vgg_weights or "torchvision IMAGENET1K_V1"
    # ours (Deviation 3): a small VGG16-shaped classifier of the dataset's own classes
    elif args.semantic == "classifier":
        path, flags = runs.classifier_path(args, train_ds.num_classes >= 2), data.data_flags(args)  # >= 2: labelled
        if path == runs.SHIPPED_CLASSIFIER:  # it knows these images: compare the flags that choose them
            flags = {k: flags[k] for k in runs.CLASSIFIER_DATA}
        elif args.classifier_ckpt is None:  # the preset's own classifier run: trained (or finished) first
            with rank0_first(proc.rank, proc.world):  # rank 0 trains it; the others then load it
                if proc.rank == 0:
                    own_classifier(args, path, proc.device)
        net, where = runs.load_semantic_classifier(path, flags, args.classifier_ckpt is not None)
    elif args.semantic == "none":  # ours: no labels and no VGG16 weights at hand (README, "Your own images")
        if proc.rank == 0:
            print("semantic network: none (--semantic none): no perceptual loss, L1 + VQ + GAN only; "
                  "alpha has no effect")
        return None
    else:  # "random": tests only, never a silent fallback
        with torch.random.fork_rng(devices=[]):  # the same weights on every rank (seeds differ by rank)
            torch.manual_seed(args.seed)
            net = losses.SmallVGG16(8)  # 8 classes: an arbitrary head, never trained
        where = "RANDOM weights (tests only: the perceptual loss is meaningless)"
    if proc.rank == 0:
        print(f"semantic network: {where}")
    features = losses.VGG16Features(net).to(proc.device)
    if args.perceptual_norm == "grad":  # `tiny`: each layer in its unit (ours, Deviation 16)
        features.scales = losses.feature_scales(features, train_ds, proc.device)
        if proc.rank == 0:
            print("perceptual loss: each layer in the unit where its gradient at the image equals L1's "
                  "(--perceptual-norm grad): " + " ".join(f"{k} {v:.3g}" for k, v in features.scales.items()))
    return losses.SemanticPerceptualLoss(features, args.alpha)  # alpha 1 in phase 1, 0 in phase 2 (config.rules)


def run_steps(args, n_images, rank):
    """The run's length in steps: --steps, or --epochs E passes over the n training images
    (flips not counted) at the global batch size, known once the data is."""
    if args.epochs is None:
        return args.steps
    steps = max(1, math.ceil(args.epochs * n_images / args.batch_size))
    if rank == 0:
        print(f"{args.epochs:g} epochs of {n_images} images at batch {args.batch_size}: {steps} steps")
    return steps


def check_finite(step, terms):
    """A NaN or inf loss ends the run with the term named; the last good checkpoint stays."""
    for name, value in terms.items():
        if torch.is_tensor(value) and not torch.isfinite(value).all():
            raise UserError(f"non-finite loss at step {step}: {name} = {value.item()}; the last good checkpoint "
                            "is kept, lower --lr and --resume")


def lr_at(step, lr, warmup, total):
    """Learning rate at 0-based `step` (ours, Deviations 11 and 22; the paper states the lr only): linear
    warmup from lr/warmup to lr over `warmup` steps, then a cosine decay to 0.1 * lr at step `total`."""
    if step < warmup:  # linear from lr/warmup up to lr
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)                 # 0 .. 1 over the post-warmup steps
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))  # cosine from lr down to 0.1 * lr


#### Stage: the small semantic classifier (ours)
def train_classifier(args, proc):
    """Cross-entropy on the dataset's labels: a VGG16-shaped network that knows its classes."""
    run_dir, existing = runs.prepare_run_dir(os.path.join(args.runs_dir, args.name), args.resume, proc.rank,
                                             proc.world)
    train_ds, val_ds = (data.load_data(split, **data.data_flags(args)) for split in ("train", "val"))
    if args.classifier_labels == "texture":  # class x background texture (the study's second eval network)
        train_ds, val_ds = data.TextureLabels(train_ds), data.TextureLabels(val_ds)
    steps = run_steps(args, len(train_ds), proc.rank)
    if train_ds.num_classes < 2:
        raise UserError("--stage classifier needs labelled data (sub-folders per class); for unlabelled images "
                        "use --semantic imagenet (ImageNet VGG16, or --vgg-weights FILE), --classifier-ckpt PATH "
                        "(a classifier trained elsewhere), or --semantic none (no perceptual loss)")
    net_config = runs.classifier_config(train_ds.num_classes, args.preset, args.classifier_pools)
    net = runs.classifier_model(net_config).to(proc.device)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)  # plain Adam (ours; the paper's VGG16 is pretrained)
    ckpt = runs.load_checkpoint(existing, "classifier") if existing else None
    start = runs.resume(ckpt, net_config, {"model": net, "optimizer": opt}, rank=0)  # rank 0's RNG on all ranks
    if runs.finished(run_dir, start, steps):
        return existing
    logger = runlog.Logger(run_dir, "classifier", steps, start=start, rank=proc.rank)

    def state(step):
        return {"kind": "classifier", "config": net_config, "model": net.state_dict(), "optimizer": opt.state_dict(),
                "step": step, "total_steps": steps, "rng": rng_state(), "args": dict(vars(args))}

    step = start
    with Stop() as stop:
        loader = data.step_loader(train_ds, args.seed, start, steps, batch_size=args.batch_size,
                                  flip=True, workers=args.workers, pin_memory=proc.device.type == "cuda")  # flips: ours
        for step, (x, y) in enumerate(loader, start + 1):
            x, y = x.to(proc.device), y.to(proc.device)  # x (B, 3, H, W) in [-1, 1], y (B,)
            for group in opt.param_groups:  # warmup, then cosine decay (ours)
                group["lr"] = lr_at(step - 1, args.lr, args.warmup or 0, steps)
            with autocast(proc.device, PRECISIONS[args.precision]):
                loss = F.cross_entropy(net(x), y)        # logits (B, K_cls) vs labels (B,)
            check_finite(step, {"ce": loss})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % args.log_every == 0 or step == steps:
                skipped = {"skipped": data.skipped_images(train_ds, val_ds)} if args.skip_bad_images else {}
                logger.log(step, {"ce": loss.item(), **skipped})
            if stop.signal:  # no collective to agree on: each copy runs alone
                break
            if step % args.ckpt_every == 0 and proc.rank == 0:  # under torchrun every rank trains a copy
                runs.save_checkpoint(run_dir, state(step), args.keep)
        # the final evaluation is inside Stop too: Ctrl-C during it still saves and exits 0
        acc = metrics.classifier_accuracy(net, val_ds, proc.device)
        logger.log(step, {"val_acc": acc})
        return runs.finish(stop, run_dir, {**state(step), "val_acc": acc}, keep=args.keep, rank=proc.rank,
                           stage="classifier", step=step)


#### Stages: the tokenizer, phase 1 (Sec. 3.4) and phase 2 (Fig. 7)
def phase1_tokenizer(args, device, resuming):
    """Phase 1 (Fig. 7, left): encoder, codebook and conv decoder, trained jointly with alpha = 1
    (or one of Table 1's decoders with --decoder) -> (model, config, the run it starts from)."""
    cfg = tokenizer_config(args)
    model = vq.Tokenizer(cfg).to(device)
    init = None
    if args.init_from and not resuming:
        # fine-tune another run's tokenizer and D, fresh optimizer, step 0 (LSUN's, from ImageNet's: Sec. 4.1)
        init = runs.load_checkpoint(args.init_from, "tokenizer", "--init-from")
        runs.check_config(asdict(runs.tokenizer_config(init)), asdict(cfg), init["path"])
        model.load_state_dict(init["model"])
        print(f"tokenizer: starting from the weights of {init['path']} (--init-from)")
    return model, cfg, init


def phase2_tokenizer(args, device):
    """Phase 2 (Fig. 7, right): a phase-1 tokenizer with an attention-enhanced decoder (Sec. 3.4),
    encoder and codebook frozen -> (model, config, the phase-1 checkpoint)."""
    init = runs.phase1_run(args)  # --phase1, else the preset's phase-1 run, finished
    base = runs.build_tokenizer(init)  # the phase-1 architecture and weights, from the checkpoint
    if init.get("phase") != 1 or base.cfg.decoder != "conv":  # Fig. 7's phase 2 fine-tunes phase 1's conv decoder
        raise UserError(f"--phase1 {init['path']} is a phase-{init.get('phase')} tokenizer with the "
                        f"{base.cfg.decoder!r} decoder; phase 2 starts from a phase-1 run with the conv decoder")
    if args.decoder not in ("seqgan", "attention-x2"):
        raise UserError(f"--decoder {args.decoder}: phase 2 enhances the decoder with attention; use seqgan "
                        "(the paper's) or attention-x2")
    try:
        model = vq.enhance_decoder(base, args.decoder, window=args.window).to(device)
    except ValueError as e:  # a window too large for the latent grid
        raise UserError(str(e)) from None
    # no gradient, no Adam state: every image's tokens s (Eq. 1) stay phase 1's, for any transformer on them
    for p in list(model.encoder.parameters()) + list(model.quantizer.parameters()):
        p.requires_grad_(False)  # Fig. 7: encoder and codebook frozen in phase 2
    return model, model.cfg, init  # cfg.decoder is the enhanced one now


def train_tokenizer(args, proc):
    """Phase 1 (--stage tokenizer) or phase 2 (--stage decoder) of Fig. 7."""
    phase, dev, rank = (2 if args.stage == "decoder" else 1), proc.device, proc.rank
    run_dir, existing = runs.prepare_run_dir(os.path.join(args.runs_dir, args.name), args.resume, rank, proc.world)
    train_ds, val_ds = (data.load_data(split, **data.data_flags(args)) for split in ("train", "val"))
    steps = run_steps(args, len(train_ds), rank)
    model, cfg, init = phase1_tokenizer(args, dev, existing) if phase == 1 else phase2_tokenizer(args, dev)
    perceptual = perceptual_loss(args, proc, train_ds)  # Eq. 3 on VGG16 features (None: --semantic none)
    disc = losses.Discriminator(args.disc_ndf, args.disc_layers, args.disc_norm).to(dev)  # PatchGAN (VQGAN)
    params = [p for p in model.parameters() if p.requires_grad]  # phase 2: the decoder only (Fig. 7)
    opt = torch.optim.Adam(params, lr=args.lr, betas=(0.5, 0.9))  # betas: VQGAN's (ours)
    opt_d = torch.optim.Adam(disc.parameters(), lr=args.disc_lr or args.lr, betas=(0.5, 0.9))  # G's betas
    ckpt = runs.load_checkpoint(existing, "tokenizer") if existing else None
    if ckpt is not None:
        runs.tokenizer_config(ckpt)  # a run of the older layout: one line that says so
    modules = {"model": model, "optimizer": opt, "disc": disc, "disc_optimizer": opt_d}
    start = runs.resume(ckpt, asdict(cfg), modules, rank)
    if ckpt is None and init is not None and "disc" in init:
        disc.load_state_dict(init["disc"])  # a new run from another one: its D is a good start
    if runs.finished(run_dir, start, steps):
        return existing
    if rank == 0:  # the total counts phase 2's frozen encoder and codebook too; "trained" is what Adam updates
        trained, n = sum(p.numel() for p in params) / 1e6, cfg.latent_size
        print(f"tokenizer phase {phase}: {num_params(model) / 1e6:.2f}M parameters ({trained:.2f}M trained), "
              f"{n}x{n} tokens, K={cfg.K}, alpha={args.alpha}, gamma={cfg.entropy_weight}")
    # phase 2 keeps every val image's tokens (Fig. 7: checked, its data in every checkpoint); lam: lambda in use
    token_check, lam = (ckpt.get("token_check"), ckpt.get("gan_lambda")) if ckpt is not None else (None, None)
    if phase == 2 and token_check is None:
        before, s_before = metrics.evaluate_tokenizer(model, perceptual, val_ds, proc)
        token_check = metrics.token_check(before, s_before, proc.world, rank)

    ddp_model = maybe_compile(wrap_ddp(model, proc.world, dev), args.compile)  # DDP first, then torch.compile
    ddp_disc = wrap_ddp(disc, proc.world, dev)  # D's step through DDP; G's reads the bare D (D's step zeroes it)
    precision, accum = PRECISIONS[args.precision], args.grad_accum
    logger = runlog.Logger(run_dir, args.stage, steps, start=start, rank=rank)
    grid_x = torch.stack([val_ds[i][0] for i in range(min(16, len(val_ds)))]).to(dev)  # the same in every grid
    counter = metrics.CodeCounter(cfg.K)  # training usage since the last log line

    def evaluate(step):  # the full val split; the WARNING key on codebook collapse
        ev, s = metrics.evaluate_tokenizer(model, perceptual, val_ds, proc)  # L1, L_low, L_sem, usage, perplexity
        logger.log(step, {**ev, **metrics.collapse_warning(ev["val_usage"], args.collapse_warn)})
        return ev, s

    def state(step):  # self-describing: weights, both optimizers, D, step, RNG, config, flags, parent run
        return {"kind": "tokenizer", "phase": phase, "config": asdict(cfg), "step": step, "total_steps": steps,
                "model": model.state_dict(), "optimizer": opt.state_dict(), "disc": disc.state_dict(),
                "disc_optimizer": opt_d.state_dict(), "rng": rng_state(), "args": dict(vars(args)),
                "phase1": init["path"] if init else None, "token_check": token_check, "gan_lambda": lam}

    step = start
    model.train()
    with Stop() as stop:
        loader = data.step_loader(train_ds, args.seed, start, steps, batch_size=args.batch_size, rank=rank,
                                  world=proc.world, flip=args.flip, workers=args.workers, pin_memory=dev.type == "cuda")
        for step, (x, _) in enumerate(loader, start + 1):
            x = x.to(dev, non_blocking=True)  # (B/world, 3, H, W) in [-1, 1]
            if args.warmup is not None:  # `tiny` (ours, Deviation 22): warmup, then a cosine decay of G's lr
                for group in opt.param_groups:
                    group["lr"] = lr_at(step - 1, args.lr, args.warmup, steps)
            # the GAN's gate, for G and D alike; `held`: VQGAN's adaptive weight reused this step (None:
            # afresh, every lambda_every-th GAN step; Deviation 14; every step at paper scale)
            gan = losses.gan_on(step, args.disc_start, args.disc_weight)
            held = None if lam is None or (step - args.disc_start) % args.lambda_every == 0 else lam

            # ---- G's step: encoder, codebook and decoder in phase 1, the decoder alone in phase 2; the
            # batch in `accum` micro-batches, one step on the whole batch but for D_bar's entropy (Deviation 7)
            opt.zero_grad(set_to_none=True)
            fakes, terms = [], {}
            for i, xm in enumerate(x.chunk(accum)):  # (B/(world*accum), 3, H, W) each
                # DDP: the gradients' all-reduce on the last micro-batch only
                sync = ddp_model.no_sync() if proc.world > 1 and i < accum - 1 else nullcontext()
                with sync, autocast(dev, precision):
                    x_hat, s, vq_terms = ddp_model(xm)  # x_hat (b, 3, H, W), s (b, h, w); Eq. 1 inside
                    # Eq. 2 + Eq. 3 + the entropy penalty + VQGAN's GAN term (losses.py); D only while on
                    loss, terms_m = losses.tokenizer_objective(
                        xm, x_hat, vq_terms, perceptual=perceptual, perceptual_weight=args.perceptual_weight,
                        disc=disc if gan else None, last_layer=unwrap(model).last_layer(),
                        disc_weight=args.disc_weight, lam=held)
                check_finite(step, terms_m)
                (loss / accum).backward()  # the accum gradients sum to the batch mean's
                counter.update(s)  # the codes Eq. 1 picked, counted since the last log line
                fakes.append(x_hat.detach())  # for D's step: no graph
                terms = {name: terms.get(name, 0.0) + v.detach() / accum for name, v in terms_m.items()}
            opt.step()

            # ---- D's step, once the GAN is on: real x and the detached x_hat of G's step, so no
            # gradient reaches G; R1 on every r1_every-th step at r1_every times its weight (Deviation 14)
            if gan:
                lam = terms["lam"]
                r1 = args.disc_r1 * args.r1_every if step % args.r1_every == 0 else 0.0
                with autocast(dev, precision):
                    d_total, d_loss = losses.discriminator_loss(ddp_disc, x, torch.cat(fakes), r1)
                    opt_d.zero_grad(set_to_none=True)  # also drops what G's step left in D
                    d_total.backward()
                    opt_d.step()
                check_finite(step, {"d": d_loss})
                terms["d"] = d_loss.detach()
            if step % args.log_every == 0 or step == steps:
                skipped = data.skipped_images(train_ds, val_ds) if args.skip_bad_images else None
                logger.log(step, metrics.log_line(terms, counter, proc.world, skipped))
                counter = metrics.CodeCounter(cfg.K)  # reset: usage per logging window
            if step % args.eval_every == 0 and step < steps:
                evaluate(step)
            if step % args.sample_every == 0 and rank == 0:
                pictures.save_recon_grid(model, grid_x, run_dir, step)  # input | reconstruction
            if stop.requested(proc.world, dev):  # a signal on any rank stops all ranks at this step
                break
            if step % args.ckpt_every == 0 and step < steps and rank == 0:  # the last one: runs.finish() below
                runs.save_checkpoint(run_dir, state(step), args.keep)
        after, s_after = evaluate(step)
        if phase == 2 and rank == 0:  # Fig. 7's promise, checked: every val image kept its tokens
            metrics.check_tokens_unchanged(token_check, after, s_after, world=proc.world, logger=logger, step=step)
        if rank == 0:
            pictures.save_recon_grid(model, grid_x, run_dir, step)
        return runs.finish(stop, run_dir, state(step), keep=args.keep, rank=rank, stage=args.stage, step=step)


#### Stages: the generative transformers (Sec. 3.1; AR = GPT, NAR = MaskGIT)
def train_transformer(args, proc):
    """--stage ar / nar: token classification loss on the tokenizer's index sequences (Sec. 3.1)."""
    kind, dev, rank = args.stage, proc.device, proc.rank  # kind: "ar" (GPT) or "nar" (MaskGIT)
    run_dir, existing = runs.prepare_run_dir(os.path.join(args.runs_dir, args.name), args.resume, rank, proc.world)
    tok, tok_ckpt, tok_hash = runs.transformer_tokenizer(args, dev, rank)
    resumed = runs.load_checkpoint(existing, kind) if existing else None
    runs.check_same_tokenizer(resumed, tok_ckpt["path"], tok_hash)  # early: before minutes of encoding
    # a finished run says so before minutes of encoding (with --epochs the length needs the data first)
    if args.steps is not None and runs.finished(run_dir, resumed["step"] if resumed else 0, args.steps):
        return existing
    cache = data.token_cache(data.data_flags(args), tok, tok_hash, tok_ckpt["path"], phase1_path=tok_ckpt.get("phase1"),
                             device=dev, workers=args.workers, rank=rank, world=proc.world)
    train_s, train_y = cache["train"]  # (M, N) int16 ids, (M,) labels; M = 2n (flips)
    val_s, val_y = cache["val"]        # (n_val, N), (n_val,)
    steps = run_steps(args, len(train_s) // 2, rank)  # an epoch: every image once (flips not counted)
    # class-conditional with --conditional and labels (unlabelled data: all 0); 0 classes = the null class alone
    num_classes = int(train_y.max().item()) + 1 if args.conditional and train_y.max() > 0 else 0
    tconfig = transformer.TransformerConfig(  # K, N: the tokenizer's; L, H, D, dropout: the transformer preset's
        K=tok.cfg.K, seq_len=tok.cfg.latent_size**2, num_classes=num_classes, class_dropout=args.class_dropout,
        **{**transformer.TRANSFORMER_PRESETS[args.transformer], "dropout": args.dropout})
    model = runs.build_transformer(kind, tconfig).to(dev)  # GPT or MaskGIT
    # EMA copy (ours): eval mode for good, never trained directly; sampling and the final eval use it
    ema = runs.build_transformer(kind, tconfig).to(dev).eval() if args.ema > 0 else None
    if ema is not None:
        ema.load_state_dict(model.state_dict())  # starts equal to the model
        ema.requires_grad_(False)
    # AdamW, weight decay 0.01 on Linear weights only, betas (0.9, 0.95): the paper gives only the lr
    opt = unwrap(model).configure_optimizer(weight_decay=0.01, lr=args.lr, betas=(0.9, 0.95))  # Deviation 11
    if resumed is not None:  # compared field by field, whatever version wrote it
        resumed["config"] = asdict(runs.transformer_config(resumed["config"]))
    start = runs.resume(resumed, asdict(tconfig), {"model": model, "optimizer": opt, "ema": ema}, rank)
    if runs.finished(run_dir, start, steps):  # --epochs: known only now
        return existing
    if rank == 0:
        print(f"{kind}: {num_params(model) / 1e6:.2f}M parameters, N={tconfig.seq_len} "
              f"tokens, K={tconfig.K}, {num_classes} classes, {len(train_s)} train sequences")

    ddp_model = maybe_compile(wrap_ddp(model, proc.world, dev), args.compile)
    precision, accum = PRECISIONS[args.precision], args.grad_accum
    logger = runlog.Logger(run_dir, kind, steps, start=start, rank=rank)

    def state(step):  # tokenizer_hash ties the model to its tokens: sample.py refuses a tokenizer whose hash differs
        return {"kind": kind, "config": asdict(tconfig), "model": model.state_dict(),
                "ema": ema.state_dict() if ema is not None else None, "optimizer": opt.state_dict(),
                "step": step, "total_steps": steps, "rng": rng_state(), "args": dict(vars(args)),
                "tokenizer_path": os.path.abspath(tok_ckpt["path"]), "tokenizer_hash": tok_hash}

    step = start
    model.train()  # dropout and class dropout on
    with Stop() as stop:
        sampler = data.StepSampler(len(train_s), args.batch_size, args.seed, start, total_steps=steps, flip=False,
                                   rank=rank, world_size=proc.world)  # flip=False: the flips are in the token cache
        for step, pairs in enumerate(sampler, start + 1):
            idx = torch.tensor([i for i, _ in pairs])  # this rank's dataset positions
            s, y = train_s[idx].to(dev).long(), train_y[idx].to(dev)  # the cache holds int16
            # set by hand every step: a resumed run continues the warmup/cosine schedule where it stopped
            for group in opt.param_groups:
                group["lr"] = lr_at(step - 1, args.lr, args.warmup, steps)
            opt.zero_grad(set_to_none=True)  # one AdamW step on `accum` micro-batches, as in G's step
            loss = 0.0
            for i, (sm, ym) in enumerate(zip(s.chunk(accum), y.chunk(accum))):  # (B/(world*accum), N), labels
                sync = ddp_model.no_sync() if proc.world > 1 and i < accum - 1 else nullcontext()  # as in G's step
                with sync, autocast(dev, precision):
                    # Sec. 3.1: the tokens are input and label (GPT: from the tokens before; MaskGIT: masked)
                    _, loss_m = ddp_model(sm, ym if num_classes > 0 else None, targets=sm)
                check_finite(step, {"loss": loss_m})
                (loss_m / accum).backward()
                loss += loss_m.detach() / accum  # the batch's mean, for the log line
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the norm before clipping
            opt.step()
            if ema is not None:
                transformer.ema_update(ema, model, args.ema)  # EMA of the weights (ours): sampling uses it
            if step % args.log_every == 0 or step == steps:
                logger.log(step, {"loss": loss.item(), "grad_norm": grad_norm.item(), "lr": opt.param_groups[0]["lr"]})
            if step % args.eval_every == 0 and step < steps:  # on the trained weights (the final eval: EMA's)
                logger.log(step, metrics.transformer_metrics(unwrap(model), kind, val_s, val_y, device=dev))
            if step % args.sample_every == 0 and rank == 0:
                pictures.save_sample_grid(ema if ema is not None else model, tok, num_classes, run_dir, step=step)
            if stop.requested(proc.world, dev):  # any rank signalled: all stop here
                break
            if step % args.ckpt_every == 0 and step < steps and rank == 0:
                runs.save_checkpoint(run_dir, state(step), args.keep)
        ev = metrics.transformer_metrics(unwrap(ema if ema is not None else model), kind, val_s, val_y, device=dev)
        logger.log(step, ev)  # final val metrics (EMA weights when kept)
        if rank == 0:
            pictures.save_sample_grid(ema if ema is not None else model, tok, num_classes, run_dir, step=step)
        return runs.finish(stop, run_dir, state(step), keep=args.keep, rank=rank, stage=kind, step=step)


#### main(argv) and the command line
# --stage -> function; tokenizer and decoder share one function (phase 1 and phase 2 of Fig. 7)
STAGES = {"classifier": train_classifier, "tokenizer": train_tokenizer, "decoder": train_tokenizer,
          "ar": train_transformer, "nar": train_transformer}


def settings(argv=None):
    """The command line -> the run's settings (config.py); --show-config prints them with their sources and exits."""
    args, source, show = config.parse(argv, description=__doc__)
    if show:
        print(config.show(args, source))
        raise SystemExit(0)
    return args


@one_line_errors
def main(argv=None):
    """Run one stage; argv a list of strings (None: sys.argv). Returns the path of the final
    checkpoint. User mistakes end as one-line SystemExit("error: ..."), without a traceback."""
    try:
        args = settings(argv)
        rank, world, local_rank = setup_distributed()  # (0, 1, 0) without torchrun
        proc = Proc(rank, world, pick_device(args.device, local_rank))  # cuda:<local_rank>, mps or cpu
        seed_everything(args.seed + rank)  # per-rank offset: different dropout/masks per rank
        if args.threads:
            torch.set_num_threads(args.threads)  # a fixed CPU thread count; without the flag torch picks
        if args.batch_size % (world * args.grad_accum) != 0:  # equal micro-batches on every rank
            raise UserError(f"--batch-size {args.batch_size} (global) must divide into {world} processes x "
                            f"--grad-accum {args.grad_accum} equal micro-batches")
        if rank == 0:
            print(run_line(proc.device, args.precision, args.threads))
        run_dir = os.path.join(args.runs_dir, args.name)
        new = not os.path.exists(run_dir)
        try:
            return STAGES[args.stage](args, proc)  # the final checkpoint's path
        except BaseException as e:
            # a failed start leaves no empty run folder; a stopped run exits 0 and keeps its checkpoint
            stopped = isinstance(e, SystemExit) and not e.code
            if new and not stopped and rank == 0 and runs.latest_checkpoint(run_dir) is None:
                runs.remove_empty_run(run_dir)
            raise
    finally:
        if dist.is_available() and dist.is_initialized():  # torchrun: leave the process group cleanly
            dist.destroy_process_group()


def get_parser():
    """The command line (config.parser), for tools that read train.py's flags."""
    return config.parser(description=__doc__)


if __name__ == "__main__":
    main()
