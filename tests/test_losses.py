"""losses.py: Eq. 3, the frozen VGG, and the GAN's separation of generator and discriminator."""

import pytest
import torch
import torch.nn as nn

import losses
import vq


def random_features(seed=0):
    """A small random VGG16 whose BatchNorm statistics are those of random images, as after
    training: every layer, relu5_3 and the logits included, then moves with its input (with
    arbitrary statistics the deep layers of a random net barely do, and Eq. 3's tests could not
    tell which layers a loss sums)."""
    torch.manual_seed(seed)
    net = losses.SmallVGG16(5, widths=(4, 4, 8, 8, 8), hidden=16)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # running statistics: the plain mean over what it sees
            m.reset_running_stats()
    with torch.no_grad():
        net.train()(losses.normalize_imagenet(torch.rand(16, 3, 32, 32) * 2 - 1))
    return losses.VGG16Features(net)


def test_features_have_the_named_layers():
    out = random_features()(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert list(out) == ["relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3", "logit"]
    assert out["relu1_2"].shape == (2, 4, 32, 32) and out["relu5_3"].shape == (2, 8, 2, 2)
    assert out["logit"].shape == (2, 5)


LOW = ["relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"]  # L_low's layers (Sec. 3.3.2)
SEM = ["relu5_3", "logit"]                                     # L_sem's: relu5_3 and the logits


def eq3_by_hand(f, x_hat, x, alpha):
    """Eq. 3 by hand: {"per", "low", "sem"}, each layer's (1 / H_l W_l C_l) ||y_hat_l - y_l||^2
    averaged over the batch."""
    fx, fh = f(x), f(x_hat)
    mse = lambda l: ((fh[l] - fx[l]) ** 2).flatten(1).mean(1).mean()
    low, sem = sum(mse(l) for l in LOW), sum(mse(l) for l in SEM)
    return {"per": alpha * sem + (1 - alpha) * low, "low": low, "sem": sem}


@pytest.mark.ex2
def test_layer_mse_by_hand():
    g = torch.Generator().manual_seed(0)
    # (B, C_l, H_l, W_l)
    y_hat, y = torch.randn(3, 4, 5, 6, generator=g), torch.randn(3, 4, 5, 6, generator=g)
    d = (y_hat - y).double()
    want = sum((d[b] ** 2).sum().item() / (4 * 5 * 6) for b in range(3)) / 3
    got = losses.layer_mse(y_hat, y).item()
    assert got == pytest.approx(want, rel=1e-5), (
        f"layer_mse should be (1 / (H_l W_l C_l)) ||y_hat_l - y_l||^2 averaged over the batch of 3, "
        f"{want:.6f}; got {got:.6f}")


@pytest.mark.ex2
def test_alpha_zero_and_one_give_exactly_low_and_sem():
    f = random_features()
    x, x_hat = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    want = eq3_by_hand(f, x_hat, x, 0.3)
    # terms(): the two parts train.py logs, whatever alpha
    terms = losses.SemanticPerceptualLoss(f, 0.3).terms(x_hat, x)
    for name, layers in (("low", "relu1_2 ... relu5_3"), ("sem", "relu5_3 and the logits")):
        got = terms[name].item()
        assert got == pytest.approx(want[name].item(), rel=1e-6), (
            f"terms()['{name}'] should be the sum over {layers} of the per-layer mean squared error, "
            f"{want[name].item():.6f}; got {got:.6f}")
    for alpha, what in ((0.0, "L_low"), (1.0, "L_sem"), (0.3, "0.3 L_sem + 0.7 L_low")):
        got = losses.SemanticPerceptualLoss(f, alpha)(x_hat, x).item()
        expected = (alpha * want["sem"] + (1 - alpha) * want["low"]).item()
        assert got == pytest.approx(expected, rel=1e-5), (
            f"L_per at alpha = {alpha} should be {what} (Eq. 3: alpha L_sem + (1 - alpha) L_low), "
            f"{expected:.6f}; got {got:.6f}")
    got = terms["per"].item()
    assert got == pytest.approx(want["per"].item(), rel=1e-5), \
        f"terms()['per'] at alpha = 0.3 should be the loss itself, {want['per'].item():.6f}; got {got:.6f}"


@pytest.mark.ex2
def test_terms_log_both_parts_at_alpha_zero_and_one():
    """train.py logs L_low and L_sem at every alpha, the study's endpoints included: at alpha 0 and 1
    both parts keep their values (only "per" depends on alpha)."""
    f = random_features()
    x, x_hat = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    want = eq3_by_hand(f, x_hat, x, 0.5)
    for alpha in (0.0, 1.0):
        terms = losses.SemanticPerceptualLoss(f, alpha).terms(x_hat, x)
        for name in ("low", "sem"):
            got = float(terms[name])
            assert got == pytest.approx(want[name].item(), rel=1e-6), (
                f"at alpha = {alpha:g}, terms()['{name}'] should still be {want[name].item():.6f} (both parts are "
                f"logged whatever alpha is); got {got:.6f}")


@pytest.mark.ex2
def test_no_gradient_reaches_the_target_image():
    """Eq. 3 compares x_hat's features with the target's: the target x is data, and its features carry
    no graph (a gradient reaching x would be wasted work, and wrong where x is itself produced)."""
    f = random_features()
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_()
    x_hat = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_()
    losses.SemanticPerceptualLoss(f, 0.5)(x_hat, x).backward()
    reached = x.grad is not None and bool(x.grad.abs().sum() > 0)
    assert not reached, (f"no gradient should reach the target image x (its features need no graph); got one "
                         f"of norm {x.grad.norm().item() if x.grad is not None else 0:.3g}")


@pytest.mark.ex2
def test_each_layers_unit_divides_its_term_once():
    """With units (Deviation 16, tiny's default) VGG16Features already divides each layer's features by
    its unit; Eq. 3 then takes the plain per-layer MSE of those features: each term is the raw
    layer's MSE over unit^2, not over unit^4 nor left raw."""
    f = random_features()
    x, x_hat = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    raw = eq3_by_hand(f, x_hat, x, 0.5)
    f.scales = {name: 2.0 + i for i, name in enumerate(LOW + ["logit"])}
    fx, fh = f(x), f(x_hat)  # features in their units
    for name, layers in (("low", LOW), ("sem", SEM)):
        want = sum(((fh[l] - fx[l]) ** 2).flatten(1).mean(1).mean() for l in layers).item()
        got = float(losses.SemanticPerceptualLoss(f, 0.5).terms(x_hat, x)[name])
        assert got == pytest.approx(want, rel=1e-5), (
            f"with units, terms()['{name}'] should divide each layer's MSE by its unit squared once, {want:.6f} "
            f"(raw: {raw[name].item():.6f}); got {got:.6f}")


@pytest.mark.ex2
def test_perceptual_loss_gradient_reaches_the_reconstruction():
    """L_per trains the decoder: its gradient w.r.t. x_hat is the hand computation's (the VGG's own
    weights stay frozen, but the graph through x_hat's features must be kept)."""
    f = random_features()
    x, x_hat = torch.rand(2, 3, 32, 32) * 2 - 1, (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_()
    per = losses.SemanticPerceptualLoss(f, 0.3)(x_hat, x)
    graph = per.requires_grad
    assert graph, "L_per should have a gradient with respect to x_hat (it trains the decoder); got a constant"
    got, = torch.autograd.grad(per, x_hat)
    x_hat2 = x_hat.detach().clone().requires_grad_()
    want, = torch.autograd.grad(eq3_by_hand(f, x_hat2, x, 0.3)["per"], x_hat2)
    bad = int((~torch.isclose(got, want, rtol=1e-4, atol=1e-7)).sum())
    assert bad == 0, (f"the gradient of L_per with respect to x_hat should be the hand computation's; got "
                      f"{bad} of {got.numel()} values off, by up to {(got - want).abs().max():.3g}")


def test_alpha_outside_unit_interval_is_refused():
    with pytest.raises(ValueError, match=r"alpha of Eq. 3 must be in \[0, 1\]"):
        losses.SemanticPerceptualLoss(random_features(), 1.5)


def test_vgg_stays_in_eval_mode_and_never_changes():
    f = random_features()
    before = {k: v.clone() for k, v in f.state_dict().items()}
    tok = vq.Tokenizer(vq.TokenizerConfig(**vq.TOKENIZER_PRESETS["tiny"]))
    per = losses.SemanticPerceptualLoss(f, 0.5)
    model = nn.ModuleDict({"tok": tok, "per": per})
    model.train()  # a parent switching to training mode must not reach the VGG
    assert not any(m.training for m in f.modules())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    for _ in range(3):
        x_hat, _, _ = tok(x)
        loss = per(x_hat, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in f.state_dict().items())  # BN stats included
    assert all(p.grad is None for p in f.parameters())


def d_step(disc, opt_d, x, x_hat, r1_weight=0.0):
    """D's block of train.py's tokenizer loop -> D's hinge loss."""
    total, d_loss = losses.discriminator_loss(disc, x, x_hat, r1_weight)
    opt_d.zero_grad(set_to_none=True)
    total.backward()
    opt_d.step()
    return d_loss.detach()


def test_discriminator_step_leaves_generator_gradients_untouched():
    torch.manual_seed(0)
    tok = vq.Tokenizer(vq.TokenizerConfig(**vq.TOKENIZER_PRESETS["tiny"]))
    disc = losses.Discriminator(ndf=8, n_layers=2)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    x_hat, _, _ = tok(x)
    losses.hinge_g_loss(disc(x_hat)).backward(retain_graph=True)  # the generator step's gradients
    g_before = {n: p.grad.clone() for n, p in tok.named_parameters() if p.grad is not None}
    d_before = [p.clone() for p in disc.parameters()]
    d_step(disc, opt_d, x, x_hat)
    g_after = {n: p.grad for n, p in tok.named_parameters() if p.grad is not None}
    assert g_before.keys() == g_after.keys()
    assert all(torch.equal(g_before[n], g_after[n]) for n in g_before)
    assert any(not torch.equal(a, b) for a, b in zip(d_before, disc.parameters()))  # D did learn


def test_hinge_losses_and_adaptive_weight():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    assert losses.hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.75))
    assert losses.hinge_g_loss(fake).item() == pytest.approx(0.75)
    w = torch.randn(3, requires_grad=True)
    rec, g = (3 * w).sum(), (w * 0.5).sum()  # gradient norms 3*sqrt(3) and 0.5*sqrt(3)
    assert losses.adaptive_weight(rec, g, w).item() == pytest.approx(3 / (0.5 + 1e-4 / 3**0.5), rel=1e-4)


def test_imagenet_vgg_offline_says_both_ways_out(monkeypatch, tmp_path):
    import urllib.error

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError) as e:
        losses.imagenet_vgg16()
    assert "connect to the internet once" in str(e.value) and "--vgg-weights FILE" in str(e.value)
    with pytest.raises(RuntimeError, match="cannot load VGG16 weights"):
        losses.imagenet_vgg16(str(tmp_path / "missing.pth"))


@pytest.mark.ex2
@pytest.mark.parametrize("step", [0, 5])  # before and after disc_start = 5
def test_tokenizer_total_loss_is_the_papers_sum_term_by_term(step):
    """losses.tokenizer_objective, the loss that trains, gated by losses.gan_on as train.py gates
    it, against every term computed by hand:
    L = ||x - x_hat||_1 + w_per * L_per^alpha + ||sg[z_hat] - z_q||^2 + beta ||sg[z_q] - z_hat||^2
        - gamma * H(D_bar)  (+ lambda * disc_weight * L_G from disc_start on)."""
    torch.manual_seed(0)
    cfg = vq.TokenizerConfig(**vq.TOKENIZER_PRESETS["tiny"])
    tok = vq.Tokenizer(cfg)
    f = random_features()
    disc = losses.Discriminator(ndf=8, n_layers=2)
    alpha, w_per, beta, gamma, w_gan = 0.3, 0.7, cfg.beta, cfg.entropy_weight, 0.5
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    x_hat, s, vq_terms = tok(x)
    gan = losses.gan_on(step, 5, w_gan)  # disc_start = 5
    total, terms = losses.tokenizer_objective(x, x_hat, vq_terms, losses.SemanticPerceptualLoss(f, alpha),
                                              w_per, disc if gan else None, tok.last_layer(), w_gan)

    # every term by hand, from the model's parts
    z_hat = tok.encoder(x)                                                      # (B, nz, h, w)
    z = z_hat.permute(0, 2, 3, 1).reshape(-1, cfg.nz)                            # (M, nz)
    e = tok.quantizer.codebook.weight                                           # (K, nz)
    if cfg.l2_codes:  # tiny's lookup on the unit sphere (Deviation 17)
        z, e = torch.nn.functional.normalize(z, dim=1), torch.nn.functional.normalize(e, dim=1)
    D = torch.cdist(z, e) ** 2                                                  # (M, K) squared L2
    nearest = torch.equal(s.flatten(), D.argmin(1))                             # Eq. 1
    assert nearest, "the tokenizer's indices s should be the nearest codes (Eq. 1); got others"
    z_q = e[D.argmin(1)]                                                        # (M, nz)
    by_hand = {
        "l1": (x - x_hat).abs().mean(),
        "codebook": ((z_q - z.detach()) ** 2).mean(),
        "commit": beta * ((z - z_q.detach()) ** 2).mean(),
    }
    D_bar = torch.softmax(-D, dim=1).mean(0)                                    # (K,) soft usage
    H = -(D_bar * D_bar.log()).sum()
    by_hand["entropy"] = -gamma * H                                             # our sign: maximize H
    by_hand["per"] = eq3_by_hand(f, x_hat, x, alpha)["per"]                      # Eq. 3
    expected = (by_hand["l1"] + w_per * by_hand["per"] + by_hand["codebook"] + by_hand["commit"]
                + by_hand["entropy"])
    if step >= 5:
        g = -disc(x_hat).mean()                                                 # hinge generator loss
        rec = by_hand["l1"] + w_per * by_hand["per"]
        last = tok.decoder.conv_out.weight
        grad = lambda loss: torch.autograd.grad(loss, last, retain_graph=True)[0].norm()
        by_hand["g"], by_hand["lam"] = g, w_gan * grad(rec) / (grad(g) + 1e-4)  # VQGAN's adaptive weight
        expected = expected + by_hand["lam"] * g
    else:
        gan_terms = sorted({"g", "lam"} & set(terms))
        assert not gan_terms, f"before disc_start the objective should have no GAN term; got {gan_terms}"
    for k, v in by_hand.items():
        got, want = terms[k].item(), v.item()
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6), \
            f"the objective's term '{k}' should be {want:.6g} by hand; got {got:.6g}"
    # -gamma * H lowers the loss as usage spreads
    assert by_hand["entropy"] < 0 < H, f"the setup: H(D_bar) > 0 by hand; got {H.item()}"
    assert total.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6), (
        f"the total loss should be the sum of its terms by hand, {expected.item():.6g}; "
        f"got {total.item():.6g}")


def test_vgg_features_run_in_fp32_under_autocast():
    f = random_features()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    plain = f(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = f(x.bfloat16())
    for k in plain:  # fp32 inside autocast, and the same numbers up to the bf16 rounding of the input
        assert auto[k].dtype == torch.float32, k
    torch.testing.assert_close(auto["relu1_2"], f(x.bfloat16().float())["relu1_2"])


def test_r1_penalty_is_the_squared_input_gradient_of_d():
    # D(x) = a 1x1 conv with weights w over a 4x5 image: d(sum of logits)/dx = w at every pixel,
    # so ||grad||^2 = H * W * ||w||^2 per image, whatever x is
    disc = nn.Conv2d(3, 1, 1, bias=False)
    with torch.no_grad():
        disc.weight.copy_(torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1))
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    r1 = losses.r1_penalty(disc(x), x)
    assert r1.item() == pytest.approx(4 * 5 * (1 + 4 + 0.25))
    r1.backward()  # the penalty trains D: it has a gradient w.r.t. D's weights (2 * H * W * w)
    torch.testing.assert_close(disc.weight.grad.flatten(), 2 * 20 * torch.tensor([1.0, -2.0, 0.5]))


def test_discriminator_step_with_r1_trains_d_on_the_penalty_too():
    torch.manual_seed(0)
    x, x_hat = torch.rand(4, 3, 16, 16) * 2 - 1, torch.rand(4, 3, 16, 16) * 2 - 1
    steps = {}
    for r1 in (0.0, 10.0):
        torch.manual_seed(1)
        disc = losses.Discriminator(ndf=8, n_layers=2, norm="none")
        opt_d = torch.optim.SGD(disc.parameters(), lr=0.1)
        d = d_step(disc, opt_d, x, x_hat, r1)
        steps[r1] = (d, [p.detach().clone() for p in disc.parameters()])
    assert steps[0.0][0] == steps[10.0][0]  # the same hinge loss is reported ...
    # ... but D moved otherwise
    assert any(not torch.equal(a, b) for a, b in zip(steps[0.0][1], steps[10.0][1]))


def test_gradient_units_make_every_layer_pull_the_image_as_hard_as_l1():
    """Eq. 3's units in `tiny` (Deviation 16), by their defining property: with the features divided
    by their units, the gradient of each layer's term at each image's mean color, pooled over all
    the images given, has the norm of the L1 term's gradient there."""
    features = random_features()
    batches = [torch.rand(3, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1]
    units = losses.gradient_units(features, batches)
    assert set(units) == set(losses.LOW_LAYERS) | {"logit"} and len(set(units.values())) > 1
    features.scales = units
    x = torch.cat(batches)
    x_ref = x.mean((2, 3), keepdim=True).expand_as(x).clone().requires_grad_(True)  # (B, 3, H, W)
    y, y_ref = features(x), features(x_ref)
    l1 = torch.autograd.grad((x_ref - x).abs().mean(), x_ref)[0].norm()
    for name in units:
        g = torch.autograd.grad((y_ref[name] - y[name].detach()).pow(2).mean(), x_ref, retain_graph=True)[0]
        assert g.norm() == pytest.approx(l1.item(), rel=1e-3), \
            f"{name}: in its unit its term should pull the image as hard as L1 ({g.norm():.4g} against {l1:.4g})"


def test_vgg_features_apply_each_unit_exactly_once():
    features = random_features()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    raw = features(x)
    features.scales = {name: 2.0 + i for i, name in enumerate(raw)}  # a different unit per layer
    scaled = features(x)
    for name, unit in features.scales.items():
        assert torch.allclose(scaled[name] * unit, raw[name], rtol=1e-6, atol=1e-7), \
            f"{name}: the features must come divided by their unit {unit} once, not {scaled[name].norm() / raw[name].norm():.4g}x"
