"""
The objective of SeQ-GAN's tokenizer: the semantic-enhanced perceptual loss (Eq. 3), the whole
training loss (Eq. 2 + Eq. 3 + the GAN), and the GAN itself.

Paper: Gu et al., CVPR 2024, Sec. 3.3.2 (Eq. 3) and Sec. 3.1 ("following VQGAN [15] to use
adversarial loss and perceptual loss"). In the paper's order, this file holds
  - the VGG16 layers Eq. 3 reads, and VGG16Features: relu1_2 ... relu5_3 and the logits,
  - Eq. 3: L_per^alpha = alpha * L_sem + (1 - alpha) * L_low (SemanticPerceptualLoss),
  - the tokenizer's objective (tokenizer_objective): L1 + w_per * L_per^alpha + the VQ terms
    of Eq. 2 and Sec. 3.4 (computed in vq.py) + lambda * L_G once the GAN is on (gan_on),
  - the GAN "following VQGAN": PatchGAN discriminator, hinge losses, adaptive weight lambda,
    and the discriminator's own loss,
  - where the semantic network comes from: torchvision's ImageNet VGG16 (our reading of the
    paper's "pre-trained VGG"), or a small VGG16-shaped classifier of a dataset's own labels (ours).

L_per is the paper's plain per-layer MSE, equal weights (not VQGAN's learned LPIPS weights).
Deviations are marked where they happen, as "Deviation N" of docs/deviations.md.

Shape legend: B batch, H x W image, C_l / H_l / W_l channels and size of VGG layer l,
K_cls number of classes of the semantic network.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


#### The VGG16 layers that Eq. 3 reads (Sec. 3.3.2)
# Indices of the ReLUs inside VGG16's `features` (torchvision's layout; the small classifier
# at the end of this file uses the same cfg shape, so the same indices name the same layers).
VGG16_LAYERS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29}
LOW_LAYERS = ["relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"]  # L_low^per
SEM_LAYERS = ["relu5_3", "logit"]  # L_sem^per: shallow layers removed, logits added

# ImageNet statistics: every VGG here sees images normalized with them
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_imagenet(x):
    """[-1, 1] images -> ImageNet mean/std normalization, as every VGG here was trained."""
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / std


class VGG16Features(nn.Module):
    """Frozen VGG16 (ImageNet or the small classifier) -> dict of the named activations.

    forward(x) with x (B, 3, H, W) in [-1, 1] returns
      {"relu1_2": (B, C_1, H, W), ..., "relu5_3": (B, C_5, H/16, W/16), "logit": (B, K_cls)}.
    """

    def __init__(self, net: nn.Module, scales: dict | None = None):
        super().__init__()
        self.net = net
        self.net.eval()  # dropout in the classifier must be off, or the logits would be noisy
        for p in self.net.parameters():
            p.requires_grad_(False)  # a fixed feature extractor: its weights never change
        # {layer: its unit} or None: with scales, each feature divided by its unit (Deviation 16)
        self.scales = scales

    def train(self, mode: bool = True):
        # model.train() on the parent must not switch the VGG back to training mode
        return super().train(False)

    def forward(self, x):
        # fp32 even under bf16 autocast (ours, Deviation 2): Eq. 3 compares the features of two images that
        # become nearly equal as training goes on, and bf16 keeps 8 bits of mantissa, so its
        # rounding (~0.4% of every activation) would be of the size of the differences it measures
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = normalize_imagenet(x.float())
            names = {i: name for name, i in VGG16_LAYERS.items()}
            out = {}
            for i, layer in enumerate(self.net.features):  # ends with the max-pool after relu5_3
                h = layer(h)  # (B, C_l, H_l, W_l)
                if i in names:
                    out[names[i]] = h  # safe to keep: a max-pool, never an in-place ReLU, comes next
            # torchvision's adaptive 7x7 pool takes any size: logits at the training resolution (Deviation 20)
            h = torch.flatten(self.net.avgpool(h), 1)  # (B, C_5 * pooled size)
            out["logit"] = self.net.classifier(h)  # (B, K_cls): the features before softmax
        if self.scales is not None:
            out = {name: y / self.scales[name] for name, y in out.items()}  # each layer in its unit (Deviation 16)
        return out


def gradient_units(features, batches):
    """{layer: its unit} for Eq. 3 in `tiny` (ours, Deviation 16), from real images (batches of
    (B, 3, H, W) in [-1, 1]): each layer is measured in the unit that makes its term of Eq. 3 pull
    the image as hard as the L1 term of Eq. 2 does, at the reconstruction that learns nothing,
    each image's mean color x_ref:

        unit_l = sqrt( ||grad_{x_ref} MSE_l(x_ref, x)|| / ||grad_{x_ref} ||x_ref - x||_1|| )

    (MSE_l is (1 / H_l W_l C_l) ||y_l(x_ref) - y_l(x)||^2 on the raw features; dividing the
    features by unit_l divides the term and its gradient by unit_l^2.) The gradient, not the size
    of the term: Adam follows whichever term pulls hardest. Computed once, in fp32, before training,
    with no randomness, so every rank and every resume computes the same units."""
    saved, features.scales = features.scales, None  # the raw features
    sq = {}  # {layer: squared gradient norm so far}, "l1" for the L1 term's
    batches = list(batches)
    total = sum(len(x) for x in batches)
    with torch.autocast(device_type=batches[0].device.type, enabled=False):
        for x in batches:
            x = x.float()
            x_ref = x.mean((2, 3), keepdim=True).expand_as(x).clone().requires_grad_(True)  # (B, 3, H, W)
            with torch.no_grad():
                y = features(x)
            y_ref = features(x_ref)
            w = len(x) / total  # this batch's share of the means over all images
            # Eq. 3's per-layer MSE (layer_mse below: a mean over elements, images of one size)
            terms = {"l1": (x_ref - x).abs().mean() * w,
                     **{name: (y_ref[name] - y[name]).pow(2).mean() * w for name in y}}
            for name, term in terms.items():
                g = torch.autograd.grad(term, x_ref, retain_graph=True)[0]  # (B, 3, H, W)
                sq[name] = sq.get(name, 0.0) + g.double().pow(2).sum().item()
    features.scales = saved
    return {name: (sq[name] / sq["l1"]) ** 0.25 for name in sq if name != "l1"}


def feature_scales(features, ds, device, n=1000, batch_size=250):
    """The units of Eq. 3's layers (gradient_units) from the first n images of ds, (image, label) pairs."""
    n = min(n, len(ds))
    batches = (torch.stack([ds[j][0] for j in range(i, min(i + batch_size, n))]).to(device)
               for i in range(0, n, batch_size))
    return gradient_units(features, batches)


#### Semantic-enhanced perceptual loss (Eq. 3)
def layer_mse(y_hat, y):
    """(1 / (H_l W_l C_l)) ||y_hat_l - y_l||^2, averaged over the batch."""
    # >>> exercise 2: the semantic-enhanced perceptual loss
    return (y_hat - y).pow(2).flatten(1).mean(1).mean()
    # <<< exercise 2


def check_alpha(alpha):
    """The semantic ratio of Eq. 3 lies in [0, 1]; ValueError otherwise."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"the semantic ratio alpha of Eq. 3 must be in [0, 1], got {alpha}")


class SemanticPerceptualLoss(nn.Module):
    """L_per^alpha = alpha * L_sem + (1 - alpha) * L_low (Eq. 3); alpha is the semantic ratio.

    L_low sums the per-layer MSE over relu1_2, relu2_2, relu3_3, relu4_3, relu5_3;
    L_sem over relu5_3 and the logits (Sec. 3.3.2).
    """

    def __init__(self, features: VGG16Features, alpha: float = 1.0):
        super().__init__()
        check_alpha(alpha)
        self.features, self.alpha = features, alpha

    def terms(self, x_hat, x):
        """Eq. 3 and its two parts: {"per": L_per^alpha, "low": L_low, "sem": L_sem}; the objective
        trains on "per" and logs all three."""
        # >>> exercise 2: the semantic-enhanced perceptual loss
        # x_hat's features keep their graph (Eq. 3 trains the decoder through them); x's need none
        f_hat = self.features(x_hat)
        with torch.no_grad():  # the target's features need no graph
            f = self.features(x)
        low = sum(layer_mse(f_hat[l], f[l]) for l in LOW_LAYERS)
        sem = sum(layer_mse(f_hat[l], f[l]) for l in SEM_LAYERS)
        per = self.alpha * sem + (1 - self.alpha) * low  # Eq. 3
        return {"per": per, "low": low, "sem": sem}
        # <<< exercise 2

    def forward(self, x_hat, x):
        return self.terms(x_hat, x)["per"]  # Eq. 3


#### The tokenizer's objective: Eq. 2 + Eq. 3 + the GAN, in one place
def gan_on(step, disc_start, disc_weight):
    """The GAN's gate, for the generator's term and for D's step alike: from step `disc_start`
    on (ours, as in VQGAN: reconstruction first, then realism), and never at weight 0."""
    return step >= disc_start and disc_weight > 0


def tokenizer_objective(x, x_hat, vq_terms, perceptual=None, perceptual_weight=1.0, disc=None,
                        last_layer=None, disc_weight=0.0, lam=None):
    """Everything the tokenizer minimizes for one batch -> (total, terms for the log line).

        L = ||x - x_hat||_1                               (Eq. 2, the reconstruction term)
          + w_per * L_per^alpha                           (Eq. 3; w_per = 1 in the paper)
          + codebook + beta * commit - gamma * H(D_bar)   (Eq. 2, Sec. 3.4: vq_terms, weighted
                                                           in vq.py, with our entropy sign)
          + lambda * disc_weight * L_G                    (VQGAN; only when disc is given)

    x, x_hat (B, 3, H, W); vq_terms the quantizer's dict; perceptual a SemanticPerceptualLoss, or
    None (--semantic none, ours); disc the discriminator when gan_on() says the GAN is on, else None;
    last_layer the decoder's last weight; lam an adaptive weight (times disc_weight) from an earlier
    step, to reuse (`tiny` recomputes it every few steps only: ours, Deviation 14)."""
    l1 = (x - x_hat).abs().mean()  # Eq. 2, first term, as a mean over elements (Deviation 23)
    # {"per": Eq. 3, "low", "sem"} (the VGG runs in fp32); both parts logged, whatever alpha is
    per = perceptual.terms(x_hat, x) if perceptual is not None else {"per": l1.new_zeros(())}
    rec = l1 + perceptual_weight * per["per"]  # w_per = 1 in every preset: Eq. 2 adds L_per unweighted
    # L_vq' of Eq. 2 + Sec. 3.4: beta on commit and -gamma on the entropy come applied from vq.py
    total = rec + vq_terms["codebook"] + vq_terms["commit"] + vq_terms["entropy"]
    terms = {"l1": l1, **per, **vq_terms}
    if disc is not None:
        g = hinge_g_loss(disc(x_hat))  # -E[D(x_hat)]; reaches G through D
        # VQGAN's adaptive weight lambda = ||grad L_rec|| / ||grad L_G|| at the decoder's last
        # layer, times disc_weight: keeps the GAN term on the scale of the reconstruction terms
        if lam is None:
            lam = adaptive_weight(rec, g, last_layer) * disc_weight
        total = total + lam * g  # lambda is detached: a plain number
        terms.update(g=g, lam=lam)
    return total, terms


#### The GAN, "following VQGAN" (Sec. 3.1)
def disc_norm(kind, channels):
    """The discriminator's normalization: "batch" (VQGAN's BatchNorm) or "none"."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown discriminator norm {kind!r}: batch or none")


class Discriminator(nn.Module):
    """PatchGAN (pix2pix / VQGAN): (B, 3, H, W) -> (B, 1, H', W'), a real/fake logit per receptive-field
    patch; n_layers stride-2 convs, BatchNorm as in VQGAN (norm="batch"; "none" is ours, Deviation 9)."""

    def __init__(self, ndf=64, n_layers=3, norm="batch"):
        super().__init__()
        layers = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = ndf
        for n in range(1, n_layers + 1):
            c_out = ndf * min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last hidden conv keeps the resolution
            # a conv before a norm needs no bias; without a norm it keeps one
            layers += [nn.Conv2d(c, c_out, 4, stride, 1, bias=norm == "none"), disc_norm(norm, c_out),
                       nn.LeakyReLU(0.2, True)]
            c = c_out
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))  # one logit per patch
        self.main = nn.Sequential(*layers)
        for m in self.modules():  # DCGAN init, as in VQGAN
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.main(x)  # (B, 1, H', W')


def hinge_d_loss(logits_real, logits_fake):
    """Discriminator hinge loss: E[relu(1 - D(x))] + E[relu(1 + D(x_hat))], halved."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake):
    """Generator hinge loss: -E[D(x_hat)]."""
    return -logits_fake.mean()


def r1_penalty(logits_real, x_real):
    """R1 gradient penalty (Mescheder et al. 2018; MaskGIT trains its VQGAN's D with it):
    E_x ||grad_x D(x)||^2 on real images, the patch logits summed per image. It keeps D smooth
    around the data, so that D cannot separate real from fake by a margin that no longer moves.
    x_real must require grad before D sees it; the graph is kept so the penalty trains D."""
    grad = torch.autograd.grad(logits_real.sum(), x_real, create_graph=True)[0]  # (B, 3, H, W)
    return grad.pow(2).flatten(1).sum(1).mean()


def adaptive_weight(rec_loss, g_loss, last_layer, max_weight=1e4):
    """VQGAN's lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_GAN|| + 1e-4), G_L the last layer: it
    balances the GAN term against the reconstruction terms; detached, so it is a number."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


def discriminator_loss(disc, x, x_hat, r1_weight=0.0):
    """D's objective on real x and *detached* x_hat, so that no gradient reaches G ->
    (total, hinge loss). total = hinge loss + r1_weight * R1 penalty on the real images
    (r1_weight > 0: ours for `tiny`, as MaskGIT's D)."""
    x = x.detach().requires_grad_(r1_weight > 0)  # a leaf: R1 differentiates D's output w.r.t. it
    # real and fake through D separately (VQGAN does the same; D's BatchNorm sees each batch alone)
    logits_real = disc(x)
    d_loss = hinge_d_loss(logits_real, disc(x_hat.detach()))  # x_hat detached: the hinge loss trains D only
    total = d_loss + r1_weight * r1_penalty(logits_real, x) if r1_weight > 0 else d_loss
    return total, d_loss


#### Where the semantic network comes from
def vgg16_layers(widths, batch_norm=False, pools=(True,) * 5):
    """VGG16's conv stack with configurable widths: 2-2-3-3-3 convs, each stage followed by a 2x2
    max-pool (pools[i] True, VGG16's layout) or by an identity that keeps the resolution.

    With batch_norm, each conv is a (conv, BatchNorm) pair in *one* slot of the Sequential, and
    an identity takes a missing pool's slot, so the ReLUs keep torchvision's VGG16 indices
    (VGG16_LAYERS) and the same names apply.
    """
    layers, c_in = [], 3
    for width, n_conv, pool in zip(widths, (2, 2, 3, 3, 3), pools):
        for _ in range(n_conv):
            conv = nn.Conv2d(c_in, width, 3, padding=1)
            layers += [nn.Sequential(conv, nn.BatchNorm2d(width)) if batch_norm else conv,
                       nn.ReLU(inplace=True)]
            c_in = width
        layers.append(nn.MaxPool2d(2, 2) if pool else nn.Identity())
    return nn.Sequential(*layers)


# The tiny preset's semantic network (ours, Deviation 3): VGG16's 13 convs in five stages, 16 and
# 32 channels wide (VGG16: 64 to 512; cheap, as Eq. 3 runs it twice a step), a hidden layer of 256
# (VGG16: 4096), max-pools only where relu5_3 lands on the token grid; `--stage classifier` trains it.
SMALL_VGG16 = {"widths": [16, 32, 32, 32, 32], "hidden": 256, "dropout": 0.0}


def pools_for_token_grid(f):
    """Which of VGG16's five stages end in a max-pool, so that relu5_3 lies on the token grid.

    The geometry of the paper's setting (the paper does not point it out; ours to keep at small
    scale, Deviation 15): VGG16's relu5_3 at 256 px is 16 x 16, four pools in, the size of the
    16 x 16 token grid of f = 16, so L_sem asks for one feature vector per token. A small
    classifier at 32 px with f = 4 keeps that ratio with log2(f) = 2 pools before relu5_3
    (relu5_3 8 x 8, the token grid) and identities in the other slots; the pool after relu5_3
    stays, as in VGG16 (it feeds only the logits)."""
    before = int(math.log2(f))
    return [i < before for i in range(4)] + [True]


class SmallVGG16(nn.Module):
    """A narrow VGG16 (same 13 convs and layer names) classifying a dataset's own labels.

    Ours: the stand-in semantic network of the `tiny` preset, trained by
    `python train.py --stage classifier`. Same attribute names as torchvision's VGG
    (features, avgpool, classifier), so VGG16Features reads both the same way.
    """

    def __init__(self, num_classes, widths=(16, 32, 64, 128, 128), hidden=256, pools=(True,) * 5, dropout=0.5):
        super().__init__()
        # BatchNorm (ours): a plain 13-conv VGG trained from scratch in minutes stays stuck at
        # chance; BN makes it train. VGG16Features runs it in eval mode (running statistics).
        self.features = vgg16_layers(widths, batch_norm=True, pools=pools)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # any input size -> (B, C_5, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(widths[-1], hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                        nn.Linear(hidden, num_classes))

    def forward(self, x):
        h = self.avgpool(self.features(normalize_imagenet(x)))  # (B, C_5, 1, 1)
        return self.classifier(torch.flatten(h, 1))  # (B, K_cls)


def imagenet_vgg16(weights_path=None):
    """torchvision's VGG16 with ImageNet weights: a local state_dict file, or the weights API (one
    download into torch's hub cache; offline with no cached copy, the error gives both ways out)."""
    if weights_path is not None:
        net = torchvision.models.vgg16(weights=None)
        try:
            net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        except (OSError, RuntimeError, KeyError) as e:
            raise RuntimeError(
                f"cannot load VGG16 weights from {weights_path!r} ({type(e).__name__}: "
                f"{str(e).splitlines()[0]}); the file must be a state_dict of torchvision.models.vgg16"
            ) from None
        return net
    try:
        return torchvision.models.vgg16(weights=torchvision.models.VGG16_Weights.IMAGENET1K_V1)
    except Exception as e:  # URLError, SSL errors, HTTP errors, a truncated cache file, ...
        raise RuntimeError(
            f"cannot get the ImageNet VGG16 weights ({type(e).__name__}). Either connect to the internet "
            f"once so torchvision caches them in {torch.hub.get_dir()}/checkpoints, or download "
            "vgg16-397923af.pth elsewhere and pass --vgg-weights FILE"
        ) from None
