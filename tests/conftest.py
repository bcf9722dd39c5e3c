"""Shared fixtures and helpers: a little real MNIST, loaded once, small image files made from it, a stub
classifier, commands run in this process or as real child processes, and a stop signal at a chosen step."""
import dataclasses
import gzip
import importlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import homework7 as hw
import tools.evaluate as ev


@pytest.fixture(scope="session")
def mnist():
    """MNIST's training split from data/ (images, labels), read once through the project's own loaders."""
    return ev.load_mnist_with_labels("train")


@pytest.fixture(scope="session")
def images(mnist):
    """The first 1,000 MNIST training images, N×784 float32 in [0, 1]."""
    return mnist[0][:1000].numpy().copy()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """A trained VAE (with and without a mixture) and GAN, one epoch on 200 images each."""
    d = tmp_path_factory.mktemp("checkpoints")
    for name, argv in (("vae", ["vae", "--mixture-components", "2"]),
                       ("vae_prior", ["vae", "--mixture-components", "0"]), ("gan", ["gan"])):
        assert hw.main([*argv, "--n-train", "200", "--epochs", "1", "--run-dir", str(d / name),
                        "--figures-dir", str(d / name)]) == 0
    return {name: d / name / "checkpoint.pt" for name in ("vae", "vae_prior", "gan")}


@pytest.fixture
def small_npy(tmp_path, images):
    """300 MNIST images as an assignment-style .npy file (N×784 floats)."""
    path = tmp_path / "mnist_train_images.npy"
    np.save(path, images[:300])
    return path


@pytest.fixture(autouse=True)
def _seeded_and_signals_restored():
    """Each test starts from seed 0, and leaves the stop signals' handlers as it found them (a test that sends
    this process a stop signal leaves the system's defaults behind, as a stopped run does)."""
    torch.manual_seed(0)
    handlers = {s: signal.getsignal(s) for s in hw.STOP_SIGNALS}
    yield
    for s, handler in handlers.items():
        signal.signal(s, handler)


def outputs(tmp_path):
    """The flags that put a run's figures and run directory under tmp_path."""
    return ["--figures-dir", tmp_path / "figures", "--run-dir", tmp_path / "run"]


def drawn_run(runs, figures, model, config=None, scores=None):
    """runs/<model> as homework7.py leaves it for tools.report after drawing figures/<model>*.png: a checkpoint (a
    real one of an untrained VAE, whose latent space the report draws), config.json (config, or the defaults on
    MNIST), figures.json with the path and SHA-256 of each figure and the checkpoint's SHA-256, and, given the scores
    of the samples, eval.json as tools.evaluate writes it of that checkpoint."""
    run = runs / model
    run.mkdir(parents=True, exist_ok=True)
    if model == "vae":
        cfg = hw.VAEConfig(hidden=8).for_training_set(60000)
        hw.save_checkpoint(run, hw.VAETrainer(cfg, torch.device("cpu")), cfg, [{"epoch": 1, "train": {}, "test": {}}])
    else:
        (run / "checkpoint.pt").write_bytes(os.urandom(64))
    config = config or {"model": model, **dataclasses.asdict(hw.TRAINERS[model].config_cls().for_training_set(60000))}
    (run / "config.json").write_text(json.dumps(config))
    (run / "figures.json").write_text(json.dumps({"checkpoint.pt": hw.sha256(run / "checkpoint.pt"), "figures": {
        str(p): hw.sha256(p) for p in sorted(figures.glob(f"{model}*.png"))}}))
    if scores:
        (run / "eval.json").write_text(json.dumps({
            "model": model, "n_samples": 10000, "classifier_accuracy": 0.9931, "real": scores,
            "samples": {"moving average of G": scores}, "checkpoint_sha256": hw.sha256(run / "checkpoint.pt")}))
    return run


def write_idx(path, pixels, gz=False):
    """An IDX image file (optionally gzipped) of N×28×28 uint8 pixels at path."""
    raw = b"\x00\x00\x08\x03" + len(pixels).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + pixels.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def tree(directory):
    """Every path under directory with its mode and bytes: what a refused command must leave as it was."""
    return {p: (p.lstat().st_mode, p.read_bytes() if p.is_file() and not p.is_symlink() and p.stat().st_mode & 0o400
                else os.readlink(p) if p.is_symlink() else None)
            for p in sorted(Path(directory).rglob("*"))}


def signal_at_step(monkeypatch, trainer_cls, step, signum=signal.SIGTERM):
    """Sends this process signum (as `kill` does) during the trainer's step-th training step, counted across the
    runs of one test; the run stops at its next check. SIGTERM, since a test run may ignore SIGINT (nohup)."""
    real_step, calls = trainer_cls.train_step, []

    def train_step(self, x):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signum)
        return real_step(self, x)

    monkeypatch.setattr(trainer_cls, "train_step", train_step)


@pytest.fixture
def stub_classifier(tmp_path):
    """A cached (untrained) classifier with the current stamp: the pipeline runs without training one."""
    path = tmp_path / "classifier.pt"
    torch.manual_seed(0)
    state = {"stamp": ev.classifier_stamp(),
             "model": ev.DigitClassifier().state_dict(), "accuracy": 0.5}
    torch.save(state, path)
    return path


@pytest.fixture
def ascii_console(monkeypatch):
    """Returns a function that, called in the test, makes stdout and stderr consoles with no character outside
    ASCII (strict, as Windows' cp1252 is for Greek letters) and returns a reader of (stdout, stderr)."""
    def install():
        streams = [io.TextIOWrapper(io.BytesIO(), encoding="ascii", write_through=True) for _ in range(2)]
        monkeypatch.setattr(sys, "stdout", streams[0])
        monkeypatch.setattr(sys, "stderr", streams[1])
        return lambda: tuple(stream.buffer.getvalue().decode("ascii") for stream in streams)

    return install


ROOT = Path(__file__).resolve().parent.parent


def main(argv):
    """homework7's main for `vae ...` and `gan ...`; for `tools.NAME ...`, that of python -m tools.NAME."""
    argv = [str(a) for a in argv]
    return importlib.import_module(argv[0]).main(argv[1:]) if argv[0].startswith("tools.") else hw.main(argv)


@pytest.fixture
def cli(capsys):
    """Runs a command's main(argv) in this process: (exit status, stdout, stderr), where an exit from
    argparse gives its status too."""
    def run(main, *argv):
        try:
            status = main([str(a) for a in argv])
        except SystemExit as e:
            status = e.code
        out, err = capsys.readouterr()
        return status, out, err

    return run


def child_process(argv, cwd, env=None, preexec=None, **popen):
    """Starts `python argv` as a real process: the project importable, its output in UTF-8 (or the
    PYTHONIOENCODING that env gives, None removing a variable) and line-buffered as a terminal's would be, and
    SIGINT and SIGHUP handled as by default even where pytest runs with them ignored (nohup, a script's `&`,
    some CI runners: an ignored signal stays ignored across exec); preexec() runs in the child too; its stdout and
    stderr are pipes unless popen says otherwise."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1", **(env or {})}
    env = {k: v for k, v in env.items() if v is not None}

    def before_exec():
        for number in (signal.SIGINT, signal.SIGHUP):
            signal.signal(number, signal.SIG_DFL)
        if preexec:
            preexec()

    return subprocess.Popen([sys.executable, *map(str, argv)], cwd=cwd, encoding=env["PYTHONIOENCODING"], env=env,
                            preexec_fn=before_exec, **{"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen})


@pytest.fixture
def python_run():
    """Runs `python argv` (as child_process starts it) to its end: (exit status, stdout, stderr)."""
    def run(argv, cwd, env=None, preexec=None, **popen):
        child = child_process(argv, cwd, env, preexec, **popen)
        out, err = child.communicate(timeout=300)
        return child.returncode, out, err

    return run


@pytest.fixture
def interrupt_child():
    """Starts `python argv` (as child_process does), sends it SIGINT, as Ctrl-C does (or the given signals,
    one after another), once its output holds wait_for, and returns (exit status, stdout, stderr)."""
    def interrupt(argv, wait_for, cwd, signals=(signal.SIGINT,)):
        child = child_process(argv, cwd)
        out = ""
        while wait_for not in out:
            line = child.stdout.readline()
            if not line:
                child.wait()
                raise AssertionError(f"the child ended before printing {wait_for!r}: {child.stderr.read()}")
            out += line
        for number in signals:
            child.send_signal(number)
            time.sleep(0.05)
        rest, err = child.communicate(timeout=60)
        return child.returncode, out + rest, err

    return interrupt
