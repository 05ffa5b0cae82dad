"""
The generative transformers of SeQ-GAN: an autoregressive GPT and a non-autoregressive MaskGIT.

Paper: Gu et al., "Rethinking the Objectives of Vector-Quantized Tokenizers for Image Synthesis"
(CVPR 2024). Sec. 3.1 trains a generative transformer on the token sequences s of a frozen VQ
tokenizer with a token classification loss, and samples from it autoregressively (VQGAN's AR
transformer) or by iterative refinement (MaskGIT's NAR one). Sec. 3.2 feeds a ground-truth s to
the AR model once (teacher forcing) and reads the top-1 index at every position: `GPT.forward` in
eval mode (see visualize.py). Presets go from a CPU-sized "tiny" to the paper's sizes (Tables 3, 4).

Where the paper is silent we follow the cited works and say so where it happens: GPT-2 weight
init, the null class for guidance (the paper only names classifier-free guidance in Sec. 3.2),
MaskGIT's schedule, label smoothing and choice temperature, dropout 0.1 at paper scale.
Left out: the paper's exact training recipe (supplementary material).

Shape legend: B batch, N = h*w tokens of a sequence s in raster order, K codebook size, D width
(n_embd), H attention heads, D_h = D/H head width, T tokens fed in one call (N in training, 1 when
decoding with the KV cache), L layers. A MaskGIT mask is (B, N) bool, True = masked: that
position's token is [MASK], to predict.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


#### Configuration
@dataclass
class TransformerConfig:
    K: int = 128  # the tokenizer's codebook size: tokens are ids in [0, K)
    seq_len: int = 64  # N = h*w: tokens per image
    num_classes: int = 8  # classes for conditioning; 0 = unconditional (only the null token)
    n_layer: int = 4  # L (the defaults are the "tiny" preset)
    n_head: int = 4  # H
    n_embd: int = 128  # D
    dropout: float = 0.0  # on embeddings, attention weights and residual branches
    class_dropout: float = 0.1  # P(label -> null class) in training, for classifier-free guidance
    bias: bool = True  # biases in Linear layers (GPT-2 style); LayerNorms always have them


#### Sampling filters and classifier-free guidance (small pure functions, both models)
def top_k_top_p_filter(logits: torch.Tensor, top_k=None, top_p=None) -> torch.Tensor:
    """Sets logits outside the top-k, then outside the nucleus of mass top_p, to -inf.
    logits (..., K) -> (..., K). The most likely token always survives."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]                    # (..., 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # sort descending, so that the nucleus is a prefix of each row
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)          # (..., K)
        probs = sorted_logits.softmax(dim=-1)                                       # (..., K)
        # probability mass of the tokens strictly more likely than this one
        mass_before = probs.cumsum(dim=-1) - probs                                  # (..., K)
        # True = filtered out: the nucleus was already complete before this token
        remove_sorted = mass_before >= top_p                                        # (..., K)
        remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)  # (..., K)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def sample_logits(logits: torch.Tensor, temperature=1.0, top_k=None, top_p=None, generator=None) -> torch.Tensor:
    """Draws one token per row: logits (..., K) -> ids (...) long.
    temperature == 0 means greedy argmax; otherwise softmax(logits / temperature) after top-k
    and top-p filtering, sampled with torch.multinomial (pass a torch.Generator to reproduce)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    # temperature first, then the filters (as nanoGPT and HF do): a higher temperature flattens the
    # distribution, so the nucleus takes more tokens; top-k keeps the same ones at any temperature
    logits = top_k_top_p_filter(logits / temperature, top_k, top_p)
    # softmax in fp32: filtered entries (-inf) get probability exactly 0
    probs = logits.float().softmax(dim=-1).reshape(-1, logits.size(-1))  # (B*..., K)
    ids = torch.multinomial(probs, 1, generator=generator)                 # (B*..., 1)
    return ids.view(logits.shape[:-1])                                     # (...)


def guided_logits(logits_fn, y: torch.Tensor, null_class: int, cfg_scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022; named in Sec. 3.2):
        logits = uncond + cfg_scale * (cond - uncond).
    logits_fn(labels (B',)) returns the model's logits for B' = B or 2B labels (repeating its other
    inputs to match); the two passes run as one batch of 2B, cond first. cfg_scale == 1 is exactly
    the conditional model and 0 exactly the unconditional one (one pass each, the latter with the
    null labels)."""
    if cfg_scale == 1:
        return logits_fn(y)
    y_null = torch.full_like(y, null_class)                    # (B,)
    if cfg_scale == 0:
        return logits_fn(y_null)
    cond, uncond = logits_fn(torch.cat([y, y_null])).chunk(2)  # (B, ..., K) each
    return uncond + cfg_scale * (cond - uncond)


#### Transformer block with an optional KV cache
class KVCache:
    """Keys and values of one attention layer for positions 0 .. t-1, for AR decoding. Buffers of
    length T_max, allocated on the first call (the keys' dtype and device), are filled in place, which
    avoids the O(N^2) copying of concatenating a growing tensor at every step."""

    def __init__(self, T_max: int):
        self.T_max = T_max  # longest sequence the buffers can hold (N for the GPT)
        self.t = 0  # positions written so far
        self.k = self.v = None  # (B, H, T_max, D_h) each, allocated lazily

    def append(self, k, v):
        """Writes T new keys/values (B, H, T, D_h); returns all keys/values so far."""
        # >>> exercise 4: the GPT's KV cache
        B, H, T, D_h = k.shape
        if self.k is None:
            self.k = k.new_empty(B, H, self.T_max, D_h)      # (B, H, T_max, D_h)
            self.v = v.new_empty(B, H, self.T_max, D_h)      # (B, H, T_max, D_h)
        assert self.t + T <= self.T_max, "KV cache is full"
        self.k[:, :, self.t:self.t + T] = k
        self.v[:, :, self.t:self.t + T] = v
        self.t += T
        # views, not copies, of the filled part
        return self.k[:, :, :self.t], self.v[:, :, :self.t]  # (B, H, t, D_h) each
        # <<< exercise 4


class Block(nn.Module):
    """Pre-norm transformer block (GPT-2):
        x = x + Attn(LN(x));  x = x + MLP(LN(x)),  MLP = Linear(D, 4D) -> GELU -> Linear(4D, D).
    `causal` = True for the AR model (position i attends to positions <= i), False for MaskGIT
    (every position attends to every position). Attention runs in F.scaled_dot_product_attention."""

    def __init__(self, config: TransformerConfig, causal: bool):
        super().__init__()
        D, bias = config.n_embd, config.bias
        assert D % config.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = config.n_head
        self.causal = causal
        self.dropout = config.dropout  # attention weights' dropout: SDPA applies it
        self.ln_1 = nn.LayerNorm(D)
        self.qkv = nn.Linear(D, 3 * D, bias=bias)  # queries, keys and values in one projection
        self.attn_out = nn.Linear(D, D, bias=bias)
        self.ln_2 = nn.LayerNorm(D)
        self.mlp_in = nn.Linear(D, 4 * D, bias=bias)
        self.mlp_out = nn.Linear(4 * D, D, bias=bias)
        self.resid_drop = nn.Dropout(config.dropout)

    def attention(self, x, kv_cache=None):
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)  # (B, T, D) each
        q, k, v = (t.view(B, T, self.n_head, D // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D_h)
        t0 = 0  # absolute position of the first new token (> 0 only when decoding with a cache)
        if kv_cache is not None:
            # >>> exercise 4: the GPT's KV cache
            t0 = kv_cache.t
            # past and new keys/values together
            k, v = kv_cache.append(k, v)             # (B, H, t0 + T, D_h) each
            # <<< exercise 4
        # SDPA's boolean polarity: True = may attend. A single new token (T == 1) attends to all the
        # cached past: no mask
        attn_mask, is_causal = None, False
        if self.causal and T > 1:
            if t0 == 0:
                # full sequence or prefill from position 0: the usual lower-triangular mask
                is_causal = True
            else:
                # >>> exercise 4: the GPT's KV cache
                # prefill of T > 1 tokens after t0 cached ones: new token i (absolute position
                # t0 + i) may attend key j iff j <= t0 + i. True = may attend.
                attn_mask = torch.ones(T, t0 + T, dtype=torch.bool, device=x.device).tril(t0)
                # <<< exercise 4
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, D_h)
        return self.resid_drop(self.attn_out(y.transpose(1, 2).reshape(B, T, D)))         # (B, T, D)

    def mlp(self, x):
        return self.resid_drop(self.mlp_out(F.gelu(self.mlp_in(x))))  # (B, T, 4D) -> (B, T, D)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        # x (B, T, D) -> (B, T, D); kv_cache holds this layer's past keys/values (AR decoding)
        x = x + self.attention(self.ln_1(x), kv_cache)
        return x + self.mlp(self.ln_2(x))


#### The shared trunk: embeddings, L blocks, final norm, head to K logits
class TokenTransformer(nn.Module):
    """What GPT and MaskGIT share: token, class and learned positional embeddings, L blocks, a
    final LayerNorm and a linear head to the K codes; GPT-2 init; AdamW with decoupled decay.
    The class embedding has num_classes + 1 rows: row `num_classes` is the null class, used
    for unconditional models (num_classes == 0: it is the only row, a plain start token),
    for y = None, and for labels dropped during training (classifier-free guidance)."""

    def __init__(self, config: TransformerConfig, causal: bool, n_input_tokens: int, n_positions: int):
        super().__init__()
        self.config = config
        D = config.n_embd
        self.tok_emb = nn.Embedding(n_input_tokens, D)  # the K codes (+ the [MASK] id for MaskGIT)
        self.cls_emb = nn.Embedding(config.num_classes + 1, D)
        self.pos_emb = nn.Parameter(torch.zeros(1, n_positions, D))  # learned absolute positions
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config, causal) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(D)  # final norm of a pre-norm stack (the residual stream is never normalized)
        self.head = nn.Linear(D, config.K, bias=config.bias)  # logits over the K codes only (never [MASK])
        self.apply(self._init_weights)
        nn.init.normal_(self.pos_emb, std=0.02)
        # GPT-2: residual output projections scaled by 1/sqrt(2L), two residual adds per block
        for name, p in self.named_parameters():
            if name.endswith("attn_out.weight") or name.endswith("mlp_out.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        # GPT-2 init: N(0, 0.02) for weights and embeddings, zero biases (LayerNorm: 1 and 0)
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def class_labels(self, y, B: int, device) -> torch.Tensor:
        """Labels to embed, (B,) long: y, or the null class where y is None. In training, each
        label is replaced by the null class with probability class_dropout (global torch RNG),
        which teaches the same network the unconditional model needed for guidance."""
        if y is None:
            return torch.full((B,), self.null_class, dtype=torch.long, device=device)
        p = self.config.class_dropout
        if self.training and p > 0:
            y = y.masked_fill(torch.rand(B, device=device) < p, self.null_class)  # (B,)
        return y

    def generation_setup(self, y, num_samples, cfg_scale):
        """What both samplers start from: (B, y (B,) long, cfg_scale). y = None means
        unconditional (the null class for all num_samples); guidance is switched off (1.0)
        when there is no label to guide with, since cond == uncond there."""
        device = self.pos_emb.device
        if y is None:
            assert num_samples is not None, "pass num_samples when y is None"
            y = torch.full((num_samples,), self.null_class, dtype=torch.long, device=device)
        y = torch.as_tensor(y, dtype=torch.long, device=device).view(-1)  # (B,)
        if self.null_class == 0 or (y == self.null_class).all():
            cfg_scale = 1.0  # skips the second (unconditional) pass
        return y.numel(), y, cfg_scale

    def trunk(self, h: torch.Tensor, kv_caches=None) -> torch.Tensor:
        """Input embeddings (B, T, D) -> logits (B, T, K); kv_caches: one KVCache per layer."""
        h = self.drop(h)
        for i, block in enumerate(self.blocks):
            h = block(h, kv_caches[i] if kv_caches is not None else None)  # (B, T, D)
        return self.head(self.ln_f(h))                                     # (B, T, K)

    def configure_optimizer(self, weight_decay: float, lr: float, betas=(0.9, 0.95)) -> torch.optim.AdamW:
        """AdamW with weight decay on the Linear weights only (2-D matrices); no decay on
        embeddings, positional embedding, LayerNorms and biases (as in nanoGPT / minGPT)."""
        decay = [m.weight for m in self.modules() if isinstance(m, nn.Linear)]
        decay_ids = {id(p) for p in decay}
        no_decay = [p for p in self.parameters() if id(p) not in decay_ids]
        return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas)


@torch.no_grad()
def ema_update(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter (ours: sampling uses it)."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1 - decay)  # ema + (1 - decay) * (model - ema)


#### AR transformer: raster-order next-token prediction (Sec. 3.1, VQGAN)
class GPT(TokenTransformer):
    """Causal transformer over the raster-order sequence. Input at position 0 is the class token
    (the null/start token when unconditional), input at position i > 0 is s_{i-1}; the output
    at position i predicts s_i. So logits[:, i] = p(s_i | y, s_<i) for i = 0 .. N-1, and one
    forward pass on a ground-truth s is the teacher-forced view of Sec. 3.2."""

    def __init__(self, config: TransformerConfig):
        # K input codes, N positions (the class token takes the slot of the unused s_{N-1})
        super().__init__(config, causal=True, n_input_tokens=config.K, n_positions=config.seq_len)

    def predict(self, y: torch.Tensor, prev: torch.Tensor, t0: int = 0, kv_caches=None) -> torch.Tensor:
        """Logits for the positions t0 .. t0+T-1, y (B,) long labels (already resolved).
        t0 == 0: prev = s_0 .. s_{T-2} (B, T-1), the class token is prepended at position 0.
        t0 > 0:  prev = s_{t0-1} .. s_{t0+T-2} (B, T), positions before t0 come from kv_caches."""
        h = self.tok_emb(prev)                                   # (B, T', D)
        if t0 == 0:
            h = torch.cat([self.cls_emb(y)[:, None], h], dim=1)  # (B, T, D)
        T = h.size(1)
        assert t0 + T <= self.config.seq_len, "sequence longer than seq_len"
        h = h + self.pos_emb[:, t0:t0 + T]                       # (B, T, D)
        return self.trunk(h, kv_caches)                          # (B, T, K)

    def forward(self, s: torch.Tensor, y: torch.Tensor | None = None, targets: torch.Tensor | None = None):
        """s (B, N) long, y (B,) long or None -> (logits (B, N, K), loss or None).
        loss = mean over positions of CE(logits_i, targets_i); targets is normally s itself."""
        B, N = s.shape
        y = self.class_labels(y, B, s.device)  # (B,)
        # shift right: the last token s_{N-1} is never an input
        logits = self.predict(y, s[:, :-1])    # (B, N, K)
        # token classification loss of Sec. 3.1 (plain CE, as in VQGAN's transformer)
        loss = None if targets is None else F.cross_entropy(logits.reshape(B * N, -1), targets.reshape(B * N))
        return logits, loss

    @torch.no_grad()
    def generate(self, y=None, num_samples=None, temperature=1.0, top_k=None, top_p=None,
                 cfg_scale=1.0, use_cache=True, generator=None) -> torch.Tensor:
        """Samples s (B, N) token by token in raster order. y (B,) long, or None with
        num_samples for unconditional sampling. temperature 0 = greedy. KV cache by default;
        use_cache=False recomputes the whole prefix at every step (slow reference).
        Call model.eval() first (dropout)."""
        B, y, cfg_scale = self.generation_setup(y, num_samples, cfg_scale)
        N = self.config.seq_len
        # the caches must hold the doubled batch when guidance runs both passes
        caches = [KVCache(N) for _ in self.blocks] if use_cache else None
        s = torch.zeros(B, 0, dtype=torch.long, device=y.device)  # (B, 0)
        for i in range(N):
            # with the cache only the newest token is fed (none at i = 0: just the class token)
            prev, t0 = (s[:, -1:], i) if use_cache else (s, 0)

            def logits_fn(labels):
                # labels (B,) or (2B,): repeat the prefix to match; keep the last position
                return self.predict(labels, prev.repeat(labels.numel() // B, 1), t0, caches)[:, -1]  # (B', K)

            logits = guided_logits(logits_fn, y, self.null_class, cfg_scale)          # (B, K)
            s_i = sample_logits(logits, temperature, top_k, top_p, generator)         # (B,)
            s = torch.cat([s, s_i[:, None]], dim=1)                                   # (B, i+1)
        return s


#### NAR transformer: masked-token prediction and iterative decoding (Sec. 3.1, MaskGIT)
def cosine_schedule(r):
    """MaskGIT's mask schedule gamma(r) = cos(pi*r/2), the fraction of tokens masked at progress r in
    [0, 1]: gamma(0) = 1 (all masked), gamma(1) = 0 (none), non-increasing. Floats or tensors."""
    # >>> exercise 5: MaskGIT: schedule, masked-only loss, iterative decoding
    if isinstance(r, torch.Tensor):
        return torch.cos(math.pi * r / 2)
    return math.cos(math.pi * r / 2)
    # <<< exercise 5


def mask_counts(N: int, steps: int) -> list[int]:
    """Positions still masked after each of the `steps` MaskGIT decoding steps: floor(gamma((t+1)/steps)
    * N) after step t (0-based), as in MaskGIT. We also make every step unmask at least one token and
    the last one all, so the counts strictly decrease from N to 0 in exactly `steps` steps."""
    # >>> exercise 5: MaskGIT: schedule, masked-only loss, iterative decoding
    if not 1 <= steps <= N:
        # each step must unmask >= 1 token, so more steps than tokens cannot all make progress
        raise ValueError(f"need 1 <= steps <= N, got steps={steps}, N={N}")
    counts, prev = [], N
    for t in range(steps):
        # MaskGIT's count after step t (the ">= 1 fewer" rule below is our safeguard)
        n = math.floor(cosine_schedule((t + 1) / steps) * N)
        # at least one fewer than before. This never runs dry early: cos(pi*x/2) >= 1 - x and
        # N >= steps give n >= steps-1-t, i.e. one token left for each remaining step
        n = min(n, prev - 1)
        counts.append(n)
        prev = n
    # cos(pi/2) is 6e-17, not 0: make the last step unmask everything, explicitly
    counts[-1] = 0
    return counts
    # <<< exercise 5


def random_mask(B: int, N: int, device=None, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskGIT training mask: r ~ U(0,1) per sample, then ceil(gamma(r) * N) positions (at least
    one) drawn uniformly without replacement. Draws from `generator` (on its device), else from
    the global torch RNG on `device`.
    Returns (mask (B, N) bool, True = masked (to predict); r (B,))."""
    # >>> exercise 5: MaskGIT: schedule, masked-only loss, iterative decoding
    r = torch.rand(B, device=device, generator=generator)                  # (B,)
    # number of masked tokens per sample, in [1, N]
    n_masked = torch.ceil(cosine_schedule(r) * N).long().clamp(1, N)       # (B,)
    # a uniformly random permutation per sample: rank of each position among random scores
    ranks = torch.rand(B, N, device=device, generator=generator).argsort(dim=1).argsort(dim=1)  # (B, N)
    # the n_masked positions with the lowest ranks are masked
    mask = ranks < n_masked[:, None]                                       # (B, N)
    return mask, r
    # <<< exercise 5


def masked_token_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                      label_smoothing: float = 0.1) -> torch.Tensor:
    """MaskGIT loss: cross-entropy with label smoothing, averaged over the MASKED positions only
        L = mean_{i : mask_i} CE_ls(logits_i, s_i).
    logits (B, N, K), targets (B, N) long, mask (B, N) bool, True = masked (to predict).
    Unmasked positions do not enter the loss (a known bug elsewhere is to average over all)."""
    # >>> exercise 5: MaskGIT: schedule, masked-only loss, iterative decoding
    # boolean indexing keeps only the masked positions: M = mask.sum()
    return F.cross_entropy(logits[mask], targets[mask],  # (M, K), (M,)
                           label_smoothing=label_smoothing)
    # <<< exercise 5


def choice_noise_scale(t: int, steps: int, choice_temperature: float) -> float:
    """MaskGIT's annealed choice temperature at decoding step t (0-based) of `steps`:
        choice_temperature * (1 - (t+1)/steps),
    i.e. choice_temperature * (1 - 1/steps) at the first step, falling linearly to exactly 0 at
    the last one (which unmasks every remaining position anyway, so its noise never matters)."""
    return choice_temperature * (1.0 - (t + 1) / steps)


def gumbel_noise(shape, generator=None, device=None) -> torch.Tensor:
    """Standard Gumbel noise g = -log(-log(u)), u ~ U(0, 1), drawn with `generator`.
    u is kept inside (0, 1) first, so that both logs stay finite: -log(u) > 0, and g is finite."""
    u = torch.rand(shape, generator=generator, device=device).clamp(torch.finfo(torch.float32).tiny, 1.0 - 2**-24)
    return -torch.log(-torch.log(u))


class MaskGIT(TokenTransformer):
    """Bidirectional transformer that predicts masked tokens. Input: the class token at position
    0, then the N tokens with some replaced by [MASK] (id K); its output at position 0 is
    dropped, so logits[:, i] predicts s_i for i = 0 .. N-1."""

    def __init__(self, config: TransformerConfig):
        # K codes + the [MASK] id K; N tokens + the class token
        super().__init__(config, causal=False, n_input_tokens=config.K + 1, n_positions=config.seq_len + 1)
        self.mask_id = config.K

    def predict(self, y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Logits (B, N, K) for tokens s (B, N) that may contain [MASK], labels y (B,) long
        (already resolved: no class dropout here)."""
        h = torch.cat([self.cls_emb(y)[:, None], self.tok_emb(s)], dim=1) + self.pos_emb  # (B, N+1, D)
        return self.trunk(h)[:, 1:]                                                       # (B, N, K)

    def forward(self, s: torch.Tensor, y: torch.Tensor | None = None,
                targets: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        """s (B, N) long, y (B,) or None -> (logits (B, N, K), loss or None). With targets and no
        mask (training), random_mask draws one; an explicit mask (B, N) bool is used as given.
        Without targets, loss is None and s may already contain the [MASK] id."""
        B, N = s.shape
        if targets is not None and mask is None:
            # drawn before the class dropout, from the global torch RNG
            mask, _ = random_mask(B, N, s.device)  # (B, N)
        if mask is not None:
            s = s.masked_fill(mask, self.mask_id)  # (B, N): masked inputs become [MASK]
        y = self.class_labels(y, B, s.device)      # (B,)
        logits = self.predict(y, s)                # (B, N, K)
        return logits, None if targets is None else masked_token_loss(logits, targets, mask)

    @torch.no_grad()
    def generate(self, y=None, num_samples=None, steps=12, choice_temperature=4.5,
                 temperature=1.0, cfg_scale=1.0, generator=None, return_history=False):
        """MaskGIT's iterative decoding, from all [MASK] to every position decided in exactly
        `steps` steps (the three parts of a step are commented below). Every random draw comes
        from `generator`, none from the global RNG; a NaN score raises RuntimeError. Call
        model.eval() first (dropout). Returns s (B, N) long; with return_history=True also the
        masks after each step."""
        B, y, cfg_scale = self.generation_setup(y, num_samples, cfg_scale)
        N = self.config.seq_len
        counts = mask_counts(N, steps)
        mask = torch.ones(B, N, dtype=torch.bool, device=y.device)               # (B, N)
        s = torch.full((B, N), self.mask_id, dtype=torch.long, device=y.device)  # (B, N)
        history = []
        for t in range(steps):

            def logits_fn(labels):
                # labels (B,) or (2B,): repeat the current tokens to match
                return self.predict(labels, s.repeat(labels.numel() // B, 1))       # (B', N, K)

            # >>> exercise 5: MaskGIT: schedule, masked-only loss, iterative decoding
            logits = guided_logits(logits_fn, y, self.null_class, cfg_scale)        # (B, N, K)
            # 1. a candidate token at every position, sampled at `temperature` (draws from `generator`)
            s_hat = sample_logits(logits, temperature, generator=generator)         # (B, N)
            # decided positions keep their token; masked ones take the new sample
            s_hat = torch.where(mask, s_hat, s)                                     # (B, N)
            # 2. log-confidence of each sample under the (guided) model, before temperature
            log_p = logits.float().log_softmax(dim=-1)                              # (B, N, K)
            log_conf = log_p.gather(-1, s_hat[..., None]).squeeze(-1)               # (B, N)
            # decided positions can never be masked again
            log_conf = log_conf.masked_fill(~mask, float("inf"))                    # (B, N)
            # 3. Gumbel noise (gumbel_noise) on the log-confidence, annealed linearly from
            # choice_temperature to 0 at the last step: choice_noise_scale(t, steps, choice_temperature)
            noise = gumbel_noise((B, N), generator, y.device)                      # (B, N)
            score = log_conf + choice_noise_scale(t, steps, choice_temperature) * noise  # (B, N)
            # a NaN score is a bug, not a tie: raise RuntimeError (naming the step) instead of
            # decoding. argsort would put NaNs last and silently decode in index order, whatever
            # the model's confidence (+inf on decided ones is deliberate, and no NaN)
            if torch.isnan(score).any():
                raise RuntimeError(f"MaskGIT decoding step {t}: NaN confidence score "
                                   "(non-finite logits or noise); refusing to pick positions by index")
            # re-mask the counts[t] lowest scores; all of them are still-masked positions,
            # since counts[t] < number masked now and decided ones score +inf
            ranks = score.argsort(dim=1).argsort(dim=1)                             # (B, N)
            mask = ranks < counts[t]                                                # (B, N)
            # the next step's input: [MASK] where masked again, the decided token elsewhere
            s = torch.where(mask, self.mask_id, s_hat)                              # (B, N)
            # <<< exercise 5
            history.append(mask)
        return (s, history) if return_history else s


#### Presets
# Sizes only; K, seq_len and num_classes come from the tokenizer and the dataset.
# The paper gives the transformers' sizes only as parameter counts: 171M (Table 3; Table 4's
# 229M minus the 57.9M tokenizer) and 306M for the "-L" models (364M - 57.9M). 24 layers of
# width 768 and 1024 are inferred from those counts, not stated: our GPT counts, with K = 1024,
# N = 256 and 1000 classes, 172.65M (+0.96%) and 305.70M (-0.10%) (unconditional, no class
# table: 171.88M and 304.67M); no single choice of biases, tied head or class table hits both
# numbers exactly, so we keep the plain GPT-2 layout. Dropout 0.1 at paper scale is ours
# (MaskGIT's value; the paper does not state it). `tiny` and `small` are ours (Deviation 18).
TRANSFORMER_PRESETS = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, dropout=0.0),  # CPU: N = 64, K = 128, 32 classes; 0.84M parameters
    # the study's capacity runs (study.py --extras): half and double the width, same head size
    "tiny-half": dict(n_layer=4, n_head=2, n_embd=64, dropout=0.0),
    "tiny-2x": dict(n_layer=4, n_head=8, n_embd=256, dropout=0.0),
    "small": dict(n_layer=8, n_head=8, n_embd=512, dropout=0.1),  # one GPU, hours
    "base": dict(n_layer=24, n_head=16, n_embd=768, dropout=0.1),  # the paper's AR / NAR transformer (171M)
    "large": dict(n_layer=24, n_head=16, n_embd=1024, dropout=0.1),  # the paper's "-L" models (306M)
}
