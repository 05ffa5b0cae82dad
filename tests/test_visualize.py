"""visualize.py: the GT-context view of Sec. 3.2 is one teacher-forced pass, top-1, causal; the
MaskGIT variant keeps the given tokens; the CLI draws its figures from a tiny run and refuses
bad input with one line."""

import math
import os

import pytest
import torch

import runs as run_folders  # the fixture `runs` is a folder
import train
import transformer
import visualize
from conftest import TINY

# smallest models that still have every part (2 layers, classes, a few codes)
CFG = dict(K=16, seq_len=12, num_classes=3, n_layer=2, n_head=2, n_embd=32)


def tiny(cls, **kw):
    torch.manual_seed(0)
    return cls(transformer.TransformerConfig(**{**CFG, **kw}))


def tokens(B=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(CFG["K"], (B, CFG["seq_len"]), generator=g)  # (B, N)
    y = torch.randint(CFG["num_classes"], (B,), generator=g)                # (B,)
    return s, y


# ------------------------------------------------------------------------------------------
#### The view itself
# ------------------------------------------------------------------------------------------


@pytest.mark.ex6
def test_gt_context_is_the_argmax_of_one_teacher_forced_pass():
    # class_dropout=1: in training mode every label would be dropped, so a wrong mode shows
    gpt = tiny(transformer.GPT, class_dropout=1.0).train()
    s, y = tokens()
    calls = {"forward": 0, "predict": 0}
    gpt.register_forward_hook(lambda *_: calls.__setitem__("forward", calls["forward"] + 1))
    predict = gpt.predict

    def counted_predict(*a, **kw):
        calls["predict"] += 1
        return predict(*a, **kw)

    gpt.predict = counted_predict
    s_prime = visualize.gt_context_predictions(gpt, s, y)
    one_pass = calls == {"forward": 1, "predict": 1}  # ONE pass, nothing sampled token by token
    assert one_pass, (f"the GT-context view should run the GPT once (teacher forcing), nothing token by "
                      f"token; got {calls['forward']} forward calls and {calls['predict']} predict calls")
    assert gpt.training, "gt_context_predictions should restore the caller's mode, training; got eval mode"
    gpt.predict = predict
    # reference: the same pass in eval mode (no class dropout), argmax at every position
    gpt.eval()
    with torch.no_grad():
        logits, _ = gpt(s, y)                     # (B, N, K)
    kind = s_prime.shape == s.shape and s_prime.dtype == torch.long
    assert kind, (f"s' should be a long tensor of shape {tuple(s.shape)}; got {s_prime.dtype} of shape "
                  f"{tuple(s_prime.shape)}")
    differ = int((s_prime != logits.argmax(-1)).sum())
    assert differ == 0, (f"s' should be the argmax at every position of one pass in eval mode (labels kept, "
                         f"no dropout); got {differ} of {s.numel()} positions with another token")
    # a (B, h, w) grid is flattened in raster order
    differ = int((visualize.gt_context_predictions(gpt, s.view(4, 3, 4), y) != s_prime).sum())
    assert differ == 0, f"a (B, h, w) grid should give the s' of its raster order; got {differ} positions off"


@pytest.mark.ex6
def test_gt_context_prediction_at_i_ignores_s_i_and_later_tokens():
    gpt = tiny(transformer.GPT).eval()
    s, y = tokens()
    base = visualize.gt_context_predictions(gpt, s, y)
    g = torch.Generator().manual_seed(2)
    for i in range(CFG["seq_len"]):
        changed = s.clone()
        # new tokens at i and after: s'_0 .. s'_i see only s_<i, so they cannot move
        changed[:, i:] = torch.randint(CFG["K"], changed[:, i:].shape, generator=g)
        moved = int((visualize.gt_context_predictions(gpt, changed, y)[:, :i + 1] != base[:, :i + 1]).sum())
        upto = f"s'_0 .. s'_{i}" if i else "s'_0"
        assert moved == 0, (f"s'_j should see only s_<j (teacher forcing, causal): new tokens from position "
                            f"{i} on should move none of {upto}; got {moved} moved")
    # and the context does matter: changing s_0 changes the logits at position 1
    changed = s.clone()
    changed[:, 0] = (s[:, 0] + 1) % CFG["K"]
    with torch.no_grad():
        a, b = gpt(s, y)[0], gpt(changed, y)[0]
    context = torch.allclose(a[:, 0], b[:, 0]) and not torch.allclose(a[:, 1], b[:, 1])
    assert context, "the setup: the GPT's logits at position 1 should depend on s_0, at 0 not; got otherwise"


@pytest.mark.ex6
def test_gt_context_reproduces_a_greedy_generation_exactly():
    # A sequence the GPT generated greedily is, position by position, the argmax given the
    # tokens before it: the GT-context top-1 of that sequence must be the sequence itself.
    # (Not a restatement of the pass: a view shifted by one position, or one that lets
    # position i see s_i, fails here.) Generated without the KV cache, the slow reference,
    # so that this grade of exercise 6 does not depend on exercise 4.
    gpt = tiny(transformer.GPT, class_dropout=0.5).eval()
    with torch.no_grad():
        gpt.cls_emb.weight.mul_(50)  # labels that matter, so each class has its own sequence
    _, y = tokens(B=6)
    s = gpt.generate(y, temperature=0, use_cache=False)         # (B, N) greedy
    assert len({tuple(r) for r in s.tolist()}) > 1, "the setup: greedy sequences that differ by class"
    s_prime = visualize.gt_context_predictions(gpt, s, y)
    differ = int((s_prime != s).sum())
    assert differ == 0, (f"on a sequence the GPT generated greedily from its labels, s' should be the "
                         f"sequence itself (each token is the argmax given the ones before and the label); "
                         f"got {differ} of {s.numel()} tokens differing")
    accuracy = visualize.token_accuracy(s, s_prime)
    assert accuracy == 1.0, f"token_accuracy(s, s) should be 1; got {accuracy}"


@pytest.mark.ex6
def test_gt_context_on_an_unconditional_gpt():
    """The paper's FFHQ and LSUN models are unconditional (Sec. 4.2): num_classes 0, the null class
    its only class row. Their view takes no labels, whatever it is handed (the split's view passes
    the dataset's labels, 2, 1, 0, 0 here, which such a GPT has no rows for, and y = None means no
    labels), and it runs in eval mode all the same: dropout is on in training mode, labels or not."""
    gpt = tiny(transformer.GPT, num_classes=0, dropout=0.3).train()
    s, y = tokens()
    gpt.eval()
    with torch.no_grad():
        want = gpt(s, None)[0].argmax(-1)         # (B, N) one pass in eval mode, the null class
    gpt.train()
    for labels, given in ((y, "the dataset's labels"), (None, "y = None")):
        try:
            s_prime = visualize.gt_context_predictions(gpt, s, labels)
        except NotImplementedError:  # an exercise not written yet
            raise
        except Exception as e:
            pytest.fail(f"an unconditional GPT's view should take no labels and run on its null class, given "
                        f"{given}; got {type(e).__name__}: {str(e).splitlines()[0]}", pytrace=False)
        same_shape = s_prime.shape == want.shape
        differ = int((s_prime != want).sum()) if same_shape else f"shape {tuple(s_prime.shape)}"
        assert differ == 0, (f"an unconditional GPT's s', given {given}, should be the argmax of one pass in "
                             f"eval mode (no dropout) on the null class; got {differ} of {s.numel()} "
                             f"positions with another token")
    assert gpt.training, "gt_context_predictions should restore the caller's mode, training; got eval mode"


@pytest.mark.ex6
def test_gt_context_refuses_maskgit():
    try:
        visualize.gt_context_predictions(tiny(transformer.MaskGIT), *tokens())
    except TypeError:
        return
    pytest.fail("gt_context_predictions(MaskGIT, ...) should raise TypeError (the view needs the causal "
                "GPT); got predictions", pytrace=False)


@pytest.mark.ex6
def test_gt_context_refuses_any_model_that_is_not_the_causal_gpt():
    """A model with the GPT's interface that is not a GPT (here: MaskGIT's bidirectional trunk behind
    GPT's forward(s, y)) sees s_i and later tokens: its "view" would be no GT-context view at all."""
    class LooksLikeAGPT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = tiny(transformer.MaskGIT)
            self.config = self.inner.config

        def forward(self, s, y=None, targets=None):
            return self.inner.predict(self.inner.class_labels(y, len(s), s.device), s), None

    try:
        visualize.gt_context_predictions(LooksLikeAGPT(), *tokens())
    except TypeError:
        return
    pytest.fail("gt_context_predictions should raise TypeError for any model that is not a GPT (only a causal "
                "model's one pass is the view of Sec. 3.2); got predictions", pytrace=False)


@pytest.mark.ex6
def test_gt_context_leaves_an_eval_mode_caller_in_eval_mode():
    gpt = tiny(transformer.GPT).eval()
    visualize.gt_context_predictions(gpt, *tokens())
    assert not gpt.training, "gt_context_predictions should restore the caller's mode, eval; got training mode"


def test_maskgit_view_keeps_gt_where_unmasked_and_predicts_the_rest():
    model = tiny(transformer.MaskGIT).eval()
    s, y = tokens()
    s_prime, mask = visualize.maskgit_context_predictions(model, s, y, 0.5, torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and (mask.sum(1) == 6).all()  # round(0.5 * 12) masked per row
    assert torch.equal(s_prime[~mask], s[~mask])                  # given GT stays (False = given)
    with torch.no_grad():
        logits, _ = model(s, y, mask=mask)
    assert torch.equal(s_prime[mask], logits.argmax(-1)[mask])    # top-1 where masked
    # the same seed gives the same masks
    again = visualize.maskgit_context_predictions(model, s, y, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(again[1], mask) and torch.equal(again[0], s_prime)


@pytest.mark.ex6
def test_token_accuracy_by_hand():
    s = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    s_prime = torch.tensor([[1, 0, 3, 0], [5, 6, 7, 0]])
    got = visualize.token_accuracy(s, s_prime)
    assert got == pytest.approx(5 / 8), f"without a mask the accuracy should be 5 of 8, 0.625; got {got}"
    # over masked positions only (True = masked (predicted)): 1 right and 1 wrong in image 0, 1 wrong
    # in image 1: 1 of 3 (a mean of per-image shares would give (1/2 + 0) / 2)
    mask = torch.tensor([[True, True, False, False], [False, False, False, True]])
    got = visualize.token_accuracy(s, s_prime, mask)
    assert got == pytest.approx(1 / 3), (f"with a mask the accuracy should count the 3 masked positions of "
                                         f"the batch, 1 right: 0.333; got {got}")
    # (B, h, w) grids give the same answer
    got = visualize.token_accuracy(s.view(2, 2, 2), s_prime.view(2, 2, 2), mask.view(2, 2, 2))
    assert got == pytest.approx(1 / 3), f"(B, h, w) grids should give their (B, N) accuracy, 0.333; got {got}"


@pytest.mark.ex6
def test_token_accuracy_returns_a_float_mixes_grid_and_sequence_and_is_nan_on_an_empty_mask():
    s = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    s_prime = torch.tensor([[1, 0, 3, 0], [5, 6, 7, 0]])
    cases = [("s (B, h, w) beside s' (B, N)", (s.view(2, 2, 2), s_prime), 5 / 8),
             ("s (B, N) beside s' and a mask (B, h, w)",
              (s, s_prime.view(2, 2, 2), torch.tensor([[True, True, False, False], [False] * 4]).view(2, 2, 2)),
              1 / 2),
             ("a mask with no position masked", (s, s_prime, torch.zeros(2, 4, dtype=torch.bool)), math.nan)]
    for what, args, want in cases:
        try:
            got = visualize.token_accuracy(*args)
        except NotImplementedError:
            raise
        except Exception as e:
            pytest.fail(f"token_accuracy should take {what} (the contract: s, s' and the mask (B, N) or (B, h, "
                        f"w), NaN when no position counts); got {type(e).__name__}: {e}", pytrace=False)
        ok = type(got) is float and (math.isnan(got) if math.isnan(want) else got == pytest.approx(want))
        assert ok, f"token_accuracy with {what} should return the Python float {want}; got {got!r}"


# ------------------------------------------------------------------------------------------
#### The command line on a tiny run
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-step tokenizer and a 2-step AR model on it, in a fresh runs folder."""
    runs_dir = str(tmp_path_factory.mktemp("runs"))
    common = [*TINY, "--runs-dir", runs_dir]
    train.main(["--stage", "tokenizer", "--steps", "2", "--semantic", "random", "--disc-ndf", "8",
                "--disc-layers", "2", *common])
    train.main(["--stage", "ar", "--steps", "2", *common])
    return runs_dir


def is_png(path, min_bytes=10_000):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > min_bytes


@pytest.mark.slow
def test_cli_draws_gt_context_and_usage_histogram(runs, capsys):
    out = os.path.join(runs, "figs", "gt.png")
    # no --pairs: the newest runs/tiny-ar and the tokenizer it records
    written = visualize.main(["--runs-dir", runs, "--n", "2", "--out", out, "--usage-hist",
                              "--device", "cpu"])
    assert written == [out, os.path.join(runs, "figs", "gt_usage.png")]
    assert all(is_png(p) for p in written)
    text = capsys.readouterr().out
    assert "on all 16 val images" in text and "tiny-tokenizer + tiny-ar (EMA weights)" in text


@pytest.mark.slow
def test_cli_view_uses_the_ema_weights(runs, tmp_path):
    # an AR checkpoint whose plain weights are garbage: the view must not depend on them
    path = run_folders.latest_checkpoint(os.path.join(runs, "tiny-ar"))
    ckpt = torch.load(path, weights_only=True)
    pair = visualize.load_pair(path, None, "ar", torch.device("cpu"))
    ckpt["model"] = {k: torch.randn_like(v) for k, v in ckpt["model"].items()}
    torch.save(ckpt, tmp_path / "garbage_plain.pt")
    other = visualize.load_pair(str(tmp_path / "garbage_plain.pt"), None, "ar", torch.device("cpu"))
    s = torch.randint(ckpt["config"]["K"], (3, ckpt["config"]["seq_len"]))
    y = torch.tensor([0, 1, 2])
    ema = run_folders.build_transformer("ar", ckpt["config"]).eval()
    ema.load_state_dict(ckpt["ema"])
    with torch.no_grad():
        expected = ema(s, y)[0].argmax(-1)
    for p in (pair, other):
        assert torch.equal(visualize.gt_context_predictions(p["model"], s, y), expected)
    assert "EMA weights" in pair["desc"]


@pytest.mark.slow
def test_cli_draws_loss_curves(runs):
    out = os.path.join(runs, "curves.png")
    written = visualize.main(["--curves", os.path.join(runs, "tiny-tokenizer", "log.jsonl"),
                              os.path.join(runs, "tiny-ar"), "--out", out])
    assert written == [out] and is_png(out)


def one_line_error(argv):
    with pytest.raises(SystemExit) as e:
        visualize.main(argv)
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


@pytest.mark.slow
def test_cli_refuses_bad_input_with_one_line(runs, tmp_path):
    tok_dir = os.path.join(runs, "tiny-tokenizer")
    ar_dir = os.path.join(runs, "tiny-ar")
    base = ["--runs-dir", runs, "--device", "cpu", "--out", str(tmp_path / "x.png")]
    # a tokenizer checkpoint where a transformer checkpoint is expected
    assert "'tokenizer' checkpoint" in one_line_error([*base, "--pairs", tok_dir])
    # a tokenizer with other weights than the one the AR model was trained on (hash check)
    ckpt = torch.load(run_folders.latest_checkpoint(tok_dir), weights_only=True)
    ckpt["model"]["quantizer.codebook.weight"] += 1.0
    other = str(tmp_path / "other_tokenizer.pt")
    torch.save(ckpt, other)
    assert "does not make the tokens" in one_line_error([*base, "--pairs", ar_dir, "--tokenizer", other])
    # an AR checkpoint in --mode nar
    assert "pass --mode ar" in one_line_error([*base, "--pairs", ar_dir, "--mode", "nar"])
    # no images to show: --n 0, or a transformer whose recorded val split is empty
    assert "--n must be >= 1" in one_line_error([*base, "--n", "0"])
    ar = torch.load(run_folders.latest_checkpoint(ar_dir), weights_only=True)
    ar["args"]["n_val"] = 0
    torch.save(ar, tmp_path / "no_val.pt")
    assert "val split is empty" in one_line_error([*base, "--pairs", str(tmp_path / "no_val.pt")])
    # no log to draw, no run to find

    assert "no such log file" in one_line_error(["--curves", str(tmp_path / "missing.jsonl")])
    assert "no tiny ar run" in one_line_error(["--runs-dir", str(tmp_path / "empty")])
    assert not os.path.exists(tmp_path / "x.png")


def test_cli_draws_tokenizer_figures_and_reports_split_figures(runs, tmp_path, capsys):
    tok = os.path.join(runs, "tiny-tokenizer")
    out = str(tmp_path / "recon.png")
    written = visualize.main(["--recon", tok, tok, "--names", "a", "b", "--n", "3", "--out", out,
                              "--usage", tok, tok])
    assert written == [out, str(tmp_path / "recon_usage.png")] and all(is_png(p, 5_000) for p in written)
    # the printed figures are the tokenizer's over the whole val split (16 images in TINY)
    import data
    import metrics
    t, ckpt, _ = run_folders.load_tokenizer(tok, torch.device("cpu"))
    val = data.load_data("val", **data.recorded_data(ckpt))
    images = torch.stack([val[i][0] for i in range(len(val))])
    m = metrics.reconstruction_metrics(t, [images], torch.device("cpu"))
    text = capsys.readouterr().out
    assert f"a ({ckpt['path']}): val L1 {m['l1']:.4f}, codebook usage {m['usage']:.1%}" in text
    assert "(16 val images)" in text
    assert "need the same tokenizers" in one_line_error(["--recon", tok, "--usage", tok, tok])
