"""
The SeQ-GAN tokenizer: CNN encoder, vector quantizer with entropy penalty, and four decoders.

Paper: Gu et al., "Rethinking the Objectives of Vector-Quantized Tokenizers for Image Synthesis"
(CVPR 2024). This file implements, in the order a reader meets them in Sec. 3:
  - the convolutional building blocks and the encoder E of Sec. 3.1: the paper's "baselineVQ"
    (Sec. 3.3.1 cites VQGAN; Table 1: 54.5M parameters at 256 px), read as MaskGIT's conv-only
    VQGAN, whose count it matches (2x2 average-pool down, nearest x2 up + 3x3 conv; Deviation 4),
  - Sec. 3.1, Eq. 1: nearest-code quantization z_q = q(z_hat) = argmin_k ||z_hat_ij - z_k||,
  - Sec. 3.1, Eq. 2: the codebook and commitment terms of L_vq (beta = 0.25), straight-through
    (losses.tokenizer_objective adds Eq. 2's L1 term and the rest of the objective),
  - Sec. 3.4: the entropy penalty on the soft codebook usage D_bar, gamma = 0.01,
  - Sec. 3.3.1: regional and dilated window attention (after HiT, Zhao et al. 2021),
  - the decoder G in the four variants the paper trains (DECODERS):
        "conv"          baselineVQ (Table 1) and SeQ-GAN's phase 1 (Fig. 7)       54.5M
        "conv-x2"       + two more ResBlocks per level ("+Conv x2", Table 1)       70.0M
        "attention-x2"  + a regional and a dilated attention block with a
                        feed-forward per level ("+Attention x2", Table 1)         61.4M
        "seqgan"        + a regional and a dilated attention block per level, q/k/v/out
                        only: SeQ-GAN's phase-2 decoder (Sec. 3.4, Tables 3, 4)   57.9M
    (the paper's counts; ours are 54.52M, 69.86M, 61.36M and 57.94M).

Deviations from the paper are marked where they happen, as "Deviation N" of docs/deviations.md;
the first a reader meets is the entropy term's sign (Deviation 1, VectorQuantizer.forward). D of
Sec. 3.4 is the *squared* L2 distance here, with a temperature tau (1 by default).

Shape legend:
  B batch, C channels, H x W image, h x w latent grid (h = H/f), N = h*w tokens,
  nz code dimension, K codebook size, M = B*h*w feature vectors, b window side of the
  attention blocks, G groups (windows or offsets), L positions per group.
"""

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


#### Convolutional building blocks (MaskGIT's VQGAN)
def Normalize(channels: int) -> nn.GroupNorm:
    # GroupNorm(32) as in VQGAN; tiny models with fewer channels use as many groups as divide C.
    groups = math.gcd(32, channels)
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    """Norm -> SiLU -> conv3x3, twice, plus a skip: MaskGIT's VQGAN block.

    The two 3x3 convs have no bias (MaskGIT's choice; each feeds a GroupNorm next, which has its
    own shift). When the width changes, MaskGIT's 1x1 "shortcut" conv reads the block's
    *output* h, not its input x: out = h + W h. We keep that, since it is the layout whose
    count is the paper's (54.5M; a 1x1 conv from the input instead gives 54.43M).
    """

    def __init__(self, c_in, c_out):
        super().__init__()
        self.norm1 = Normalize(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm2 = Normalize(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.skip = nn.Conv2d(c_out, c_out, 1, bias=False) if c_in != c_out else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = self.conv2(F.silu(self.norm2(h)))  # (B, C_out, H, W)
        if self.skip is None:
            return x + h  # (B, C_out, H, W)
        return h + self.skip(h)  # (B, C_out, H, W): MaskGIT's shortcut, from h (see above)


class Downsample(nn.Module):
    """Halve the resolution with 2x2 average pooling (MaskGIT's VQGAN: no parameters)."""

    def forward(self, x):
        return F.avg_pool2d(x, 2)  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour x2, then a 3x3 conv (MaskGIT's VQGAN)."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)


#### Encoder (Sec. 3.1)
class Encoder(nn.Module):
    """E: image x (B, 3, H, W) -> feature z_hat (B, nz, H/f, W/f), f = 2^(levels-1).

    conv_in, then per level num_res_blocks ResBlocks and (but the last) a 2x2 average pool,
    then num_res_blocks middle ResBlocks, GroupNorm-SiLU and a 1x1 conv to nz channels."""

    def __init__(self, ch, ch_mult, num_res_blocks, nz, in_channels=3):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1, bias=False)  # no bias (MaskGIT)
        self.down = nn.ModuleList()
        c = ch
        for i, mult in enumerate(ch_mult):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(num_res_blocks):
                level.block.append(ResBlock(c, ch * mult))
                c = ch * mult
            level.downsample = Downsample() if i < len(ch_mult) - 1 else nn.Identity()
            self.down.append(level)
        # VQGAN's middle is ResBlock-Attention-ResBlock; the conv-only VQGAN drops the attention
        self.mid = nn.Sequential(*[ResBlock(c, c) for _ in range(num_res_blocks)])
        self.norm_out = Normalize(c)
        self.conv_out = nn.Conv2d(c, nz, 1)

    def forward(self, x):
        h = self.conv_in(x)  # (B, ch, H, W)
        for level in self.down:
            for block in level.block:
                h = block(h)  # (B, ch*mult, H', W')
            h = level.downsample(h)  # (B, ch*mult, H'/2, W'/2), last level unchanged
        h = self.mid(h)  # (B, C_top, h, w)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, nz, h, w)


#### Vector quantizer (Eq. 1, Eq. 2, Sec. 3.4)
def soft_usage_entropy(D, tau=1.0):
    """H(D_bar) of Sec. 3.4, from distances D (M, K) between M features and the K codes.

    P = softmax(-D / tau) over the codes is each feature's soft assignment; its mean over the M
    positions, D_bar (K,), is the soft codebook usage; H(D_bar) = -sum_k D_bar_k log D_bar_k is
    ln K when every code is used alike and 0 when one code takes everything. Any dtype (tests
    gradcheck it in float64). A dead code, far from every feature, has D_bar_k exactly 0 in fp32:
    it adds 0 to H, and value and gradient stay finite."""
    # >>> exercise 1: the vector quantizer
    P = F.softmax(-D / tau, dim=1)  # (M, K), rows sum to 1
    D_bar = P.mean(dim=0)  # (K,) soft codebook usage
    # 0 * log(0) is NaN, in the value and in the gradient: keep the log finite where D_bar is 0
    return -(D_bar * torch.log(D_bar + 1e-10)).sum()  # 1e-10: a code nobody is near has D_bar 0
    # <<< exercise 1


class VectorQuantizer(nn.Module):
    """Nearest-code quantization with straight-through gradients, VQ losses and entropy penalty.

    forward(z_hat) -> (z_q, s, losses)
      z_q    (B, nz, h, w)  quantized features; in the forward pass equal to the nearest codes,
                            in the backward pass the identity to z_hat (straight-through)
      s      (B, h, w)      code indices (long)
      losses dict of scalar tensors, weights already applied, squared norms as means over elements:
             "codebook" ||sg[z_hat] - z_q||^2            (Eq. 2, moves the codes)
             "commit"   beta * ||sg[z_q] - z_hat||^2     (Eq. 2, moves the encoder)
             "entropy"  -gamma * H(D_bar)                (Sec. 3.4, our sign: Deviation 1; moves both)
    D_bar is averaged over all M = B*h*w positions of the batch it is given, images included;
    the paper averages "along the spatial size" (Deviation 13).

    l2_codes (ours for `tiny`, Deviation 17; off at paper scale): ViT-VQGAN's l2-normalized lookup.
    Features and codes go on the unit sphere before Eq. 1, so every distance lies in [0, 4]: a code
    cannot be left behind by features that grow, and the soft usage keeps every code within reach.
    """

    def __init__(self, K, nz, beta=0.25, entropy_weight=0.01, entropy_temperature=1.0, l2_codes=False):
        super().__init__()
        self.K, self.nz = K, nz
        self.beta = beta  # commitment weight, 0.25 as in VQ-VAE / VQGAN (Sec. 3.1)
        self.gamma = entropy_weight  # gamma = 0.01 in the paper (Sec. 3.4)
        self.tau = entropy_temperature  # softmax temperature of the soft usage (ours; 1 = no scaling)
        self.l2_codes = l2_codes
        self.codebook = nn.Embedding(K, nz)
        # VQGAN's init: codes start uniformly in a small box around the origin
        self.codebook.weight.data.uniform_(-1.0 / K, 1.0 / K)

    def codes(self):
        """The codebook as Eq. 1 reads it, (K, nz): its rows, unit length with l2_codes."""
        e = self.codebook.weight
        return F.normalize(e, dim=1) if self.l2_codes else e

    def distances(self, z):
        """Squared L2 distances between features z (M, nz) and all codes, up to a constant per
        row: D_ik = ||e_k||^2 - 2 z_i.e_k = ||z_i - e_k||^2 - ||z_i||^2, shape (M, K).

        ||z_i||^2 is the same for every code k, so it changes neither the argmin of Eq. 1 nor the
        softmax of Sec. 3.4; leaving it out keeps near-tied codes from drowning in a large ||z||^2
        (with it, fp32 picks a wrong code for about 1 in 1000 random features at VQGAN's codebook
        init, K = 1024, nz = 256). One fused addmm, no (M, K, nz) difference tensor: the search
        costs about one plain matmul (bench.py).
        """
        e = self.codes()  # (K, nz)
        return torch.addmm(e.pow(2).sum(1), z, e.t(), alpha=-2.0)  # (M, K)

    def lookup(self, s):
        """Code indices s (B, h, w) -> quantized features z_q (B, nz, h, w)."""
        return F.embedding(s, self.codes()).permute(0, 3, 1, 2).contiguous()  # (B, nz, h, w)

    def forward(self, z_hat):
        B, nz, h, w = z_hat.shape
        # The quantizer always runs in fp32: under bf16 autocast the argmin would otherwise
        # flip between near-tied codes and the entropy's softmax would lose its precision.
        with torch.autocast(device_type=z_hat.device.type, enabled=False):
            z_hat = z_hat.float()
            if self.l2_codes:  # Deviation 17: every feature on the unit sphere, as every code
                z_hat = F.normalize(z_hat, dim=1)  # (B, nz, h, w)
            z = z_hat.permute(0, 2, 3, 1).reshape(-1, nz)  # (M, nz), M = B*h*w
            e = self.codes()  # (K, nz) the codebook Eq. 1 reads (unit rows with l2_codes)
            D = self.distances(z)  # (M, K), squared distances minus ||z||^2 (see distances)

            # >>> exercise 1: the vector quantizer
            # Eq. 1: every feature vector goes to its nearest code
            s = D.argmin(dim=1)  # (M,)
            z_q = e[s].view(B, h, w, nz).permute(0, 3, 1, 2)  # (B, nz, h, w)

            # Eq. 2, its squared norms as means over the elements (Deviation 5):
            # ||sg[E(x)] - z_q||^2 trains the codebook only ...
            codebook_loss = F.mse_loss(z_q, z_hat.detach())
            # ... and beta * ||sg[z_q] - E(x)||^2 (commitment) trains the encoder only.
            commit_loss = self.beta * F.mse_loss(z_hat, z_q.detach())

            # Sec. 3.4: the entropy of the soft usage softmax(-D), averaged over the M positions;
            # D depends on the features and on the codes, and the gradient reaches both (no detach)
            if self.gamma > 0:
                # Deviation 1: the paper writes +gamma*H, but a
                # smoother D_bar means *higher* entropy, so we minimize -gamma*H.
                entropy_loss = -self.gamma * soft_usage_entropy(D, self.tau)
            else:
                entropy_loss = z_hat.new_zeros(())

            # Straight-through estimator: forward uses z_q, backward copies grads to z_hat.
            z_q = z_hat + (z_q - z_hat).detach()  # (B, nz, h, w)
            # <<< exercise 1

        return z_q, s.view(B, h, w), {"codebook": codebook_loss, "commit": commit_loss, "entropy": entropy_loss}


#### Regional and dilated attention (Sec. 3.3.1, Sec. 3.4; HiT, Zhao et al. 2021)
# Cut the (h, w) grid into non-overlapping b x b windows. Every position then has two
# coordinates: which window it is in (gh, gw) and where inside its window it sits (bh, bw).
#   regional attention: to the others *in the same window* (same (gh, gw)): local detail;
#   dilated attention:  to the others *at the same offset in every window* (same (bh, bw)):
#                       a strided grid that spans the image.
# Both are plain attention over a re-grouped sequence, so F.scaled_dot_product_attention does
# the work; only the grouping differs.


def window_partition(x, b, dilated):
    """(B, C, H, W) -> (B * groups, L, C): the sequences one attention call sees.

    regional (dilated=False): groups = windows, L = b*b positions inside one window.
    dilated  (dilated=True):  groups = offsets, L = (H/b)*(W/b) positions sharing that offset.
    """
    # >>> exercise 3: regional and dilated window attention
    B, C, H, W = x.shape
    gh, gw = H // b, W // b
    x = x.view(B, C, gh, b, gw, b)  # (B, C, gh, bh, gw, bw)
    if dilated:
        x = x.permute(0, 3, 5, 2, 4, 1)  # (B, bh, bw, gh, gw, C): group by offset
        return x.reshape(B * b * b, gh * gw, C)  # (B*b*b, gh*gw, C)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, bh, bw, C): group by window
    return x.reshape(B * gh * gw, b * b, C)  # (B*gh*gw, b*b, C)
    # <<< exercise 3


def window_merge(x, b, dilated, B, H, W):
    """Inverse of window_partition: (B * groups, L, C) -> (B, C, H, W)."""
    # >>> exercise 3: regional and dilated window attention
    C = x.shape[-1]
    gh, gw = H // b, W // b
    if dilated:
        x = x.view(B, b, b, gh, gw, C)  # (B, bh, bw, gh, gw, C)
        x = x.permute(0, 5, 3, 1, 4, 2)  # (B, C, gh, bh, gw, bw)
    else:
        x = x.view(B, gh, gw, b, b, C)  # (B, gh, gw, bh, bw, C)
        x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, bh, gw, bw)
    return x.reshape(B, C, H, W)  # (B, C, H, W)
    # <<< exercise 3


class WindowAttention(nn.Module):
    """Pre-norm residual multi-head attention inside regional windows or across dilated grids.

    x + proj_out(attention(norm(x))), q, k, v and out as 1x1 projections (4C^2 parameters: the
    SeQ-GAN decoder's block). With mlp_ratio r > 0 a pre-norm feed-forward C -> rC -> C follows
    (r = 2: 8C^2 in all, the "+Attention x2" block of Table 1).
    """

    def __init__(self, channels, window, dilated, mlp_ratio=0, head_dim=64):
        super().__init__()
        self.window, self.dilated = window, dilated
        self.n_head = max(1, channels // head_dim)  # one head per 64 channels (ours)
        self.norm = Normalize(channels)
        self.qkv = nn.Linear(channels, 3 * channels)  # q, k, v projections, fused
        self.proj_out = nn.Linear(channels, channels)
        self.mlp = None
        if mlp_ratio > 0:  # HiT's feed-forward after the attention
            self.mlp = nn.Sequential(Normalize(channels), nn.Conv2d(channels, mlp_ratio * channels, 1),
                                     nn.GELU(), nn.Conv2d(mlp_ratio * channels, channels, 1))
        # Deviation 4 (ours): zero-init output projections, the block starts as the identity (phase 2 = phase 1)
        for out in [self.proj_out] + ([self.mlp[-1]] if self.mlp is not None else []):
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)

    def forward(self, x):
        B, C, H, W = x.shape
        b = min(self.window, H, W)  # a window never exceeds the feature map
        assert H % b == 0 and W % b == 0, f"feature map {H}x{W} is not divisible by window {b}"
        seq = window_partition(self.norm(x), b, self.dilated)  # (G, L, C), G groups of L
        G, L, _ = seq.shape
        q, k, v = self.qkv(seq).split(C, dim=-1)  # 3 x (G, L, C)
        heads = lambda t: t.view(G, L, self.n_head, C // self.n_head).transpose(1, 2)
        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))  # (G, nh, L, C/nh)
        out = self.proj_out(out.transpose(1, 2).reshape(G, L, C))  # (G, L, C)
        x = x + window_merge(out, b, self.dilated, B, H, W)  # (B, C, H, W)
        return x if self.mlp is None else x + self.mlp(x)  # (B, C, H, W)


#### Decoders: conv-only (phase 1), Table 1's two enhanced ones, SeQ-GAN's (phase 2)
class DecoderLayout(NamedTuple):
    extra_blocks: int  # ResBlocks per level on top of num_res_blocks
    attention: bool  # a regional and a dilated attention block per level
    mlp_ratio: int  # their feed-forward's width (0: none)


# the attention layouts are one reading of the paper's text that hits its counts (Deviation 12)
DECODERS = {
    "conv": DecoderLayout(0, False, 0),         # Table 1's baselineVQ; SeQ-GAN phase 1 (Fig. 7)
    "conv-x2": DecoderLayout(2, False, 0),      # Table 1's "+Conv x2"
    "attention-x2": DecoderLayout(0, True, 2),  # Table 1's "+Attention x2": regional + dilated, a feed-forward
    "seqgan": DecoderLayout(0, True, 0),        # SeQ-GAN's phase-2 decoder: regional + dilated, q/k/v/out only
}


class Decoder(nn.Module):
    """G: z_q (B, nz, h, w) -> x_hat (B, 3, H, W), in one of the four DECODERS variants.

    conv_in 3x3 to the top width, num_res_blocks middle ResBlocks, then per level (coarse to
    fine) num_res_blocks ResBlocks (+2 for "conv-x2"), the level's attention blocks ("interleaved
    block regional and dilated attention", Sec. 3.4), and (but the last) the x2 upsample; then
    GroupNorm-SiLU-conv3x3 to RGB. All variants share the names of everything the conv decoder
    has, so phase-1 weights load into an attention-enhanced decoder as they are.
    """

    def __init__(self, ch, ch_mult, num_res_blocks, nz, out_channels=3, variant="conv", window=8):
        super().__init__()
        extra_blocks, attention, mlp_ratio = DECODERS[variant]
        c = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(nz, c, 3, padding=1)
        self.mid = nn.Sequential(*[ResBlock(c, c) for _ in range(num_res_blocks)])
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(ch_mult))):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(num_res_blocks + extra_blocks):
                level.block.append(ResBlock(c, ch * mult))
                c = ch * mult
            # Sec. 3.3.1 / 3.4: one regional, then one dilated attention block at this level
            level.attn = nn.ModuleList([WindowAttention(c, window, dilated=False, mlp_ratio=mlp_ratio),
                                        WindowAttention(c, window, dilated=True, mlp_ratio=mlp_ratio)]
                                       if attention else [])
            level.upsample = Upsample(c) if i > 0 else nn.Identity()
            self.up.append(level)
        self.norm_out = Normalize(c)
        self.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)

    def forward(self, z_q):
        h = self.mid(self.conv_in(z_q))  # (B, C_top, h, w)
        for level in self.up:
            for block in level.block:
                h = block(h)  # (B, ch*mult, H', W')
            for attn in level.attn:
                h = attn(h)  # (B, ch*mult, H', W'): regional, then dilated
            h = level.upsample(h)  # (B, ch*mult, 2H', 2W'), last level unchanged
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 3, H, W)


#### The tokenizer: encoder + quantizer + decoder
@dataclass
class TokenizerConfig:
    image_size: int = 32  # H = W
    ch: int = 32  # base channel count
    ch_mult: tuple = (1, 2, 2)  # channels per level = ch * mult; f = 2^(len - 1)
    num_res_blocks: int = 2  # ResBlocks per level and in the middle, encoder and decoder alike
    nz: int = 32  # code dimension n_z
    K: int = 128  # codebook size
    beta: float = 0.25  # commitment weight (Eq. 2)
    entropy_weight: float = 0.01  # gamma (Sec. 3.4)
    entropy_temperature: float = 1.0  # tau of softmax(-D / tau) (ours; 1 = no scaling)
    l2_codes: bool = False  # ViT-VQGAN's l2-normalized lookup (ours, tiny only: Deviation 17)
    decoder: str = "conv"  # one of DECODERS: "conv" (phase 1), "seqgan" (phase 2), Table 1's two
    window: int = 4  # side b of the regional / dilated windows

    @property
    def f(self) -> int:
        """Spatial compression ratio f (Sec. 3.1)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.f

    def check(self):
        """ValueError with the fix when the config cannot build a working tokenizer."""
        if self.decoder not in DECODERS:
            raise ValueError(f"unknown decoder {self.decoder!r}: choose one of {', '.join(DECODERS)}")
        # the latent grid must be whole (h = H / f, Sec. 3.1)
        if self.image_size % self.f != 0:
            raise ValueError(f"image size {self.image_size} is not divisible by the downsampling factor "
                             f"f={self.f}: use a multiple of {self.f} (--image-size)")
        # a dilated group holds the (side/b)^2 positions at one offset: side <= b would mix nothing
        if DECODERS[self.decoder].attention and self.latent_size < 2 * self.window:
            raise ValueError(f"window {self.window} is too large for the {self.latent_size}x{self.latent_size} "
                             "latent grid: dilated attention there would see one position per group; "
                             f"use --window {self.latent_size // 2} or less")


class Tokenizer(nn.Module):
    """E, the codebook Z and G of Sec. 3.1 in one module."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        cfg.check()
        self.cfg = cfg
        self.encoder = Encoder(cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.nz)
        self.quantizer = VectorQuantizer(cfg.K, cfg.nz, cfg.beta, cfg.entropy_weight, cfg.entropy_temperature,
                                         cfg.l2_codes)
        self.decoder = Decoder(cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.nz, variant=cfg.decoder, window=cfg.window)

    def encode(self, x):
        """x (B, 3, H, W) in [-1, 1] -> (z_q (B, nz, h, w), s (B, h, w), losses)."""
        return self.quantizer(self.encoder(x))

    def decode(self, z_q):
        """z_q (B, nz, h, w) -> x_hat (B, 3, H, W)."""
        return self.decoder(z_q)

    def decode_indices(self, s):
        """s (B, h, w) or (B, N) in raster order -> x_hat (B, 3, H, W)."""
        if s.dim() == 2:
            s = s.view(s.shape[0], self.cfg.latent_size, self.cfg.latent_size)  # (B, h, w)
        return self.decode(self.quantizer.lookup(s))

    def forward(self, x):
        z_q, s, losses = self.encode(x)
        return self.decode(z_q), s, losses  # x_hat (B, 3, H, W), s (B, h, w), losses

    def last_layer(self):
        """The decoder's last weight: VQGAN's adaptive GAN weight compares gradients here."""
        return self.decoder.conv_out.weight


def enhance_decoder(tokenizer: Tokenizer, variant="seqgan", window=None) -> Tokenizer:
    """Phase 2 (Fig. 7): a copy of a conv-decoder `tokenizer` with an attention-enhanced decoder
    ("seqgan", the paper's, or "attention-x2"). Every phase-1 weight is copied; the new attention
    blocks' zero-initialized output projections make the new decoder compute what the old one did."""
    if not DECODERS[variant].attention:
        raise ValueError(f"phase 2 enhances the decoder with attention: {variant!r} has none (use seqgan)")
    window = tokenizer.cfg.window if window is None else window
    cfg = TokenizerConfig(**{**asdict(tokenizer.cfg), "decoder": variant, "window": window})
    new = Tokenizer(cfg).to(next(tokenizer.parameters()).device)
    missing, unexpected = new.load_state_dict(tokenizer.state_dict(), strict=False)
    # the attention blocks must be the only thing the phase-1 checkpoint does not have
    assert not unexpected and all(".attn." in k for k in missing), (missing, unexpected)
    return new


#### Presets
# The paper-scale presets are the baselineVQ: K 1024 and f 16 (Table 2: 16x16 tokens), nz 256 (Table
# 5's DimZ); ch 128, mult (1,1,2,2,4) and 2 ResBlocks per level and in the middle are inferred from
# Table 1's 54.5M parameters (Deviation 4); the window side (8; 4 below) is ours. `small`: Deviation 24.

BASELINE_VQ = dict(image_size=256, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, nz=256, K=1024, window=8)
TOKENIZER_PRESETS = {
    # ours: f = 4 (8x8 tokens at 32 px), one ResBlock per level and in the middle (Deviation 21), 40
    # channels x (1, 1, 2), chosen by cost at equal reconstruction, l2-normalized lookup (Deviation 17)
    "tiny": dict(image_size=32, ch=40, ch_mult=(1, 1, 2), num_res_blocks=1, nz=32, K=128, window=4,
                 l2_codes=True),
    "small": dict(image_size=64, ch=64, ch_mult=(1, 2, 2, 4), num_res_blocks=2, nz=64, K=512, window=4),
    "ffhq256": dict(BASELINE_VQ),
    "lsun256": dict(BASELINE_VQ),
    "imagenet256": dict(BASELINE_VQ),
}
