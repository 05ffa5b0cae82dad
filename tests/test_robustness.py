"""Runs that survive faults and bad input: exact resume after kill -9, interrupted checkpoint
writes, SIGINT/SIGTERM, non-finite losses, and one-line errors that leave every checkpoint alone.

Real processes only where a test needs one (SIGKILL, signals); everything else runs train.main
in-process. All runs are `tiny` and a few steps long, on one CPU thread.
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback

import pytest
import torch

import losses
import metrics
import runs as run_folders  # the fixture `runs` is a folder
import sample
import train
from machine import UserError
from conftest import ROOT, TINY

TOK = ["--semantic", "random", "--disc-ndf", "8", "--disc-layers", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# every test here works on trained tiny runs, in-process or as processes
pytestmark = pytest.mark.slow


def main(runs, *argv):
    """train.main in-process; runs under `runs` unless argv names another --runs-dir (last wins)."""
    return train.main(["--runs-dir", str(runs), *argv])


def snapshot(folder):
    """{relative path: sha256} of every file below folder: proof that nothing was written."""
    out = {}
    for d, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(d, f)
            out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def step_in(run_dir):
    """The step of a run's `latest` checkpoint (0 while there is none)."""
    try:
        return int(open(os.path.join(run_dir, "latest")).read().strip()[len("ckpt_"):-len(".pt")])
    except (OSError, ValueError):
        return 0


def assert_same_tensors(a, b, where=""):
    """Every tensor in two nested checkpoints is equal, bit for bit (torch.equal)."""
    if torch.is_tensor(a):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")


def error_of(fn, *argv):
    """The SystemExit message of a user mistake: one line, starting with 'error: '."""
    with pytest.raises(SystemExit) as e:
        fn(*argv)
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def images(folder, n, bad=(), classes=None):
    """n small PNGs (in class sub-folders when given) plus the named broken files."""
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(n):
        sub = folder / classes[i % len(classes)] if classes else folder
        sub.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 36), (i * 30 % 256, 80, 200 - i * 20 % 200)).save(sub / f"ok{i}.png")
    for name in bad:
        (folder / name).write_bytes(b"definitely not an image")
    return folder


def launch(tmp_path, *argv, **kw):
    """python train.py ... as a new process (stdout and stderr to a file in tmp_path)."""
    out = open(tmp_path / "stdout.txt", "w")
    return subprocess.Popen([sys.executable, "train.py", *argv], cwd=ROOT, env=ENV, stdout=out,
                            stderr=subprocess.STDOUT, **kw)


def fork(runs, *argv, out=os.devnull, new_group=False):
    """train.main in a forked child: a real process to signal or kill, without a new
    interpreter's ~5 s of imports. Exit codes as from `python train.py`; stdout to `out`."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            if new_group:  # its own process group, like a job in a shell: Ctrl-C = killpg
                os.setpgrp()
            with open(out, "w") as f, contextlib.redirect_stdout(f):
                main(runs, *argv)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return Child(pid)


class Child:
    """The Popen-like handle of a forked child."""

    def __init__(self, pid):
        self.pid, self.returncode = pid, None

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self):
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)

    def wait(self):
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode


def wait_until(proc, ready, timeout=120):
    """Poll until ready() while the process still runs."""
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, "the run ended before the test could stop it"
        assert time.time() - t0 < timeout, "timed out waiting for the run"
        time.sleep(0.02)


# ------------------------------------------------------------------------------------------
# one set of finished tiny runs, shared (copied) by the tests below


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    runs = tmp_path_factory.mktemp("base") / "runs"
    quick = [*TINY, "--ckpt-every", "100"]  # one checkpoint per run: the final one
    tok = str(runs / "tiny-tokenizer")
    main(runs, "--stage", "classifier", "--steps", "1", *quick)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):  # 1.01: usage can never reach it, the warning must show
        main(runs, "--stage", "tokenizer", "--steps", "2", "--collapse-warn", "1.01", *TOK, *quick)
    main(runs, "--stage", "ar", "--steps", "1", "--tokenizer", tok, *quick)
    main(runs, "--stage", "nar", "--steps", "1", "--tokenizer", tok, *quick)
    main(runs, "--stage", "decoder", "--steps", "1", "--phase1", tok, *TOK, *quick)
    return {"runs": runs, "tokenizer_stdout": stdout.getvalue()}


@pytest.fixture
def runs(base, tmp_path):
    """A private copy of the base runs, as hard links (fast): train.py replaces checkpoints
    atomically (a new file), never in place, and no test appends to a base run's log.jsonl."""
    shutil.copytree(base["runs"], tmp_path / "runs", copy_function=os.link)
    return tmp_path / "runs"


# ------------------------------------------------------------------------------------------
# 1. exact resume: kill -9 mid-run, --resume, the same weights as a run never stopped


@pytest.mark.posix  # fork, kill -9
@pytest.mark.parametrize("stage", ["tokenizer", "ar"])
def test_kill9_then_resume_equals_uninterrupted_run(runs, stage):
    steps = 6
    extra = [*TOK, "--disc-start", "3"] if stage == "tokenizer" else ["--tokenizer", str(runs / "tiny-tokenizer")]
    argv = ["--stage", stage, "--steps", str(steps), *extra, *TINY, "--keep", "2"]  # TINY: --ckpt-every 1
    killed = runs / "killed"
    proc = fork(runs, *argv, "--name", "killed")
    try:
        wait_until(proc, lambda: step_in(killed) >= 4)  # the GAN is on from step 3
    finally:
        proc.kill()  # SIGKILL: no handler, no final checkpoint; maybe mid-write
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and step_in(killed) < steps  # it really died mid-run
    resumed = torch.load(main(runs, *argv, "--name", "killed", "--resume"), weights_only=True)
    reference = torch.load(main(runs, *argv, "--name", "reference"), weights_only=True)
    assert resumed["step"] == reference["step"] == steps
    for key in ("model", "disc", "ema", "optimizer", "disc_optimizer"):
        assert_same_tensors(resumed.get(key), reference.get(key), key)
    assert reference.get("disc" if stage == "tokenizer" else "ema") is not None


# ------------------------------------------------------------------------------------------
# 2. a checkpoint write that dies half-way: --resume finds the last complete one


def test_interrupted_checkpoint_write_then_resume(runs, monkeypatch):
    argv = ["--stage", "classifier", "--steps", "5", *TINY]  # dropout + DataLoader: RNG-sensitive
    real_save = torch.save

    class Crash(Exception):
        pass

    def dying_save(state, f, *a, **kw):
        if isinstance(state, dict) and state.get("step") == 3:
            f.write(b"the first bytes of a checkpoint")
            raise Crash  # the process dies inside a real save_checkpoint call
        return real_save(state, f, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(torch, "save", dying_save)
        with pytest.raises(Crash):
            main(runs, *argv, "--name", "crashed")
    crashed = runs / "crashed"
    assert sorted(f for f in os.listdir(crashed) if "ckpt" in f) == ["ckpt_00000001.pt", "ckpt_00000002.pt"]
    assert run_folders.latest_checkpoint(str(crashed)) == str(crashed / "ckpt_00000002.pt")  # no partial file left
    # what a kill -9 mid-write leaves (no `finally` runs): a temp file of a dead process; and one
    # of a live process (this one's parent), which is not ours to remove
    (crashed / "ckpt_00000003.pt.tmp4194305").write_bytes(b"half a checkpoint")  # > pid_max: never alive
    (crashed / f"latest.tmp{os.getppid()}").write_bytes(b"ckpt_0")
    resumed = torch.load(main(runs, *argv, "--name", "crashed", "--resume"), weights_only=True)
    assert sorted(f for f in os.listdir(crashed) if ".tmp" in f) == [f"latest.tmp{os.getppid()}"]
    reference = torch.load(main(runs, *argv, "--name", "reference"), weights_only=True)
    assert resumed["step"] == 5
    assert_same_tensors(resumed["model"], reference["model"], "model")


# ------------------------------------------------------------------------------------------
# 3. SIGTERM (kill) and SIGINT (Ctrl-C, to the process group, DataLoader workers included)


@pytest.mark.posix  # fork, killpg
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_checkpoint_and_exits_0(runs, tmp_path, sig):
    long = ["--steps", "100000", *TINY, "--eval-every", "1000", "--sample-every", "1000", "--ckpt-every", "1000"]
    if sig == signal.SIGTERM:
        argv = ["--stage", "tokenizer", *TOK, *long]
    else:  # labelled image folder, one worker process: Ctrl-C reaches it too
        folder = images(tmp_path / "imgs", 8, classes=["a", "b"])
        argv = ["--stage", "classifier", "--data", "folder", "--data-dir", str(folder), "--workers", "1", *long]
    run_dir = runs / "stopped"
    if sig == signal.SIGTERM:  # `python train.py` end to end
        proc = launch(tmp_path, *argv, "--runs-dir", str(runs), "--name", "stopped")
    else:  # forked (no new interpreter to start), in its own process group
        proc = fork(runs, *argv, "--name", "stopped", out=tmp_path / "stdout.txt", new_group=True)
    log = run_dir / "log.jsonl"
    try:
        wait_until(proc, lambda: log.exists() and log.read_text().count("\n") >= 1)  # inside the loop
        os.killpg(proc.pid, sig) if sig == signal.SIGINT else os.kill(proc.pid, sig)
        t0 = time.time()
        while proc.poll() is None and time.time() - t0 < 120:
            time.sleep(0.02)
        assert proc.poll() == 0
    finally:
        proc.kill()
        proc.wait()
    out = (tmp_path / "stdout.txt").read_text()
    assert f"stopped by {sig.name} at step" in out and "Traceback" not in out, out
    path = out.split("; checkpoint ")[-1].split()[0]
    ckpt = torch.load(path, weights_only=True)
    assert os.path.dirname(path) == str(run_dir) and 1 <= ckpt["step"] < 100000
    assert f"at step {ckpt['step']};" in out



@pytest.mark.posix  # os.kill(own pid, SIGINT): elsewhere it terminates the process
def test_signal_during_final_evaluation_saves_and_exits_0(runs, monkeypatch, capsys):
    # Ctrl-C while the last validation runs: still caught, the final checkpoint saved, exit 0
    real = metrics.transformer_metrics

    def interrupted_evaluation(*a, **kw):
        os.kill(os.getpid(), signal.SIGINT)  # handled by Stop between two bytecodes
        return real(*a, **kw)

    monkeypatch.setattr(metrics, "transformer_metrics", interrupted_evaluation)
    with pytest.raises(SystemExit) as e:
        main(runs, "--stage", "ar", "--steps", "2", "--eval-every", "100", "--name", "late", *TINY)
    assert e.value.code == 0
    assert "ar: stopped by SIGINT at step 2; checkpoint" in capsys.readouterr().out
    assert torch.load(run_folders.latest_checkpoint(str(runs / "late")), weights_only=True)["step"] == 2

# ------------------------------------------------------------------------------------------
# 4. a non-finite loss ends the run, names step and term, and keeps the last good checkpoint


def test_nonfinite_loss_names_step_and_term_keeps_last_checkpoint(runs, monkeypatch):
    real_objective, real_save, saved, calls = losses.tokenizer_objective, run_folders.save_checkpoint, {}, []

    def nan_at_step_3(*args, **kwargs):  # one call per step (no gradient accumulation)
        total, terms = real_objective(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            terms["per"] = terms["per"] * float("nan")
            total = total + terms["per"]
        return total, terms

    def recording_save(run_dir, state, keep):
        path = real_save(run_dir, state, keep)
        saved[path] = open(path, "rb").read()  # the bytes as written at that step
        return path

    monkeypatch.setattr(losses, "tokenizer_objective", nan_at_step_3)
    monkeypatch.setattr(run_folders, "save_checkpoint", recording_save)
    msg = error_of(main, runs, "--stage", "tokenizer", "--steps", "5", "--name", "nan", *TOK, *TINY)
    assert "non-finite loss at step 3: per = nan" in msg and "--resume" in msg
    last = run_folders.latest_checkpoint(str(runs / "nan"))
    assert last.endswith("ckpt_00000002.pt") and open(last, "rb").read() == saved[last]  # intact, unchanged
    assert torch.load(last, weights_only=True)["step"] == 2


def test_nonfinite_weights_are_never_saved(tmp_path):
    good = run_folders.save_checkpoint(str(tmp_path), {"step": 1, "model": {"w": torch.ones(2)}}, keep=3)
    with pytest.raises(UserError, match="non-finite weights after step 2: model w"):
        run_folders.save_checkpoint(str(tmp_path), {"step": 2, "model": {"w": torch.tensor([1.0, float("inf")])}}, keep=3)
    assert run_folders.latest_checkpoint(str(tmp_path)) == good and sorted(os.listdir(tmp_path)) == ["ckpt_00000001.pt", "latest"]


# ------------------------------------------------------------------------------------------
# 5. bad input: a one-line error that says how to fix it; no checkpoint changes


def tok_resume(*argv):
    """Resume the base tokenizer run with a mistake in argv: its checkpoint is at stake."""
    return ["--stage", "tokenizer", "--name", "tiny-tokenizer", "--resume", "--steps", "4", *TOK, *TINY, *argv]


BAD_TRAIN_FLAGS = {
    "alpha": (["--alpha", "1.5"], "--alpha 1.5: the semantic ratio alpha of Eq. 3 must be in [0, 1]"),
    "entropy-weight": (["--entropy-weight", "-1"], "--entropy-weight must be >= 0"),
    "lr": (["--lr", "0"], "--lr must be > 0"),
    "lr-nan": (["--lr", "nan"], "--lr must be > 0"),
    "steps": (["--steps", "0"], "--steps must be >= 1"),
    "batch-size": (["--batch-size", "0"], "--batch-size must be >= 1"),
    "ckpt-every": (["--ckpt-every", "0"], "--ckpt-every must be >= 1"),
    "image-size-vs-f": (["--image-size", "30"], "is not divisible by the downsampling factor f=4"),
    "K-on-resume": (["--K", "64"], "was trained with K=128, but the flags give K=64: use the same preset and flags"),
}


@pytest.mark.parametrize("case", list(BAD_TRAIN_FLAGS))
def test_bad_flag_is_one_line_and_changes_nothing(runs, case):
    argv, expected = BAD_TRAIN_FLAGS[case]
    before = snapshot(runs)
    assert expected in error_of(main, runs, *tok_resume(*argv))
    assert snapshot(runs) == before


def test_bad_data_is_one_line_and_changes_nothing(runs, tmp_path):
    before = snapshot(runs)
    folder = lambda path: tok_resume("--data", "folder", "--data-dir", str(path))  # noqa: E731
    assert "does not exist: pass --data-dir" in error_of(main, runs, *folder(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    assert "no images" in error_of(main, runs, *folder(tmp_path / "empty"))
    broken = images(tmp_path / "broken", 0, bad=["a.jpg", "b.png"])
    msg = error_of(main, runs, *folder(broken), "--skip-bad-images")
    assert "no readable image among the 2 files" in msg and "--data-dir" in msg
    corrupt = images(tmp_path / "corrupt", 3, bad=["broken.jpg"])
    msg = error_of(main, runs, *folder(corrupt))
    assert "broken.jpg" in msg and "--skip-bad-images" in msg
    assert snapshot(runs) == before


def test_wrong_checkpoint_or_output_is_one_line_and_changes_nothing(runs, tmp_path):
    before = snapshot(runs)
    tok = str(runs / "tiny-tokenizer")
    msg = error_of(main, runs, "--stage", "ar", "--name", "new", "--tokenizer", str(runs / "tiny-classifier"), *TINY)
    assert "is a 'classifier' checkpoint, but a tokenizer checkpoint is needed here" in msg
    msg = error_of(main, runs, "--stage", "ar", "--name", "new", "--tokenizer", tok, "--image-size", "64", *TINY)
    assert "differs from the 32 px the tokenizer" in msg and "pass --image-size 32" in msg
    # another tokenizer (other encoder weights: other tokens) is refused on resume ...
    other = torch.load(run_folders.latest_checkpoint(tok), weights_only=True)
    other["model"]["encoder.conv_in.weight"] += 0.1
    torch.save(other, tmp_path / "other.pt")
    msg = error_of(main, runs, "--stage", "ar", "--resume", "--tokenizer", str(tmp_path / "other.pt"), "--steps", "1", *TINY)
    assert "was trained on tokenizer" in msg and "pass --tokenizer" in msg  # ... the one it was trained on:
    assert msg.endswith(os.path.join("tiny-tokenizer", "ckpt_00000002.pt"))
    # ... while its phase-2 run, which makes the same tokens, is accepted (the run is finished: no change)
    main(runs, "--stage", "ar", "--resume", "--tokenizer", str(runs / "tiny-decoder"), "--steps", "1", *TINY)
    msg = error_of(main, runs, "--stage", "tokenizer", "--name", "tiny-classifier", "--resume", *TOK, *TINY)
    assert "is a 'classifier' checkpoint, but a tokenizer checkpoint is needed here" in msg
    (tmp_path / "a-file").write_text("not a folder")
    msg = error_of(main, runs, "--stage", "classifier", *TINY, "--runs-dir", str(tmp_path / "a-file" / "runs"))
    assert "cannot write to the output folder" in msg and "pick another --runs-dir" in msg
    assert snapshot(runs) == before


STAGE_ARGS = {
    "classifier": ["--steps", "1"],
    "tokenizer": ["--steps", "2", *TOK],
    "decoder": ["--steps", "1", *TOK],
    "ar": ["--steps", "1"],
    "nar": ["--steps", "1"],
}


@pytest.mark.parametrize("stage", list(STAGE_ARGS))
def test_resuming_a_finished_run_says_so(runs, capsys, stage):
    before = snapshot(runs)
    tok = ["--tokenizer", str(runs / "tiny-tokenizer"), "--phase1", str(runs / "tiny-tokenizer")]
    path = main(runs, "--stage", stage, "--resume", *STAGE_ARGS[stage], *tok, *TINY)  # returns: exit 0
    steps = STAGE_ARGS[stage][1]
    assert f"already finished ({steps}/{steps} steps); nothing to do" in capsys.readouterr().out
    assert os.path.isfile(path) and snapshot(runs) == before


BAD_SAMPLE_FLAGS = {
    "top-p 0": (["--top-p", "0"], "--top-p must be in (0, 1]"),
    "top-p 1.5": (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    "top-k": (["--top-k", "0"], "--top-k must be >= 1"),
    "temperature": (["--temperature", "-1"], "--temperature must be >= 0"),
    "cfg-scale": (["--cfg-scale", "-2"], "--cfg-scale must be >= 0"),
    "steps": (["--steps", "0"], "--steps must be >= 1"),
    "class": (["--classes", "3", "99"], "class label 99 is outside the model's classes 0..31"),
    "n": (["--n", "0"], "--n must be >= 1"),
    "out": (["--out", "no/such/folder/x.png"], "does not exist; create it or pick another --out"),
}


@pytest.mark.parametrize("case", list(BAD_SAMPLE_FLAGS))
def test_bad_sample_flag_is_one_line(runs, case):
    argv, expected = BAD_SAMPLE_FLAGS[case]
    before = snapshot(runs)
    parse = lambda *a: sample.main(list(a))  # noqa: E731
    assert expected in error_of(parse, "--ckpt", str(runs / "tiny-ar"), "--device", "cpu", *argv)
    assert snapshot(runs) == before


def test_skipped_images_are_counted_across_workers(runs, tmp_path, capsys):
    # 6 train images (2 broken) and 1 val image; batch 8 > 6 covers every train image at step 1
    folder = images(tmp_path / "imgs", 5, bad=["bad1.jpg", "bad2.jpg"])
    path = main(runs, "--stage", "tokenizer", "--name", "skip", "--data", "folder", "--data-dir", str(folder),
                "--skip-bad-images", "--workers", "1", "--steps", "1", *TOK, *TINY, "--batch-size", "8")
    lines = [json.loads(l) for l in open(os.path.join(os.path.dirname(path), "log.jsonl"))]
    assert [l["skipped"] for l in lines if "skipped" in l] == [2]
    assert "skipped 2" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------
# 6. codebook collapse: the log line says so


def test_collapse_warning_in_log_line_and_jsonl(base):
    assert "WARNING codebook usage" in base["tokenizer_stdout"] and "codebook collapse?" in base["tokenizer_stdout"]
    log = open(base["runs"] / "tiny-tokenizer" / "log.jsonl").read()
    assert '"WARNING": "codebook usage' in log


# ------------------------------------------------------------------------------------------
# 7. loading never runs code


class Payload:
    """Unpickling this creates the marker file: a stand-in for a crafted checkpoint's code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted(path, marker, kind="tokenizer"):
    """A .pt file that looks like a checkpoint of `kind` and runs code when fully unpickled."""
    torch.save({"kind": kind, "step": 1, "payload": Payload(marker)}, path)
    return path


def test_crafted_files_are_refused_and_never_run(runs, tmp_path):
    marker = tmp_path / "pwned"
    before = snapshot(runs)
    # in the place of a transformer checkpoint (--ckpt) ...
    evil = str(crafted(tmp_path / "evil.pt", marker, "ar"))
    msg = error_of(lambda *a: sample.main(list(a)), "--ckpt", evil, "--out", str(tmp_path / "x.png"))
    assert evil in msg and "safe load" in msg and "python runs.py convert" in msg
    # random bytes are no pickle of objects: not readable, and no advice to convert them
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(range(256)) * 8)
    msg = error_of(lambda *a: sample.main(list(a)), "--ckpt", str(noise), "--out", str(tmp_path / "x.png"))
    assert "not a readable checkpoint" in msg and "convert" not in msg
    # ... of a --tokenizer argument ...
    msg = error_of(main, runs, "--stage", "ar", "--name", "new", "--tokenizer", evil, *TINY)
    assert "--tokenizer " + evil in msg and "will not unpickle" in msg
    # ... of a run's latest checkpoint, on --resume ...
    crafted(runs / "tiny-classifier" / "ckpt_00000009.pt", marker, "classifier")
    (runs / "tiny-classifier" / "latest").unlink()
    (runs / "tiny-classifier" / "latest").write_text("ckpt_00000009.pt")
    msg = error_of(main, runs, "--stage", "classifier", "--resume", "--steps", "20", *TINY)
    assert "ckpt_00000009.pt" in msg and "safe load" in msg
    # ... and of the token cache beside a tokenizer
    cache = next(f for f in os.listdir(runs / "tiny-tokenizer") if f.startswith("tokens_"))
    (runs / "tiny-tokenizer" / cache).unlink()
    crafted(runs / "tiny-tokenizer" / cache, marker)
    msg = error_of(main, runs, "--stage", "ar", "--name", "new2", "--tokenizer", str(runs / "tiny-tokenizer"), *TINY)
    assert msg.startswith(f"error: token cache {runs / 'tiny-tokenizer' / cache}") and "Delete the file" in msg
    # the converter the message names reads with a safe load too: it refuses the file, runs nothing
    assert "holds objects other than NumPy arrays" in error_of(run_folders.main, ["convert", evil])
    assert not marker.exists()  # no payload ever ran
    changed = {k for k in snapshot(runs) if snapshot(runs)[k] != before.get(k)}
    assert changed <= {"tiny-classifier/latest", "tiny-classifier/ckpt_00000009.pt", f"tiny-tokenizer/{cache}"}


def test_rng_state_survives_a_safe_round_trip():
    import numpy as np
    import random

    import machine
    np.random.rand(3), random.random(), torch.rand(2)
    buffer = io.BytesIO()
    torch.save(machine.rng_state(), buffer)
    expected = (np.random.rand(5), random.random(), torch.rand(5))
    buffer.seek(0)
    machine.set_rng_state(torch.load(buffer, weights_only=True))
    got = (np.random.rand(5), random.random(), torch.rand(5))
    assert np.array_equal(got[0], expected[0]) and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_old_checkpoint_is_refused_then_converted_and_resumes_bit_exactly(runs, capsys):
    import numpy as np

    # a tokenizer run with the GAN on: step 3's checkpoint in the old format (NumPy RNG state as
    # an ndarray) must be refused, converted by `python runs.py convert`, and resume to step 5
    # with the same weights as the run that never stopped
    argv = ["--stage", "tokenizer", "--steps", "5", *TOK, "--disc-start", "2", *TINY, "--keep", "5"]
    reference = torch.load(main(runs, *argv, "--name", "ref"), weights_only=True)
    old = runs / "old"
    shutil.copytree(runs / "ref", old)
    for step in (4, 5):
        (old / f"ckpt_0000000{step}.pt").unlink()
    (old / "latest").write_text("ckpt_00000003.pt")
    ckpt = torch.load(old / "ckpt_00000003.pt", weights_only=True)
    n = ckpt["rng"]["numpy"]
    ckpt["rng"]["numpy"] = (n["bit_generator"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                            n["cached_gaussian"])
    torch.save(ckpt, old / "ckpt_00000003.pt")  # as the code before the safe format wrote it
    msg = error_of(main, runs, *argv, "--name", "old", "--resume")
    assert "will not unpickle" in msg and f"python runs.py convert {old / 'ckpt_00000003.pt'}" in msg
    run_folders.main(["convert", str(old)])
    out = capsys.readouterr().out
    assert "Convert only checkpoints you trust" in out and "converted (original kept as" in out
    assert (old / "ckpt_00000003.pt.unsafe").exists()
    resumed = torch.load(main(runs, *argv, "--name", "old", "--resume"), weights_only=True)
    for key in ("model", "disc", "optimizer", "disc_optimizer"):
        assert_same_tensors(resumed[key], reference[key], key)
