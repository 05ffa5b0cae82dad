"""study.py end to end on 2-step runs: every training command, the evaluation, the report,
and a rerun that trains nothing again."""

import json
import os
import shlex

import pytest
import torch

import data
import metrics
import runs as run_folders  # `runs` below is the study's folder
import study
import visualize
from conftest import TINY, error_of

FLAGS = shlex.join([*TINY, "--steps", "2", "--disc-start", "1", "--disc-ndf", "8", "--disc-layers", "2"])


def test_dry_run_lists_every_command(capsys):
    study.main(["--dry-run", "--seeds", "0", "1", "--transformers-on", "a1", "a0", "a0.5", "conv-x2", "attn-x2"])
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith("python train.py --stage ") for line in lines)
    # 3 classifiers, then per seed 6 tokenizers, 5 AR models, 5 MaskGITs and two phase 2s
    assert len(lines) == 3 + 2 * (6 + 5 + 5 + 2)
    assert sum("--stage nar" in line for line in lines) == 2 * 5
    assert sum("--alpha 0.5" in line for line in lines) == 2
    assert sum("--decoder attention-x2" in line for line in lines) == 2
    assert sum("--decoder conv-x2" in line for line in lines) == 2
    assert sum("--entropy-weight 0" in line for line in lines) == 2
    names = [line.split("--name ")[1].split()[0] for line in lines]
    # the precondition's tokenizers of every seed come right after the classifiers
    assert names[:7] == ["tiny-classifier", "eval-classifier", "eval-texture", "a1-s0", "a0-s0", "a1-s1", "a0-s1"]
    assert "--classifier-labels texture --classifier-pools vgg16" in lines[2]
    study.main(["--dry-run", "--seeds", "0"])  # by default, transformers on the alpha endpoints
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 + 6 + 4 + 2
    names = {line.split("--name ")[1].split()[0] for line in lines}
    assert {"ar-a1-s0", "nar-a1-s0", "ar-a0-s0", "nar-a0-s0", "dec-a1-s0", "dec-a0-s0"} <= names
    assert sum("--stage decoder" in line for line in lines) == 2  # equal decoders on both endpoints


@pytest.mark.slow  # trains every run of a tiny study
def test_study_trains_evaluates_reports_and_resumes(tmp_path, capsys):
    runs = str(tmp_path / "study")
    argv = ["--runs-dir", runs, "--seeds", "0", "--variants", "a1", "a0", "--n-gen", "8", "--train-flags", FLAGS]
    # first the tokenizers alone: evaluated for reconstruction only ...
    study.main([*argv, "--transformers-on"])
    first = json.load(open(os.path.join(runs, "results.json")))["results"]
    assert {"a1-s0", "a0-s0", "dec-a1-s0", "dec-a0-s0"} <= set(first)
    assert all("gen_fid_cls" not in r for r in first.values())
    assert not any(n.startswith(("unigram-", "perfect-")) for n in first)  # no transformers, no references
    # the floors, measured alike, once
    assert {"floor-mean", "floor-kmeans", "floor-block"} <= set(first)
    assert "usage" not in first["floor-mean"] and first["floor-kmeans"]["usage"] > 0
    # ... then the transformers on them: those tokenizers are evaluated again, with generation
    path = study.main(argv)
    state = json.load(open(os.path.join(runs, "results.json")))
    assert set(state["done"]) == {"tiny-classifier", "eval-classifier", "eval-texture", "a1-s0", "a0-s0", "ar-a1-s0",
                                  "ar-a0-s0", "nar-a1-s0", "nar-a0-s0", "dec-a1-s0", "dec-a0-s0"}
    results = state["results"]
    assert {"a1-s0", "a0-s0", "dec-a1-s0", "dec-a0-s0"} <= set(results)
    # each row holds its own runs' figures: recomputed here from the checkpoints it names
    cpu = torch.device("cpu")
    exts = {sp: metrics.semantic_features_from_checkpoint(os.path.join(runs, name)) for sp, name in study.SPACES.items()}
    for name in ("a1-s0", "a0-s0"):
        r = results[name]
        assert os.path.dirname(r["ckpt"]) == os.path.join(runs, name)
        tok, ckpt, _ = run_folders.load_tokenizer(r["ckpt"], cpu)
        val = data.load_data("val", **data.recorded_data(ckpt))
        for sp, ext in exts.items():
            m = metrics.reconstruction_metrics(tok, torch.utils.data.DataLoader(val, batch_size=250), cpu,
                                               extractor=ext)
            assert r[f"rfid_{sp}"] == pytest.approx(m["rfid"], rel=1e-4), sp
        # the reconstructions' shape accuracy in the cls classifier, recomputed: its token models' ceiling
        net = run_folders.load_classifier(os.path.join(runs, study.SPACES["cls"]))[0]
        with torch.no_grad():
            x_hat = torch.cat([tok(x)[0].float().clamp(-1, 1) for x, _ in torch.utils.data.DataLoader(val, 250)])
        labels = torch.stack([torch.as_tensor(y) for _, y in val])
        assert r["recon_shape"] == pytest.approx(metrics.shape_color_accuracy(net, x_hat, labels, cpu)["shape"])
        assert 0 <= r["shape"] <= 1 and 0 <= r["nar_shape"] <= 1
        for k in ("usage", "perplexity", "l1"):
            assert r[k] == pytest.approx(m[k], rel=1e-5), k
        model, _, _, _ = run_folders.load_transformer(os.path.join(runs, f"ar-{name}"), cpu, tokenizer=r["ckpt"])
        s, s_prime, _ = visualize.context_view_split({"tok": tok, "model": model}, val, cpu, "ar", None, 0)
        assert r["gt_context_acc"] == visualize.token_accuracy(s, s_prime)
        ar_log = [json.loads(line) for line in open(os.path.join(runs, f"ar-{name}", "log.jsonl"))]
        assert r["ar_val_loss"] == [line["val_loss"] for line in ar_log if "val_loss" in line][-1]  # the final eval
        nar_log = [json.loads(line) for line in open(os.path.join(runs, f"nar-{name}", "log.jsonl"))]
        assert r["nar_val_loss"] == [line["val_ce"] for line in nar_log if "val_ce" in line][-1]
        tok_log = [json.loads(line) for line in open(os.path.join(runs, name, "log.jsonl"))]
        assert r["sem"] == [line["val_sem"] for line in tok_log if "val_sem" in line][-1]
        for key in ("gen_fid", "gen_only_fid", "nar_gen_fid", "nar_gen_only_fid"):
            assert all(r[f"{key}_{sp}"] > 0 for sp in study.SPACES), key
        # the generator-only FID is the samples against this tokenizer's reconstructions, not the images
        assert r["gen_only_fid_cls"] != r["gen_fid_cls"]
    assert results["a1-s0"]["gen_fid_cls"] != results["a0-s0"]["gen_fid_cls"]
    for t in ("a1", "a0"):  # phase 2 kept every token of the 16 val images, on both endpoints
        assert results[f"dec-{t}-s0"]["same_tokens"] == [16, 16]
        assert results[f"dec-{t}-s0"]["gen_fid_tex"] > 0
    # the generation references beside them: a perfect token model's samples are the tokenizer's
    # reconstructions of n_gen training images; recomputed here
    tok, ckpt, _ = run_folders.load_tokenizer(results["a0-s0"]["ckpt"], cpu)
    train = torch.utils.data.Subset(data.load_data("train", **data.recorded_data(ckpt)), range(8))
    val = data.load_data("val", **data.recorded_data(ckpt))
    with torch.no_grad():
        fake = torch.cat([tok(x)[0].clamp(-1, 1) for x, _ in torch.utils.data.DataLoader(train, batch_size=4)])
    ext = exts["cls"]
    real = metrics.compute_statistics(torch.stack([x for x, _ in val]).split(250), ext, cpu)
    ref = metrics.compute_statistics(fake.split(250), ext, cpu)
    perfect = results["perfect-a0-s0"]
    assert perfect["gen_fid_cls"] == pytest.approx(
        metrics.frechet_distance(real["mu"], real["sigma"], ref["mu"], ref["sigma"]), rel=1e-4)
    for t in ("a0", "a1"):
        unigram, perfect = results[f"unigram-{t}-s0"], results[f"perfect-{t}-s0"]
        assert all(r[f"{k}_{sp}"] > 0 for r in (unigram, perfect) for k in ("gen_fid", "gen_only_fid")
                   for sp in study.SPACES)
        assert unigram["gen_only_fid_cls"] != perfect["gen_only_fid_cls"] != results[f"{t}-s0"]["gen_only_fid_cls"]
    text = open(path).read()
    assert "reference: alpha 0's tokens drawn on their own" in text
    assert "reference: alpha 1's reconstructions of training images" in text
    assert "## The precondition" in text and "| alpha 1 (L_sem), conv | 0 |" in text
    assert "alpha 0 + phase 2" in text and "dec-a0 seed 0: 16/16 val images have identical indices" in text
    assert "reference: k-means of raw patches" in text
    # a rerun trains nothing and evaluates nothing again
    capsys.readouterr()
    study.main(argv)
    assert "$ python train.py" not in capsys.readouterr().out
    assert json.load(open(os.path.join(runs, "results.json")))["times"] == state["times"]


def test_the_reference_without_context_draws_tokens_at_their_frequencies():
    s = torch.tensor([3, 3, 3, 5]).repeat(8, 4, 1)  # (8, 4, 4): token 3 three times as often as 5
    drawn = metrics.tokens_without_context(s, K=8, n=500, seed=0)
    assert drawn.shape == (500, 4, 4)
    counts = torch.bincount(drawn.flatten(), minlength=8)
    assert counts.sum() == counts[3] + counts[5]  # only the tokens that occur
    assert counts[3] / counts[5] == pytest.approx(3, rel=0.1)
    # and no context: the token at a position does not follow its column as in s
    assert (drawn[..., 3] == 5).float().mean() == pytest.approx(0.25, abs=0.05)


def test_the_class_and_position_floor_draws_each_token_from_its_class_at_its_place():
    """metrics.tokens_by_class_and_position: class 0's grids hold token 1 at the first position and 2
    elsewhere, class 1's hold 3 or 4 at random; every drawn token is one found at its place in its
    class, and both of class 1's tokens come up (drawn, not copied)."""
    g = torch.Generator().manual_seed(0)
    s0 = torch.full((20, 2, 2), 2)
    s0[:, 0, 0] = 1
    s1 = 3 + torch.randint(2, (20, 2, 2), generator=g)
    s, y = torch.cat([s0, s1]), torch.tensor([0] * 20 + [1] * 20)
    drawn = metrics.tokens_by_class_and_position(s, y, K=5, seed=0)
    assert drawn.shape == s.shape
    assert (drawn[:20, 0, 0] == 1).all() and (drawn[:20].flatten(1)[:, 1:] == 2).all()
    assert set(drawn[20:].flatten().tolist()) == {3, 4} and not torch.equal(drawn[20:], s1)


def test_study_errors(tmp_path):
    assert "--n-gen must be >= 2" in error_of(study.main, ["--n-gen", "1", "--runs-dir", str(tmp_path)])
    assert "nothing evaluated yet" in error_of(study.main, ["--report", "--runs-dir", str(tmp_path / "none")])
    assert "run `python study.py` first" in error_of(study.main, ["--extras", "--runs-dir", str(tmp_path / "none")])


def test_extras_keep_their_own_state_so_both_commands_can_run_at_once(tmp_path):
    core_args = study.get_parser().parse_args(["--runs-dir", str(tmp_path)])
    extras_args = study.get_parser().parse_args(["--runs-dir", str(tmp_path), "--extras"])
    core = {"done": ["a1-s0"], "times": {"a1-s0": 1.0}, "results": {"a1-s0": {"l1": 0.1}}}
    study.save_state(core_args, core)
    extras = study.load_state(extras_args)  # a fresh state of its own, not the core's
    assert extras["done"] == [] and extras["results"] == {}
    extras["done"].append("curve-ar")
    study.save_state(extras_args, extras)
    assert study.load_state(core_args) == core  # the core's figures are untouched ...
    assert study.load_state(extras_args)["done"] == ["curve-ar"]  # ... and the extras' kept


def test_verdicts_follow_the_rule_and_say_which_way():
    def results(a, b, key="ar_val_loss"):  # three seeds of rows "a1" and "a0", one figure each
        out = {f"a1-s{i}": {"tokenizer": "a1", "seed": i, key: v} for i, v in enumerate(a)}
        out.update({f"a0-s{i}": {"tokenizer": "a0", "seed": i, key: v} for i, v in enumerate(b)})
        return out
    a, b = ("a1", "ar_val_loss"), ("a0", "ar_val_loss")
    lower = results([10, 11, 12], [20, 21, 22])  # difference 10, 2 x pooled std 2
    assert "**counts**: lower for a, as expected" in study.verdict(lower, "x", a, b, "<")
    assert "**counts**: lower for a, against the expectation" in study.verdict(lower, "x", a, b, ">=")
    assert "**counts**: lower for a, against the expectation" in study.verdict(lower, "x", a, b, "=")
    assert study.verdict(lower, "x", a, b, None).endswith("| **counts**: lower for a |")  # ours: no side
    assert "**counts**: higher for a, against the expectation" in study.verdict(results([20, 21, 22], [10, 11, 12]),
                                                                                 "x", a, b, "<")
    close = results([10, 11, 12], [11.5, 12.5, 13.5])  # difference 1.5 < 2 x pooled std 2
    assert study.verdict(close, "x", a, b, "<").endswith("| within the spread |")
    one = {k: v for k, v in lower.items() if v["seed"] == 0}
    assert "one seed: no spread, no verdict" in study.verdict(one, "x", a, b, "<")
    assert study.verdict(lower, "x", a, ("a0.5", "ar_val_loss"), "<") is None  # a row not run


def test_a_fid_verdict_counts_only_when_both_spaces_agree():
    def results(cls_a, cls_b, tex_a, tex_b):
        out = {}
        for row, (c, t) in (("a1", (cls_a, tex_a)), ("a0", (cls_b, tex_b))):
            for i in range(3):
                out[f"{row}-s{i}"] = {"tokenizer": row, "seed": i, "gen_fid_cls": c[i], "gen_fid_tex": t[i]}
        return out
    a, b = ("a1", "gen_fid"), ("a0", "gen_fid")
    both = results([10, 11, 12], [20, 21, 22], [1, 2, 3], [9, 10, 11])
    assert study.verdict(both, "x", a, b, "<").endswith("| **counts**: lower for a, as expected (both spaces) |")
    split = results([10, 11, 12], [20, 21, 22], [5, 6, 7], [5.5, 6.5, 7.5])  # tex: within the spread
    v = study.verdict(split, "x", a, b, "<")
    assert "the spaces disagree: cls: **counts**: lower for a, as expected; tex: within the spread" in v
    opposite = results([10, 11, 12], [20, 21, 22], [20, 21, 22], [10, 11, 12])
    assert "the spaces disagree" in study.verdict(opposite, "x", a, b, "<")
    assert study.verdict({k: {**r, "gen_fid_tex": None} for k, r in both.items()}, "x", a, b, "<") is None


def test_precondition_is_alpha_1_within_1_5x_of_alpha_0_in_both_spaces():
    def results(a1, a0):
        out = {}
        for row, (c, t) in (("a1", a1), ("a0", a0)):
            for i in range(3):
                out[f"{row}-s{i}"] = {"tokenizer": row, "seed": i, "rfid_cls": c, "rfid_tex": t}
        return out
    lines, met = study.precondition(results((3.0, 30.0), (2.5, 25.0)))  # 1.2x in both
    assert met and len(lines) == 2 and all("| met" in line for line in lines)
    lines, met = study.precondition(results((3.0, 40.0), (2.5, 25.0)))  # tex: 1.6x
    assert not met and "NOT met" in lines[1]
    three = results((3.0, 30.0), (2.5, 25.0))
    _, met = study.precondition({k: v for k, v in three.items() if v["seed"] < 2})  # two seeds are not enough
    assert not met
