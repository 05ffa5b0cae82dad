"""train.py: every stage runs a few steps on `tiny`, checkpoints, resumes; bad input is refused."""

import os

import pytest
import torch

import config
import data
import machine
import runs
import train
import transformer
from conftest import TINY, error_of

TOK = ["--semantic", "random", "--disc-start", "2", "--disc-ndf", "8", "--disc-layers", "2"]


def step_of(path):
    return torch.load(path, weights_only=True)["step"]


@pytest.mark.slow
def test_classifier_stage_runs_and_resumes(run):
    path = run("--stage", "classifier", "--steps", "3", *TINY)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["kind"] == "classifier" and ckpt["step"] == 3
    # the stored val accuracy is the saved weights' accuracy on the val split, recomputed here
    net = runs.classifier_model(ckpt["config"])
    net.load_state_dict(ckpt["model"])
    val = data.build_dataset("shapes", "val", 32, n_train=32, n_val=16)  # TINY's val split
    net.eval()
    with torch.no_grad():
        x, y = map(torch.stack, zip(*(val[i] for i in range(len(val)))))
        acc = (net(x).argmax(1) == y).float().mean().item()
    assert ckpt["val_acc"] == pytest.approx(acc, abs=1e-9) and len(val) == 16
    path = run("--stage", "classifier", "--steps", "5", "--resume", *TINY)
    assert step_of(path) == 5


@pytest.mark.slow
def test_classifier_of_class_and_texture_with_vgg16_pools(run):
    """The study's second evaluation network: class x background texture (160 labels), a max-pool after
    every stage; its labels are the class and the texture each image was drawn with."""
    path = run("--stage", "classifier", "--steps", "2", "--classifier-labels", "texture", "--classifier-pools",
               "vgg16", *TINY)
    cfg = torch.load(path, weights_only=True)["config"]
    assert cfg["num_classes"] == 32 * len(data.TEXTURES) and list(cfg["pools"]) == [True] * 5
    ds = data.TextureLabels(data.build_dataset("shapes", "val", 32, n_train=32, n_val=16))
    for i in range(len(ds)):
        _, y = ds[i]
        _, label, texture, _ = data.render_shape(0, 32 + i, 32)  # val image i is index n_train + i
        assert y == label * len(data.TEXTURES) + texture
    with pytest.raises(data.DataError, match="built-in dataset"):
        data.TextureLabels(data.Subset(ds.ds, [0, 1]))


@pytest.mark.slow
def test_tokenizer_reads_the_shipped_classifier_and_trains_one_only_without_it(run, monkeypatch, capsys, tmp_path):
    """`tiny`'s semantic network is the shipped classifier (pretrained, as the paper's VGG); without
    it, the tokenizer stage trains the preset's own first, and says that --steps is not its length."""
    path = run("--stage", "tokenizer", "--steps", "1", "--disc-ndf", "8", "--disc-layers", "2", *TINY)
    out = capsys.readouterr().out
    assert f"semantic network: small VGG16-shaped classifier {runs.SHIPPED_CLASSIFIER}" in out
    assert not os.path.exists(os.path.join(os.path.dirname(path), "..", "tiny-classifier")), "trained one anyway"
    monkeypatch.setattr(runs, "SHIPPED_CLASSIFIER", str(tmp_path / "gone"))
    monkeypatch.setitem(config.PRESETS["tiny"]["classifier"], "steps", 2)
    path = run("--stage", "tokenizer", "--name", "second", "--steps", "2", "--disc-ndf", "8", "--disc-layers", "2",
               *TINY)
    out = capsys.readouterr().out
    assert "is missing" in out and "training it first (2 steps" in out and "--steps sets this stage's length only" in out
    assert "semantic network: small VGG16-shaped classifier" in out
    assert os.path.isfile(path) and os.path.isdir(os.path.join(os.path.dirname(path), "..", "tiny-classifier"))


@pytest.mark.slow
def test_tokenizer_stage_writes_checkpoint_log_grid_and_resumes(run, tmp_path):
    path = run("--stage", "tokenizer", "--steps", "3", *TOK, *TINY)
    run_dir = os.path.dirname(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["kind"] == "tokenizer" and ckpt["phase"] == 1 and ckpt["step"] == 3
    assert {"model", "optimizer", "disc", "disc_optimizer", "rng", "config"} <= set(ckpt)
    assert any(f.startswith("recon_") and f.endswith(".png") for f in os.listdir(run_dir))
    lines = open(os.path.join(run_dir, "log.jsonl")).read().splitlines()
    assert any('"val_usage"' in l for l in lines) and any('"d"' in l for l in lines)  # GAN ran after step 2
    assert step_of(run("--stage", "tokenizer", "--steps", "5", "--resume", *TOK, *TINY)) == 5


@pytest.mark.slow
def test_decoder_stage_freezes_encoder_and_codebook(run, capsys):
    phase1 = run("--stage", "tokenizer", "--steps", "2", *TOK, *TINY)
    path = run("--stage", "decoder", "--steps", "3", *TOK, *TINY)
    a, b = torch.load(phase1, weights_only=True), torch.load(path, weights_only=True)
    assert b["phase"] == 2 and b["config"]["decoder"] == "seqgan" and b["args"]["alpha"] == 0.0
    for k, v in a["model"].items():
        if k.startswith(("encoder.", "quantizer.")):
            assert torch.equal(v, b["model"][k]), k  # frozen in phase 2 (Fig. 7)
    assert any(".attn." in k for k in b["model"])
    assert "token indices of all 16 val images unchanged: True" in capsys.readouterr().out
    # a resumed phase-2 run checks the tokens too (the check's data is in the checkpoint)
    assert step_of(run("--stage", "decoder", "--steps", "4", "--resume", *TOK, *TINY)) == 4
    assert "token indices of all 16 val images unchanged: True" in capsys.readouterr().out
    # ... and notices a change: a checkpoint whose recorded hash is of other tokens
    ckpt = torch.load(path.replace("00000003", "00000004"), weights_only=True)
    ckpt["token_check"]["indices_hash"] = "0" * 64
    torch.save(ckpt, path.replace("00000003", "00000004"))
    run("--stage", "decoder", "--steps", "5", "--resume", *TOK, *TINY)
    assert "token indices of all 16 val images unchanged: False" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------
# bad input: one line, says how to fix it, no traceback


def test_decoder_without_phase1_checkpoint(run):
    assert "run `python train.py --stage tokenizer` first" in error_of(run, "--stage", "decoder", *TOK, *TINY)


@pytest.mark.slow
def test_decoder_with_checkpoint_of_another_kind(run):
    cls = run("--stage", "classifier", "--steps", "1", *TINY)
    msg = error_of(run, "--stage", "decoder", "--phase1", cls, *TOK, *TINY)
    assert "is a 'classifier' checkpoint, but a tokenizer checkpoint is needed" in msg


@pytest.mark.parametrize("alpha", ["-0.1", "1.5"])
def test_alpha_outside_unit_interval(run, alpha):
    assert "must be in [0, 1]" in error_of(run, "--stage", "tokenizer", "--alpha", alpha, *TOK, *TINY)


def test_image_size_not_divisible_by_f(run):
    msg = error_of(run, "--stage", "tokenizer", "--image-size", "30", *TOK, *TINY)
    assert "not divisible by the downsampling factor f=4" in msg and "multiple of 4" in msg


def test_missing_and_empty_data_folders(run, tmp_path):
    msg = error_of(run, "--stage", "tokenizer", "--name", "mine", "--data", "folder", "--data-dir",
                   str(tmp_path / "nope"), *TOK, *TINY)
    assert "does not exist" in msg
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    msg = error_of(run, "--stage", "tokenizer", "--name", "mine", "--data", "folder", "--data-dir",
                   str(tmp_path / "empty"), *TOK, *TINY)
    assert "no images" in msg


def test_folder_val_split_is_every_100th_file_across_class_folders(tmp_path):
    # 3 class folders of 100 images each: the val split must hold all three classes (the last
    # 1% of the sorted files would all be the last folder's), train the other 297, no overlap
    from PIL import Image

    for c in ("a", "b", "c"):
        (tmp_path / c).mkdir()
        for i in range(100):
            Image.new("RGB", (4, 4)).save(tmp_path / c / f"{i:03d}.png")
    val = data.build_dataset("folder", "val", 4, str(tmp_path))
    train_ds = data.build_dataset("folder", "train", 4, str(tmp_path))
    assert val.indices == [99, 199, 299] and len(train_ds) == 297
    assert not set(val.indices) & set(train_ds.indices)
    assert sorted(val.ds.labels[i] for i in val.indices) == [0, 1, 2]


def test_a_small_every_100th_validation_split_comes_with_a_warning(tmp_path, capsys):
    from PIL import Image

    for c, n in (("a", 150), ("b", 40)):  # 190 files: val = files 99 and 199 -> one image, of folder a
        (tmp_path / c).mkdir()
        for i in range(n):
            Image.new("RGB", (4, 4)).save(tmp_path / c / f"{i:03d}.png")
    val = data.build_dataset("folder", "val", 4, str(tmp_path))
    out = capsys.readouterr().out
    assert len(val) == 1 and "warning:" in out and "1 image(s), 1 of its 2 classes" in out
    data.build_dataset("folder", "train", 4, str(tmp_path))
    assert "warning" not in capsys.readouterr().out  # said once, by the split it concerns


def test_a_skipped_image_is_replaced_by_the_next_readable_one(tmp_path, capsys):
    # --skip-bad-images: the order stays a function of the index, the next file stands in (the
    # last one wraps to the first), each bad file is named once and counted once
    from PIL import Image

    for i, name in enumerate(("a.png", "c.png", "d.png")):
        Image.new("RGB", (4, 4), (60 * i, 0, 0)).save(tmp_path / name)
    (tmp_path / "b.png").write_bytes(b"not a png")
    (tmp_path / "e.png").write_bytes(b"not a png either")
    ds = data.ImageFolderDataset(str(tmp_path), 4, skip_bad_images=True)
    assert torch.equal(ds[1][0], ds[2][0]) and not torch.equal(ds[1][0], ds[0][0])
    assert torch.equal(ds[4][0], ds[0][0])
    ds[1]
    assert capsys.readouterr().out.count("b.png") == 1
    assert data.skipped_images(ds) == 2


@pytest.mark.slow
def test_unreadable_image_is_named(run, tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 36), (i * 60, 10, 10)).save(folder / f"ok{i}.png")
    (folder / "broken.jpg").write_bytes(b"definitely not a jpeg")
    msg = error_of(run, "--stage", "tokenizer", "--name", "mine", "--data", "folder", "--data-dir", str(folder),
                   *TOK, *TINY)
    assert "broken.jpg" in msg and "--skip-bad-images" in msg
    # with the flag the run goes through
    path = run("--stage", "tokenizer", "--name", "mine", "--data", "folder", "--data-dir", str(folder),
               "--skip-bad-images",
               "--steps", "1", *TOK, *TINY)
    assert os.path.isfile(path)


@pytest.mark.slow
def test_imagenet_vgg_offline(run, monkeypatch, tmp_path):
    import urllib.error

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline")))
    args = [a for a in TOK if a not in ("--semantic", "random")]
    msg = error_of(run, "--stage", "tokenizer", "--semantic", "imagenet", *args, *TINY)
    assert "connect to the internet once" in msg and "--vgg-weights FILE" in msg


@pytest.mark.slow
def test_existing_run_is_never_overwritten(run):
    path = run("--stage", "classifier", "--steps", "1", *TINY)
    before = open(path, "rb").read()
    assert "pass --resume" in error_of(run, "--stage", "classifier", "--steps", "1", *TINY)
    assert open(path, "rb").read() == before


def test_checkpoint_write_is_atomic(tmp_path):
    run_dir = str(tmp_path)
    good = runs.save_checkpoint(run_dir, {"step": 1, "kind": "classifier"}, keep=3)

    class Crash(Exception):
        pass

    def half_write(f):
        f.write(b"partial bytes of a large checkpoint")
        raise Crash  # the process dies mid-write

    with pytest.raises(Crash):
        machine.atomic_write(os.path.join(run_dir, "ckpt_00000002.pt"), half_write)
    assert sorted(os.listdir(run_dir)) == ["ckpt_00000001.pt", "latest"]  # no partial file left
    assert runs.latest_checkpoint(run_dir) == good
    assert torch.load(good, weights_only=True)["step"] == 1


def test_keep_last_k_checkpoints(tmp_path):
    for step in range(1, 6):
        runs.save_checkpoint(str(tmp_path), {"step": step}, keep=2)
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".pt")) == ["ckpt_00000004.pt", "ckpt_00000005.pt"]
    assert open(tmp_path / "latest").read() == "ckpt_00000005.pt"


def test_transformer_lr_schedule_values():
    lr, warmup, total = 1e-3, 10, 110
    at = lambda step: train.lr_at(step, lr, warmup, total)
    assert at(0) == pytest.approx(1e-4) and at(4) == pytest.approx(5e-4)  # linear warmup from lr/warmup
    assert at(9) == pytest.approx(lr) and at(10) == pytest.approx(lr)      # the peak
    assert at(60) == pytest.approx(lr * (0.1 + 0.9 * 0.5))                 # half-way down the cosine
    assert at(110) == pytest.approx(0.1 * lr)                              # ends at 10% of lr


def test_ema_update_value():
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.clone() for p in ema.parameters()]
    transformer.ema_update(ema, model, 0.9)
    for e, b, m in zip(ema.parameters(), before, model.parameters()):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * m)


@pytest.mark.slow
def test_tokenizer_started_from_another_run_starts_from_its_weights(run):
    # --init-from (the LSUN recipe: fine-tune the ImageNet tokenizer): step 0 of the new run is
    # the other run's tokenizer and discriminator, with a fresh optimizer
    src = torch.load(run("--stage", "tokenizer", "--steps", "2", *TOK, *TINY, "--name", "src"), weights_only=True)
    new = run("--stage", "tokenizer", "--steps", "1", "--init-from", "runs/src", "--lr", "1e-12", *TOK, *TINY,
              "--disc-start", "100", "--name", "ft")
    new = torch.load(new, weights_only=True)
    for k, v in src["model"].items():  # one step at lr 1e-12: the weights are (almost) those of src
        torch.testing.assert_close(new["model"][k], v, rtol=0, atol=1e-9)
    assert all(torch.equal(new["disc"][k], v) for k, v in src["disc"].items())  # D is not trained before disc_start
    assert new["phase1"].endswith("ckpt_00000002.pt") and new["optimizer"]["state"][0]["step"] == 1
    fresh = torch.load(run("--stage", "tokenizer", "--steps", "1", "--lr", "1e-12", *TOK, *TINY, "--name", "fresh"),
                       weights_only=True)
    assert not torch.equal(fresh["model"]["decoder.conv_out.weight"], src["model"]["decoder.conv_out.weight"])


@pytest.mark.slow
def test_epochs_set_the_number_of_steps(run, capsys):
    # 2 epochs of 32 training images at batch 4: 16 steps
    path = run("--stage", "classifier", "--epochs", "2", *TINY)
    assert step_of(path) == 16 and "2 epochs of 32 images at batch 4: 16 steps" in capsys.readouterr().out


@pytest.mark.slow
def test_old_layout_tokenizer_is_refused_in_one_line(run, tmp_path):
    path = run("--stage", "tokenizer", "--steps", "1", *TOK, *TINY)
    old = torch.load(path, weights_only=True)
    old["config"].pop("decoder")
    old["config"]["attention"] = False  # what the layout before Table 1's stored
    torch.save(old, tmp_path / "old.pt")
    for argv in (["--stage", "ar", "--tokenizer", str(tmp_path / "old.pt")],
                 ["--stage", "decoder", "--phase1", str(tmp_path / "old.pt"), *TOK]):
        msg = error_of(run, *argv, *TINY)
        assert "made by an older tokenizer layout" in msg and "retrain it" in msg


@pytest.mark.slow
def test_phase2_refuses_a_decoder_without_attention(run):
    run("--stage", "tokenizer", "--steps", "1", *TOK, *TINY)
    msg = error_of(run, "--stage", "decoder", "--decoder", "conv-x2", *TOK, *TINY)
    assert "phase 2 enhances the decoder with attention" in msg


def test_the_presets_classifier_is_not_used_silently_for_other_data(run, capsys):
    run("--stage", "classifier", "--steps", "1", *TINY)  # runs/tiny-classifier, on the built-in shapes
    other = ["--stage", "tokenizer", "--steps", "1", "--data-seed", "1", "--disc-ndf", "8", "--disc-layers", "2", *TINY]
    msg = error_of(run, *other)  # the shipped classifier does not fit data seed 1 either
    assert "was trained on other data (data_seed 0 (here 1))" in msg and "--classifier-ckpt" in msg
    assert "the shipped classifier was trained on other images (data_seed 0 (here 1))" in capsys.readouterr().out
    run(*other, "--classifier-ckpt", "runs/tiny-classifier")  # the user's explicit choice is honoured, and said
    # ... naming the flags that differ
    assert "note: runs/tiny-classifier was trained with other data flags: data_seed 0 (here 1)" in capsys.readouterr().out


def test_runs_on_own_images_never_take_or_read_the_built_in_datasets_run_names(run, tmp_path):
    """--data folder: no default run name, and no default classifier, phase-1 run or tokenizer of
    the built-in dataset read silently; each refusal is one line naming the way out."""
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 32), (60 * i, 10, 10)).save(tmp_path / "imgs" / c / f"{i}.png")
    mine = ["--data", "folder", "--data-dir", str(tmp_path / "imgs")]
    run("--stage", "tokenizer", "--steps", "1", *TOK, *TINY)  # the built-in dataset's runs/tiny-tokenizer
    assert "needs its own --name" in error_of(run, "--stage", "tokenizer", *mine, *TOK, *TINY)
    # --data-dir without --data folder: refused, not a silent run on the built-in shapes
    msg = error_of(run, "--stage", "tokenizer", "--name", "my-tok", *mine[2:], *TOK, *TINY)
    assert "is read only with --data folder" in msg
    # labelled folder, no classifier given: refused, not trained into runs/tiny-classifier
    msg = error_of(run, "--stage", "tokenizer", "--name", "my-tok", *mine, "--disc-ndf", "8", *TINY)
    assert "--stage classifier" in msg and "--classifier-ckpt" in msg
    assert not (tmp_path / "runs" / "tiny-classifier").exists()
    assert not (tmp_path / "runs" / "my-tok").exists(), "a refused start left its run folder"
    runs_dir = tmp_path / "runs"  # the advice names the runs-dir of the run
    msg = error_of(run, "--stage", "decoder", "--name", "my-dec", *mine, *TOK, *TINY)
    assert f"--phase1 {runs_dir / 'NAME'}" in msg
    for stage in ("ar", "nar"):
        assert f"--tokenizer {runs_dir / 'NAME'}" in error_of(run, "--stage", stage, "--name", f"my-{stage}", *mine, *TINY)


@pytest.mark.slow
def test_the_classifier_a_tokenizer_stage_trains_is_the_classifier_stages_run(tmp_path, monkeypatch):
    """The classifier that `--stage tokenizer` trains when it is missing is `--stage classifier`
    bit for bit, and the tokenizer after it is the tokenizer trained with the classifier there."""
    # the sub-run takes the preset's classifier settings, the stand-alone run TINY's: make them equal
    monkeypatch.setitem(config.PRESETS["tiny"], "classifier", dict(steps=3, lr=2e-3, batch_size=4))
    monkeypatch.setattr(runs, "SHIPPED_CLASSIFIER", str(tmp_path / "gone"))  # so that the stage trains its own
    flags = [*TINY, "--steps", "2", "--disc-ndf", "8", "--disc-layers", "2"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    tok_one = train.main(["--stage", "tokenizer", *flags, "--runs-dir", one])  # trains the classifier first
    cls_two = train.main(["--stage", "classifier", *TINY, "--steps", "3", "--runs-dir", two])  # the classifier alone
    tok_two = train.main(["--stage", "tokenizer", *flags, "--runs-dir", two])  # finds it there
    load = lambda path: torch.load(path, weights_only=True)  # noqa: E731
    cls_one = runs.latest_checkpoint(os.path.join(one, "tiny-classifier"))
    assert runs.state_hash(load(cls_one)["model"]) == runs.state_hash(load(cls_two)["model"]), \
        "the classifier trained by the tokenizer stage differs from `--stage classifier` with the same seed"
    for key in ("model", "disc"):
        assert runs.state_hash(load(tok_one)[key]) == runs.state_hash(load(tok_two)[key]), \
            f"the tokenizer's {key} depends on whether its classifier had to be trained first"
    assert torch.equal(load(tok_one)["rng"]["torch"], load(tok_two)["rng"]["torch"]), \
        "the tokenizer's random stream depends on whether its classifier had to be trained first"


def test_help_gives_each_flags_value_for_the_stage_from_the_presets_themselves(monkeypatch, capsys):
    """`train.py --stage S --help` shows each flag's default for S, read from config.PRESETS (made
    the parser's defaults), so a preset change shows in the help without a second copy to keep in step."""
    def help_of(*argv):
        with pytest.raises(SystemExit) as e:
            train.main([*argv, "--help"])
        assert e.value.code == 0
        return " ".join(capsys.readouterr().out.split())  # argparse wraps lines where it likes
    text = help_of("--stage", "tokenizer")
    assert "learning rate (default: 0.0004)" in text and "(default: 1250)" in text  # tiny, phase 1
    assert "(default: None)" not in text  # a flag a rule fills (alpha, decoder, ...) says so in its help
    assert "learning rate (default: 0.001)" in help_of("--stage", "ar")
    assert "learning rate (default: 0.0001)" in help_of("--stage", "ar", "--preset", "ffhq256")
    monkeypatch.setitem(config.PRESETS["tiny"]["tokenizer"], "disc_start", 7)
    assert "GAN loss starts (ours) (default: 7)" in help_of("--stage", "tokenizer")


def test_show_config_gives_each_value_and_where_it_comes_from(capsys):
    """--show-config: default < preset (shared, then the stage's) < the stage's rule < flag."""
    with pytest.raises(SystemExit) as e:
        train.settings(["--stage", "decoder", "--batch-size", "16", "--show-config"])
    assert e.value.code == 0
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["lr"] == ["0.0002", "preset tiny, decoder"]
    assert rows["batch_size"] == ["16", "flag"]
    assert rows["alpha"][0] == "0.0" and rows["alpha"][1].startswith("rule: Fig. 7")  # phase 2
    assert rows["disc_r1"] == ["10.0", "preset tiny"]
    assert rows["disc_ndf"] == ["64", "default"]
    assert rows["K"][0] == "128" and "TOKENIZER_PRESETS" in rows["K"][1]
    assert rows["preset"] == ["tiny", "default"]
    assert "classifier_labels" not in rows and "show_config" not in rows
    assert rows["warmup"] == ["0", "preset tiny, decoder"]  # phase 2 decays its lr too (Deviation 22)
    assert "transformer" not in rows  # read by other stages only
    with pytest.raises(SystemExit):
        train.settings(["--stage", "ar", "--show-config"])
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["batch_size"] == ["64", "preset tiny, ar"]  # the stage's value wins over the shared 32
    assert rows["dropout"] == ["0.0", "rule: the transformer preset's"]
    s = train.settings(["--stage", "ar", "--steps", "7"])
    assert (s.steps, s.epochs, s.lr, s.name) == (7, None, 1e-3, "tiny-ar")
    with pytest.raises(SystemExit):
        train.settings(["--stage", "ar", "--preset", "small", "--dropout", "0.1", "--show-config"])
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["preset"] == ["small", "flag"] and rows["dropout"] == ["0.1", "flag"]  # given = the rule's value
    assert rows["lr"] == ["0.0003", "preset small, ar"]


@pytest.mark.slow
def test_a_transformer_checkpoint_of_the_vocab_size_era_resumes(run):
    """Checkpoints written before the codebook size had one name (K) stored it as vocab_size and
    left out fields at their defaults; they still load, resume, and give the same model."""
    run("--stage", "tokenizer", "--steps", "1", *TOK, *TINY)
    path = run("--stage", "ar", "--steps", "2", *TINY)
    old = torch.load(path, weights_only=True)
    old["config"]["vocab_size"] = old["config"].pop("K")
    old["config"].pop("bias")
    torch.save(old, path)
    assert runs.build_transformer("ar", old["config"]).config == runs.transformer_config(old["config"])
    resumed = torch.load(run("--stage", "ar", "--steps", "3", "--resume", *TINY), weights_only=True)
    assert resumed["step"] == 3 and resumed["config"]["K"] == old["config"]["vocab_size"]


@pytest.mark.slow
def test_phase_1_decays_its_lr_when_given_a_warmup_and_keeps_the_papers_constant_lr_without(run, monkeypatch):
    """`tiny`'s phase 1 (Deviation 22): --warmup W, then a cosine decay of G's lr to 0.1x at the last
    step; without a warmup (the paper-scale presets set none), the paper's constant lr."""
    path = run("--stage", "tokenizer", "--steps", "4", "--lr", "1e-3", "--warmup", "0", *TOK, *TINY)
    lr = torch.load(path, weights_only=True)["optimizer"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(train.lr_at(3, 1e-3, 0, 4)) and lr < 1e-3
    tokenizer = {k: v for k, v in config.PRESETS["tiny"]["tokenizer"].items() if k != "warmup"}
    monkeypatch.setitem(config.PRESETS["tiny"], "tokenizer", tokenizer)  # as the paper-scale presets: none
    path = run("--stage", "tokenizer", "--name", "flat", "--steps", "4", "--lr", "1e-3", *TOK, *TINY)
    assert torch.load(path, weights_only=True)["optimizer"]["param_groups"][0]["lr"] == 1e-3
