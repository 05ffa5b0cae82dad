"""train.py --stage ar / nar and sample.py: a few steps on `tiny`, resume, rebuild from checkpoints."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

import runs
import sample
import train
from conftest import TINY, error_of

# every test here trains tiny runs end to end
pytestmark = pytest.mark.slow

TOK = ["--semantic", "random", "--disc-ndf", "8", "--disc-layers", "2"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A 2-step tokenizer with a 1-step AR and a 1-step MaskGIT on it, trained once for the
    module: tests that only read runs (sampling, refusals) share them."""
    runs_dir = tmp_path_factory.mktemp("base") / "runs"
    common = [*TINY, "--runs-dir", str(runs_dir)]
    tok = train.main(["--stage", "tokenizer", "--steps", "2", *TOK, *common])
    ar = train.main(["--stage", "ar", "--steps", "1", *common])
    nar = train.main(["--stage", "nar", "--steps", "1", *common])
    return {"tokenizer": tok, "ar": ar, "nar": nar}


@pytest.fixture
def tokenizer(base, tmp_path):
    """A test's own copy of the base tokenizer run, at runs/tiny-tokenizer of its folder (hard links:
    train.py never rewrites a checkpoint in place); the token cache is left out, so it is built anew."""
    src = os.path.dirname(base["tokenizer"])
    dst = tmp_path / "runs" / "tiny-tokenizer"
    shutil.copytree(src, dst, copy_function=os.link, ignore=shutil.ignore_patterns("tokens_*"))
    return str(dst / os.path.basename(base["tokenizer"]))


def test_token_cache_is_per_dataset_not_only_per_tokenizer(run, tokenizer, capsys):
    """A cache built by a run on 32 images must not feed a run on 48 (it did once: a 64-image
    check left one beside a shipped tokenizer, and later full runs trained on its 128 sequences)."""
    small = [*TINY, "--n-train", "32"]  # TINY's own
    run("--stage", "ar", "--steps", "1", *small)
    run("--stage", "ar", "--steps", "1", *TINY, "--n-train", "48", "--name", "ar-48")
    out = capsys.readouterr().out
    assert "encoded 64 train" in out and "encoded 96 train" in out  # each image and its mirror
    caches = [f for f in os.listdir(os.path.dirname(tokenizer)) if f.startswith("tokens_")]
    assert len(caches) == 2
    # a cache file whose recorded dataset is not the run's is refused, never used: with one copied
    # over the other, exactly one of the two runs meets a foreign file
    a, b = (os.path.join(os.path.dirname(tokenizer), f) for f in caches)
    shutil.copy(a, b)
    errors = []
    for n in ("32", "48"):
        try:
            run("--stage", "ar", "--steps", "1", *TINY, "--n-train", n, "--name", f"again-{n}")
        except SystemExit as e:
            errors.append(str(e))
    assert len(errors) == 1 and "holds the tokens of another tokenizer or dataset" in errors[0], errors


def sample_main(*argv):
    return sample.main(list(argv))


@pytest.mark.parametrize("stage", ["ar", "nar"])
def test_transformer_stage_runs_resumes_and_samples(run, tokenizer, tmp_path, stage):
    path = run("--stage", stage, "--steps", "3", *TINY)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["kind"] == stage and ckpt["step"] == 3 and ckpt["ema"] is not None
    assert ckpt["tokenizer_path"] == os.path.abspath(tokenizer) and len(ckpt["tokenizer_hash"]) == 64
    run_dir = os.path.dirname(path)
    assert any(f.startswith("samples_") for f in os.listdir(run_dir))
    assert any(f.startswith("tokens_") for f in os.listdir(os.path.dirname(tokenizer)))  # cache beside the tokenizer
    log = [json.loads(l) for l in open(os.path.join(run_dir, "log.jsonl"))]
    assert any("val_loss" in l and "val_acc" in l for l in log)
    # the loop sets the warmup/cosine learning rate of each step (tiny: lr 1e-3, warmup 100)
    assert [l["lr"] for l in log if "lr" in l] == pytest.approx([train.lr_at(s, 1e-3, 100, 3) for s in range(3)])
    assert torch.load(run("--stage", stage, "--steps", "5", "--resume", *TINY), weights_only=True)["step"] == 5

    # sample.py rebuilds tokenizer + transformer from the checkpoint alone
    png = sample_main("--ckpt", run_dir, "--n", "4", "--out", str(tmp_path / "s.png"), "--steps", "3")
    from PIL import Image
    # one row of 4 tiles, 32 px upscaled to 64, 2 px padding around each
    assert Image.open(png).size == (4 * 66 + 2, 66 + 2)
    npz = sample_main("--ckpt", run_dir, "--n", "3", "--classes", "1", "--out", str(tmp_path / "s.npz"))
    dump = np.load(npz)
    assert dump["images"].shape == (3, 32, 32, 3) and dump["images"].dtype == np.uint8
    assert dump["labels"].tolist() == [1, 1, 1]


def test_sampling_is_reproducible_with_a_seed(base, tmp_path):
    ar = base["ar"]
    a = sample_main("--ckpt", ar, "--n", "2", "--seed", "3", "--out", str(tmp_path / "a.npz"))
    b = sample_main("--ckpt", ar, "--n", "2", "--seed", "3", "--out", str(tmp_path / "b.npz"))
    assert np.array_equal(np.load(a)["images"], np.load(b)["images"])
    # and the seed is used: another one gives other images
    c = sample_main("--ckpt", ar, "--n", "2", "--seed", "4", "--out", str(tmp_path / "c.npz"))
    assert not np.array_equal(np.load(a)["images"], np.load(c)["images"])


def test_ema_weights_follow_the_decay(run, tokenizer):
    # Same seed, same data: the trained weights m agree and only the EMA decay differs. With
    # ema = d * init + (1 - d) * m after one step, decays 0.6 and 0.8 give
    # ema_0.8 = (4/3) ema_0.6 - (1/3) m; a reversed decay or a missing update would not.
    a, b = (torch.load(run("--stage", "ar", "--steps", "1", "--ema", d, "--name", f"ema{d}", *TINY), weights_only=True)
            for d in ("0.6", "0.8"))
    for k, m in a["model"].items():
        assert torch.equal(m, b["model"][k])
        torch.testing.assert_close(b["ema"][k], 4 / 3 * a["ema"][k] - 1 / 3 * m, rtol=1e-4, atol=1e-6)
    assert any(not torch.equal(a["ema"][k], m) for k, m in a["model"].items())


def test_transformer_stage_without_tokenizer(run):
    assert "run `python train.py --stage tokenizer` first" in error_of(run, "--stage", "ar", *TINY)


def test_transformer_checkpoint_given_as_tokenizer(run, base):
    msg = error_of(run, "--stage", "nar", "--tokenizer", base["ar"], *TINY)
    assert "is a 'ar' checkpoint, but a tokenizer checkpoint is needed" in msg


def test_transformer_refuses_another_tokenizer_on_resume(run, tokenizer):
    run("--stage", "ar", "--steps", "1", *TINY)
    other = run("--stage", "tokenizer", "--name", "other-tok", "--steps", "1", "--seed", "1", *TOK, *TINY)
    msg = error_of(run, "--stage", "ar", "--steps", "2", "--resume", "--tokenizer", other, *TINY)
    assert "was trained on tokenizer" in msg and "pass --tokenizer" in msg


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--classes", "32"], "class label 32 is outside the model's classes 0..31"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--top-k", "0"], "--top-k must be >= 1"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--temperature", "-1"], "--temperature must be >= 0"),
        (["--cfg-scale", "-1"], "--cfg-scale must be >= 0"),
    ],
)
def test_sample_flags_out_of_range(base, tmp_path, flags, expected):
    assert expected in error_of(sample_main, "--ckpt", base["ar"], "--out", str(tmp_path / "x.png"), *flags)


def test_maskgit_steps_beyond_the_tokens(base, tmp_path):
    msg = error_of(sample_main, "--ckpt", base["nar"], "--out", str(tmp_path / "x.png"), "--steps", "65")
    assert "--steps 65 is more than the 64 tokens" in msg and "at most 64" in msg


def test_sample_with_a_tokenizer_checkpoint(base, tmp_path):
    msg = error_of(sample_main, "--ckpt", base["tokenizer"], "--out", str(tmp_path / "x.png"))
    assert "is a 'tokenizer' checkpoint, but an ar or nar checkpoint is needed" in msg


def test_phase2_tokenizer_decodes_the_samples_of_a_phase1_transformer(run, tokenizer, tmp_path):
    # Fig. 7/8: phase 2 freezes encoder and codebook, so the transformer trained on phase-1 tokens
    # samples through the phase-2 decoder; any other tokenizer is refused.
    ar = run("--stage", "ar", "--steps", "2", *TINY)
    dec = run("--stage", "decoder", "--steps", "2", *TOK, *TINY)
    h1, h2 = (runs.load_tokenizer(p, torch.device("cpu"))[2] for p in (tokenizer, dec))
    assert h1 == h2  # encoder + codebook unchanged ...
    w1, w2 = (torch.load(p, weights_only=True)["model"] for p in (tokenizer, dec))
    assert runs.state_hash(w1) != runs.state_hash(w2)  # ... while the decoder did change
    out = str(tmp_path / "p2.npz")
    sample_main("--ckpt", ar, "--tokenizer", dec, "--n", "4", "--out", out)
    assert np.load(out)["images"].shape == (4, 32, 32, 3)
    # a transformer on the phase-2 run reads the token cache its phase-1 run already wrote
    ar2 = run("--stage", "ar", "--name", "ar2", "--tokenizer", dec, "--steps", "1", *TINY)
    assert not [f for f in os.listdir(os.path.dirname(dec)) if f.startswith("tokens_")]
    assert [f for f in os.listdir(os.path.dirname(tokenizer)) if f.startswith("tokens_")]
    assert torch.load(ar2, weights_only=True)["tokenizer_hash"] == h1
    other = run("--stage", "tokenizer", "--name", "other", "--seed", "1", "--steps", "2", *TOK, *TINY)
    msg = error_of(sample_main, "--ckpt", ar, "--tokenizer", other, "--out", out)
    assert "does not make the tokens" in msg and "phase-2 run" in msg


def test_sample_folder_stops_and_continues_to_exactly_n(base, tmp_path, monkeypatch, capsys):
    # --out DIR streams chunks; a run stopped in chunk 1 keeps chunk 0, and the same command
    # continues with chunk 1 and ends with exactly --n images, the very ones of a run never stopped.
    ar = base["ar"]
    flags = ["--ckpt", ar, "--n", "7", "--chunk-size", "3", "--batch-size", "2", "--device", "cpu"]
    sample_main(*flags, "--out", str(tmp_path / "whole"))
    out = tmp_path / "part"
    made, real_chunk = [], sample.sample_chunk

    def stop_in_chunk_1(model, tok, kind, args, c, m, device):
        made.append(c)
        if c == 1:
            raise KeyboardInterrupt  # Ctrl-C while chunk 1 is being sampled
        return real_chunk(model, tok, kind, args, c, m, device)

    monkeypatch.setattr(sample, "sample_chunk", stop_in_chunk_1)
    with pytest.raises(SystemExit) as e:
        sample_main(*flags, "--out", str(out))
    assert e.value.code == 130 and "keeps 1 of 3 chunks" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["chunk_000000.npz", "samples.json"]
    (out / "chunk_000001.npz.tmp999999999").write_bytes(b"half a chunk")  # a write killed midway
    # other settings are refused in one line, and the folder is left as it was
    msg = error_of(sample_main, *flags, "--out", str(out), "--seed", "1")
    assert "holds samples made with seed=0, not 1" in msg
    made.clear()
    monkeypatch.setattr(sample, "sample_chunk", lambda *a: (made.append(a[4]), real_chunk(*a))[1])
    sample_main(*flags, "--out", str(out))
    assert made == [1, 2]  # only the missing chunks were sampled
    assert sorted(os.listdir(out)) == ["chunk_000000.npz", "chunk_000001.npz", "chunk_000002.npz", "samples.json"]
    for c in range(3):
        a, b = np.load(out / f"chunk_{c:06d}.npz"), np.load(tmp_path / "whole" / f"chunk_{c:06d}.npz")
        assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["labels"], b["labels"])
    assert sum(len(np.load(out / f"chunk_{c:06d}.npz")["images"]) for c in range(3)) == 7
    # chunks differ from each other (each has its own seed), and a finished folder is left alone
    c0, c1 = (np.load(out / f"chunk_{c:06d}.npz")["images"] for c in (0, 1))
    assert not np.array_equal(c0, c1)
    made.clear()
    sample_main(*flags, "--out", str(out))
    assert made == []
    # a single file holds at most one chunk: more is sent to a folder
    msg = error_of(sample_main, *flags, "--out", str(tmp_path / "x.npz"))
    assert "up to --chunk-size (3) images go to one file" in msg and "--out " + str(tmp_path / "x") + "/" in msg
