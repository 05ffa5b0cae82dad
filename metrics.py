"""Evaluation metrics of SeQ-GAN (Sec. 4): codebook usage and perplexity (Tables 2 and 5's "Usage",
undefined there: ours below); the Frechet distance of FID and rFID in float64 with torch alone (no scipy)
and the Inception Score; their feature extractors (Inception-v3, or a small classifier for an offline
"semantic FID") over image sets in one pass and constant memory; a tokenizer's figures over a split and
the floors it must beat; reference statistics on disk; train.py's validation figures, Fig. 7's check.

The CLI, in three modes (docs/evaluation.md):
    python metrics.py --samples samples/ --ref DATA          # FID and IS (Inception-v3)
    python metrics.py --ref DATA --image-size 256            # reference statistics only
    python metrics.py --tokenizer runs/tiny-tokenizer --semantic-ckpt runs/tiny-classifier  # rFID
with --floors (a tokenizer's references) and --shape-classifier (do samples show their class?).

Deliberate differences from the paper's numbers: the paper names no Inception implementation, and
ours, torchvision's, makes FIDs NOT comparable to TF-Inception ones, so every printed figure names
its extractor (`fid_name`, `is_name`); a "semantic FID" only ranks models on its own dataset; random
Inception weights are for tests only (`allow_random=True`), never a silent fallback.

Shape letters: B batch, 3 x H x W image in [-1, 1], F feature width (2048 for Inception),
C classes (1000 for ImageNet), K codebook size, M images in a sample file.
"""

import hashlib
import math
import os
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import data
import pictures
import runs
import transformer
import vq
from losses import normalize_imagenet
from machine import (Parser, UserError, at_least, atomic_write, autocast, eval_mode, one_line_errors, pick_device,
                     unwrap)

INCEPTION_NAME = "torchvision Inception-v3 (not TF-Inception: not comparable to TF-Inception FIDs)"  # in every figure
SEMANTIC_NAME = "small-classifier features; not comparable to Inception-v3 figures"
INCEPTION_SIZE = 299  # Inception-v3 was trained on 299 x 299 crops


#### Codebook usage (Sec. 3.4)
def code_counts(s: torch.Tensor, K: int) -> torch.Tensor:
    """How often each of the K codes occurs in the index tensor s (any shape). -> (K,) long."""
    s = s.reshape(-1).long()
    if s.numel() and (s.min() < 0 or s.max() >= K):
        raise ValueError(f"code indices must lie in [0, {K}), found [{s.min()}, {s.max()}]")
    return torch.bincount(s, minlength=K)


class CodeCounter:
    """Code counts over a whole split (or of the indices s): update() on every batch of indices, then
    usage() / perplexity(). Under torch.distributed call all_reduce() once, at the end."""

    def __init__(self, K: int, s: torch.Tensor | None = None):
        self.K = K
        self.counts = torch.zeros(K, dtype=torch.long) if s is None else code_counts(s, K)  # (K,)

    def update(self, s: torch.Tensor) -> None:
        self.counts += code_counts(s, self.K).cpu()

    def usage(self) -> float:
        # "Usage" (Tables 2, 5; undefined there, so ours): the fraction of codes chosen at least once.
        return (self.counts > 0).sum().item() / self.counts.numel()

    def perplexity(self) -> float:
        # exp(H), H = -sum_k p_k ln p_k (0 ln 0 = 0): "the number of equally used codes", K when uniform.
        n = self.counts.sum().item()
        if n == 0:
            return float("nan")                             # no tokens seen: undefined
        p = self.counts.double() / n                        # (K,)
        return math.exp(-torch.special.xlogy(p, p).sum().item())

    def all_reduce(self) -> None:
        if dist.is_available() and dist.is_initialized():
            # NCCL only reduces CUDA tensors; gloo reduces CPU ones.
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
            counts = self.counts.to(device)
            dist.all_reduce(counts, op=dist.ReduceOp.SUM)
            self.counts = counts.cpu()


def codebook_usage(s: torch.Tensor, K: int) -> float:
    """Fraction of the K codes that occur at least once in s (any shape, long)."""
    return CodeCounter(K, s).usage()


def perplexity(s: torch.Tensor, K: int) -> float:
    """exp of the entropy (natural log) of the empirical code distribution of s."""
    return CodeCounter(K, s).perplexity()


#### Frechet distance and Inception Score
def _as_float64(a):
    return torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a).detach().to("cpu", torch.float64)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, S1) and N(mu2, S2) (numpy arrays or tensors) -> a float,
        d^2 = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2}),
    without scipy's sqrtm of the non-symmetric S1 S2 (complex noise): S1 S2 is similar to the symmetric
    PSD A = S1^{1/2} S2 S1^{1/2}, so Tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(A)), two eighs in float64."""
    mu1, mu2 = _as_float64(mu1), _as_float64(mu2)           # (F,)
    S1, S2 = _as_float64(sigma1), _as_float64(sigma2)       # (F, F)
    if mu1.shape != mu2.shape or S1.shape != S2.shape or S1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"shape mismatch: mu {tuple(mu1.shape)}, {tuple(mu2.shape)}; "
                         f"sigma {tuple(S1.shape)}, {tuple(S2.shape)}")
    # S1^{1/2} = V diag(sqrt l) V^T; rounding's tiny negative l (a rank-deficient S1) -> 0, not NaN
    l, V = torch.linalg.eigh(S1)                            # (F,), (F, F)
    root1 = (V * l.clamp(min=0).sqrt()) @ V.T               # (F, F) S1^{1/2}
    A = root1 @ S2 @ root1                                  # (F, F) S1^{1/2} S2 S1^{1/2}
    A = (A + A.T) / 2                                       # exact symmetry for eigvalsh
    tr_covmean = torch.linalg.eigvalsh(A).clamp(min=0).sqrt().sum()
    d2 = (mu1 - mu2).square().sum() + S1.trace() + S2.trace() - 2 * tr_covmean
    return max(d2.item(), 0.0)  # a squared distance; rounding can leave -1e-12 for identical statistics


def feature_statistics(feats):
    """(n, F) features -> (mu (F,), sigma (F, F)) in float64; unbiased, like np.cov(rowvar=False)."""
    x = _as_float64(feats)                                  # (n, F)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need (n, F) features with n >= 2, found shape {tuple(x.shape)}")
    mu = x.mean(0)                                          # (F,)
    xc = x - mu                                             # (n, F)
    return mu, xc.T @ xc / (x.shape[0] - 1)


def inception_score(probs, splits: int = 10):
    """IS = exp(E_x KL(p(y|x) || p(y))), p(y) the mean of p(y|x) over a split, on `splits` equal
    chunks as in the original code. probs: (n, C) softmax outputs. -> (mean, std) over splits."""
    p = _as_float64(probs)                                  # (n, C)
    if len(p) < splits:
        raise ValueError(f"inception_score needs at least {splits} samples (one per split), found {len(p)}")
    scores = []
    for chunk in torch.tensor_split(p, splits):             # (~n/splits, C) each
        p_y = chunk.mean(0, keepdim=True)                   # (1, C) marginal over the chunk
        # KL per sample, with 0 ln 0 = 0 (xlogy), so one-hot probs are exact.
        kl = (torch.special.xlogy(chunk, chunk) - torch.special.xlogy(chunk, p_y)).sum(1)
        scores.append(math.exp(kl.mean().item()))
    return float(np.mean(scores)), float(np.std(scores))


class InceptionScoreSums:
    """inception_score of n images known in advance, without every p(y|x) (200 MB at 50k x 1000): since
    E_x KL(p(y|x) || p(y)) = E_x sum_y p(y|x) log p(y|x) - sum_y p(y) log p(y), each split keeps sum_x p(y|x)
    (C,) and sum_x sum_y p log p. update(probs (B, C)) in image order; result() -> (mean, std)."""

    def __init__(self, n: int, splits: int = 10):
        if n < splits:
            raise ValueError(f"inception_score needs at least {splits} samples (one per split), found {n}")
        self.n, self.seen = n, 0
        sizes = torch.tensor([len(c) for c in torch.tensor_split(torch.arange(n), splits)])  # (splits,)
        self.ends, self.count = sizes.cumsum(0), sizes.double()  # (splits,) each split's end (exclusive), size
        self.neg_entropy = torch.zeros(splits, dtype=torch.float64)  # sum_x sum_y p log p per split
        self.sum_p = None                                   # (splits, C) sum_x p(y|x) per split

    def update(self, probs: torch.Tensor) -> None:
        p = probs.detach().cpu().double()                   # (B, C) on the CPU: MPS has no float64
        if self.sum_p is None:
            self.sum_p = torch.zeros(len(self.ends), p.shape[1], dtype=torch.float64)
        if self.seen + len(p) > self.n:
            raise ValueError(f"InceptionScoreSums was told {self.n} images and got more")
        i = torch.arange(self.seen, self.seen + len(p))     # (B,) image index in the whole set
        split = torch.searchsorted(self.ends, i, right=True)  # (B,) the split each image falls in
        self.sum_p.index_add_(0, split, p)
        self.neg_entropy.index_add_(0, split, torch.special.xlogy(p, p).sum(1))
        self.seen += len(p)

    def result(self):
        if self.seen != self.n:
            raise ValueError(f"InceptionScoreSums was told {self.n} images and got {self.seen}")
        p_y = self.sum_p / self.count[:, None]              # (splits, C) marginal of each split
        kl = self.neg_entropy / self.count - torch.special.xlogy(p_y, p_y).sum(1)  # (splits,)
        scores = kl.exp().numpy()
        return float(np.mean(scores)), float(np.std(scores))


#### Feature extractors
def _weights_error(reason):
    cache = os.path.join(torch.hub.get_dir(), "checkpoints")
    return RuntimeError(f"Inception-v3 ImageNet weights unavailable ({reason}). Either connect to the internet once "
                        f"so torchvision downloads them into the torch hub cache ({cache}), or pass "
                        "--inception-weights FILE (a state_dict of torchvision's inception_v3).")


def _load_inception_weights(net, weights, weights_path):
    if weights_path is not None:  # a local file wins over the torch hub cache
        if not os.path.isfile(weights_path):
            raise _weights_error(f"no file at {weights_path}")
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        except Exception as e:                              # corrupt file, wrong format, ...
            raise _weights_error(f"cannot read {weights_path}: {type(e).__name__}: {e}") from e
    else:  # weights.get_state_dict(), spelled out so that the cache (torch.hub.get_dir()) is visible
        w = torchvision.models.Inception_V3_Weights.verify(weights)
        try:
            state = torch.hub.load_state_dict_from_url(w.url, map_location="cpu", progress=True, check_hash=True)
        except Exception as e:                              # offline (URLError), bad hash, ...
            raise _weights_error(f"{w} not in the cache and download failed: {type(e).__name__}: {e}") from e
    try:
        net.load_state_dict({k: v for k, v in state.items() if not k.startswith("AuxLogits.")})
    except RuntimeError as e:                               # wrong architecture / keys
        raise _weights_error(f"not an inception_v3 state_dict: {str(e).splitlines()[0]}") from e


class InceptionFeatures(nn.Module):
    """torchvision's Inception-v3 as an FID/IS feature extractor: forward(x (B,3,H,W) in [-1,1], any H, W) ->
    (pool features (B, 2048), softmax probs (B, 1000)). weights: an `Inception_V3_Weights` or its name, or a
    local state_dict file weights_path. TEST ONLY: weights=None, allow_random=True: random, meaningless."""

    fid_name, is_name = f"FID ({INCEPTION_NAME})", f"IS ({INCEPTION_NAME})"

    def __init__(self, weights="IMAGENET1K_V1", weights_path: str | None = None, allow_random: bool = False):
        super().__init__()
        # transform_input=False: the ported TF weights expect (x01 - 0.5) / 0.5, exactly our [-1, 1]
        # input. aux_logits=False: the auxiliary head only matters for training; its weights are dropped.
        net = torchvision.models.Inception3(num_classes=1000, aux_logits=False, transform_input=False,
                                            init_weights=False)
        if weights is not None or weights_path is not None:
            _load_inception_weights(net, weights, weights_path)
        elif not allow_random:
            raise RuntimeError("InceptionFeatures(weights=None) gives random weights, which are for "
                               "tests only; pass allow_random=True if that is really meant")
        # Split the head off: net(x) now ends at the 2048-d pool features, self.fc gives logits.
        self.fc, self.dim = net.fc, net.fc.in_features      # the head; 2048, the pool features' size
        net.fc = nn.Identity()
        self.net = net
        self.requires_grad_(False)
        self.eval()                                         # batch norm and dropout must be off
        # stored with reference statistics; a local file and the hub's copy of the same weights agree
        self.ident = (f"torchvision inception_v3 pool3, bilinear resize to {INCEPTION_SIZE}, "
                      f"weights sha256 {runs.state_hash(self.state_dict())[:16]}")

    def train(self, mode: bool = True):
        return super().train(False)  # always eval (batch norm, dropout off), even in a model that calls .train()

    def forward(self, x: torch.Tensor):
        # Bilinear resize to 299 without antialiasing (as pytorch-fid does); no crop.
        x = F.interpolate(x.float(), size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        feats = self.net(x)                                 # (B, 2048) average-pooled Mixed_7c
        return feats, self.fc(feats).softmax(-1)            # (B, 2048), (B, 1000)


class SemanticFeatures(nn.Module):
    """A VGG-shaped classifier's (.features, .avgpool, .classifier) features for the offline "semantic FID":
    forward(x (B,3,H,W) in [-1,1]) -> (its last Linear's input (B, F), softmax probs (B, C)). imagenet_normalize:
    to ImageNet mean/std first, as the perceptual loss's VGG expects; False for a classifier of raw input."""

    fid_name, is_name = f"semantic FID ({SEMANTIC_NAME})", f"semantic IS ({SEMANTIC_NAME})"

    def __init__(self, classifier: nn.Module, imagenet_normalize: bool = True):
        super().__init__()
        self.classifier = classifier
        # Split the head at its last Linear: everything before it yields the features.
        head = classifier.classifier
        layers = [head] if isinstance(head, nn.Linear) else list(head.children())
        last = max(i for i, m in enumerate(layers) if isinstance(m, nn.Linear))
        self.pre, self.last, self.post = nn.Sequential(*layers[:last]), layers[last], nn.Sequential(*layers[last + 1:])
        self.dim = self.last.in_features                    # the features' size
        self.imagenet_normalize = imagenet_normalize
        self.requires_grad_(False)
        self.eval()                                         # dropout in the classifier must be off
        self.ident = (f"{type(classifier).__name__} penultimate features, imagenet_normalize={imagenet_normalize}, "
                      f"weights sha256 {runs.state_hash(classifier.state_dict())[:16]}")

    def train(self, mode: bool = True):
        return super().train(False)                         # always eval, as for Inception

    def forward(self, x: torch.Tensor):
        if self.imagenet_normalize:
            x = normalize_imagenet(x)                       # [-1,1] -> ImageNet mean/std
        c = self.classifier
        h = self.pre(torch.flatten(c.avgpool(c.features(x)), 1))  # (B, F) after the last hidden layer
        return h, self.post(self.last(h)).softmax(-1)              # (B, F), (B, C)


def semantic_features_from_checkpoint(path):
    """The small classifier of `train.py --stage classifier` (a checkpoint or run) -> SemanticFeatures over it."""
    net, ckpt = runs.load_classifier(path, "--semantic-ckpt")
    # past SmallVGG16.forward's normalization (it calls .features), so it normalizes itself, as trained
    ext = SemanticFeatures(net, imagenet_normalize=True)
    ext.source = ckpt["path"]
    return ext


#### Statistics over image sets, FID
class RunningStatistics:
    """Mean and covariance of features as float64 sums on their device (MPS: the CPU), in constant memory
    (50k x 2048 features would be 800 MB), and with is_n (the images to come) their Inception Score in
    min(10, is_n) splits. update(feats (B, F), probs (B, C)); result() -> dict(mu, sigma, n[, inception_score])."""

    def __init__(self, is_n: int | None = None):
        self.n, self.sum_f, self.sum_ff = 0, None, None
        self.is_sums = InceptionScoreSums(is_n, min(10, is_n)) if is_n else None

    def update(self, feats: torch.Tensor, probs: torch.Tensor) -> None:
        feats = (feats.cpu() if feats.device.type == "mps" else feats).double()  # (B, F); MPS has no float64
        if self.sum_f is None:
            self.sum_f = torch.zeros(feats.shape[1], dtype=torch.float64, device=feats.device)
            self.sum_ff = torch.zeros(feats.shape[1], feats.shape[1], dtype=torch.float64, device=feats.device)
        self.sum_f += feats.sum(0)                          # (F,)
        self.sum_ff += feats.T @ feats                      # (F, F)
        if self.is_sums is not None:
            self.is_sums.update(probs)
        self.n += feats.shape[0]

    def result(self) -> dict:
        n = self.n
        if n < 2:
            raise ValueError(f"need at least 2 images for feature statistics, got {n}")
        mu = self.sum_f / n                                 # (F,)
        # Unbiased covariance from the sums: (sum x x^T - n mu mu^T) / (n - 1).
        sigma = (self.sum_ff - n * torch.outer(mu, mu)) / (n - 1)  # (F, F)
        out = dict(mu=mu.cpu(), sigma=sigma.cpu(), n=n)
        if self.is_sums is not None:
            out["inception_score"] = self.is_sums.result()
        return out


@torch.no_grad()
def compute_statistics(images_iter, extractor: nn.Module, device, is_n: int | None = None) -> dict:
    """`extractor` over image batches (B,3,H,W) in [-1,1] (or (images, labels) tuples), in one pass ->
    dict(mu, sigma, n), and with is_n (the number of images the iterable yields) the Inception Score."""
    extractor = extractor.to(device)
    stats = RunningStatistics(is_n)
    for x in images_iter:
        x = x[0] if isinstance(x, (tuple, list)) else x     # drop labels
        stats.update(*extractor(x.to(device)))              # (B, F), (B, C)
    return stats.result()


def fid_from_images(real_iter, fake_iter, extractor: nn.Module, device) -> float:
    """FID (or rFID, or semantic FID: it depends on `extractor`) between two image iterables."""
    a, b = (compute_statistics(images, extractor, device) for images in (real_iter, fake_iter))
    return frechet_distance(a["mu"], a["sigma"], b["mu"], b["sigma"])


@torch.no_grad()
def reconstruction_metrics(tok, images_iter, device, extractor: nn.Module | None = None, perceptual=None) -> dict:
    """One pass of a tokenizer, in eval mode, over a split (batches (B,3,H,W) in [-1, 1] or (images, labels)) ->
      l1, usage, perplexity   mean L1 of the reconstructions (clamped to [-1, 1], as images), and
                              codebook usage and perplexity over the whole split (Sec. 3.4),
      low, sem                with `perceptual` (a losses.SemanticPerceptualLoss): L_low, L_sem,
      rfid                    with `extractor`: Sec. 4's rFID, FID(reconstructions, inputs),
      n, s                    the number of images and every index grid s (n, h, w) on the CPU.
    Under torch.distributed each rank passes its share, counts and sums pooled; rFID: one process only."""
    distributed = dist.is_available() and dist.is_initialized()
    if distributed and extractor is not None:
        raise ValueError("reconstruction_metrics: rFID over several ranks is not supported; run it in one process")
    tokens = hasattr(tok, "cfg")  # the floors MeanColor and BlockAverage have no codebook, no usage
    counter, sums, n, all_s = CodeCounter(tok.cfg.K if tokens else 1), {"l1": 0.0, "low": 0.0, "sem": 0.0}, 0, []
    real, recon = RunningStatistics(), RunningStatistics()
    with eval_mode(tok):
        for x in images_iter:
            x = (x[0] if isinstance(x, (tuple, list)) else x).to(device)   # (B, 3, H, W)
            with autocast(device, "portable"):  # the same figures on every CPU
                x_hat, s, _ = tok(x)                                       # (B, 3, H, W), (B, h, w)
            x_hat = x_hat.float().clamp(-1, 1)
            # sums of per-image figures, divided by n at the end: the split mean, however batches fall
            sums["l1"] += (x_hat - x).abs().mean((1, 2, 3)).sum().item()
            if perceptual is not None:
                per = perceptual.terms(x_hat, x)                           # batch means of L_low, L_sem
                for k in ("low", "sem"):
                    sums[k] += per[k].item() * len(x)
            n += len(x)
            if tokens:
                counter.update(s)
                all_s.append(s.cpu())
            if extractor is not None:
                real.update(*extractor(x))
                recon.update(*extractor(x_hat))
    if distributed:  # usage over all ranks, figures averaged over all images
        counter.all_reduce()
        t = torch.tensor([sums["l1"], sums["low"], sums["sem"], n], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        sums, n = {"l1": t[0].item(), "low": t[1].item(), "sem": t[2].item()}, int(t[3].item())
    out = dict(l1=sums["l1"] / max(n, 1), n=n)
    if tokens:
        out.update(usage=counter.usage(), perplexity=counter.perplexity(), s=torch.cat(all_s))
    if perceptual is not None:
        out.update(low=sums["low"] / max(n, 1), sem=sums["sem"] / max(n, 1))
    if extractor is not None:
        a, b = real.result(), recon.result()
        out["rfid"] = frechet_distance(a["mu"], a["sigma"], b["mu"], b["sigma"])
    return out


#### Reference floors: what a tokenizer that learns nothing gets
# A reconstruction figure means something only beside what no learning gets on the same images
# (reference_floors): each image's mean color, the floor of floors; PatchKMeans (ours): the token grid's
# raw f x f patches quantized by Eq. 1 to K codes fitted by k-means, the tokenizer's K and grid (its bits
# per image) and no network, so that what a tokenizer does better is what its networks bought (a good
# first exercise too: Eq. 1 alone, and decode_indices shows what a code means); each f x f patch's mean
# color, unquantized, for scale. Table 5 has an offline k-means of the encoder's features (rFID 3.54).
def kmeans(points, K, seed=0, max_iters=1000, init="k-means++"):
    """Lloyd's k-means of points (n, d) float -> (centers (K, d), assignment (n,), iterations). init
    "k-means++": the first center uniformly at random, each next one drawn with probability proportional to
    its squared distance to the nearest center so far (Arthur and Vassilvitskii 2007); "random": K distinct
    points (Forgy); a (K, d) tensor: these centers (to continue a run). Then assign each point to its nearest
    center and move each center to the mean of its points until no assignment changes (or max_iters)."""
    g = torch.Generator().manual_seed(seed)
    n = len(points)
    if torch.is_tensor(init):
        centers = init.clone()                                                # (K, d)
    elif init == "random":
        centers = points[torch.randperm(n, generator=g)[:K]]                  # (K, d)
    elif init == "k-means++":
        centers = points[torch.randint(n, (1,), generator=g)]                 # (1, d)
        nearest = (points - centers).pow(2).sum(1)                            # (n,) squared distance
        for _ in range(1, K):
            pick = torch.multinomial(nearest / nearest.sum(), 1, generator=g)  # (1,) D^2 sampling
            centers = torch.cat([centers, points[pick]])                      # (k + 1, d)
            nearest = torch.minimum(nearest, (points - points[pick]).pow(2).sum(1))
    else:
        raise ValueError(f"unknown k-means init {init!r}: k-means++ or random")
    assign = None
    for it in range(1, max_iters + 1):
        # ||c||^2 - 2 p.c: the squared distance up to ||p||^2, as VectorQuantizer.distances
        new = torch.addmm(centers.pow(2).sum(1), points, centers.t(), alpha=-2.0).argmin(1)  # (n,)
        if assign is not None and torch.equal(new, assign):
            break                                                         # settled
        assign = new
        sums = torch.zeros_like(centers).index_add_(0, assign, points)     # (K, d)
        counts = torch.bincount(assign, minlength=K).unsqueeze(1)          # (K, 1)
        centers = torch.where(counts > 0, sums / counts.clamp_min(1), centers)
    return centers, assign, it


class PatchKMeans(nn.Module):
    """Encoder = cut into f x f patches, codebook = k-means of training patches, decoder = paste. A tokenizer's
    encode, decode, decode_indices and forward(x) -> (x_hat, s, losses), `cfg`; built by PatchKMeans.fit."""

    def __init__(self, image_size, f, K):
        super().__init__()
        levels = int(math.log2(f)) + 1  # f = 2^(levels - 1), as TokenizerConfig.f counts it
        self.cfg = vq.TokenizerConfig(image_size=image_size, ch_mult=(1,) * levels, nz=3 * f * f, K=K)
        self.quantizer = vq.VectorQuantizer(K, 3 * f * f, entropy_weight=0.0)

    def encode(self, x):
        return self.quantizer(F.pixel_unshuffle(x, self.cfg.f))  # each token's raw patch (B, 3 f^2, h, w)

    def decode(self, z_q):
        return F.pixel_shuffle(z_q, self.cfg.f)  # (B, 3, H, W)

    decode_indices = vq.Tokenizer.decode_indices
    forward = vq.Tokenizer.forward

    @classmethod
    def fit(cls, images, f, K, seed=0, max_iters=1000, init="k-means++"):
        """images (n, 3, H, W) in [-1, 1] -> a PatchKMeans whose codes are the k-means centers of their
        f x f patches (init: "k-means++", "random", or a PatchKMeans of the same images to continue), with
        its Lloyd iterations and mean L1 on those training patches (`train_l1`, which picks a floor)."""
        tok = cls(images.shape[-1], f, K)
        patches = F.pixel_unshuffle(images.float(), f).permute(0, 2, 3, 1).reshape(-1, 3 * f * f)  # (M, 3 f^2)
        continued = isinstance(init, PatchKMeans)  # a run continued: its start, and every iteration so far
        start = init.quantizer.codebook.weight.detach() if continued else init
        centers, _, iters = kmeans(patches, K, seed, max_iters, start)
        tok.quantizer.codebook.weight.data.copy_(centers)
        # each patch against its nearest center (Eq. 1), as the tokenizer would reconstruct it
        nearest = tok.quantizer.distances(patches).argmin(1)                 # (M,)
        tok.train_l1 = (patches - centers[nearest]).abs().mean().item()
        tok.iterations = init.iterations + iters if continued else iters
        tok.init, tok.seed = (init.init if continued else init), seed  # "k-means++" or "random"
        return tok


class MeanColor(nn.Module):
    """Each image -> its own per-channel mean color; no tokens (s is None)."""

    def forward(self, x):
        return x.mean((2, 3), keepdim=True).expand_as(x), None, {}   # (B, 3, H, W)


class BlockAverage(nn.Module):
    """Each f x f patch -> its mean color, unquantized; no tokens (s is None)."""

    def __init__(self, f: int):
        super().__init__()
        self.f = f

    def forward(self, x):
        blocks = F.avg_pool2d(x, self.f)                            # (B, 3, h, w)
        return F.interpolate(blocks, scale_factor=self.f, mode="nearest"), None, {}   # (B, 3, H, W)


# The floor must be the strongest k-means: Lloyd's local optima differ by start, and a long run can
# overfit the training patches where a short one does not: the lowest training L1 of all is kept.
FLOOR_STARTS = [(init, seed) for init in ("k-means++", "random") for seed in range(8)]
FLOOR_ITERS = (40, 1000)  # each start after 40 Lloyd iterations, and run on to convergence (a few hundred)


def floor_tokenizers(train_ds, K: int, f: int, n_fit: int = 5000, starts=FLOOR_STARTS, log=print) -> dict:
    """{"mean color": MeanColor, "k-means": PatchKMeans, "block average": BlockAverage}, k-means fitted on
    the first n_fit images of train_ds, the best training L1 of `starts` ((init, seed) each, FLOOR_ITERS)."""
    n_fit = min(n_fit, len(train_ds))
    fit_images = torch.stack([train_ds[i][0] for i in range(n_fit)])  # (n_fit, 3, H, W)
    best, t0 = None, time.time()
    for i, (init, seed) in enumerate(starts, 1):
        short = PatchKMeans.fit(fit_images, f, K, seed, FLOOR_ITERS[0], init)
        settled = (short if short.iterations < FLOOR_ITERS[0] else  # settled already; else on from there
                   PatchKMeans.fit(fit_images, f, K, seed, FLOOR_ITERS[1] - short.iterations, short))
        best = min((tok for tok in (best, short, settled) if tok is not None), key=lambda tok: tok.train_l1)
        if log:
            log(f"k-means floor {i}/{len(starts)}: {init} seed {seed}, train L1 {short.train_l1:.4f} after "
                f"{short.iterations} Lloyd iterations, {settled.train_l1:.4f} after {settled.iterations} (best "
                f"{best.train_l1:.4f}, {best.iterations} iterations) | {time.time() - t0:.0f}s", flush=True)
    return {"mean color": MeanColor(), "k-means": best, "block average": BlockAverage(f)}


def reference_floors(train_ds, val_ds, K: int, f: int, device, extractor: nn.Module | None = None,
                     n_fit: int = 5000, starts=FLOOR_STARTS, batch_size: int = 250, log=print) -> dict:
    """The three floors' reconstruction_metrics on val_ds, by name (k-means's with iterations, start, train L1)."""
    floors = floor_tokenizers(train_ds, K, f, n_fit, starts, log)
    out = {}
    for name, tok in floors.items():
        batches = torch.utils.data.DataLoader(val_ds, batch_size=batch_size)
        out[name] = reconstruction_metrics(tok.to(device), batches, device, extractor=extractor)
        out[name].pop("s", None)
    km = floors["k-means"]
    out["k-means"].update(iterations=km.iterations, init=km.init, seed=km.seed, train_l1=km.train_l1)
    return out


#### Image files, datasets and reference statistics on disk
# A statistics file: np.savez of these arrays. `extractor` is the extractor's `ident`: FIDs across
# two extractors mean nothing, so a file is only used with the extractor that made it.
STATS_KEYS = ("mu", "sigma", "n", "extractor", "image_size", "source", "files_sha256")
REF_CACHE_DIR = os.path.join("runs", "ref_stats")  # computed reference statistics, unless --ref-stats-out


def load_images_npz(path, n=None):
    """A sample dump: .npz with `images` uint8 (M,H,W,3) -> that array (first n); UserError if malformed."""
    if not os.path.isfile(path):
        raise UserError(f"sample file {path} does not exist")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as e:
        raise UserError(f"cannot read {path} as .npz ({type(e).__name__}: {e})") from None
    if "images" not in npz.files:
        hint = " (a statistics file: pass it as --ref)" if "mu" in npz.files else ""
        raise UserError(f"{path} has no 'images' array (found keys {npz.files}){hint}")
    images = npz["images"]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise UserError(f"{path}: 'images' must be (M,H,W,3) uint8, found shape {images.shape} dtype {images.dtype}")
    images = images[:n]
    if len(images) == 0:
        raise UserError(f"{path} holds no images")
    return images


def iterate_batches(images, batch_size):
    """uint8 (M,H,W,3) -> float batches (B,3,H,W) in [-1,1]."""
    for i in range(0, len(images), batch_size):
        yield torch.from_numpy(images[i:i + batch_size]).permute(0, 3, 1, 2).float() / 127.5 - 1


class ImageFiles:
    """uint8 images (M, H, W, 3) on disk, a file in memory at a time: a .npz with `images`, or a sample folder
    of sample.py. count: the images used (the first n); size: (H, W); batches(B) -> (B, 3, H, W) in [-1, 1]."""

    def __init__(self, path, n=None, what="--samples"):
        self.path, self.first = path, None
        if os.path.isdir(path):
            manifest = pictures.read_sample_manifest(path)
            if manifest is None:
                raise UserError(f"{what} {path}: a folder without {pictures.SAMPLE_MANIFEST} is not a sample "
                                "folder (write one with `python sample.py --out DIR`)")
            size = manifest["chunk_size"]
            have = min(manifest["n"], pictures.chunks_done(path, manifest) * size)  # complete chunks only
            self.count = manifest["n"] if n is None else min(n, manifest["n"])
            if have < self.count:
                raise UserError(f"{what} {path} holds {have} of its {manifest['n']} images: finish it "
                                f"with the sample.py command that made it, or pass --n {have} or fewer")
            self.files = [pictures.chunk_path(path, c) for c in range(pictures.num_chunks(self.count, size))]
            self.size = tuple(manifest["image_size"])
        else:  # one file: read (and checked) now, kept for the pass over it
            self.first = load_images_npz(path, n)           # (M, H, W, 3)
            self.files, self.count, self.size = [path], len(self.first), tuple(self.first.shape[1:3])

    def arrays(self):
        """The images, a file at a time, `count` in all: uint8 (M, H, W, 3) arrays."""
        left = self.count
        for f in self.files:
            images = self.first if self.first is not None else load_images_npz(f)[:left]  # (M, H, W, 3)
            if tuple(images.shape[1:3]) != self.size:
                raise UserError(f"{f} holds {images.shape[1]}x{images.shape[2]} images, the folder's "
                                f"manifest says {self.size[0]}x{self.size[1]}")
            left -= len(images)
            yield images

    def labels(self):
        """The class each image was asked for (count,) from the files' `labels`; None when a file has none."""
        found = []
        for f in self.files:
            with np.load(f, allow_pickle=False) as npz:
                if "labels" not in npz.files:
                    return None
                found.append(npz["labels"])
        return torch.from_numpy(np.concatenate(found)[: self.count]).long()

    def batches(self, batch_size):
        for images in self.arrays():
            yield from iterate_batches(images, batch_size)  # (B, 3, H, W) in [-1, 1]


def save_statistics(path, stats, extractor_ident, image_size, source, files_sha256=""):
    """Reference statistics -> a small .npz (mu, sigma: 32 MB at F = 2048), written all or nothing."""
    arrays = dict(mu=stats["mu"].numpy(), sigma=stats["sigma"].numpy(), n=np.int64(stats["n"]),
                  extractor=np.str_(extractor_ident), image_size=np.asarray(image_size, dtype=np.int64),
                  source=np.str_(source), files_sha256=np.str_(files_sha256))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_statistics(path):
    """A file of save_statistics -> dict of STATS_KEYS (mu, sigma float64 tensors); UserError for any other."""
    try:
        npz = np.load(path, allow_pickle=False)
        missing = [k for k in STATS_KEYS if k not in npz.files]
        if missing:
            raise UserError(f"{path} is not a statistics file (missing {', '.join(missing)})")
        out = {k: npz[k] for k in STATS_KEYS}
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} as a statistics file ({type(e).__name__}: {e})") from None
    return dict(mu=torch.from_numpy(out["mu"]), sigma=torch.from_numpy(out["sigma"]), n=int(out["n"]),
                extractor=str(out["extractor"]), image_size=tuple(int(v) for v in out["image_size"]),
                source=str(out["source"]), files_sha256=str(out["files_sha256"]))


class Reference:
    """What --ref names, opened and checked before any network is built, of one `kind`: "stats", a statistics
    file, used as it is; "images", a .npz of images or a sample folder, features computed each time; "dataset",
    an image folder (as train.py reads it) or `shapes`: features computed once and cached (`cache`), reused
    while extractor, image size, --ref-n and the folder's list of files stay the same."""

    def __init__(self, args, size):
        ref, split = args.ref, args.ref_split
        self.arg, self.cache, self.source, self.files_sha256 = ref, args.ref_stats_out, os.path.abspath(ref), ""
        npz_file = os.path.isfile(ref) and ref.endswith(".npz")
        if npz_file and "mu" in np.load(ref, allow_pickle=False).files:
            self.kind, self.stats = "stats", load_statistics(ref)
            self.size = self.stats["image_size"]
        elif npz_file or os.path.isdir(ref) and pictures.read_sample_manifest(ref) is not None:
            self.kind, self.images = "images", ImageFiles(ref, args.n, "--ref")
            self.size = self.images.size
        elif ref == "shapes" or os.path.isdir(ref):
            self.kind = "dataset"
            image_size = args.image_size or (size[0] if size else None)
            if image_size is None:
                raise UserError(f"--ref {ref} without --samples: pass --image-size (the samples' H = W)")
            self.size = (image_size, image_size)
            if ref == "shapes" and not os.path.isdir(ref):  # the built-in dataset at its defaults
                split = split or "train"
                self.dataset = data.build_dataset("shapes", split, image_size)
                self.source, label = f"shapes {split}", f"shapes-{split}"
            else:
                # DATA/train and DATA/val (ImageNet layout): one split; any other folder: every image under it
                root, label = ref, os.path.basename(os.path.abspath(ref))
                if os.path.isdir(os.path.join(ref, "train")) and os.path.isdir(os.path.join(ref, "val")):
                    split = split or "train"
                    root, label = os.path.join(ref, split), f"{label}-{split}"
                elif split:
                    raise UserError(f"--ref-split {split}: {ref} has no train/ and val/ folders, so every "
                                    "image under it is the reference; drop --ref-split or point --ref at the split")
                self.dataset = data.ImageFolderDataset(root, image_size, args.skip_bad_images, flag="--ref")
                self.source = os.path.abspath(root)
                # the sorted file list: a cache is reused only for the same images
                rel = "\n".join(os.path.relpath(f, root) for f in self.dataset.files)
                self.files_sha256 = hashlib.sha256(rel.encode()).hexdigest()
            if args.ref_n is not None and args.ref_n < len(self.dataset):
                # a random subset, the same every time: a folder is sorted by class, its start is not a sample
                keep = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(0))[: args.ref_n]
                self.dataset = data.Subset(self.dataset, sorted(keep.tolist()))
            self.label = f"{label}-{image_size}px" + (f"-n{args.ref_n}" if args.ref_n is not None else "")
        else:
            raise UserError(f"--ref {ref}: no such file or folder (give a .npz of images or statistics, "
                            "a sample folder, an image folder, or `shapes`)")
        if size is not None and tuple(self.size) != tuple(size):
            raise UserError(f"the samples are {size[0]}x{size[1]} images, --ref {ref} {self.size[0]}x{self.size[1]}: "
                            "compare sets of one size")

    def statistics(self, extractor, device, batch_size, workers):
        """dict(mu, sigma, n) of the reference in the extractor's features; prints where they came from."""
        if self.kind == "stats":
            if self.stats["extractor"] != extractor.ident:
                raise UserError(f"{self.arg} holds statistics made with [{self.stats['extractor']}], but this run "
                                f"uses [{extractor.ident}]: FIDs across extractors mean nothing; recompute them "
                                "from the images (--ref DATA) with this extractor")
            return self.stats
        if self.kind == "images":
            batches = self.images.batches(batch_size)
        else:
            if self.cache is None:  # one file per dataset, image size, --ref-n and extractor
                key = hashlib.sha256(f"{self.source}|{self.label}|{extractor.ident}".encode()).hexdigest()[:12]
                self.cache = os.path.join(REF_CACHE_DIR, f"{self.label}-{key}.npz")
            if os.path.isfile(self.cache):
                cached = load_statistics(self.cache)
                if (cached["extractor"] == extractor.ident and cached["image_size"] == tuple(self.size)
                        and cached["files_sha256"] == self.files_sha256 and cached["n"] == len(self.dataset)):
                    print(f"reference statistics of {self.source} ({cached['n']} images) from the cache {self.cache}")
                    return cached
                print(f"{self.cache} was made from other images or with another extractor: recomputing it")
            batches = torch.utils.data.DataLoader(self.dataset, batch_size=batch_size, num_workers=workers)
        stats = compute_statistics(batches, extractor, device)
        if self.cache:  # a dataset's always, a set of images' with --ref-stats-out
            save_statistics(self.cache, stats, extractor.ident, self.size, self.source, self.files_sha256)
            print(f"reference statistics of {self.source} ({stats['n']} images) -> {self.cache}")
        return stats


#### Validation figures of the training stages
@torch.no_grad()
def evaluate_tokenizer(model, perceptual, ds, proc, batch_size=128):
    """Over the full validation split (each rank its share, pooled over ranks): L1, L_low,
    L_sem, codebook usage and perplexity -> ({"val_l1", ...}, indices s (M, h, w))."""
    idx = range(proc.rank, len(ds), proc.world)                          # this rank's share
    images = (torch.stack([ds[j][0] for j in idx[i:i + batch_size]]) for i in range(0, len(idx), batch_size))
    m = reconstruction_metrics(unwrap(model), images, proc.device, perceptual=perceptual)
    return {f"val_{k}": m[k] for k in ("l1", "low", "sem", "usage", "perplexity") if k in m}, m["s"]


def collapse_warning(usage, threshold):
    """Codebook collapse: say so in the log line when val usage falls below --collapse-warn."""
    # Table 2: VQGAN uses 42-44% of its 1024 codes, SeQ-GAN 100%; low usage = dead codes
    if usage < threshold:
        return {"WARNING": f"codebook usage {usage:.0%} < {threshold:.0%}: codebook collapse? raise --entropy-weight"}
    return {}


def log_line(terms, counter, world, skipped=None):
    """A tokenizer step's log line: every term (this rank's batch means) and the share of the K
    codes used since the last line (pooled over the ranks); `skipped`: unreadable images so far."""
    if world > 1:
        counter.all_reduce()
    line = {k: v.item() for k, v in terms.items()} | {"usage": counter.usage()}
    return line if skipped is None else {**line, "skipped": skipped}


def token_check(before, s, world, rank=0):
    """What phase 2's promise (Fig. 7: encoder and codebook frozen, so every image keeps its tokens) needs,
    taken before phase 2 and kept in every checkpoint so that a resumed run checks too: the val figures
    `before` and a hash of the val indices s (M, h, w), each rank's share (so the same world size at the end)."""
    if rank == 0:
        print("before phase 2: " + " ".join(f"{k} {v:.4f}" for k, v in before.items()))
    return {"before": before, "indices_hash": runs.state_hash({"s": s}), "world": world}


def check_tokens_unchanged(check, after, s, world, logger, step):
    """At the end of phase 2: are the val indices s (M, h, w) those of `check` (expected: True)? Printed, logged."""
    if check["world"] != world:  # each rank hashed its own share: another world cannot compare
        return
    same = runs.state_hash({"s": s}) == check["indices_hash"]  # encoder and codebook frozen
    print(f"phase 2: token indices of all {len(s)} val images unchanged: {same}")
    print("after phase 2:  " + " ".join(f"{k} {v:.4f}" for k, v in after.items()))
    logger.log(step, {"indices_unchanged": same, **{f"before_{k}": v for k, v in check["before"].items()}}, line=False)


def classifier_accuracy(net, ds, device, batch_size=256):
    """Top-1 accuracy on a whole split, in eval mode (BatchNorm running statistics, no dropout)."""
    correct = 0
    with eval_mode(net):
        for i in range(0, len(ds), batch_size):
            # straight from the dataset: no DataLoader, no flips
            x, y = zip(*(ds[j] for j in range(i, min(i + batch_size, len(ds)))))
            correct += (net(torch.stack(x).to(device)).argmax(1).cpu() == torch.stack(y)).sum().item()
    return correct / len(ds)


@torch.no_grad()
def shape_color_accuracy(net, images, labels, device, batch_size=250):
    """Whether images (M, 3, H, W) in [-1, 1], or batches of them, show their class labels (M,), in a classifier
    of the built-in dataset's 32 classes (class = color family x 8 + shape) -> {"shape": share whose predicted
    class mod 8 is the label's, "color": the same with // 8, "per_shape": {shape name: its share}}."""
    batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images
    with eval_mode(net):
        predicted = torch.cat([net(x.to(device)).argmax(1).cpu() for x in batches])  # (M,) of 32 classes
    n_shapes = len(data.SHAPES)
    shape_ok = predicted % n_shapes == labels % n_shapes                   # (M,) the shape, whatever its color
    color_ok = predicted // n_shapes == labels // n_shapes                 # (M,) the color family
    per_shape = {name: shape_ok[labels % n_shapes == k].float().mean().item()
                 for k, name in enumerate(data.SHAPES) if (labels % n_shapes == k).any()}
    return {"shape": shape_ok.float().mean().item(), "color": color_ok.float().mean().item(), "per_shape": per_shape}


def shape_report(acc, what):
    """A shape_color_accuracy dict -> one line: the shares, then each shape's."""
    shapes = ", ".join(f"{k} {100 * v:.0f}%" for k, v in acc["per_shape"].items())
    return f"{what}: shape {100 * acc['shape']:.1f}%, color family {100 * acc['color']:.1f}%  ({shapes})"


def tokens_without_context(s, K, n, seed):
    """n token grids (n, h, w), every token drawn on its own from the frequencies of the tokens in s
    (B, h, w): a token model that learned the counts and no context (the floor of a generator's figures)."""
    freq = torch.bincount(s.flatten(), minlength=K).float()
    draws = torch.multinomial(freq, n * s[0].numel(), replacement=True, generator=torch.Generator().manual_seed(seed))
    return draws.view(n, *s.shape[1:])


def tokens_by_class_and_position(s, y, K, seed):
    """One token grid per grid of s (B, h, w), every token drawn on its own from the tokens found at
    its position in the grids of its class (y (B,)): a model that knows each class's layout, token
    by token, and nothing of how neighbours fit together (the strongest floor we have of shape)."""
    B, N = len(s), s[0].numel()
    counts = torch.zeros(int(y.max()) + 1, N, K)                       # (C, N, K)
    counts.index_put_((y[:, None].expand(B, N), torch.arange(N).expand(B, N), s.flatten(1)),
                      torch.ones(B, N), accumulate=True)
    probs = counts[y].view(B * N, K)                                   # (B*N, K): each grid's class
    return torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed)).view(s.shape)


@torch.no_grad()
def shape_references(tok, net, val, device, seed=0, batch_size=250):
    """What a token model's samples are measured against, shape_color_accuracy in net on val's (x, label):
    the real images; their reconstructions (the ceiling: a perfect token model draws real token grids); the
    floors tokens_without_context (with the labels of val) and tokens_by_class_and_position. -> {name: acc}."""
    x = torch.stack([val[i][0] for i in range(len(val))])                # (n, 3, H, W)
    y = torch.stack([torch.as_tensor(val[i][1]) for i in range(len(val))])  # (n,)
    x_hat, s = [], []
    with eval_mode(tok):
        for xb in x.split(batch_size):
            out, idx, _ = tok(xb.to(device))
            x_hat.append(out.float().clamp(-1, 1).cpu())
            s.append(idx.cpu())
        s = torch.cat(s)                                                 # (n, h, w)
        drawn = {"tokens without context (floor)": tokens_without_context(s, tok.cfg.K, len(x), seed),
                 "tokens per class and position (floor)": tokens_by_class_and_position(s, y, tok.cfg.K, seed)}
        drawn = {k: torch.cat([tok.decode_indices(c.to(device)).float().clamp(-1, 1).cpu()
                               for c in g.split(batch_size)]) for k, g in drawn.items()}
    return {"real images": shape_color_accuracy(net, x, y, device),
            "reconstructions (ceiling)": shape_color_accuracy(net, torch.cat(x_hat), y, device),
            **{k: shape_color_accuracy(net, images, y, device) for k, images in drawn.items()}}


@torch.no_grad()
def transformer_metrics(model, kind, seqs, labels, device, batch_size=256):
    """Val loss and top-1 token accuracy of a transformer over token sequences seqs (M, N) with labels
    (M,). AR (kind "ar"): one teacher-forced pass, the GT context of Sec. 3.2 (GT-context token accuracy);
    NAR: on masked positions, masks drawn from a fixed seed. -> {"val_loss", "val_ce", "val_acc"}."""
    # a private generator: the same val masks at every evaluation, the training RNG stream untouched
    g = torch.Generator().manual_seed(1234)
    loss_sum, ce_sum, correct, count = 0.0, 0.0, 0, 0
    with eval_mode(model):
        for i in range(0, len(seqs), batch_size):
            s, y = seqs[i:i + batch_size].to(device).long(), labels[i:i + batch_size].to(device)  # (B, N), (B,)
            y = y if model.config.num_classes > 0 else None  # unconditional: the null class
            if kind == "ar":
                logits, loss = model(s, y, targets=s)            # (B, N, K); every position predicted
                mask = torch.ones_like(s, dtype=torch.bool)
            else:  # masks drawn as in training, on the CPU; True = masked, the loss on those only
                mask = transformer.random_mask(*s.shape, generator=g)[0].to(device)
                logits, loss = model(s, y, targets=s, mask=mask)
            loss_sum += loss.item() * len(s)                      # the loss is a batch mean: weight by B
            ce_sum += F.cross_entropy(logits[mask].float(), s[mask], reduction="sum").item()
            correct += ((logits.argmax(-1) == s) & mask).sum().item()
            count += mask.sum().item()
    # val_ce: per predicted token, without MaskGIT's label smoothing, so that it compares across recipes
    return {"val_loss": loss_sum / len(seqs), "val_ce": ce_sum / max(count, 1), "val_acc": correct / max(count, 1)}


#### CLI
def make_extractor(args):
    try:
        if args.semantic_ckpt:
            return semantic_features_from_checkpoint(args.semantic_ckpt)
        return InceptionFeatures(weights_path=args.inception_weights)
    except RuntimeError as e:  # no weights, or unreadable ones: one line, as every user error
        raise UserError(str(e)) from None


def small_sample_warning(n, dim, what):
    if n <= dim or n < 1000:  # the covariances of a few images: a number, not a measure of quality
        print(f"  warning: from {n} images (features of {dim} dimensions) this {what} is dominated by its "
              "small-sample bias, whatever the images look like; compare such figures only at equal n, with "
              "thousands of images (50,000 is the usual count for papers)")


def reconstruction_main(args):
    """--tokenizer: rFID, L1, usage and perplexity over the validation split it was trained on."""
    device = pick_device(args.device)
    tok, ckpt, _ = runs.load_tokenizer(args.tokenizer, device)
    shape_net = None
    if args.shape_classifier is not None:  # checked before minutes of rFID
        if data.recorded_data(ckpt)["data"] != "shapes":
            raise UserError("--shape-classifier measures the built-in dataset's shapes: "
                            f"{ckpt['path']} was trained on other images")
        shape_net = load_shape_classifier(args.shape_classifier, tok.cfg.image_size).to(device)
    ds = data.load_data("val", **data.recorded_data(ckpt))
    if args.n is not None:
        ds = torch.utils.data.Subset(ds, range(min(args.n, len(ds))))
    if len(ds) < 2:
        raise UserError(f"the validation split of {ckpt['path']} has {len(ds)} image(s); rFID needs 2 or more")
    extractor = make_extractor(args)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size)
    m = reconstruction_metrics(tok, loader, device, extractor=extractor)
    name = extractor.fid_name.replace("FID", "rFID", 1)
    print(f"{ckpt['path']}: {name}: {m['rfid']:.3f}, L1 {m['l1']:.4f}, codebook usage {100 * m['usage']:.1f}%, "
          f"perplexity {m['perplexity']:.1f} of {tok.cfg.K}  (val n={m['n']})")
    small_sample_warning(m["n"], extractor.dim, "rFID")
    if args.floors:  # the references on the same images, in the same features
        train = data.load_data("train", **data.recorded_data(ckpt))
        floors = reference_floors(train, ds, tok.cfg.K, tok.cfg.f, device, extractor, batch_size=args.batch_size)
        print(f"references (K={tok.cfg.K}, {tok.cfg.latent_size}x{tok.cfg.latent_size} tokens; k-means fitted on "
              f"{min(5000, len(train))} training images, {floors['k-means']['iterations']} Lloyd iterations):")
        for ref_name, f in floors.items():
            print(f"  {ref_name:<14} rFID {f['rfid']:.3f}, L1 {f['l1']:.4f}"
                  + (f", usage {100 * f['usage']:.1f}%, perplexity {f['perplexity']:.1f}" if "usage" in f else ""))
        m["floors"] = floors
    if shape_net is not None:  # what a token model's samples are measured against
        refs = shape_references(tok, shape_net, ds, device)
        for what, acc in refs.items():
            print(shape_report(acc, f"  {what}"))
        m["shape"] = refs
    return m


def samples_main(args):
    """--samples and/or --ref: FID against the reference, IS of the samples, in one pass each."""
    # Open and check every input first, so a bad file fails fast, before the network is built.
    fake = ImageFiles(args.samples, args.n) if args.samples else None
    ref = Reference(args, fake.size if fake else None) if args.ref else None
    extractor = make_extractor(args)
    device = pick_device(args.device)
    if args.workers is None:  # a folder of image files needs workers to decode it; the rest is cheap to read
        folder = ref is not None and ref.kind == "dataset" and args.ref != "shapes"
        args.workers = min(8, os.cpu_count() or 1) if folder else 0
    out = {}
    try:
        if ref is not None:
            real = ref.statistics(extractor, device, args.batch_size, args.workers)
            out.update(ref_n=real["n"], ref_stats=ref.cache)
        if fake is not None:
            stats = compute_statistics(fake.batches(args.batch_size), extractor, device, is_n=fake.count)
            out.update(n=stats["n"], inception_score=stats["inception_score"])
    except ValueError as e:                                              # e.g. a single image
        raise UserError(str(e)) from None
    if ref is not None and fake is not None:
        out["fid"] = frechet_distance(real["mu"], real["sigma"], stats["mu"], stats["sigma"])
        print(f"{extractor.fid_name}: {out['fid']:.3f}  (samples n={stats['n']}, ref n={real['n']})")
        small_sample_warning(min(stats["n"], real["n"]), len(real["mu"]), "FID")
    if fake is not None:  # IS is a property of the samples alone; 10 splits as usual, fewer for tiny sets
        is_mean, is_std = stats["inception_score"]
        print(f"{extractor.is_name}: {is_mean:.3f} +- {is_std:.3f}  (samples n={stats['n']})")
    return out


def load_shape_classifier(path, image_size):
    """--shape-classifier: a classifier of the built-in dataset's classes, trained on image_size px images."""
    net, ckpt = runs.load_classifier(path, "--shape-classifier")
    if ckpt["config"]["num_classes"] != len(data.CLASSES):
        raise UserError(f"--shape-classifier {path} tells {ckpt['config']['num_classes']} classes apart, not the "
                        f"built-in dataset's {len(data.CLASSES)}: pass one of `python train.py --stage classifier`")
    trained_on = data.recorded_data(ckpt)["image_size"]
    if trained_on != image_size:
        raise UserError(f"--shape-classifier {path} was trained on {trained_on} px images, these are {image_size} px: "
                        "shape accuracy needs a classifier of the images' own size")
    return net


def shape_main(args):
    """--samples with --shape-classifier: whether the samples show the class each was asked for."""
    device = pick_device(args.device)
    fake = ImageFiles(args.samples, args.n)
    labels = fake.labels()
    if labels is None:
        raise UserError(f"--samples {args.samples} holds no labels: shape accuracy needs the class each image was "
                        "asked for, which sample.py stores for a class-conditional model")
    net = load_shape_classifier(args.shape_classifier, fake.size[0]).to(device)
    acc = shape_color_accuracy(net, fake.batches(args.batch_size), labels, device)  # a file at a time
    print(shape_report(acc, f"{args.samples} (n={len(labels)}, in {args.shape_classifier})"))
    return acc


def get_parser():
    p = Parser(description="FID and IS of samples against a reference, or a tokenizer's rFID on its val split")
    p.add_argument("--samples", help="a .npz with images uint8 (M,H,W,3), or a sample folder of `sample.py --out DIR`")
    p.add_argument("--ref", help="statistics .npz, or images (.npz, folder, `shapes`); alone: its statistics, cached")
    p.add_argument("--ref-split", choices=["train", "val"], help="the split of `shapes` or DATA/{train,val} (train)")
    p.add_argument("--ref-n", type=at_least(1), help="for a dataset --ref: N images drawn at random (seed 0), not all")
    p.add_argument("--ref-stats-out", help=f"--ref's statistics file (default: in {REF_CACHE_DIR})")
    p.add_argument("--image-size", type=at_least(1), help="H = W of a dataset --ref (default: the samples' size)")
    p.add_argument("--skip-bad-images", action="store_true", help="image folders: skip unreadable files")
    p.add_argument("--tokenizer", help="instead of --samples: a tokenizer checkpoint or run; rFID over its val split")
    p.add_argument("--floors", action="store_true", help="with --tokenizer: also the references a tokenizer must beat")
    p.add_argument("--shape-classifier", help="do --samples show their class? (with --tokenizer: its references)")
    p.add_argument("--inception-weights", help="local state_dict of torchvision's inception_v3 (else the hub cache)")
    p.add_argument("--semantic-ckpt", help="offline: this small classifier's features instead of Inception's")
    p.add_argument("--n", type=at_least(1), help="the first N images of --samples (and of an image --ref) or the split")
    p.add_argument("--batch-size", type=at_least(1), default=50)
    p.add_argument("--workers", type=int, help="DataLoader workers for an image-folder --ref (default min(8, CPUs))")
    p.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:1, mps")
    return p


@one_line_errors
def main(argv=None):
    """Command line entry (argv None: sys.argv) -> a dict of the figures; user mistakes end in one line."""
    args = get_parser().parse_args(argv)
    if args.floors and args.tokenizer is None:
        raise UserError("--floors goes with --tokenizer PATH: the references are measured on its validation split")
    if args.tokenizer is not None and (args.samples or args.ref):
        raise UserError("pass either --samples (FID/IS of samples, with --ref) or --tokenizer PATH (rFID)")
    if args.tokenizer is not None:
        return reconstruction_main(args)
    if args.samples is None and args.ref is None:
        raise UserError("pass either --samples FILE.npz|DIR (FID/IS of samples) or --tokenizer PATH "
                        "(rFID); --ref alone computes reference statistics")
    shapes = args.shape_classifier is not None and args.samples is not None
    if shapes and args.ref is None:
        return shape_main(args)  # the shapes alone: no FID, no extractor
    out = samples_main(args)
    if shapes:
        out["shape"] = shape_main(args)
    return out


if __name__ == "__main__":
    main()
