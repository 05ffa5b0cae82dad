"""A newcomer's path: what a first user runs into, each answered by one clear line. A stage reads only
finished runs, every run says how it will run, long work shows progress, failed starts leave no
folder, and the advice names the user's own folders."""

import os
import signal

import pytest
import torch

import config
import data
import machine
import metrics
import runlog
import runs
import sample
import train
from conftest import ROOT, TINY, error_of

def main(*argv):
    return train.main(list(argv))


TOK = ["--semantic", "random", "--disc-start", "2", "--disc-ndf", "8", "--disc-layers", "2"]


def stop_at(monkeypatch, step):
    """Ctrl-C at `step` of the next run: SIGINT raised from its log line, as a user's key press would
    arrive (machine.Stop saves a checkpoint and the stage exits 0)."""
    log = runlog.Logger.log

    def log_then_stop(self, at, metrics_, line=True):
        log(self, at, metrics_, line)
        if at == step:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(runlog.Logger, "log", log_then_stop)


@pytest.mark.slow
def test_a_stopped_classifier_is_finished_first_never_read_unfinished(run, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(runs, "SHIPPED_CLASSIFIER", str(tmp_path / "gone"))  # the preset's own run, then
    monkeypatch.setitem(config.PRESETS["tiny"]["classifier"], "steps", 6)
    with monkeypatch.context() as m:
        stop_at(m, 3)
        with pytest.raises(SystemExit) as e:  # Ctrl-C part-way: a checkpoint, exit 0
            run("--stage", "classifier", *TINY)
        assert not e.value.code
    cls = tmp_path / "runs" / "tiny-classifier"
    assert runs.run_progress(runs.load_checkpoint(str(cls), "classifier")) == (3, 6)
    # read explicitly, an unfinished run is refused with the command that finishes it ...
    msg = error_of(run, "--stage", "tokenizer", "--steps", "1", "--classifier-ckpt", str(cls), "--disc-ndf", "8",
                   *TINY)
    assert "unfinished (stopped at step 3 of 6)" in msg and "--stage classifier" in msg and "--resume" in msg
    # ... its checkpoint file is taken as it is, and said so
    capsys.readouterr()
    run("--stage", "tokenizer", "--name", "on-file", "--steps", "1", "--classifier-ckpt",
        str(cls / "ckpt_00000003.pt"), "--disc-ndf", "8", *TINY)
    assert "stopped at step 3 of 6; used as given" in capsys.readouterr().out
    # the tokenizer stage's own classifier: finished first, then read
    run("--stage", "tokenizer", "--steps", "1", "--disc-ndf", "8", *TINY)
    assert "it stopped at step 3 of 6: finishing it first" in capsys.readouterr().out
    assert runs.load_checkpoint(str(cls), "classifier")["step"] == 6


@pytest.mark.slow
def test_the_decoder_and_transformer_stages_refuse_an_unfinished_tokenizer(run, monkeypatch):
    with monkeypatch.context() as m:
        stop_at(m, 2)
        with pytest.raises(SystemExit):
            run("--stage", "tokenizer", "--steps", "4", *TOK, *TINY)
    msg = error_of(run, "--stage", "decoder", "--steps", "1", *TOK, *TINY)
    assert "the phase-1 tokenizer" in msg and "unfinished (stopped at step 2 of 4)" in msg
    assert "python train.py --stage tokenizer" in msg and "--name tiny-tokenizer --resume" in msg
    for stage in ("ar", "nar"):
        assert "unfinished (stopped at step 2 of 4)" in error_of(run, "--stage", stage, "--steps", "1", *TINY)


def test_a_run_says_where_and_in_what_precision_it_computes(monkeypatch):
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: False)
    cpu = torch.device("cpu")
    line = machine.run_line(cpu, "auto", 0)
    assert line.startswith("device cpu, fp32 (auto: this CPU has no native bf16") and "CPU threads" in line
    assert "--threads 1 can be much faster" in line
    assert "bf16 autocast (--precision bf16)" in machine.run_line(cpu, "bf16", 1)
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: True)
    assert "bf16 autocast (auto: this CPU computes bf16 natively" in machine.run_line(cpu, "auto", 0)
    assert machine.precision_choice("cuda", "auto")[0] == "bf16 autocast"


def test_show_config_says_what_auto_precision_picks_here(monkeypatch, capsys):
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: False)
    with pytest.raises(SystemExit):
        train.main(["--stage", "tokenizer", "--device", "cpu", "--show-config"])
    line = next(l for l in capsys.readouterr().out.splitlines() if l.strip().startswith("precision"))
    assert "auto -> fp32" in line and "no native bf16" in line


@pytest.mark.slow
def test_a_failed_start_leaves_no_empty_run_folder(run, tmp_path, capsys):
    # a mistake found after the folder is made (a phase 1 that is not there)
    error_of(run, "--stage", "decoder", "--name", "dec", "--phase1", str(tmp_path / "nothing"), *TOK, *TINY)
    assert not (tmp_path / "runs" / "dec").exists()
    # a run that wrote its checkpoint keeps its folder
    capsys.readouterr()
    run("--stage", "tokenizer", "--steps", "1", "--precision", "fp32", *TOK, *TINY)
    assert (tmp_path / "runs" / "tiny-tokenizer" / "latest").exists()
    # and every run's first line says how it runs
    assert capsys.readouterr().out.startswith("device cpu, fp32 (--precision fp32), 1 CPU threads (--threads 1)")


def test_advice_names_the_runs_dir_given_and_unlabelled_folders_are_told_they_have_no_labels(tmp_path):
    from PIL import Image

    (tmp_path / "flat").mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 10, 10)).save(tmp_path / "flat" / f"{i}.png")
    mine = ["--data", "folder", "--data-dir", str(tmp_path / "flat"), "--runs-dir", str(tmp_path / "elsewhere")]
    msg = error_of(main, "--stage", "tokenizer", "--name", "t", *mine, "--disc-ndf", "8", *TINY)
    assert "no class labels" in msg and "--stage classifier" not in msg and "--semantic imagenet" in msg
    msg = error_of(main, "--stage", "decoder", "--name", "d", *mine, *TOK, *TINY)
    assert f"--phase1 {tmp_path / 'elsewhere' / 'NAME'}" in msg and " runs/" not in msg
    msg = error_of(main, "--stage", "ar", "--name", "a", *mine, *TINY)
    assert f"--tokenizer {tmp_path / 'elsewhere' / 'NAME'}" in msg and " runs/" not in msg
    for c in ("a", "b"):  # a labelled folder: train a classifier, into the runs-dir given
        (tmp_path / "labelled" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 32), (60 * i, 10, 10)).save(tmp_path / "labelled" / c / f"{i}.png")
    mine[3] = str(tmp_path / "labelled")
    msg = error_of(main, "--stage", "tokenizer", "--name", "t", *mine, "--disc-ndf", "8", *TINY)
    assert f"--runs-dir {tmp_path / 'elsewhere'}" in msg and str(tmp_path / "elsewhere" / "my-classifier") in msg


def test_token_cache_shows_its_progress(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(data, "PROGRESS_EVERY_S", -1)  # a line after every batch
    tok, ckpt, h = runs.load_tokenizer(os.path.join(ROOT, "pretrained", "tiny-tokenizer"), torch.device("cpu"))
    flags = dict(data="shapes", data_dir=None, image_size=32, n_train=40, n_val=8, data_seed=0,
                 skip_bad_images=False)
    monkeypatch.setattr(data.os.path, "dirname", lambda p: str(tmp_path))  # the cache goes to tmp_path
    data.token_cache(flags, tok, h, ckpt["path"], None, torch.device("cpu"))
    out = capsys.readouterr().out
    assert "token cache: encoding 40 training images and their mirror images, and 8 validation images" in out
    assert "encoded 80/80 images" in out


def test_the_k_means_floor_shows_its_progress_and_keeps_the_best_start_on_training_patches(capsys):
    ds = data.build_dataset("shapes", "train", 32, n_train=24)
    starts = [("k-means++", 0), ("random", 0), ("random", 1)]
    km = metrics.floor_tokenizers(ds, K=16, f=4, starts=starts)["k-means"]
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("k-means floor")]
    assert len(lines) == 3 and lines[-1].startswith("k-means floor 3/3")
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    fits = [metrics.PatchKMeans.fit(x, 4, 16, seed, iters, init) for init, seed in starts for iters in (40, 1000)]
    assert km.train_l1 == min(t.train_l1 for t in fits), "the floor must be the best start on the training patches"
    assert len({round(t.train_l1, 6) for t in fits}) > 2, "the starts should differ, or the choice tests nothing"
    # a run continued from its 5th iteration ends where a run from scratch does (the continued run
    # spends one more pass to see that it settled)
    short = metrics.PatchKMeans.fit(x, 4, 16, 1, 5, "random")
    on = metrics.PatchKMeans.fit(x, 4, 16, 1, 1000 - short.iterations, short)
    whole = metrics.PatchKMeans.fit(x, 4, 16, 1, 1000, "random")
    assert short.iterations == 5 < whole.iterations
    assert torch.equal(on.quantizer.codebook.weight, whole.quantizer.codebook.weight)
    assert on.iterations - whole.iterations in (0, 1) and on.init == "random"


def test_rfid_on_a_few_images_warns(capsys):
    metrics.main(["--tokenizer", os.path.join(ROOT, "pretrained", "tiny-tokenizer"), "--semantic-ckpt",
                  os.path.join(ROOT, "pretrained", "tiny-classifier"), "--n", "12", "--device", "cpu"])
    assert "warning: from 12 images" in capsys.readouterr().out


@pytest.mark.parametrize("argv, says", [(["--nrow", "0"], "--nrow must be >= 1"),
                                        (["--nrow", "-1"], "--nrow must be >= 1"),
                                        (["--choice-temperature", "-5"], "--choice-temperature must be >= 0")])
def test_sample_refuses_impossible_flags_in_one_line(argv, says):
    assert says in error_of(lambda *a: sample.main(list(a)), *argv)


def test_sample_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        sample.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "classifier-free guidance (1 = off, 0 = unconditional) (default: 1.0)" in out
    assert "(default: 12)" in out and "(default: 4.5)" in out
