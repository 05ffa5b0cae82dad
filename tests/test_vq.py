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


def mismatch(got, want, rtol=1e-5, atol=1e-6):
    """How the tensor `got` differs from `want`, in a few words, or "" when it does not: the
    "got ..." half of a graded test's one-sentence failure message."""
    if got is None:
        return "None"
    if tuple(got.shape) != tuple(want.shape):
        return f"shape {tuple(got.shape)} instead of {tuple(want.shape)}"
    got, want = got.detach().double(), want.detach().double()
    bad = ~torch.isclose(got, want, rtol=rtol, atol=atol)
    if not bad.any():
        return ""
    if got.isnan().any():
        return f"NaN in {int(got.isnan().sum())} of {got.numel()} values"
    worst = (got - want).abs()[bad].max().item()
    return f"{int(bad.sum())} of {got.numel()} values off, by up to {worst:.3g}"


def gradient(g):
    """A gradient in words, for failure messages."""
    return "no gradient" if g is None else f"a gradient of norm {g.norm().item():.3g}"


def vq_entropy_by_hand(D, tau=1.0):
    """H(D_bar), D_bar = softmax(-D / tau) (M, K) averaged over the M rows (no code at usage 0)."""
    D_bar = torch.softmax(-D / tau, dim=1).mean(0)                     # (K,)
    return -(D_bar * D_bar.log()).sum()


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
        assert (block.skip is None) == (c_in == c_out)
        assert block.conv1.bias is None and block.conv2.bias is None


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
    off = mismatch(z_q, q.lookup(s))
    assert not off, f"z_q should equal the codes of its indices, q.lookup(s), in the forward pass; got {off}"


@pytest.mark.ex1
def test_l2_codes_quantize_on_the_unit_sphere():
    """tiny's lookup (Deviation 17, ViT-VQGAN's): features and codes l2-normalized before Eq. 1, so s
    is the code of highest cosine similarity and z_q is that code's unit vector; the straight-through
    gradient reaches z_hat through the normalization."""
    q = make_quantizer(l2_codes=True)
    z_hat = (5 * torch.randn(2, 8, 4, 4)).requires_grad_(True)
    z_q, s, _ = q(z_hat)
    z = z_hat.detach().permute(0, 2, 3, 1).reshape(-1, 8)                      # (M, nz)
    cos = nn.functional.normalize(z, dim=1) @ nn.functional.normalize(q.codebook.weight, dim=1).t()
    assert torch.equal(s.flatten(), cos.argmax(1)), "with l2 codes, s should be the code of highest cosine"
    e = nn.functional.normalize(q.codebook.weight.detach(), dim=1)             # (K, nz) unit codes
    want = e[s].permute(0, 3, 1, 2)                                            # (B, nz, h, w)
    off = mismatch(z_q, want)
    assert not off, f"with l2 codes, z_q should be the unit-length codes of s (the rows of e); got {off}"
    assert not mismatch(q.lookup(s), want), "lookup(s) should give the same unit codes as the forward pass"
    g = torch.randn_like(z_q)
    z_q.backward(g)
    expected = torch.autograd.grad(nn.functional.normalize(z_hat, dim=1), z_hat, g)[0]
    assert not mismatch(z_hat.grad, expected), "the straight-through gradient should pass the normalization"


@pytest.mark.ex1
def test_straight_through_gradient_is_identity():
    q = make_quantizer()
    z_hat = torch.randn(2, 8, 4, 4, requires_grad=True)
    z_q, _, _ = q(z_hat)
    g = torch.randn_like(z_q)
    z_q.backward(g)
    off = mismatch(z_hat.grad, g, rtol=0, atol=0)
    assert not off, f"the straight-through estimator should hand z_q's gradient to z_hat unchanged; got {off}"
    # the forward value's path into the codebook is detached
    g_e = q.codebook.weight.grad
    none = g_e is None
    assert none, f"the straight-through output z_q should send the codebook no gradient; got {gradient(g_e)}"


@pytest.mark.ex1
def test_codebook_term_moves_only_codes_and_commitment_only_encoder():
    q = make_quantizer(entropy_weight=0.0)
    z_hat = torch.randn(2, 8, 4, 4, requires_grad=True)
    _, _, losses = q(z_hat)
    g_z, g_e = torch.autograd.grad(losses["codebook"], [z_hat, q.codebook.weight], allow_unused=True,
                                   retain_graph=True)
    moves = lambda g: g is not None and bool(g.abs().sum() > 0)
    term = "the codebook term ||sg[z_hat] - z_q||^2"
    encoder, codes = moves(g_z), moves(g_e)
    assert not encoder, f"{term} should send z_hat no gradient (sg = stop-gradient); got {gradient(g_z)}"
    assert codes, f"{term} should move the codes; got {gradient(g_e)} at the codebook"
    g_z, g_e = torch.autograd.grad(losses["commit"], [z_hat, q.codebook.weight], allow_unused=True)
    term = "the commitment term beta * ||sg[z_q] - z_hat||^2"
    encoder, codes = moves(g_z), moves(g_e)
    assert encoder, f"{term} should move the encoder output z_hat; got {gradient(g_z)} there"
    assert not codes, f"{term} should send the codes no gradient (sg = stop-gradient); got {gradient(g_e)}"


@pytest.mark.ex1
def test_codebook_and_commitment_terms_by_hand():
    """Eq. 2's squared norms are means over all B*nz*h*w elements (docs/deviations.md, Deviation 5, as in VQGAN):
    codebook = mean((z_q - z_hat)^2), commit = beta * the same value."""
    q = make_quantizer(beta=0.4, entropy_weight=0.0)
    z_hat = torch.randn(2, 8, 3, 5)                                   # 240 elements
    _, _, losses = q(z_hat)
    z = z_hat.permute(0, 2, 3, 1).reshape(-1, 8).double()             # (M, nz)
    e = q.codebook.weight.detach().double()                           # (K, nz)
    z_q = e[torch.cdist(z, e).argmin(1)]                              # (M, nz) nearest codes, brute force
    by_hand = ((z_q - z) ** 2).mean().item()
    for name, what, want in (("codebook", "", by_hand), ("commit", "beta = 0.4 times ", 0.4 * by_hand)):
        got = losses[name].item()
        assert got == pytest.approx(want, rel=1e-5), (
            f"losses['{name}'] should be {what}the mean over the 240 elements of (z_q - z_hat)^2, "
            f"{want:.6g}; got {got:.6g} ({got / want:.4g} times that)")


@pytest.mark.ex1
def test_entropy_penalty_raises_codebook_usage():
    """Minimizing our -gamma*H(D_bar) on random features spreads them over more codes;
    the paper's literal +gamma*H would do the opposite (docs/deviations.md, Deviation 1)."""

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
    assert ours >= 2 * start and ours > literal, (
        f"200 Adam steps on losses['entropy'] should at least double the codes in use ({start} at the start) "
        f"and beat its opposite sign ({literal} codes); got {ours} codes")


@pytest.mark.ex1
def test_entropy_term_has_its_value_in_eval_mode_and_without_gradients():
    """losses['entropy'] is -gamma * H(D_bar) whenever the quantizer runs: validation (eval mode, under
    torch.no_grad) logs the same term that training minimizes."""
    q = make_quantizer(entropy_weight=0.5)
    z_hat = torch.randn(2, 8, 3, 3)
    z = z_hat.permute(0, 2, 3, 1).reshape(-1, 8)
    want = -0.5 * vq_entropy_by_hand(q.distances(z).detach()).item()
    for what, mode in (("in eval mode", "eval"), ("under torch.no_grad", "no_grad"), ("both", "both")):
        q.train(mode == "no_grad")
        with torch.no_grad() if mode != "eval" else torch.enable_grad():
            got = q(z_hat)[2]["entropy"].item()
        assert got == pytest.approx(want, rel=1e-5), (f"{what}, losses['entropy'] should still be -gamma * "
                                                      f"H(D_bar) = {want:.6f}; got {got:.6f}")


@pytest.mark.ex1
def test_l2_codes_eq2_terms_compare_the_vectors_eq1_compared():
    """With l2_codes (tiny's lookup, Deviation 17) Eq. 1 compares unit features with unit codes, so Eq. 2's
    two terms measure the distance between those same unit vectors, not the raw codebook rows."""
    q = make_quantizer(l2_codes=True, beta=0.25, entropy_weight=0.0)
    with torch.no_grad():
        q.codebook.weight.mul_(3.0)  # rows far from unit length: raw and unit codes differ
    z_hat = torch.randn(2, 8, 3, 3)
    _, s, losses = q(z_hat)
    z = nn.functional.normalize(z_hat, dim=1).permute(0, 2, 3, 1).reshape(-1, 8).double()  # (M, nz) unit
    e = nn.functional.normalize(q.codebook.weight.detach(), dim=1).double()             # (K, nz) unit
    want = ((e[s.flatten()] - z) ** 2).mean().item()
    for name, scale in (("codebook", 1.0), ("commit", 0.25)):
        got = losses[name].item()
        assert got == pytest.approx(scale * want, rel=1e-5), (
            f"with l2 codes, losses['{name}'] should be {scale:g} x the mean squared distance between the unit "
            f"features and their unit codes, {scale * want:.6f}; got {got:.6f}")


@pytest.mark.ex1
def test_entropy_term_is_zero_when_off():
    q = make_quantizer(entropy_weight=0.0)
    got = q(torch.randn(1, 8, 2, 2))[2]["entropy"].item()
    assert got == 0.0, f"with gamma = 0 the entropy term should be exactly 0; got {got}"


@pytest.mark.ex1
def test_soft_usage_entropy_gradcheck_in_float64():
    # the quantizer calls it in fp32; the pure function is checked against finite differences in float64
    g = torch.Generator().manual_seed(0)
    D = (3 * torch.rand(6, 5, generator=g, dtype=torch.float64)).requires_grad_()  # (M, K)
    for tau in (1.0, 0.5):
        ok = torch.autograd.gradcheck(lambda D: vq.soft_usage_entropy(D, tau), (D,), raise_exception=False)
        assert ok, (f"the gradient of soft_usage_entropy(D, tau={tau}) should match finite differences in "
                    f"float64; got another one")


@pytest.mark.ex1
def test_soft_usage_entropy_exact_values():
    H = lambda D, tau=1.0: vq.soft_usage_entropy(torch.tensor(D, dtype=torch.float64), tau).item()
    ln2, quarter = math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    cases = [
        # two equidistant codes: every feature splits 1/2 : 1/2, so D_bar = (1/2, 1/2) and H = ln 2
        ("two equidistant codes", [[3.0, 3.0], [0.5, 0.5]], 1.0, ln2),
        # each of two features on its own code: one-hot assignments, but the usage averaged over
        # the positions is (1/2, 1/2): H = ln 2 (a mean of per-position entropies gives 0)
        ("two features, each on its own code (H of the mean usage)", [[0.0, 50.0], [50.0, 0.0]], 1.0, ln2),
        # both features on the same code: D_bar = (1, 0), H = 0
        ("two features on one code", [[0.0, 50.0], [0.0, 50.0]], 1.0, 0.0),
        # tau divides D: distances (0, ln 3) give P = (3/4, 1/4) at tau = 1, and (0, 2 ln 3) at tau = 2
        ("distances (0, ln 3), tau = 1", [[0.0, math.log(3)]], 1.0, quarter),
        ("distances (0, 2 ln 3), tau = 2", [[0.0, 2 * math.log(3)]], 2.0, quarter),
    ]
    for what, D, tau, want in cases:
        got = H(D, tau)
        assert got == pytest.approx(want, abs=1e-9), (f"{what}: H(D_bar) should be {want:.12f}; got {got:.12f} "
                                                     f"(off by {abs(got - want):.2g})")


@pytest.mark.ex1
def test_soft_usage_entropy_stays_finite_with_a_dead_code():
    """A code far from every feature (what the entropy term exists for: a dead code) has a soft
    usage that underflows to exactly 0 in fp32, where the quantizer runs. H(D_bar) is then the
    entropy of the other codes, and its gradient is finite (0 * log 0 counts as 0)."""
    D = torch.tensor([[0.0, 1.0, 2.0, 500.0], [2.0, 0.5, 1.0, 500.0], [1.0, 1.0, 0.0, 500.0]],
                     requires_grad=True)                                    # (M, K) fp32, code 3 dead
    dead = bool((torch.softmax(-D, dim=1)[:, 3] == 0).all())
    assert dead, "the setup: code 3's soft usage should be exactly 0 in fp32"
    live = D.detach()[:, :3].double().requires_grad_()                      # the three live codes
    want = vq_entropy_by_hand(live)
    want.backward()
    got = vq.soft_usage_entropy(D)
    assert got.item() == pytest.approx(want.item(), rel=1e-5), (
        f"H(D_bar) with a dead code (soft usage 0) should be the live codes' entropy, {want:.6f}; "
        f"got {got:.6f}")
    got.backward()
    off = mismatch(D.grad, torch.cat([live.grad, torch.zeros(3, 1, dtype=torch.float64)], dim=1), atol=1e-5)
    assert not off, (f"the gradient of H(D_bar) with a dead code should be finite, the live codes' own, "
                     f"and 0 for the dead one; got {off}")
    # the same through the quantizer: one code moved far from every feature
    q = make_quantizer(K=4, nz=2)
    with torch.no_grad():
        q.codebook.weight[3] = 100.0                                        # squared distance > 10^4
    z_hat = torch.randn(1, 2, 3, 3, requires_grad=True)
    entropy = q(z_hat)[2]["entropy"]
    finite = math.isfinite(entropy.item())
    assert finite, f"the quantizer's entropy term with a dead code should be finite; got {entropy.item()}"
    grads = torch.autograd.grad(entropy, [z_hat, q.codebook.weight], allow_unused=True)
    finite = all(g is None or bool(torch.isfinite(g).all()) for g in grads)
    assert finite, "the gradients of the quantizer's entropy term with a dead code should be finite; got NaN"


@pytest.mark.ex1
def test_entropy_term_is_minus_gamma_times_the_soft_usage_entropy():
    """Our sign (docs/deviations.md, Deviation 1): losses["entropy"] = -gamma * H(D_bar), D the squared
    distances to the codes, D_bar the softmax(-D / tau) averaged over every position."""
    q = make_quantizer(entropy_weight=0.3, entropy_temperature=2.0)
    z_hat = torch.randn(2, 8, 3, 3)
    _, _, losses = q(z_hat)
    z = z_hat.permute(0, 2, 3, 1).reshape(-1, 8).double()               # (M, nz)
    D = torch.cdist(z, q.codebook.weight.detach().double()) ** 2        # (M, K) squared L2
    H = vq_entropy_by_hand(D, tau=2.0)
    assert 0 < H.item() <= math.log(32), f"the setup: 0 < H(D_bar) <= ln 32 by hand; got {H.item()}"
    got = losses["entropy"].item()
    assert got == pytest.approx(-0.3 * H.item(), rel=1e-4), (
        f"losses['entropy'] should be -gamma * H(D_bar) = {-0.3 * H.item():.6f} (gamma 0.3, tau 2); "
        f"got {got:.6f}")


@pytest.mark.ex1
def test_entropy_gradient_reaches_both_encoder_and_codebook():
    """Sec. 3.4 maximizes the entropy of the soft assignment softmax(-D) of the features to the
    codes, and D depends on both: the entropy term's gradient moves the encoder output z_hat
    (features spread over the codes) and the codebook (codes move towards the features), no
    stop-gradient on either. Checked against float64 autograd of the hand computation."""
    q = make_quantizer(entropy_weight=0.5, entropy_temperature=4.0)
    z_hat = torch.randn(2, 8, 3, 3, requires_grad=True)
    _, _, losses = q(z_hat)
    got = torch.autograd.grad(losses["entropy"], [z_hat, q.codebook.weight], allow_unused=True)
    z64 = z_hat.detach().double().requires_grad_()
    e64 = q.codebook.weight.detach().double().requires_grad_()
    D = torch.cdist(z64.permute(0, 2, 3, 1).reshape(-1, 8), e64) ** 2  # (M, K) squared L2
    want = torch.autograd.grad(-0.5 * vq_entropy_by_hand(D, tau=4.0), [z64, e64])
    for name, g, w in zip(("the encoder output z_hat", "the codebook"), got, want):
        reached = g is not None
        assert reached, f"the entropy term's gradient should reach {name} (D depends on it); got none there"
        off = mismatch(g, w, rtol=1e-3, atol=1e-6)
        assert not off, f"the entropy term's gradient at {name} should be the hand computation's; got {off}"


# ------------------------------------------------------------------------------------------
# regional / dilated attention


def attention_reach(dilated, H=8, W=8, b=4, pos=(1, 2), B=1):
    """Which output positions change when the input of image 0 changes at `pos`: (B, H, W) bool."""
    torch.manual_seed(0)
    block = vq.WindowAttention(16, window=b, dilated=dilated, head_dim=8)
    nn.init.normal_(block.proj_out.weight)  # undo the zero init, or the block is the identity
    # GroupNorm's statistics span the whole map; take it out to see the attention pattern alone
    block.norm = nn.Identity()
    x = torch.randn(B, 16, H, W)
    x2 = x.clone()
    x2[0, :, pos[0], pos[1]] += 1.0
    with torch.no_grad():
        return (block(x2) - block(x)).abs().sum(1) > 1e-6


def reach_mismatch(reach, expected):
    """"" when the reach is the expected one, else how it differs, in words."""
    extra, missing = int((reach & ~expected).sum()), int((expected & ~reach).sum())
    if not extra and not missing:
        return ""
    return f"{int(reach.sum())} positions moved, {extra} of them outside it and {missing} of it unmoved"


@pytest.mark.ex3
def test_regional_block_mixes_only_inside_its_window():
    reach = attention_reach(dilated=False)[0]
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[0:4, 0:4] = True  # (1, 2) lies in the top-left 4x4 window
    off = reach_mismatch(reach, expected)
    assert not off, (f"with regional attention (window 4, an 8x8 map) a change at (1, 2) should move "
                     f"exactly its window, rows and columns 0 to 3 (16 positions); got {off}")


@pytest.mark.ex3
def test_dilated_block_mixes_only_across_windows_at_the_same_offset():
    reach = attention_reach(dilated=True)[0]
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[1::4, 2::4] = True  # offset (1, 2) inside every 4x4 window
    off = reach_mismatch(reach, expected)
    assert not off, (f"with dilated attention (window 4, an 8x8 map) a change at (1, 2) should move exactly "
                     f"the positions at offset (1, 2) of every window, (1, 2), (1, 6), (5, 2), (5, 6); "
                     f"got {off}")


@pytest.mark.ex3
def test_regional_block_on_a_non_square_map_mixes_only_inside_its_window():
    # 8 rows, 12 columns: a 2 x 3 grid of windows; a grid taken with its sides swapped (3 x 2) cuts
    # the same 96 positions into other groups, yet round-trips and looks right on a square map
    reach = attention_reach(dilated=False, H=8, W=12, pos=(5, 9))[0]
    expected = torch.zeros(8, 12, dtype=torch.bool)
    expected[4:8, 8:12] = True  # (5, 9) lies in the bottom-right 4x4 window
    off = reach_mismatch(reach, expected)
    assert not off, (f"with regional attention (window 4, an 8x12 map: 2 x 3 windows) a change at (5, 9) "
                     f"should move exactly its window, rows 4 to 7 and columns 8 to 11 (16 positions); "
                     f"got {off}")


@pytest.mark.ex3
def test_dilated_block_on_a_non_square_map_mixes_only_at_the_same_offset():
    reach = attention_reach(dilated=True, H=8, W=12, pos=(5, 9))[0]
    expected = torch.zeros(8, 12, dtype=torch.bool)
    expected[1::4, 1::4] = True  # offset (1, 1) inside each of the 2 x 3 windows
    off = reach_mismatch(reach, expected)
    assert not off, (f"with dilated attention (window 4, an 8x12 map: 2 x 3 windows) a change at (5, 9) "
                     f"should move exactly the 6 positions at offset (1, 1) of every window, rows 1 and 5, "
                     f"columns 1, 5 and 9; got {off}")


@pytest.mark.ex3
def test_window_attention_never_mixes_images():
    for dilated in (False, True):
        moved = int(attention_reach(dilated=dilated, B=3)[1:].sum())
        kind = "dilated" if dilated else "regional"
        assert moved == 0, (f"{kind} attention should keep every image to itself: a change in image 0 of a "
                            f"batch of 3 should move nothing in images 1 and 2; got {moved} moved there")


@pytest.mark.ex3
def test_each_token_of_a_window_is_one_position_with_all_its_channels():
    """window_partition's contract, read from what it returns: every token (a row of L x C) is the C
    channels of one position, whole; every group holds the positions of one window (regional) or of
    one offset (dilated); every position of every image appears once. Channels 0-2 of the map carry
    each position's (image, row, column), so that a token says where it came from."""
    B, C, H, W, b = 2, 5, 8, 12, 4
    x = torch.zeros(B, C, H, W)
    x[:, 0] = torch.arange(B)[:, None, None]
    x[:, 1] = torch.arange(H)[None, :, None]
    x[:, 2] = torch.arange(W)[None, None, :]
    x[:, 3:] = 100 + torch.arange(C - 3)[None, :, None, None]  # the other channels: their own index
    for dilated in (False, True):
        kind = "dilated" if dilated else "regional"
        seq = vq.window_partition(x, b, dilated)                   # (groups, L, C)
        where = seq[..., :3].round().long()                        # (groups, L, 3): image, row, column
        ok = bool((where >= 0).all()) and all(bool((where[..., k] < n).all()) for k, n in enumerate((B, H, W)))
        whole = ok and bool((seq == x[where[..., 0], :, where[..., 1], where[..., 2]]).all())
        assert whole, (f"{kind}: each token of window_partition should be the {C} channels of one position of "
                       f"x, unchanged; got tokens that mix channels or positions")
        key = where[..., 1:] % b if dilated else where[..., 1:] // b  # the offset, or the window
        same = bool((where[..., :1] == where[:, :1, :1]).all() and (key == key[:, :1]).all())
        assert same, (f"{kind}: all the positions of a group should share one image and one "
                      f"{'offset' if dilated else 'window'}; got groups that mix them")
        flat = where[..., 0] * H * W + where[..., 1] * W + where[..., 2]
        once = sorted(flat.flatten().tolist()) == list(range(B * H * W))
        assert once, f"{kind}: every position of every image should appear once in window_partition's groups"


@pytest.mark.ex3
def test_window_partition_round_trip():
    x = torch.randn(2, 3, 8, 12)
    for dilated in (False, True):
        kind = "dilated" if dilated else "regional"
        seq = vq.window_partition(x, 4, dilated)
        want = (2 * 6, 16, 3) if not dilated else (2 * 16, 6, 3)
        shape = tuple(seq.shape)
        assert shape == want, (f"{kind} window_partition of a (2, 3, 8, 12) map with window 4 should have "
                               f"shape {want}; got {shape}")
        back = vq.window_merge(seq, 4, dilated, 2, 8, 12)
        moved = int((back != x).sum()) if back.shape == x.shape else f"shape {tuple(back.shape)}"
        assert moved == 0, (f"{kind} window_merge(window_partition(x)) should give x back; got {moved} of "
                            f"{x.numel()} values moved")


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
    assert new.cfg.decoder == "seqgan"
    assert sum(len(level.attn) for level in new.decoder.up) == 2 * len(new.decoder.up)
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
    # 2x2 groups
    vq.Tokenizer(vq.TokenizerConfig(**{**vq.TOKENIZER_PRESETS["tiny"], "decoder": "seqgan", "window": 4}))


@pytest.mark.parametrize("decoder", ["conv-x2", "attention-x2"])
def test_table1_decoders_build_and_keep_the_conv_names(decoder):
    base = vq.Tokenizer(vq.TokenizerConfig(**vq.TOKENIZER_PRESETS["tiny"]))
    tok = vq.Tokenizer(vq.TokenizerConfig(**{**vq.TOKENIZER_PRESETS["tiny"], "decoder": decoder}))
    assert set(base.state_dict()) < set(tok.state_dict())  # every conv-decoder weight, plus the extra blocks
    x_hat, _, _ = tok(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert x_hat.shape == (2, 3, 32, 32)
