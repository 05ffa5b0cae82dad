"""The shipped tiny models of pretrained/ (`sh pretrained/rebuild.sh` makes them again): each one
loads with the safe loader, rebuilds from its checkpoint alone, and reproduces from its shipped
(fp16) weights the validation figures recorded in fp32 at the end of its training. A change that
breaks a state_dict name or a config field breaks this test, and so CI: the shipped models must
keep loading."""

import os

import pytest
import torch

import data
import metrics
import runs
import sample
from conftest import ROOT

# over 10 s each: .ci/run runs these after the README's test command (pytest.ini)
pytestmark = [pytest.mark.slow, pytest.mark.long]

PRETRAINED = os.path.join(ROOT, "pretrained")
CPU = torch.device("cpu")
# tolerances against the recorded fp32 figures: fp16 rounds the decoder's and the transformers'
# weights (relative error ~5e-4 each)
TOL = {"val_l1": 2e-3, "val_usage": 0.0, "val_perplexity": 0.0, "val_loss": 1e-2, "val_acc": 5e-3}


def shipped(name):
    path = os.path.join(PRETRAINED, name)
    if not os.path.isdir(path):
        pytest.fail(f"pretrained/{name} is missing: rebuild the shipped models with `sh pretrained/rebuild.sh`")
    return path


def check(name, recorded, measured):
    for key, value in recorded.items():
        assert measured[key] == pytest.approx(value, abs=TOL[key]), \
            f"pretrained/{name}: {key} is {measured[key]:.5g} from the shipped weights, {value:.5g} was recorded"


@pytest.fixture(scope="module")
def val_split():
    ckpt = runs.load_checkpoint(shipped("tiny-tokenizer"), "tokenizer")
    return data.load_data("val", **data.recorded_data(ckpt))


@pytest.mark.parametrize("name", ["tiny-tokenizer", "tiny-decoder"])
def test_shipped_tokenizers_reproduce_their_recorded_figures(name, val_split):
    tok, ckpt, tok_hash = runs.load_tokenizer(shipped(name), CPU)
    images = (torch.stack([val_split[j][0] for j in range(i, min(i + 250, len(val_split)))])
              for i in range(0, len(val_split), 250))
    m = metrics.reconstruction_metrics(tok, images, CPU)
    check(name, ckpt["recorded"], {f"val_{k}": m[k] for k in ("l1", "usage", "perplexity")})
    # encoder and codebook are shipped in fp32: the tokens are bit for bit those of training
    assert all(v.dtype == torch.float32 for k, v in ckpt["model"].items() if k.startswith(("encoder.", "quantizer.")))


@pytest.mark.parametrize("kind", ["ar", "nar"])
def test_shipped_transformers_reproduce_their_recorded_figures(kind, val_split):
    model, _, tok, ckpt = runs.load_transformer(shipped(f"tiny-{kind}"), CPU)
    s, y = data.encode_dataset(tok, val_split, CPU, flips=False)  # the val tokens of the shipped tokenizer
    check(f"tiny-{kind}", ckpt["recorded"], metrics.transformer_metrics(model, kind, s, y, CPU))


def test_shipped_classifier_reproduces_its_recorded_accuracy(val_split):
    net, ckpt = runs.load_classifier(shipped("tiny-classifier"))
    check("tiny-classifier", ckpt["recorded"], {"val_acc": metrics.classifier_accuracy(net, val_split, CPU)})
    # `tiny`'s semantic network ships whole in fp32: the network its tokenizer trained against, bit for bit
    assert all(v.dtype != torch.float16 for v in ckpt["model"].values())
    assert runs.SHIPPED_CLASSIFIER == shipped("tiny-classifier")


def test_shipped_models_sample_a_grid_and_stay_small(tmp_path):
    out = tmp_path / "grid.png"
    sample.main(["--ckpt", shipped("tiny-nar"), "--tokenizer", shipped("tiny-tokenizer"), "--n", "8",
                 "--device", "cpu", "--out", str(out)])
    assert out.stat().st_size > 0
    # the shipped files only: a token cache (tokens_*.pt, gitignored) that a run on a shipped tokenizer
    # wrote beside it is not part of the kit
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(PRETRAINED) for f in files
                if not f.startswith("tokens_"))
    # 7.5 MiB with the 40-channel tiny tokenizer (its encoder and codebook in fp32, twice: phase 1 and 2)
    assert total < 12 * 2**20, f"pretrained/ holds {total / 2**20:.1f} MiB; the kit promises under 12 MiB"
