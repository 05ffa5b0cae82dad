"""The reference floors (metrics.reference_floors, metrics.PatchKMeans, metrics.kmeans), and the test
that the tiny preset's own tokenizer beats the floor of floors: each image's mean color."""

import os

import pytest
import torch
import torch.nn.functional as F

import data
import metrics
import runlog
import train
from conftest import ROOT


def test_kmeans_finds_separated_clusters_and_settles():
    g = torch.Generator().manual_seed(0)
    truth = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points = (truth[:, None] + 0.1 * torch.randn(4, 50, 2, generator=g)).reshape(-1, 2)  # (200, 2)
    centers, assign, iters = metrics.kmeans(points, 4, seed=0)
    # every true center has one fitted center within the noise, and each cluster one label
    nearest = torch.cdist(truth, centers).min(1).values
    assert (nearest < 0.1).all(), f"k-means should find the 4 separated clusters; off by {nearest.tolist()}"
    assert all(len(assign[i * 50:(i + 1) * 50].unique()) == 1 for i in range(4)), "a cluster was split"
    # settled: the assignment is the nearest center of the final centers, and Lloyd's mean step holds
    assert torch.equal(assign, torch.cdist(points, centers).argmin(1)), "assignments not settled"
    for k in range(4):
        assert torch.allclose(centers[k], points[assign == k].mean(0), atol=1e-5), "a center is not its mean"
    assert iters < 1000
    again = metrics.kmeans(points, 4, seed=0)
    assert torch.equal(again[0], centers), "k-means with one seed must give one answer"


def test_patch_kmeans_is_eq1_on_raw_patches():
    # 8 images of 8x8 px; with K at least the number of distinct 4x4 patches it reconstructs exactly
    g = torch.Generator().manual_seed(1)
    palette = torch.rand(3, 3, 1, 1, generator=g) * 2 - 1                    # 3 flat patch colors
    choice = torch.randint(3, (8, 2, 2), generator=g)                         # (B, h, w)
    x = F.interpolate(palette[choice.flatten()].view(8, 2, 2, 3).permute(0, 3, 1, 2), scale_factor=4.0)
    tok = metrics.PatchKMeans.fit(x, f=4, K=3, seed=0)
    assert tok.cfg.f == 4 and tok.cfg.latent_size == 2 and tok.cfg.K == 3
    x_hat, s, _ = tok(x)
    assert s.shape == (8, 2, 2) and torch.allclose(x_hat, x, atol=1e-6)
    assert torch.allclose(tok.decode_indices(s), x_hat), "decode_indices must paste the codes' patches"
    # fewer codes than patches: each patch goes to its nearest code (Eq. 1), as in a brute-force search
    tok2 = metrics.PatchKMeans.fit(x, f=4, K=2, seed=0)
    _, s2, _ = tok2(x)
    patches = F.pixel_unshuffle(x, 4).permute(0, 2, 3, 1).reshape(-1, 48)
    brute = torch.cdist(patches, tok2.quantizer.codebook.weight).argmin(1)
    assert torch.equal(s2.flatten(), brute)


def test_reference_floors_measure_what_they_say():
    train_ds = data.build_dataset("shapes", "train", 32, n_train=64, n_val=16)
    val = data.build_dataset("shapes", "val", 32, n_train=64, n_val=16)
    floors = metrics.reference_floors(train_ds, val, K=16, f=4, device=torch.device("cpu"), n_fit=64)
    x = torch.stack([val[i][0] for i in range(len(val))])                    # (16, 3, 32, 32)
    mean_color = (x - x.mean((2, 3), keepdim=True)).abs().mean().item()
    block = (x - F.interpolate(F.avg_pool2d(x, 4), scale_factor=4.0)).abs().mean().item()
    assert floors["mean color"]["l1"] == pytest.approx(mean_color, rel=1e-5)
    assert floors["block average"]["l1"] == pytest.approx(block, rel=1e-5)
    assert "usage" not in floors["mean color"], "a floor without tokens has no codebook usage"
    km = floors["k-means"]
    assert 0 < km["usage"] <= 1 and 1 <= km["perplexity"] <= 16 and km["iterations"] >= 1
    # a codebook of patches does better than one color per image
    assert block < km["l1"] < mean_color


@pytest.mark.slow  # trains a tokenizer end to end
@pytest.mark.long
def test_tiny_tokenizer_beats_each_images_mean_color(tmp_path, monkeypatch):
    """The tiny preset's own losses (alpha 1, Eq. 3 at the preset's units and weight, the entropy
    penalty, the shipped tiny classifier as its semantic network), only the run shortened: within
    200 steps the tokenizer must reconstruct the validation images better than replacing each by
    its mean color. With each VGG layer in units of its RMS (the earlier rule), the plain lookup and
    32 channels it stayed worse than that floor (val L1 0.36 at step 500, the floor 0.27): the
    perceptual pull starved L1."""
    monkeypatch.chdir(tmp_path)
    runs_dir = str(tmp_path / "runs")
    common = ["--runs-dir", runs_dir, "--n-val", "200", "--log-every", "100", "--eval-every", "1000",
              "--sample-every", "1000", "--ckpt-every", "1000",
              "--classifier-ckpt", os.path.join(ROOT, "pretrained", "tiny-classifier")]
    path = train.main(["--stage", "tokenizer", "--steps", "200", *common])
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["args"]["perceptual_weight"] == 1.0 and ckpt["args"]["alpha"] == 1.0
    val_l1 = runlog.read_log(f"{runs_dir}/tiny-tokenizer")["val_l1"][1][-1]  # the final validation
    val = data.build_dataset("shapes", "val", 32, n_val=200)
    floor = metrics.reference_floors(data.build_dataset("shapes", "train", 32, n_val=200), val, K=128, f=4,
                                     device=torch.device("cpu"), n_fit=50)["mean color"]["l1"]
    assert val_l1 < floor, (f"the tiny tokenizer reconstructs worse than each image's mean color "
                            f"(val L1 {val_l1:.3f} against {floor:.3f}): the perceptual terms outweigh L1")
