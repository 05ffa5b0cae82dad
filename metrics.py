"""
Evaluation metrics of SeQ-GAN (Sec. 4): codebook usage, FID, rFID, IS, and their feature extractors.

What is here, bottom-up:
  1. codebook health: how many of the K codes the tokenizer uses (the "Usage" column of the
     paper's tables, Sec. 3.4) and the perplexity exp(H) of the empirical code distribution,
     plus `CodeCounter`, which counts over a whole validation split (and across ranks);
  2. the Frechet distance between two Gaussians, the core of FID and rFID:
         FID = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2})
     computed in float64 with torch alone (no scipy; see `frechet_distance` for the symmetric
     form used), and the Inception Score IS = exp(E_x KL(p(y|x) || p(y)));
  3. two feature extractors with one contract, forward(x) -> (features (B, F), probs (B, C)):
     `InceptionFeatures` (torchvision's ImageNet Inception-v3, for FID / rFID / IS) and
     `SemanticFeatures` (any VGG-shaped classifier, for an offline "semantic FID");
  4. `compute_statistics` / `fid_from_images` over iterables of image batches,
     `reconstruction_metrics` (rFID, L1, usage and perplexity of a tokenizer over a whole split)
     and a small CLI:
         python metrics.py --samples samples.npz --ref ref.npz          # FID and IS (Inception)
         python metrics.py --samples s.npz --ref r.npz --semantic-ckpt runs/tiny-classifier
         python metrics.py --tokenizer runs/tiny-tokenizer --semantic-ckpt runs/tiny-classifier  # rFID

Deliberate differences from the paper's numbers:
  - The paper reports FID/IS with the TF-Inception network of the standard evaluation suites. We
    use torchvision's Inception-v3 ImageNet weights (ported from TF, but a different graph and
    resize), so our figures are NOT comparable to the paper's tables; every printed figure names
    its extractor (`fid_name`, `is_name`) so that nobody mixes them up.
  - Offline, with no Inception weights, a small classifier trained on the dataset's own labels
    gives a "semantic FID". It only ranks models against each other on that dataset.
  - Random Inception weights exist for tests only (`allow_random=True`); nothing ever falls back
    to them silently.

Shape letters: B batch, 3 x H x W image in [-1, 1], F feature width (2048 for Inception),
C classes (1000 for ImageNet), K codebook size, M images in a sample file.
"""

import argparse
import math
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import data
import runs
from losses import normalize_imagenet
from machine import UserError, autocast, eval_mode, pick_device

# Every printed figure carries one of these names (see the docstring above).
INCEPTION_NAME = "torchvision Inception-v3, not the TF-Inception of the paper's tables"
SEMANTIC_NAME = "small-classifier features; not comparable to Inception FID"
# Inception-v3 was trained on 299 x 299 crops; every image is resized to that before it.
INCEPTION_SIZE = 299


#################################################################################
#                           Codebook usage (Sec. 3.4)                           #
#################################################################################

def code_counts(s: torch.Tensor, K: int) -> torch.Tensor:
    """How often each of the K codes occurs in the index tensor s (any shape). -> (K,) long."""
    s = s.reshape(-1).long()                                # (n,) flat indices
    if s.numel() and (s.min() < 0 or s.max() >= K):
        raise ValueError(f"code indices must lie in [0, {K}), found [{s.min()}, {s.max()}]")
    return torch.bincount(s, minlength=K)                   # (K,)


def _usage_from_counts(counts):
    # The paper's "Usage": fraction of codes chosen at least once.
    return (counts > 0).sum().item() / counts.numel()


def _perplexity_from_counts(counts):
    # p_k = n_k / n, H = -sum_k p_k ln p_k (0 ln 0 = 0 via xlogy), perplexity = exp(H).
    # It reads as "the number of equally used codes": K when uniform, 1 for a single code.
    n = counts.sum().item()
    if n == 0:
        return float("nan")                                 # no tokens seen: undefined
    p = counts.double() / n                                 # (K,)
    H = -torch.special.xlogy(p, p).sum().item()
    return math.exp(H)


def codebook_usage(s: torch.Tensor, K: int) -> float:
    """Fraction of the K codes that occur at least once in s (any shape, long)."""
    return _usage_from_counts(code_counts(s, K))


def perplexity(s: torch.Tensor, K: int) -> float:
    """exp of the entropy (natural log) of the empirical code distribution of s."""
    return _perplexity_from_counts(code_counts(s, K))


class CodeCounter:
    """
    Code counts accumulated over a whole split (not a rolling window): update() on every batch
    of indices, then usage() / perplexity(). Under torch.distributed call all_reduce() once,
    at the end, so every rank reports the counts of the full split.
    """

    def __init__(self, K: int):
        self.K = K
        self.counts = torch.zeros(K, dtype=torch.long)      # (K,) kept on the CPU

    def update(self, s: torch.Tensor) -> None:
        self.counts += code_counts(s, self.K).cpu()

    def usage(self) -> float:
        return _usage_from_counts(self.counts)

    def perplexity(self) -> float:
        return _perplexity_from_counts(self.counts)

    def all_reduce(self) -> None:
        """Sum the counts over all ranks (no-op without torch.distributed). Call it once."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        # NCCL only reduces CUDA tensors; gloo reduces CPU ones.
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        counts = self.counts.to(device)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        self.counts = counts.cpu()


#################################################################################
#                        Frechet distance and Inception Score                   #
#################################################################################

def _as_float64(a):
    # numpy arrays and tensors alike, as float64 CPU tensors.
    return torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a).detach().to("cpu", torch.float64)


def _sqrt_psd(S):
    # Square root of a symmetric PSD matrix: S = V diag(l) V^T -> V diag(sqrt l) V^T.
    # Rounding leaves tiny negative eigenvalues (rank-deficient S, e.g. fewer samples than
    # features); they are clamped to 0 instead of turning into NaN.
    l, V = torch.linalg.eigh(S)                             # (F,), (F, F)
    return (V * l.clamp(min=0).sqrt()) @ V.T                # (F, F)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """
    Frechet distance between N(mu1, S1) and N(mu2, S2):
        d^2 = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2}).
    The usual code calls scipy's sqrtm on the non-symmetric S1 S2, which can return complex
    noise. We use the symmetric form instead: S1 S2 is similar to A = S1^{1/2} S2 S1^{1/2}
    (symmetric PSD), so Tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(A)), two eigh calls in float64.
    Accepts numpy arrays or tensors; returns a Python float.
    """
    mu1, mu2 = _as_float64(mu1), _as_float64(mu2)           # (F,)
    S1, S2 = _as_float64(sigma1), _as_float64(sigma2)       # (F, F)
    if mu1.shape != mu2.shape or S1.shape != S2.shape or S1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"shape mismatch: mu {tuple(mu1.shape)}, {tuple(mu2.shape)}; "
                         f"sigma {tuple(S1.shape)}, {tuple(S2.shape)}")
    root1 = _sqrt_psd(S1)                                   # (F, F) S1^{1/2}
    A = root1 @ S2 @ root1                                  # (F, F) S1^{1/2} S2 S1^{1/2}
    A = (A + A.T) / 2                                       # exact symmetry for eigvalsh
    tr_covmean = torch.linalg.eigvalsh(A).clamp(min=0).sqrt().sum()
    d2 = (mu1 - mu2).square().sum() + S1.trace() + S2.trace() - 2 * tr_covmean
    # d2 is a squared distance; rounding can leave -1e-12 for identical statistics.
    return max(d2.item(), 0.0)


def feature_statistics(feats):
    """(n, F) features -> (mu (F,), sigma (F, F)) in float64; unbiased, like np.cov(rowvar=False)."""
    x = _as_float64(feats)                                  # (n, F)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need (n, F) features with n >= 2, found shape {tuple(x.shape)}")
    mu = x.mean(0)                                          # (F,)
    xc = x - mu                                             # (n, F)
    sigma = xc.T @ xc / (x.shape[0] - 1)                    # (F, F)
    return mu, sigma


def inception_score(probs, splits: int = 10):
    """
    IS = exp(E_x KL(p(y|x) || p(y))), p(y) the mean of p(y|x) over a split; computed on `splits`
    equal chunks as in the original code. probs: (n, C) softmax outputs. -> (mean, std) over splits.
    """
    p = _as_float64(probs)                                  # (n, C)
    n = p.shape[0]
    if n < splits:
        raise ValueError(f"inception_score needs at least {splits} samples (one per split), found {n}")
    scores = []
    for chunk in torch.tensor_split(p, splits):             # (~n/splits, C) each
        p_y = chunk.mean(0, keepdim=True)                   # (1, C) marginal over the chunk
        # KL per sample, with 0 ln 0 = 0 (xlogy), so one-hot probs are exact.
        kl = (torch.special.xlogy(chunk, chunk) - torch.special.xlogy(chunk, p_y)).sum(1)
        scores.append(math.exp(kl.mean().item()))
    return float(np.mean(scores)), float(np.std(scores))


#################################################################################
#                              Feature extractors                               #
#################################################################################

def _weights_error(reason):
    # One line that says what went wrong and both ways out.
    cache = os.path.join(torch.hub.get_dir(), "checkpoints")
    return RuntimeError(
        f"Inception-v3 ImageNet weights unavailable ({reason}). Either connect to the internet once "
        f"so torchvision downloads them into the torch hub cache ({cache}), or pass "
        f"--inception-weights FILE (a state_dict of torchvision's inception_v3).")


def _load_inception_state_dict(weights, weights_path):
    # A local file wins over the torch hub cache.
    if weights_path is not None:
        if not os.path.isfile(weights_path):
            raise _weights_error(f"no file at {weights_path}")
        try:
            return torch.load(weights_path, map_location="cpu", weights_only=True)
        except Exception as e:                              # corrupt file, wrong format, ...
            raise _weights_error(f"cannot read {weights_path}: {type(e).__name__}: {e}") from e
    # torchvision's weights API: cached under torch.hub.get_dir(), downloaded once otherwise.
    # (Same call as weights.get_state_dict(), spelled out so the cache path is visible.)
    w = torchvision.models.Inception_V3_Weights.verify(weights)
    try:
        return torch.hub.load_state_dict_from_url(w.url, map_location="cpu", progress=True, check_hash=True)
    except Exception as e:                                  # offline (URLError), bad hash, ...
        raise _weights_error(f"{w} not in the cache and download failed: {type(e).__name__}: {e}") from e


class InceptionFeatures(nn.Module):
    """
    torchvision's Inception-v3 as an FID/IS feature extractor.
    forward(x (B,3,H,W) in [-1,1], any H, W) -> (pool features (B, 2048), softmax probs (B, 1000)).

    weights: a torchvision `Inception_V3_Weights` (or its name); weights_path: a local state_dict
    file, used instead. Raises RuntimeError when the weights cannot be had.
    TEST ONLY: InceptionFeatures(weights=None, allow_random=True) has random weights; its numbers
    mean nothing.
    """

    fid_name = f"FID ({INCEPTION_NAME})"
    is_name = f"IS ({INCEPTION_NAME})"

    def __init__(self, weights="IMAGENET1K_V1", weights_path: str | None = None, allow_random: bool = False):
        super().__init__()
        # transform_input=False: the ported TF weights expect (x01 - 0.5) / 0.5, which is exactly
        # our [-1, 1] input, so no normalization at all. (torchvision's transform_input=True would
        # expect ImageNet-mean/std input and convert it to that.)
        # aux_logits=False: the auxiliary head only matters for training; its weights are dropped.
        net = torchvision.models.Inception3(num_classes=1000, aux_logits=False, transform_input=False,
                                            init_weights=False)
        if weights is None and weights_path is None:
            if not allow_random:
                raise RuntimeError("InceptionFeatures(weights=None) gives random weights, which are for "
                                   "tests only; pass allow_random=True if that is really meant")
        else:
            state = _load_inception_state_dict(weights, weights_path)
            state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
            try:
                net.load_state_dict(state)
            except RuntimeError as e:                       # wrong architecture / keys
                first = str(e).splitlines()[0]
                raise _weights_error(f"not an inception_v3 state_dict: {first}") from e
        # Split the head off: net(x) now ends at the 2048-d pool features, self.fc gives logits.
        self.fc = net.fc
        net.fc = nn.Identity()
        self.net = net
        self.requires_grad_(False)
        self.eval()                                         # batch norm and dropout must be off

    def train(self, mode: bool = True):
        # A feature extractor is always in eval mode, even inside a model that calls .train().
        return super().train(False)

    def forward(self, x: torch.Tensor):
        # Bilinear resize to 299 without antialiasing (as pytorch-fid does); no crop.
        x = F.interpolate(x.float(), size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear",
                          align_corners=False)              # (B, 3, 299, 299)
        feats = self.net(x)                                 # (B, 2048) average-pooled Mixed_7c
        probs = self.fc(feats).softmax(-1)                  # (B, 1000)
        return feats, probs


class SemanticFeatures(nn.Module):
    """
    Features of a VGG-shaped classifier (parts .features, .avgpool, .classifier, like torchvision's
    vgg16 and the project's small classifier) for the offline "semantic FID".
    forward(x (B,3,H,W) in [-1,1]) -> (penultimate features = input of the last Linear (B, F),
    softmax probs (B, C)). imagenet_normalize: map [-1,1] to ImageNet mean/std first, as the VGG
    of the perceptual loss expects; set False for a classifier trained on raw [-1,1] input.
    """

    fid_name = f"semantic FID ({SEMANTIC_NAME})"
    is_name = f"semantic IS ({SEMANTIC_NAME})"

    def __init__(self, classifier: nn.Module, imagenet_normalize: bool = True):
        super().__init__()
        self.classifier = classifier
        # Split the head at its last Linear: everything before it yields the features.
        head = classifier.classifier
        layers = [head] if isinstance(head, nn.Linear) else list(head.children())
        last = max(i for i, m in enumerate(layers) if isinstance(m, nn.Linear))
        self.pre, self.last, self.post = layers[:last], layers[last], layers[last + 1:]
        self.imagenet_normalize = imagenet_normalize
        self.requires_grad_(False)
        self.eval()                                         # dropout in the classifier must be off

    def train(self, mode: bool = True):
        return super().train(False)                         # always eval, as for Inception

    def forward(self, x: torch.Tensor):
        if self.imagenet_normalize:
            x = normalize_imagenet(x)                       # [-1,1] -> ImageNet mean/std
        c = self.classifier
        h = torch.flatten(c.avgpool(c.features(x)), 1)      # (B, 512*7*7) for VGG16
        for m in self.pre:
            h = m(h)                                        # (B, F) after the last hidden layer
        logits = self.last(h)                               # (B, C)
        for m in self.post:
            logits = m(logits)
        return h, logits.softmax(-1)


def semantic_features_from_checkpoint(path):
    """The small classifier of `python train.py --stage classifier` (a checkpoint or its run
    folder) -> SemanticFeatures over it: the offline extractor of the "semantic FID".
    Raises UserError (one line) for a missing or wrong file."""
    net, ckpt = runs.load_classifier(path, "--semantic-ckpt")
    # SmallVGG16.forward normalizes its input, but SemanticFeatures calls .features directly, so
    # it normalizes itself (imagenet_normalize=True), exactly as the classifier was trained.
    ext = SemanticFeatures(net, imagenet_normalize=True)
    ext.source = ckpt["path"]
    return ext


#################################################################################
#                      Statistics over image sets, FID                          #
#################################################################################

class RunningStatistics:
    """
    Mean and covariance of features accumulated batch by batch as running sums in float64, so
    memory does not grow with the number of images (50k x 2048 features would be 800 MB).
    update(feats (B, F), probs (B, C)); result() -> dict(mu (F,), sigma (F,F) float64,
    probs (n, C) float32 on CPU, n).
    """

    def __init__(self):
        self.n, self.sum_f, self.sum_ff, self.probs = 0, None, None, []

    def update(self, feats: torch.Tensor, probs: torch.Tensor) -> None:
        feats = feats.double()
        if self.sum_f is None:
            F_ = feats.shape[1]
            self.sum_f = torch.zeros(F_, dtype=torch.float64, device=feats.device)
            self.sum_ff = torch.zeros(F_, F_, dtype=torch.float64, device=feats.device)
        self.sum_f += feats.sum(0)                          # (F,)
        self.sum_ff += feats.T @ feats                      # (F, F)
        self.probs.append(probs.float().cpu())
        self.n += feats.shape[0]

    def result(self) -> dict:
        n = self.n
        if n < 2:
            raise ValueError(f"need at least 2 images for feature statistics, got {n}")
        mu = self.sum_f / n                                 # (F,)
        # Unbiased covariance from the sums: (sum x x^T - n mu mu^T) / (n - 1).
        sigma = (self.sum_ff - n * torch.outer(mu, mu)) / (n - 1)  # (F, F)
        return dict(mu=mu.cpu(), sigma=sigma.cpu(), probs=torch.cat(self.probs), n=n)


@torch.no_grad()
def compute_statistics(images_iter, extractor: nn.Module, device) -> dict:
    """
    Runs `extractor` over an iterable of image batches (B,3,H,W) in [-1,1] (or (images, labels)
    tuples) -> RunningStatistics.result(): dict(mu, sigma, probs, n).
    """
    extractor = extractor.to(device)
    stats = RunningStatistics()
    for x in images_iter:
        if isinstance(x, (tuple, list)):
            x = x[0]                                        # drop labels
        stats.update(*extractor(x.to(device)))              # (B, F), (B, C)
    return stats.result()


def fid_from_images(real_iter, fake_iter, extractor: nn.Module, device) -> float:
    """FID (or rFID, or semantic FID: it depends on `extractor`) between two image iterables."""
    a = compute_statistics(real_iter, extractor, device)
    b = compute_statistics(fake_iter, extractor, device)
    return frechet_distance(a["mu"], a["sigma"], b["mu"], b["sigma"])


@torch.no_grad()
def reconstruction_metrics(tok, images_iter, device, extractor: nn.Module | None = None, perceptual=None) -> dict:
    """
    One pass of a tokenizer over a whole split (an iterable of image batches (B,3,H,W) in
    [-1, 1], or of (images, labels) tuples), in eval mode:
      l1, usage, perplexity   mean L1 of the reconstructions (clamped to [-1, 1], as images) and
                              codebook usage and perplexity counted over the whole split (Sec. 3.4),
      low, sem                with `perceptual` (a losses.SemanticPerceptualLoss): L_low, L_sem,
      rfid                    with `extractor`: FID(reconstructions, inputs) in its feature space
                              (Sec. 4's rFID; "semantic" with SemanticFeatures),
      n, s                    the number of images and every index grid s (n, h, w) on the CPU.
    Under torch.distributed each rank passes its share; counts and sums are pooled over the
    ranks (the rFID, which needs every feature, is not: pass an extractor only in one process).
    """
    distributed = dist.is_available() and dist.is_initialized()
    if distributed and extractor is not None:
        raise ValueError("reconstruction_metrics: rFID over several ranks is not supported; run it in one process")
    counter, sums, n, all_s = CodeCounter(tok.cfg.K), {"l1": 0.0, "low": 0.0, "sem": 0.0}, 0, []
    real, recon = RunningStatistics(), RunningStatistics()
    with eval_mode(tok):
        for x in images_iter:
            x = (x[0] if isinstance(x, (tuple, list)) else x).to(device)   # (B, 3, H, W)
            with autocast(device):
                x_hat, s, _ = tok(x)                                       # (B, 3, H, W), (B, h, w)
            x_hat = x_hat.float().clamp(-1, 1)
            # sums of per-image figures, divided by n at the end: the split mean, however batches fall
            sums["l1"] += (x_hat - x).abs().mean((1, 2, 3)).sum().item()
            if perceptual is not None:
                per = perceptual.terms(x_hat, x)                           # batch means of L_low, L_sem
                sums["low"] += per["low"].item() * len(x)
                sums["sem"] += per["sem"].item() * len(x)
            n += len(x)
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
    out = dict(l1=sums["l1"] / max(n, 1), usage=counter.usage(), perplexity=counter.perplexity(), n=n, s=torch.cat(all_s))
    if perceptual is not None:
        out.update(low=sums["low"] / max(n, 1), sem=sums["sem"] / max(n, 1))
    if extractor is not None:
        a, b = real.result(), recon.result()
        out["rfid"] = frechet_distance(a["mu"], a["sigma"], b["mu"], b["sigma"])
    return out


#################################################################################
#                                       CLI                                     #
#################################################################################

def load_images_npz(path, n=None):
    """A sample dump: .npz with `images` uint8 (M,H,W,3) -> that array (first n). Errors are one line."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: sample file {path} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:
        raise SystemExit(f"error: cannot read {path} as .npz ({type(e).__name__}: {e})")
    if "images" not in data.files:
        raise SystemExit(f"error: {path} has no 'images' array (found keys {data.files})")
    images = data["images"]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise SystemExit(f"error: {path}: 'images' must be (M,H,W,3) uint8, "
                         f"found shape {images.shape} dtype {images.dtype}")
    images = images[:n] if n is not None else images
    if len(images) == 0:
        raise SystemExit(f"error: {path} holds no images")
    return images


def iterate_batches(images, batch_size):
    # uint8 (M,H,W,3) -> float batches (B,3,H,W) in [-1,1].
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i:i + batch_size]).permute(0, 3, 1, 2)  # (B, 3, H, W)
        yield x.float() / 127.5 - 1


def make_extractor(args):
    """--semantic-ckpt: the small classifier (offline); else torchvision's Inception-v3."""
    try:
        if args.semantic_ckpt:
            return semantic_features_from_checkpoint(args.semantic_ckpt)
        return InceptionFeatures(weights_path=args.inception_weights)
    except (RuntimeError, UserError) as e:
        raise SystemExit(f"error: {e}") from None


def reconstruction_main(args):
    """--tokenizer: rFID, L1, usage and perplexity over the validation split it was trained on."""
    try:
        device = pick_device(args.device)
        tok, ckpt, _ = runs.load_tokenizer(args.tokenizer, device)
        ds = data.load_data(data.data_args(ckpt), "val")
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    if args.n is not None:
        ds = torch.utils.data.Subset(ds, range(min(args.n, len(ds))))
    if len(ds) < 2:
        raise SystemExit(f"error: the validation split of {ckpt['path']} has {len(ds)} image(s); rFID needs 2 or more")
    extractor = make_extractor(args)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size)
    m = reconstruction_metrics(tok, loader, device, extractor=extractor)
    name = extractor.fid_name.replace("FID", "rFID", 1)
    print(f"{ckpt['path']}: {name}: {m['rfid']:.3f}, L1 {m['l1']:.4f}, codebook usage {100 * m['usage']:.1f}%, "
          f"perplexity {m['perplexity']:.1f} of {tok.cfg.K}  (val n={m['n']})")
    return m


def get_parser():
    p = argparse.ArgumentParser(description="FID and IS of a sample dump against a reference dump, or the rFID "
                                            "of a tokenizer on its validation split.")
    p.add_argument("--samples", default=None, help=".npz with images uint8 (M,H,W,3)")
    p.add_argument("--ref", default=None, help="reference .npz of the same form (FID); IS only without it")
    p.add_argument("--tokenizer", default=None,
                   help="instead of --samples: a tokenizer checkpoint or run; rFID over its validation split")
    p.add_argument("--inception-weights", default=None,
                   help="local state_dict of torchvision's inception_v3 (else the torch hub cache / download)")
    p.add_argument("--semantic-ckpt", default=None,
                   help="offline: features of this small classifier (runs/tiny-classifier) instead of Inception")
    p.add_argument("--n", type=int, default=None, help="use at most N images of each file (or of the split)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    return p


def main(argv=None):
    """Command line entry; argv a list of strings (None: sys.argv). User mistakes end as one-line
    SystemExit("error: ..."), without a traceback."""
    args = get_parser().parse_args(argv)
    if (args.samples is None) == (args.tokenizer is None):
        raise SystemExit("error: pass either --samples FILE.npz (FID/IS of samples) or --tokenizer PATH (rFID)")
    if args.tokenizer is not None:
        return reconstruction_main(args)

    # Check the inputs first, so a bad file fails fast, before the network is built.
    fake = load_images_npz(args.samples, args.n)
    real = load_images_npz(args.ref, args.n) if args.ref else None
    if real is not None and real.shape[1:] != fake.shape[1:]:
        raise SystemExit(f"error: {args.samples} holds {fake.shape[1]}x{fake.shape[2]} images, {args.ref} "
                         f"{real.shape[1]}x{real.shape[2]}: compare sets of one size")
    extractor = make_extractor(args)
    try:
        device = pick_device(args.device)
        fake_stats = compute_statistics(iterate_batches(fake, args.batch_size), extractor, device)
        if real is not None:
            real_stats = compute_statistics(iterate_batches(real, args.batch_size), extractor, device)
    except (ValueError, UserError) as e:                                 # e.g. a single image
        raise SystemExit(f"error: {e}") from None
    if real is not None:
        fid = frechet_distance(real_stats["mu"], real_stats["sigma"], fake_stats["mu"], fake_stats["sigma"])
        print(f"{extractor.fid_name}: {fid:.3f}  (samples n={fake_stats['n']}, ref n={real_stats['n']})")
    # 10 splits as usual, fewer for tiny sets.
    is_mean, is_std = inception_score(fake_stats["probs"], splits=min(10, fake_stats["n"]))
    print(f"{extractor.is_name}: {is_mean:.3f} +- {is_std:.3f}  (samples n={fake_stats['n']})")


if __name__ == "__main__":
    main()
