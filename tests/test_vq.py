"""vq.py: quantizer invariants (Eq. 1, Eq. 2, Sec. 3.4) and the attention-enhanced decoder."""

import math

import pytest
import torch
import torch.nn as nn

import vq


def make_quantizer(K=32, nz=8, **kw):
    torch.manual_seed(0)
    q = vq.VectorQuantizer(K, nz, **kw)
    q.codebook.weight.data.normal_()  # spread-out codes, so every test sees many distinct ones
    return q


def test_resblock_skip_is_maskgits():
    # same width: out = x + h; width changes: MaskGIT's shortcut, out = h + W h (W the 1x1 conv),
    # h = conv2(silu(norm2(conv1(silu(norm1(x)))))) -- the layout whose count is the paper's
    torch.manual_seed(0)
    F = torch.nn.functional
    for c_in, c_out in ((8, 8), (8, 16)):
        block = vq.ResBlock(c_in, c_out)
        x = torch.randn(2, c_in, 6, 6)
        h = block.conv2(F.silu(block.norm2(block.conv1(F.silu(block.norm1(x))))))
        expected = x + h if c_in == c_out else h + block.skip(h)
        torch.testing.assert_close(block(x), expected)
        assert (block.skip is None) == (c_in == c_out) and block.conv1.bias is None and block.conv2.bias is None


def test_nearest_code_equals_brute_force_argmin():
    q = make_quantizer(K=50, nz=6)
    z_hat = torch.randn(3, 6, 5, 7)
    _, s, _ = q(z_hat)
    # brute force: every feature against every code, ||z - e|| without the matmul expansion
    z = z_hat.permute(0, 2, 3, 1).reshape(-1, 6)
    brute = torch.stack([((zi[None] - q.codebook.weight) ** 2).sum(1).argmin() for zi in z])
    assert torch.equal(s.flatten(), brute)
    assert s.shape == (3, 5, 7) and s.dtype == torch.long


@pytest.mark.ex1
def test_quantized_features_are_the_codes_and_lookup_matches():
    q = make_quantizer()
    z_hat = torch.randn(2, 8, 4, 4)
    z_q, s, _ = q(z_hat)
    torch.testing.assert_close(z_q, q.lookup(s))


@pytest.mark.ex1
def test_straight_through_gradient_is_identity():
    q = make_quantizer()
    z_hat = torch.randn(2, 8, 4, 4, requires_grad=True)
    z_q, _, _ = q(z_hat)
    g = torch.randn_like(z_q)
    z_q.backward(g)
    torch.testing.assert_close(z_hat.grad, g, rtol=0, atol=0)
    assert q.codebook.weight.grad is None  # the forward value's path into the codebook is detached


@pytest.mark.ex1
def test_codebook_term_moves_only_codes_and_commitment_only_encoder():
    q = make_quantizer(entropy_weight=0.0)
    z_hat = torch.randn(2, 8, 4, 4, requires_grad=True)
    _, _, losses = q(z_hat)
    g_code = torch.autograd.grad(losses["codebook"], [z_hat, q.codebook.weight], allow_unused=True, retain_graph=True)
    assert g_code[0] is None and g_code[1].abs().sum() > 0  # codebook term: codes only
    g_commit = torch.autograd.grad(losses["commit"], [z_hat, q.codebook.weight], allow_unused=True)
    assert g_commit[0].abs().sum() > 0 and g_commit[1] is None  # commitment term: encoder only
    # beta weights the commitment term: beta * ||sg[z_q] - z_hat||^2 = beta * codebook term's value
    torch.testing.assert_close(losses["commit"], 0.25 * losses["codebook"])


@pytest.mark.ex1
def test_entropy_penalty_raises_codebook_usage():
    """Minimizing our -gamma*H(D_bar) on random features spreads them over more codes;
    the paper's literal +gamma*H would do the opposite (README, Deviation 1)."""

    def usage_after(sign):
        torch.manual_seed(0)
        q = vq.VectorQuantizer(64, 4, entropy_weight=1.0)
        q.codebook.weight.data.normal_()
        z_hat = (0.3 * torch.randn(1, 4, 16, 16) + 2.0).requires_grad_()  # bunched in one corner
        opt = torch.optim.Adam([z_hat, *q.parameters()], lr=0.05)
        start = q(z_hat)[1].unique().numel()
        for _ in range(200):
            loss = sign * q(z_hat)[2]["entropy"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        return start, q(z_hat)[1].unique().numel()

    start, ours = usage_after(+1)  # minimize -H: entropy up
    _, literal = usage_after(-1)  # minimize +H: entropy down
    assert ours >= 2 * start and ours > literal, (start, ours, literal)


@pytest.mark.ex1
def test_entropy_term_is_zero_when_off():
    q = make_quantizer(entropy_weight=0.0)
    assert q(torch.randn(1, 8, 2, 2))[2]["entropy"].item() == 0.0


@pytest.mark.ex1
def test_soft_usage_entropy_gradcheck_in_float64():
    # the quantizer calls it in fp32; the pure function is checked against finite differences in float64
    g = torch.Generator().manual_seed(0)
    D = (3 * torch.rand(6, 5, generator=g, dtype=torch.float64)).requires_grad_()  # (M, K)
    assert torch.autograd.gradcheck(lambda D: vq.soft_usage_entropy(D), (D,))
    assert torch.autograd.gradcheck(lambda D: vq.soft_usage_entropy(D, tau=0.5), (D,))


@pytest.mark.ex1
def test_soft_usage_entropy_exact_values():
    H = lambda D, tau=1.0: vq.soft_usage_entropy(torch.tensor(D, dtype=torch.float64), tau).item()
    # two equidistant codes: every feature splits 1/2 : 1/2, so D_bar = (1/2, 1/2) and H = ln 2
    assert H([[3.0, 3.0], [0.5, 0.5]]) == pytest.approx(math.log(2), abs=1e-9)
    # each of two features on its own code, far from the other: one-hot assignments, but the usage
    # averaged over the positions is (1/2, 1/2): H = ln 2 (a mean of per-position entropies gives 0)
    assert H([[0.0, 50.0], [50.0, 0.0]]) == pytest.approx(math.log(2), abs=1e-9)
    # both features on the same code: D_bar = (1, 0), H = 0
    assert H([[0.0, 50.0], [0.0, 50.0]]) == pytest.approx(0.0, abs=1e-9)
    # tau divides D: distances (0, ln 3) give P = (3/4, 1/4) at tau = 1, and (0, 2 ln 3) at tau = 2
    quarter = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert H([[0.0, math.log(3)]]) == pytest.approx(quarter, abs=1e-9)
    assert H([[0.0, 2 * math.log(3)]], tau=2.0) == pytest.approx(quarter, abs=1e-9)


@pytest.mark.ex1
def test_entropy_term_is_minus_gamma_times_the_soft_usage_entropy():
    """Our sign (README, Deviation 1): losses["entropy"] = -gamma * H(D_bar), D the squared
    distances to the codes, D_bar the softmax(-D / tau) averaged over every position."""
    q = make_quantizer(entropy_weight=0.3, entropy_temperature=2.0)
    z_hat = torch.randn(2, 8, 3, 3)
    _, _, losses = q(z_hat)
    z = z_hat.permute(0, 2, 3, 1).reshape(-1, 8).double()               # (M, nz)
    D = torch.cdist(z, q.codebook.weight.detach().double()) ** 2        # (M, K) squared L2
    D_bar = torch.softmax(-D / 2.0, dim=1).mean(0)                      # (K,) soft usage
    H = -(D_bar * D_bar.log()).sum()
    assert 0 < H.item() <= math.log(32)
    assert losses["entropy"].item() == pytest.approx(-0.3 * H.item(), rel=1e-4)


# ------------------------------------------------------------------------------------------
# regional / dilated attention


def attention_reach(dilated, H=8, W=8, b=4, pos=(1, 2)):
    """Which output positions change when the input changes at `pos`: (H, W) bool."""
    torch.manual_seed(0)
    block = vq.WindowAttention(16, window=b, dilated=dilated, head_dim=8)
    nn.init.normal_(block.proj_out.weight)  # undo the zero init, or the block is the identity
    # GroupNorm's statistics span the whole map; take it out to see the attention pattern alone
    block.norm = nn.Identity()
    x = torch.randn(1, 16, H, W)
    x2 = x.clone()
    x2[0, :, pos[0], pos[1]] += 1.0
    with torch.no_grad():
        return (block(x2) - block(x)).abs().sum(1)[0] > 1e-6


@pytest.mark.ex3
def test_regional_block_mixes_only_inside_its_window():
    reach = attention_reach(dilated=False)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[0:4, 0:4] = True  # (1, 2) lies in the top-left 4x4 window
    assert torch.equal(reach, expected)


@pytest.mark.ex3
def test_dilated_block_mixes_only_across_windows_at_the_same_offset():
    reach = attention_reach(dilated=True)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[1::4, 2::4] = True  # offset (1, 2) inside every 4x4 window
    assert torch.equal(reach, expected)


@pytest.mark.ex3
def test_window_partition_round_trip():
    x = torch.randn(2, 3, 8, 12)
    for dilated in (False, True):
        seq = vq.window_partition(x, 4, dilated)
        assert seq.shape == ((2 * 6, 16, 3) if not dilated else (2 * 16, 6, 3))
        assert torch.equal(vq.window_merge(seq, 4, dilated, 2, 8, 12), x)


# ------------------------------------------------------------------------------------------
# tokenizer and phase 2


def test_tokenizer_shapes_and_decode_indices():
    cfg = vq.TokenizerConfig(**vq.TOKENIZER_PRESETS["tiny"])
    tok = vq.Tokenizer(cfg).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    x_hat, s, losses = tok(x)
    assert x_hat.shape == x.shape and s.shape == (2, 8, 8)
    assert set(losses) == {"codebook", "commit", "entropy"}
    with torch.no_grad():
        # z_q from the straight-through sum z_hat + (z_q - z_hat) differs from the code by rounding
        torch.testing.assert_close(tok.decode_indices(s.flatten(1)), x_hat, rtol=1e-4, atol=1e-4)


def test_fresh_enhanced_decoder_reproduces_conv_decoder():
    torch.manual_seed(0)
    tok = vq.Tokenizer(vq.TokenizerConfig(**vq.TOKENIZER_PRESETS["tiny"])).eval()
    for p in tok.parameters():  # any weights, not just the init
        p.data.add_(0.05 * torch.randn_like(p))
    new = vq.enhance_decoder(tok).eval()
    assert new.cfg.decoder == "seqgan" and sum(len(level.attn) for level in new.decoder.up) == 2 * len(new.decoder.up)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        a, s_a, _ = tok(x)
        b, s_b, _ = new(x)
    assert torch.equal(s_a, s_b)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_image_size_must_divide_by_f():
    with pytest.raises(ValueError, match="not divisible by the downsampling factor"):
        vq.Tokenizer(vq.TokenizerConfig(image_size=30))


def test_dilated_attention_that_would_see_one_position_is_refused():
    # an 8x8 latent grid with window 8: each dilated group would hold a single position
    with pytest.raises(ValueError, match="dilated attention there would see one position per group"):
        vq.Tokenizer(vq.TokenizerConfig(**{**vq.TOKENIZER_PRESETS["tiny"], "decoder": "seqgan", "window": 8}))
    vq.Tokenizer(vq.TokenizerConfig(**{**vq.TOKENIZER_PRESETS["tiny"], "decoder": "seqgan", "window": 4}))  # 2x2 groups


@pytest.mark.parametrize("decoder", ["conv-x2", "attention-x2"])
def test_table1_decoders_build_and_keep_the_conv_names(decoder):
    base = vq.Tokenizer(vq.TokenizerConfig(**vq.TOKENIZER_PRESETS["tiny"]))
    tok = vq.Tokenizer(vq.TokenizerConfig(**{**vq.TOKENIZER_PRESETS["tiny"], "decoder": decoder}))
    assert set(base.state_dict()) < set(tok.state_dict())  # every conv-decoder weight, plus the extra blocks
    x_hat, _, _ = tok(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert x_hat.shape == (2, 3, 32, 32)
