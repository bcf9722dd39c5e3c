"""What stays, holds: the rules of README "Errors" tried as a user meets them, on real processes and real
files: file-system errors as an ordinary user, a closed pipe and a full output, numbers out of range, tiny
data sets, diverging runs, the tools' readers, a stop while torch loads, and a GAN resumed after it finished."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import homework7 as hw
import tools.gan_quality as gq
import tools.report
from conftest import ROOT, child_process

NOBODY = 65534  # the unprivileged user of Debian and most Linux systems


def one_line_or_none(status, err):
    """The rule for a command that failed or not: exit 0, or exit 2 with one line and no traceback."""
    assert "Traceback" not in err, err
    assert status == 0 or (status == 2 and err.count("\n") == 1), (status, err)


# ----------------------------------------------------------------------------- the file system, as a user
# A child that loads everything first, then (as root) becomes an ordinary user, and runs each command's main
# with its stderr captured: the file system then refuses it as it refuses a student.
AS_A_USER = """
import contextlib, io, json, os, sys
import homework7, tools.evaluate, tools.report, tools.sample
import matplotlib.backends.backend_agg, torch._dynamo  # what loads on first use: the interpreter's own files
cases = json.loads(sys.argv[1])
if os.geteuid() == 0:
    os.setgid({nobody}); os.setuid({nobody})
results = []
for module, argv in cases:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = sys.modules[module].main(argv)
        except SystemExit as e:
            status = e.code
    results.append((status, err.getvalue()))
print(json.dumps(results))
""".format(nobody=NOBODY)


@pytest.fixture
def user_dir(small_npy):
    """A directory an ordinary user may write, holding small.npy, a trained VAE's checkpoint, a directory no
    one but root may enter (locked/), an unreadable figure and an unreadable checkpoint."""
    d = Path(tempfile.mkdtemp(prefix="homework7-user-"))
    try:
        shutil.copy(small_npy, d / "small.npy")
        flags = ["--data", d / "small.npy", "--epochs", "1", "--mixture-components", "2"]
        assert hw.main([str(a) for a in ["vae", *flags, "--run-dir", d / "run", "--figures-dir", d / "figures"]]) == 0
        shutil.copy(d / "run" / "checkpoint.pt", d / "vae.pt")
        if os.geteuid() == 0:
            for path in [d, *d.rglob("*")]:
                os.chown(path, NOBODY, NOBODY)
        (d / "locked").mkdir()
        for path in (d / "locked", d / "figures" / "vae.png", d / "run" / "checkpoint.pt"):
            path.chmod(0)
        yield d
    finally:
        (d / "locked").chmod(0o700)
        shutil.rmtree(d)


def test_file_system_errors_as_an_ordinary_user_end_in_one_line(user_dir):
    d, vae = user_dir, str(user_dir / "vae.pt")
    small, locked = str(d / "small.npy"), str(d / "locked")
    cases = [  # (module, argv, what the one line names), each refused
        ("homework7", ["vae", "--data", small, "--figures-dir", f"{locked}/figs"], "locked/figs: Permission denied"),
        ("homework7", ["vae", "--data", small, "--run-dir", f"{locked}/run"], "locked/run: Permission denied"),
        ("homework7", ["vae", "--data", f"{locked}/x.npy"], "Permission denied"),
        ("homework7", ["vae", "--data", small, "--resume", "--run-dir", str(d / "run")], "Permission denied"),
        ("homework7", ["vae", "--data", small, "--run-dir", str(d / ("x" * 300))], "File name too long"),
        ("tools.sample", ["vae", "--checkpoint", f"{locked}/x.pt"], "Permission denied"),
        ("tools.sample", ["vae", "--checkpoint", vae, "--out", f"{locked}/s.npy"], "Permission denied"),
        ("tools.report", ["--user", "ab", "--figures-dir", locked, "--out-dir", str(d)], locked),
        ("tools.evaluate", ["vae", "--checkpoint", vae, "--classifier", f"{locked}/c.pt"], "Permission denied"),
        # replaced, not read: an unreadable figure of the script's own is written anew
        ("homework7", ["vae", "--data", small, "--epochs", "1", "--mixture-components", "2", "--run-dir",
                       str(d / "run2"), "--figures-dir", str(d / "figures")], None),
    ]
    child = subprocess.run([sys.executable, "-c", AS_A_USER, json.dumps([c[:2] for c in cases])], cwd=d,
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert child.returncode == 0, child.stderr
    for (module, argv, words), (status, err) in zip(cases, json.loads(child.stdout.splitlines()[-1])):
        assert "Traceback" not in err, (argv, err)
        if words is None:
            assert status == 0, (argv, err)
        else:
            assert status == 2 and err.count("\n") == 1 and words in err, (argv, err)


# ----------------------------------------------------------------------------- the output
def test_a_closed_pipe_ends_quietly_and_keeps_the_last_epoch(tmp_path, small_npy):
    child = child_process([ROOT / "homework7.py", "vae", "--data", small_npy, "--epochs", "100000",
                           "--figures-dir", tmp_path / "figures", "--run-dir", tmp_path / "run"], tmp_path)
    while "vae epoch   2/" not in child.stdout.readline():  # as `| head` reads a little, then goes
        pass
    child.stdout.close()
    err = child.stderr.read()
    assert child.wait(timeout=60) == 128 + signal.SIGPIPE and err == ""
    assert hw.load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] >= 2


def test_a_full_output_ends_in_one_line(tmp_path, small_npy):
    with open("/dev/full", "w") as full:
        child = subprocess.run([sys.executable, ROOT / "homework7.py", "vae", "--data", small_npy, "--epochs", "3",
                                "--figures-dir", tmp_path / "figures", "--run-dir", tmp_path / "run"],
                               stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert child.returncode == 2
    assert child.stderr == "homework7.py: error: the output: No space left on device\n"


# ----------------------------------------------------------------------------- numbers, sizes, divergence
@pytest.mark.parametrize("module, argv, words", [
    (tools.report, ["--user", "ab", "--figures-dir", "nowhere"], "missing"),
    (gq, ["--methods", "new", "--n", "1"], "--n: 1: must lie within [2, 1e9]"),
    (gq, ["--methods", "new", "--seeds", "18446744073709551616"], "must lie within [0, 4294967295]"),
    (hw, ["gan", "--batch-size", "99999999999999999999", "--bn-batches", "5"], "must lie within [2, 1e6]"),
    (hw, ["vae", "--seed", "18446744073709551616"], "--seed 18446744073709551616: must lie within [0, 4294967295]"),
    (hw, ["gan", "--bn-batches", "1000000"], "--bn-batches 1000000: must lie within [0, 1e5]"),
], ids=["report without figures", "quality n 1", "quality seed 2^64", "batch 10^20", "seed 2^64", "bn 10^6"])
def test_numbers_out_of_range_are_refused_before_any_work(module, argv, words, tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    status, _, err = cli(module.main, *argv)
    assert status == 2 and words in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []  # nothing trained, nothing written, no directory made


@pytest.mark.parametrize("model, n, test_n", [("vae", 10, 0), ("vae", 3, 1), ("vae", 2, 0), ("gan", 3, 0),
                                              ("gan", 2, 1)])
def test_every_size_accepted_runs_end_to_end(model, n, test_n, tmp_path, images, cli):
    """Tiny data sets, among them a test set of one image (the last 10% of 10 images, or --test-data)."""
    np.save(tmp_path / "x.npy", images[:n])
    np.save(tmp_path / "t.npy", images[n : n + test_n])
    flags = ["--data", tmp_path / "x.npy", "--epochs", "2", "--figures-dir", tmp_path / "f", "--run-dir", tmp_path / "r"]
    flags += ["--test-data", tmp_path / "t.npy"] if test_n else []
    flags += ["--mixture-components", "1"] if model == "vae" else ["--bn-batches", "2"]
    status, _, err = cli(hw.main, model, *flags)
    assert status == 0, err
    assert (tmp_path / "f" / f"{model}.png").stat().st_size > 1000


@pytest.mark.parametrize("flags", [["--mixture-components", "0"], ["--epochs", "2"]], ids=["no mixture", "2 epochs"])
def test_a_diverged_epoch_is_never_saved_fitted_to_or_drawn(flags, tmp_path, small_npy, cli):
    """One step an epoch at lr 1e30: its training means may still read as numbers, its weights and test -ELBO
    do not."""
    status, _, err = cli(hw.main, "vae", "--data", small_npy, "--lr", "1e30", "--batch-size", "500",
                         "--figures-dir", tmp_path / "figures", "--run-dir", tmp_path / "run", *flags)
    assert status == 2 and err.count("\n") == 1 and "NaN or infinite in epoch 1" in err and "no checkpoint" in err
    assert list(tmp_path.iterdir()) == [small_npy]  # no checkpoint, no figure, no directory


def test_a_test_metric_turning_nan_keeps_the_last_good_checkpoint(tmp_path, small_npy, monkeypatch, cli):
    real_evaluate, calls = hw.VAETrainer.evaluate, []

    def evaluate(self, x):  # epoch 1 is scored, then the test -ELBO turns NaN
        calls.append(1)
        return real_evaluate(self, x) if len(calls) < 2 else {**real_evaluate(self, x), "-elbo": float("nan")}

    monkeypatch.setattr(hw.VAETrainer, "evaluate", evaluate)
    status, _, err = cli(hw.main, "vae", "--data", small_npy, "--epochs", "3", "--figures-dir", tmp_path / "figures",
                         "--run-dir", tmp_path / "run")
    assert status == 2 and "NaN or infinite in epoch 2" in err and "checkpoint of epoch 1 is kept" in err
    assert hw.load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1
    assert not (tmp_path / "figures").exists()


# ----------------------------------------------------------------------------- the readers of the tools
def test_records_that_are_not_records_get_one_line(tmp_path, cli):
    (tmp_path / "text.json").write_text("not json")
    (tmp_path / "other.json").write_text('{"not": "a record"}')
    (tmp_path / "dir.json").mkdir()
    for path, words in (("missing.json", "No such file or directory"), ("text.json", "not JSON"),
                        ("other.json", "not a record of tools.gan_quality"), ("dir.json", "Is a directory")):
        status, _, err = cli(gq.main, "--records", tmp_path / path)
        assert status == 2 and err.count("\n") == 1 and words in err, err
    corrupt = gq.quality_dir(tmp_path) / "old.json"  # a saved record that was damaged, met before training
    corrupt.parent.mkdir(parents=True)
    corrupt.write_text('{"config": 1')
    status, _, err = cli(gq.main, "--methods", "old", "--out-dir", tmp_path, "--n", "2")
    assert status == 2 and err.count("\n") == 1 and "old.json: not a record" in err, err


def test_the_report_draws_text_from_files_as_written_and_checks_each_file(tmp_path, cli):
    figures, runs = tmp_path / "figures", tmp_path / "runs"
    figures.mkdir()
    for name in ("vae.png", "gan.png"):
        hw.plot_grid(torch.rand(4, hw.IMAGE_DIM), figures / name, name)
    scores = {"coverage": 10, "confident": 0.9, "inception_score": 9.0, "fid": 5.0, "histogram": [1] * 10}
    (runs / "gan").mkdir(parents=True)
    (runs / "gan" / "eval.json").write_text(json.dumps({"model": "gan", "n_samples": 10, "classifier_accuracy": 0.99,
                                                        "real": scores, "samples": {"cost $_$ x": scores}}))
    (runs / "gan" / "config.json").write_text("[1, 2]")  # JSON, but not a config
    status, _, err = cli(tools.report.main, "--user", "ab", "--figures-dir", figures, "--runs-dir", runs,
                         "--out-dir", tmp_path / "out")
    assert status == 0 and "config.json is not a JSON object" in err, err
    (figures / "gan_curves.png").write_bytes(b"")  # a figure cut to nothing
    status, _, err = cli(tools.report.main, "--user", "ab", "--figures-dir", figures, "--out-dir", tmp_path / "out2")
    assert status == 2 and err.count("\n") == 1 and "gan_curves.png: not a readable PNG figure" in err
    assert not (tmp_path / "out2").exists()  # a failed report leaves no directory
    (figures / "gan_curves.png").unlink()
    (figures / "gan.png").unlink()
    (figures / "gan.png").mkdir()  # a directory where a figure should be
    status, _, err = cli(tools.report.main, "--user", "ab", "--figures-dir", figures, "--out-dir", tmp_path)
    assert status == 2 and err.count("\n") == 1 and "gan.png: Is a directory" in err


def test_evaluate_and_sweep_refuse_one_sample_before_any_work(tmp_path, monkeypatch, cli):
    import tools.evaluate
    import tools.sweep
    monkeypatch.chdir(tmp_path)
    for main, argv in ((tools.evaluate.main, ["vae", "--n", "1"]), (tools.sweep.main, ["--n", "1"])):
        status, _, err = cli(main, *argv)
        assert status == 2 and "--n: 1: must lie within [2, 1e9]" in err, err
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- stops
def test_ctrl_c_while_torch_loads_ends_in_one_line(tmp_path):
    child = child_process([ROOT / "homework7.py", "vae", "--epochs", "1"], tmp_path)
    time.sleep(0.2)  # the interpreter has started; torch takes a second or more to load
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130 and "Traceback" not in err
    assert len([line for line in err.splitlines() if line]) == 1, err


def test_the_advice_after_a_stop_names_the_run_directory_and_only_where_a_checkpoint_is(tmp_path, small_npy,
                                                                                        monkeypatch, cli):
    run_dir = tmp_path / "my run"
    flags = ["--data", small_npy, "--batch-size", "100", "--figures-dir", tmp_path / "f", "--run-dir", run_dir]
    real_step, calls = hw.VAETrainer.train_step, []

    def step(self, x):  # Ctrl-C at the second step, then at the fifth of the next run (epoch 2)
        calls.append(1)
        if len(calls) in (2, 7):
            raise KeyboardInterrupt
        return real_step(self, x)

    monkeypatch.setattr(hw.VAETrainer, "train_step", step)
    status, _, err = cli(hw.main, "vae", *flags, "--epochs", "3")
    assert status == 130 and "no epoch finished, so there is no checkpoint\n" in err and "continue" not in err
    assert not run_dir.exists()
    status, _, err = cli(hw.main, "vae", *flags, "--epochs", "3")
    assert status == 130 and err.rstrip().endswith(
        f"the checkpoint of epoch 1 is kept in {run_dir}; continue with: python homework7.py vae --resume "
        f"--run-dir '{run_dir}'")


def test_a_gan_resumed_after_it_finished_goes_on_as_a_straight_run(tmp_path, small_npy, cli):
    """The BatchNorm statistics recomputed after training draw the figures, but the moving average that
    training goes on with is untouched by them."""
    flags = ["gan", "--data", small_npy, "--batch-size", "100", "--bn-batches", "3", "--figures-dir", tmp_path / "f"]
    assert cli(hw.main, *flags, "--epochs", "3", "--run-dir", tmp_path / "straight")[0] == 0
    assert cli(hw.main, *flags, "--epochs", "1", "--run-dir", tmp_path / "resumed")[0] == 0
    assert cli(hw.main, *flags, "--epochs", "3", "--run-dir", tmp_path / "resumed", "--resume")[0] == 0
    straight, resumed = (hw.load_checkpoint(tmp_path / run / "checkpoint.pt")["trainer"]
                         for run in ("straight", "resumed"))
    for part in ("G", "D", "G_ema", "G_standing", "snapshots"):
        for key in straight[part]:
            assert torch.equal(straight[part][key], resumed[part][key]), (part, key)
