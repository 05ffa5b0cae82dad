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
    # 2 classifiers, then per seed 6 tokenizers, 5 AR models, 5 MaskGITs and one phase 2
    assert len(lines) == 2 + 2 * (6 + 5 + 5 + 1)
    assert sum("--stage nar" in line for line in lines) == 2 * 5
    assert sum("--alpha 0.5" in line for line in lines) == 2
    assert sum("--decoder attention-x2" in line for line in lines) == 2
    assert sum("--decoder conv-x2" in line for line in lines) == 2
    assert sum("--entropy-weight 0" in line for line in lines) == 2
    study.main(["--dry-run", "--seeds", "0"])  # by default, transformers on the alpha endpoints
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + 6 + 4 + 1
    assert {line.split("--name ")[1].split()[0] for line in lines if "--stage ar" in line or "--stage nar" in line} \
        == {"ar-a1-s0", "nar-a1-s0", "ar-a0-s0", "nar-a0-s0"}
    study.main(["--dry-run", "--seeds", "0", "--transformers-on", "a1"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + 6 + 2 + 1  # every tokenizer, the AR model and MaskGIT of a1 only
    assert {line.split("--name ")[1].split()[0] for line in lines if "--stage ar" in line or "--stage nar" in line} \
        == {"ar-a1-s0", "nar-a1-s0"}


@pytest.mark.slow  # trains every run of a tiny study
def test_study_trains_evaluates_reports_and_resumes(tmp_path, capsys):
    runs = str(tmp_path / "study")
    argv = ["--runs-dir", runs, "--seeds", "0", "--variants", "a1", "a0", "--n-gen", "8", "--train-flags", FLAGS]
    # first the tokenizers alone: evaluated for reconstruction only ...
    study.main([*argv, "--transformers-on"])
    first = json.load(open(os.path.join(runs, "results.json")))["results"]
    assert set(first) == {"a1-s0", "a0-s0", "dec-a1-s0"} and all("gen_fid" not in r for r in first.values())
    # ... then the transformers on them: those tokenizers are evaluated again, with generation
    path = study.main(argv)
    state = json.load(open(os.path.join(runs, "results.json")))
    assert set(state["done"]) == {"tiny-classifier", "eval-classifier", "a1-s0", "a0-s0", "ar-a1-s0", "ar-a0-s0",
                                  "nar-a1-s0", "nar-a0-s0", "dec-a1-s0"}
    results = state["results"]
    assert set(results) == {"a1-s0", "a0-s0", "dec-a1-s0"}
    # each row holds its own runs' figures: recomputed here from the checkpoints it names
    ext = metrics.semantic_features_from_checkpoint(os.path.join(runs, "eval-classifier"))
    for name in ("a1-s0", "a0-s0"):
        r = results[name]
        assert os.path.dirname(r["ckpt"]) == os.path.join(runs, name)
        cpu = torch.device("cpu")
        tok, ckpt, _ = run_folders.load_tokenizer(r["ckpt"], cpu)
        val = data.load_data("val", **data.recorded_data(ckpt))
        m = metrics.reconstruction_metrics(tok, torch.utils.data.DataLoader(val, batch_size=250), cpu, extractor=ext)
        for k in ("usage", "perplexity", "l1", "rfid"):
            assert r[k] == pytest.approx(m[k], rel=1e-6), k
        model, _, _, _ = run_folders.load_transformer(os.path.join(runs, f"ar-{name}"), cpu, tokenizer=r["ckpt"])
        s, s_prime, _ = visualize.context_view_split({"tok": tok, "model": model}, val, cpu, "ar", None, 0)
        assert r["gt_context_acc"] == visualize.token_accuracy(s, s_prime)
        ar_log = [json.loads(line) for line in open(os.path.join(runs, f"ar-{name}", "log.jsonl"))]
        assert r["ar_val_loss"] == [line["val_loss"] for line in ar_log if "val_loss" in line][-1]  # the final eval
        nar_log = [json.loads(line) for line in open(os.path.join(runs, f"nar-{name}", "log.jsonl"))]
        assert r["nar_val_loss"] == [line["val_ce"] for line in nar_log if "val_ce" in line][-1]
        assert r["gen_fid"] > 0 and r["nar_gen_fid"] > 0
    assert results["a1-s0"]["gen_fid"] != results["a0-s0"]["gen_fid"]
    assert results["dec-a1-s0"]["same_tokens"] == [16, 16]  # phase 2 kept every token of the 16 val images
    text = open(path).read()
    assert "| alpha 1 (L_sem), conv | 0 |" in text and "alpha 1 + phase 2" in text and "seed 0: 16/16 val images have identical indices" in text
    # a rerun trains nothing and evaluates nothing again
    capsys.readouterr()
    study.main(argv)
    assert "$ python train.py" not in capsys.readouterr().out
    assert json.load(open(os.path.join(runs, "results.json")))["times"] == state["times"]


def test_study_errors(tmp_path):
    assert "--n-gen must be >= 2" in error_of(study.main, ["--n-gen", "1", "--runs-dir", str(tmp_path)])
    assert "nothing evaluated yet" in error_of(study.main, ["--report", "--runs-dir", str(tmp_path / "none")])


def test_verdicts_follow_the_rule_and_say_which_way():
    def results(a, b):  # three seeds of rows "a1" and "a0", one figure each
        out = {f"a1-s{i}": {"tokenizer": "a1", "seed": i, "gen_fid": v} for i, v in enumerate(a)}
        out.update({f"a0-s{i}": {"tokenizer": "a0", "seed": i, "gen_fid": v} for i, v in enumerate(b)})
        return out
    a, b = ("a1", "gen_fid"), ("a0", "gen_fid")
    lower = results([10, 11, 12], [20, 21, 22])  # difference 10, 2 x pooled std 2
    assert "**counts**: lower for a, as the paper says" in study.verdict(lower, "x", a, b, "<")
    assert "**counts**: lower for a, against the paper" in study.verdict(lower, "x", a, b, ">=")
    assert "**counts**: lower for a, against the paper" in study.verdict(lower, "x", a, b, "=")
    assert "**counts**: higher for a, against the paper" in study.verdict(results([20, 21, 22], [10, 11, 12]),
                                                                           "x", a, b, "<")
    close = results([10, 11, 12], [11.5, 12.5, 13.5])  # difference 1.5 < 2 x pooled std 2
    assert study.verdict(close, "x", a, b, "<").endswith("| within the spread |")
    one = {k: v for k, v in lower.items() if v["seed"] == 0}
    assert "one seed: no spread, no verdict" in study.verdict(one, "x", a, b, "<")
    assert study.verdict(lower, "x", a, ("a0.5", "gen_fid"), "<") is None  # a row not run
