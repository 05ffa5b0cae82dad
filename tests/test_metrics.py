"""Tests of metrics.py: closed forms and brute-force references, extractor contracts, CLI errors.
CPU only, no network, no pretrained weights."""

import math
import os
import sys
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import metrics  # noqa: E402
import pictures  # noqa: E402
from conftest import error_of  # noqa: E402
from metrics import (CodeCounter, InceptionFeatures, SemanticFeatures, code_counts, codebook_usage,  # noqa: E402
                     compute_statistics, feature_statistics, frechet_distance, inception_score, perplexity)


def random_cov(F, gen, n=None):
    # A random full-rank SPD covariance (or rank n when n < F).
    A = torch.randn(F, n or 2 * F, generator=gen, dtype=torch.float64)
    return A @ A.T / A.shape[1]


#### Frechet distance ####

def test_frechet_closed_form_diagonal():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(16, generator=gen, dtype=torch.float64) + 0.1, torch.rand(16, generator=gen, dtype=torch.float64) + 0.1
    mu1, mu2 = torch.randn(16, generator=gen, dtype=torch.float64), torch.randn(16, generator=gen, dtype=torch.float64)
    # For diagonal covariances: ||mu1 - mu2||^2 + sum (sqrt a - sqrt b)^2.
    expected = ((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()
    got = frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b))
    assert got == pytest.approx(expected.item(), rel=1e-9, abs=1e-12)
    # numpy input gives the same number
    assert frechet_distance(mu1.numpy(), np.diag(a.numpy()), mu2.numpy(), np.diag(b.numpy())) == pytest.approx(got, rel=1e-12)


def test_frechet_symmetric_and_brute_force():
    gen = torch.Generator().manual_seed(1)
    F = 12
    mu1, mu2 = torch.randn(F, generator=gen, dtype=torch.float64), torch.randn(F, generator=gen, dtype=torch.float64)
    S1, S2 = random_cov(F, gen), random_cov(F, gen)
    d12 = frechet_distance(mu1, S1, mu2, S2)
    d21 = frechet_distance(mu2, S2, mu1, S1)
    assert d12 == pytest.approx(d21, rel=1e-9)
    # Brute force, another way: eigenvalues of the non-symmetric product S1 S2 (real, >= 0).
    lam = torch.linalg.eigvals(S1 @ S2).real.clamp(min=0)
    ref = ((mu1 - mu2) ** 2).sum() + S1.trace() + S2.trace() - 2 * lam.sqrt().sum()
    assert d12 == pytest.approx(ref.item(), rel=1e-6, abs=1e-6)


def test_frechet_rank_deficient_matches_a_reference():
    # Fewer samples than features: singular covariances must not give NaN, and the value must
    # still be the Frechet distance. Reference: Tr((S1 S2)^{1/2}) from the eigenvalues of the
    # non-symmetric product in float64 (all real and >= 0 up to rounding).
    gen = torch.Generator().manual_seed(2)
    S1, S2 = random_cov(8, gen, n=3), random_cov(8, gen, n=5)
    mu1, mu2 = torch.zeros(8, dtype=torch.float64), torch.full((8,), 0.5, dtype=torch.float64)
    d = frechet_distance(mu1, S1, mu2, S2)
    lam = torch.linalg.eigvals(S1 @ S2).real.clamp(min=0)
    ref = ((mu1 - mu2) ** 2).sum() + S1.trace() + S2.trace() - 2 * lam.sqrt().sum()
    assert math.isfinite(d) and d == pytest.approx(ref.item(), rel=1e-6)
    # a rank-3 covariance against itself: distance 0, not NaN or a negative rounding residue
    assert frechet_distance(mu1, S1, mu1, S1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_self_is_zero_and_stats_match_numpy():
    feats = np.random.default_rng(0).normal(size=(200, 32)) * 3 + 1
    mu, sigma = feature_statistics(feats)
    assert np.allclose(sigma.numpy(), np.cov(feats, rowvar=False))
    assert np.allclose(mu.numpy(), feats.mean(0))
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)


#### codebook usage ####

def test_usage_and_perplexity_by_hand():
    s = torch.tensor([0, 0, 1, 3])
    assert code_counts(s, 8).tolist() == [2, 1, 0, 1, 0, 0, 0, 0]
    assert codebook_usage(s, 8) == pytest.approx(3 / 8)
    expected = math.exp(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert perplexity(s, 8) == pytest.approx(expected)
    assert perplexity(torch.arange(8).view(2, 4), 8) == pytest.approx(8.0)   # uniform -> K
    assert perplexity(torch.full((3, 3), 5), 8) == pytest.approx(1.0)        # one code -> 1
    with pytest.raises(ValueError):
        code_counts(torch.tensor([8]), 8)


def test_code_counter_equals_concatenation():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 16, (2, 4, 4), generator=gen), torch.randint(0, 16, (3, 4, 4), generator=gen)
    c = CodeCounter(16)
    c.update(a)
    c.update(b)
    c.all_reduce()                                  # no-op without torch.distributed
    both = torch.cat([a.flatten(), b.flatten()])
    assert torch.equal(c.counts, code_counts(both, 16))
    assert c.usage() == pytest.approx(codebook_usage(both, 16))
    assert c.perplexity() == pytest.approx(perplexity(both, 16))


#### Inception Score ####

def test_inception_score_one_hot_uniform():
    C, n = 5, 100
    probs = torch.eye(C)[torch.arange(n) % C]       # (n, C) one-hot, classes evenly in each split
    mean, std = inception_score(probs, splits=10)
    assert mean == pytest.approx(C) and std == pytest.approx(0.0, abs=1e-9)
    # identical predictions everywhere -> IS = 1
    mean, _ = inception_score(torch.full((20, 4), 0.25), splits=2)
    assert mean == pytest.approx(1.0)


def test_inception_score_sums_equal_the_reference():
    # Streaming IS (per-split sums) == inception_score on all probs, for uneven splits and batches
    # that straddle them; the probs are sorted by class, so which images share a split matters.
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(23, 6, generator=gen, dtype=torch.float64), -1)
    probs = probs[probs.argmax(1).argsort()]
    acc = metrics.InceptionScoreSums(23, splits=5)
    for batch in probs.split(4):
        acc.update(batch)
    assert acc.result() == pytest.approx(inception_score(probs, splits=5), rel=1e-9)
    with pytest.raises(ValueError, match="told 23 images and got 4"):
        short = metrics.InceptionScoreSums(23, splits=5)
        short.update(probs[:4])
        short.result()


#### extractors ####

def test_inception_random_weights_shapes():
    with pytest.raises(RuntimeError, match="tests only"):
        InceptionFeatures(weights=None)             # never random without asking
    torch.manual_seed(0)
    net = InceptionFeatures(weights=None, allow_random=True)
    net.train()                                     # stays in eval mode
    assert not net.training and not net.net.training
    feats, probs = net(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert feats.shape == (2, 2048) and probs.shape == (2, 1000)
    assert torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-5)


def test_inception_missing_or_bad_local_file(tmp_path):
    with pytest.raises(RuntimeError, match="--inception-weights FILE") as e:
        InceptionFeatures(weights_path=str(tmp_path / "nope.pth"))
    assert "no file at" in str(e.value) and "\n" not in str(e.value)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="cannot read"):
        InceptionFeatures(weights_path=str(bad))
    wrong = tmp_path / "wrong.pth"
    torch.save({"foo": torch.zeros(1)}, wrong)
    with pytest.raises(RuntimeError, match="not an inception_v3 state_dict"):
        InceptionFeatures(weights_path=str(wrong))


def test_inception_offline_no_cache(tmp_path, monkeypatch):
    # Empty hub cache and no network: the message names the cache and both ways out.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError) as e:
        InceptionFeatures()
    msg = str(e.value)
    assert str(tmp_path) in msg and "--inception-weights FILE" in msg and "connect" in msg
    assert "\n" not in msg


class TinyVGG(nn.Module):
    # The three parts SemanticFeatures needs, VGG-shaped, tiny.
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.avgpool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 3))


def test_semantic_features_and_statistics():
    torch.manual_seed(0)
    clf = TinyVGG()
    ext = SemanticFeatures(clf)
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    feats, probs = ext(x)
    assert feats.shape == (6, 8) and probs.shape == (6, 3)
    # penultimate features = input of the last Linear, i.e. the hidden layer after ReLU (dropout off)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h = clf.classifier[:2](torch.flatten(clf.avgpool(clf.features((((x + 1) / 2) - mean) / std)), 1))
    assert torch.allclose(feats, h)
    # streaming statistics == direct statistics; same set twice -> FID 0
    stats = compute_statistics([x[:4], (x[4:], torch.zeros(2))], ext, "cpu", is_n=6)
    mu, sigma = feature_statistics(feats)
    assert stats["n"] == 6 and stats["inception_score"] == pytest.approx(inception_score(probs, splits=6), rel=1e-9)
    assert torch.allclose(stats["mu"], mu) and torch.allclose(stats["sigma"], sigma, atol=1e-10)
    assert metrics.fid_from_images([x], [x[:3], x[3:]], ext, "cpu") == pytest.approx(0.0, abs=1e-6)


#### CLI ####

def test_cli_errors(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        metrics.main(["--samples", str(tmp_path / "missing.npz")])
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=np.zeros((4, 3, 8, 8), dtype=np.uint8))     # channels-first: wrong
    with pytest.raises(SystemExit, match=r"\(M,H,W,3\) uint8, found shape \(4, 3, 8, 8\)"):
        metrics.main(["--samples", str(wrong)])
    floats = tmp_path / "floats.npz"
    np.savez(floats, images=np.zeros((4, 8, 8, 3), dtype=np.float32))
    with pytest.raises(SystemExit, match="dtype float32"):
        metrics.main(["--samples", str(floats)])
    nokey = tmp_path / "nokey.npz"
    np.savez(nokey, x=np.zeros((4, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(SystemExit, match="no 'images'"):
        metrics.main(["--samples", str(nokey)])
    empty = tmp_path / "empty.npz"
    np.savez(empty, images=np.zeros((0, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(SystemExit, match="no images"):
        metrics.main(["--samples", str(empty)])
    good = tmp_path / "good.npz"
    np.savez(good, images=np.zeros((4, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(SystemExit, match="error: .*--inception-weights FILE"):
        metrics.main(["--samples", str(good), "--ref", str(good),
                      "--inception-weights", str(tmp_path / "none.pth")])


@pytest.mark.slow
@pytest.mark.long  # Inception-v3 at 299 px
def test_cli_fid_and_is_with_inception_v3(tmp_path, monkeypatch, capsys):
    # The real InceptionFeatures class with random weights (no download here): the CLI must name
    # Inception-v3 and print the FID that fid_from_images computes on the same images.
    import functools
    monkeypatch.setattr(metrics, "InceptionFeatures",
                        functools.partial(InceptionFeatures, weights=None, allow_random=True))
    rng = np.random.default_rng(0)
    for name in ("a.npz", "b.npz"):
        np.savez(tmp_path / name, images=rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
    torch.manual_seed(0)
    metrics.main(["--samples", str(tmp_path / "a.npz"), "--ref", str(tmp_path / "b.npz"),
                  "--batch-size", "3", "--n", "5", "--device", "cpu"])
    out = capsys.readouterr().out
    fid_line, warning, is_line = out.strip().splitlines()
    assert fid_line.startswith("FID (torchvision Inception-v3") and "samples n=5, ref n=5" in fid_line
    # five images: the FID is a number, not a measure of quality, and the command says so
    assert warning.startswith("  warning: from 5 images (features of 2048 dimensions)")
    assert is_line.startswith("IS (torchvision Inception-v3")
    torch.manual_seed(0)
    ext = InceptionFeatures(weights=None, allow_random=True)
    batches = lambda f: metrics.iterate_batches(np.load(tmp_path / f)["images"][:5], 3)
    fid = metrics.fid_from_images(batches("b.npz"), batches("a.npz"), ext, "cpu")
    assert float(fid_line.split("): ")[1].split()[0]) == pytest.approx(fid, abs=5e-4)


#### CLI with the project's own checkpoints: semantic FID and rFID ####

@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    """A 2-step small classifier and a 2-step tokenizer trained against it."""
    import train
    from conftest import TINY
    runs = str(tmp_path_factory.mktemp("runs"))
    common = [*TINY, "--steps", "2", "--runs-dir", runs]
    train.main(["--stage", "classifier", *common])
    train.main(["--stage", "tokenizer", "--disc-ndf", "8", "--disc-layers", "2", *common])
    return runs


@pytest.mark.slow
def test_cli_semantic_ckpt_and_rfid(small_runs, tmp_path, capsys):
    clf, tok = os.path.join(small_runs, "tiny-classifier"), os.path.join(small_runs, "tiny-tokenizer")
    rng = np.random.default_rng(0)
    for name in ("a.npz", "b.npz"):
        np.savez(tmp_path / name, images=rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8))
    metrics.main(["--samples", str(tmp_path / "a.npz"), "--ref", str(tmp_path / "b.npz"), "--semantic-ckpt", clf])
    out = capsys.readouterr().out
    assert "semantic FID (small-classifier features" in out and "n=6" in out
    m = metrics.main(["--tokenizer", tok, "--semantic-ckpt", clf, "--n", "8"])
    out = capsys.readouterr().out
    assert "semantic rFID (small-classifier features" in out and "(val n=8)" in out
    assert m["n"] == 8 and m["rfid"] >= 0 and 0 < m["usage"] <= 1 and m["l1"] > 0
    # the same run through the library function: rFID of a set of reconstructions is what
    # fid_from_images gives on the same images
    import data
    import runs
    t, ckpt, _ = runs.load_tokenizer(tok, torch.device("cpu"))
    ds = torch.utils.data.Subset(data.load_data("val", **data.recorded_data(ckpt)), range(8))
    ext = metrics.semantic_features_from_checkpoint(clf)
    x = torch.stack([ds[i][0] for i in range(8)])
    with torch.no_grad():
        x_rec = t.decode(t.encode(x)[0]).clamp(-1, 1)
    assert m["rfid"] == pytest.approx(metrics.fid_from_images([x], [x_rec], ext, "cpu"), rel=1e-6)


@pytest.mark.slow
def test_cli_more_errors(small_runs, tmp_path):
    clf, tok = os.path.join(small_runs, "tiny-classifier"), os.path.join(small_runs, "tiny-tokenizer")
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, images=np.zeros((4, 32, 32, 3), dtype=np.uint8))
    np.savez(b, images=np.zeros((4, 16, 16, 3), dtype=np.uint8))
    assert "compare sets of one size" in error_of(metrics.main, ["--samples", str(a), "--ref", str(b)])
    assert "either --samples" in error_of(metrics.main, [])
    assert "either --samples" in error_of(metrics.main, ["--samples", str(a), "--tokenizer", tok])
    msg = error_of(metrics.main, ["--samples", str(a), "--semantic-ckpt", tok])
    assert "is a 'tokenizer' checkpoint" in msg and "classifier" in msg
    msg = error_of(metrics.main, ["--tokenizer", clf, "--semantic-ckpt", clf])
    assert "is a 'classifier' checkpoint" in msg


#### sample folders, reference folders and statistics files ####

def write_sample_folder(folder, images, chunk_size, n=None):
    """A sample folder as sample.py writes it (manifest + chunks), without a model."""
    n = len(images) if n is None else n
    os.makedirs(folder)
    pictures.write_sample_manifest(folder, {"settings": {}, "n": n, "chunk_size": chunk_size,
                                        "image_size": list(images.shape[1:3])})
    for c in range(pictures.num_chunks(len(images), chunk_size)):
        pictures.write_sample_chunk(folder, c, images[c * chunk_size:(c + 1) * chunk_size])


def test_sample_folder_reads_like_one_npz(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    write_sample_folder(tmp_path / "dir", images, chunk_size=3)
    np.savez(tmp_path / "one.npz", images=images)
    folder, one = metrics.ImageFiles(str(tmp_path / "dir")), metrics.ImageFiles(str(tmp_path / "one.npz"))
    assert folder.count == one.count == 7 and folder.size == one.size == (8, 8)
    assert np.array_equal(np.concatenate(list(folder.arrays())), images)
    # batches never straddle two files, but carry the same images in the same order
    assert torch.equal(torch.cat(list(folder.batches(2))), torch.cat(list(one.batches(5))))
    assert np.array_equal(np.concatenate(list(metrics.ImageFiles(str(tmp_path / "dir"), n=4).arrays())), images[:4])
    # a folder still being written (2 of 3 chunks) is refused beyond what it holds
    write_sample_folder(tmp_path / "part", images[:6], chunk_size=3, n=7)
    msg = error_of(metrics.main, ["--samples", str(tmp_path / "part")])
    assert "holds 6 of its 7 images" in msg and "--n 6 or fewer" in msg
    assert metrics.ImageFiles(str(tmp_path / "part"), n=6).count == 6


def test_fid_from_reference_folder_equals_npz_and_caches(tmp_path, monkeypatch, capsys):
    from PIL import Image
    monkeypatch.chdir(tmp_path)  # the default cache goes to runs/ref_stats/ here
    torch.manual_seed(0)         # one random tiny VGG: features that tell images apart, at no cost
    ext = SemanticFeatures(TinyVGG())
    monkeypatch.setattr(metrics, "make_extractor", lambda args: ext)
    clf = ["--device", "cpu"]
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    fake = rng.integers(0, 128, (6, 32, 32, 3), dtype=np.uint8)  # darker: a clear distance to the real ones
    os.makedirs(tmp_path / "imgs" / "sub")                  # any layout train.py reads: nested too
    for i, im in enumerate(real):
        Image.fromarray(im).save(tmp_path / "imgs" / ("sub" if i > 4 else "") / f"{i:02d}.png")
    np.savez(tmp_path / "real.npz", images=np.concatenate([real[:5], real[5:]]))
    write_sample_folder(tmp_path / "fake", fake, chunk_size=4)
    fid_npz = metrics.main(["--samples", "fake", "--ref", "real.npz", *clf])["fid"]
    capsys.readouterr()
    got = metrics.main(["--samples", "fake", "--ref", "imgs", "--batch-size", "4", *clf])
    assert fid_npz > 0.01  # a real distance, not a degenerate 0 that any two sets would give
    assert got["ref_n"] == 9 and got["n"] == 6 and got["fid"] == pytest.approx(fid_npz, rel=1e-6)
    cache = got["ref_stats"]
    assert os.path.dirname(cache) == os.path.join("runs", "ref_stats") and os.path.isfile(cache)
    assert f"-> {cache}" in capsys.readouterr().out
    # the second time the cache is used, and the statistics file itself is a --ref
    assert metrics.main(["--samples", "fake", "--ref", "imgs", *clf])["fid"] == pytest.approx(fid_npz, rel=1e-6)
    assert f"from the cache {cache}" in capsys.readouterr().out
    assert metrics.main(["--samples", "fake", "--ref", cache, *clf])["fid"] == pytest.approx(fid_npz, rel=1e-6)
    # --ref alone writes statistics; the cache notices a changed folder
    metrics.main(["--ref", "imgs", "--image-size", "32", "--ref-stats-out", "ref_stats.npz", *clf])
    assert metrics.load_statistics("ref_stats.npz")["n"] == 9
    os.remove(tmp_path / "imgs" / "00.png")                 # the same number of images, one other
    Image.fromarray(fake[0]).save(tmp_path / "imgs" / "new.png")
    other = metrics.main(["--samples", "fake", "--ref", "imgs", *clf])
    assert other["ref_n"] == 9 and other["fid"] != pytest.approx(fid_npz, rel=1e-3)
    assert "recomputing" in capsys.readouterr().out
    # statistics of another extractor are refused, in one line that names both
    data = dict(np.load("ref_stats.npz"))
    data["extractor"] = np.str_("torchvision inception_v3 pool3, weights sha256 0123")
    np.savez(tmp_path / "other.npz", **data)
    msg = error_of(metrics.main, ["--samples", "fake", "--ref", "other.npz", *clf])
    assert "made with [torchvision inception_v3 pool3, weights sha256 0123], but this run uses [TinyVGG" in msg
    # a statistics file named by --ref-stats-out is recomputed, never reused, by another extractor
    metrics.main(["--ref", "imgs", "--image-size", "32", "--ref-stats-out", "ref_stats.npz", *clf])
    capsys.readouterr()
    monkeypatch.setattr(metrics, "make_extractor", lambda args: SemanticFeatures(TinyVGG()))
    metrics.main(["--ref", "imgs", "--image-size", "32", "--ref-stats-out", "ref_stats.npz", *clf])
    assert "recomputing" in capsys.readouterr().out and str(np.load("ref_stats.npz")["extractor"]) != ext.ident
    # another extractor has its own cache file
    assert metrics.main(["--samples", "fake", "--ref", "imgs", *clf])["ref_stats"] != cache
    # the built-in dataset: a random subset of a split
    shapes = metrics.main(["--samples", "fake", "--ref", "shapes", "--ref-split", "val", "--ref-n", "5", *clf])
    assert shapes["ref_n"] == 5 and os.path.basename(shapes["ref_stats"]).startswith("shapes-val-32px-n5-")
    assert "no train/ and val/" in error_of(metrics.main, ["--samples", "fake", "--ref", "imgs", "--ref-split", "val"])
    # and so is a reference of another size
    assert "compare sets of one size" in error_of(metrics.main, ["--samples", "fake", "--ref", "imgs",
                                                                 "--image-size", "16", *clf])


def test_extractor_idents_name_the_weights():
    torch.manual_seed(0)
    a, b = SemanticFeatures(TinyVGG()), SemanticFeatures(TinyVGG())
    assert a.ident.startswith("TinyVGG penultimate features") and a.ident != b.ident
    assert SemanticFeatures(a.classifier).ident == a.ident


def test_shape_and_color_accuracy_read_the_asked_class_and_fall_to_chance_without_it():
    """metrics.shape_color_accuracy: the share of images whose predicted class shows the asked shape
    (class mod 8) and color family (class // 8). Real images in the shipped classifier score high;
    the same images asked for shuffled classes score about 1/8 (shape) and 1/4 (color)."""
    import data
    import runs
    from conftest import ROOT

    net, _ = runs.load_classifier(os.path.join(ROOT, "pretrained", "tiny-classifier"))
    val = data.build_dataset("shapes", "val", 32, n_val=400)
    x = torch.stack([val[i][0] for i in range(len(val))])        # (400, 3, 32, 32)
    y = torch.stack([val[i][1] for i in range(len(val))])        # (400,)
    real = metrics.shape_color_accuracy(net, x, y, torch.device("cpu"))
    assert real["shape"] > 0.9 and real["color"] > 0.95 and set(real["per_shape"]) == set(data.SHAPES)
    shuffled = metrics.shape_color_accuracy(net, x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))],
                                            torch.device("cpu"))
    assert 0.05 < shuffled["shape"] < 0.22 and 0.15 < shuffled["color"] < 0.35, shuffled


def test_shape_measure_of_a_sample_file_gives_the_reconstructions_figure_and_chance_without_labels(tmp_path):
    """`metrics.py --samples F --shape-classifier C` reads the classes asked for from the file: on the
    shipped tokenizer's reconstructions (saved as sample.py saves samples) it gives the ceiling that
    shape_references measures on them; with the labels shuffled, about 1/8 of shapes; a file without
    labels is refused in one line. The references are ordered: real > reconstructions > no context."""
    import data
    import runs
    from conftest import ROOT

    clf = os.path.join(ROOT, "pretrained", "tiny-classifier")
    net, _ = runs.load_classifier(clf)
    tok, _, _ = runs.load_tokenizer(os.path.join(ROOT, "pretrained", "tiny-decoder"), torch.device("cpu"))
    val = data.build_dataset("shapes", "val", 32, n_val=300)
    refs = metrics.shape_references(tok, net, val, torch.device("cpu"))
    real, recon, floor = (refs[k]["shape"] for k in ("real images", "reconstructions (ceiling)",
                                                     "tokens without context (floor)"))
    assert real > recon > 0.6 > 0.25 > floor, refs
    with torch.no_grad():
        x_hat = tok(torch.stack([val[i][0] for i in range(len(val))]))[0].clamp(-1, 1)  # (300, 3, 32, 32)
    images = ((x_hat.permute(0, 2, 3, 1) + 1) * 127.5).round().to(torch.uint8).numpy()  # as sample.py stores them
    labels = np.array([int(val[i][1]) for i in range(len(val))])
    np.savez(tmp_path / "recon.npz", images=images, labels=labels)
    got = metrics.main(["--samples", str(tmp_path / "recon.npz"), "--shape-classifier", clf])
    assert abs(got["shape"] - recon) <= 0.02 and got["color"] > 0.9, (got, recon)
    np.savez(tmp_path / "shuffled.npz", images=images, labels=np.random.default_rng(0).permutation(labels))
    got = metrics.main(["--samples", str(tmp_path / "shuffled.npz"), "--shape-classifier", clf])
    assert 0.05 < got["shape"] < 0.22, got
    np.savez(tmp_path / "bare.npz", images=images)
    with pytest.raises(SystemExit, match="holds no labels"):
        metrics.main(["--samples", str(tmp_path / "bare.npz"), "--shape-classifier", clf])
    np.savez(tmp_path / "small.npz", images=images[:, ::2, ::2], labels=labels)  # 16 px: not the classifier's size
    with pytest.raises(SystemExit, match="trained on 32 px images, these are 16 px"):
        metrics.main(["--samples", str(tmp_path / "small.npz"), "--shape-classifier", clf])
