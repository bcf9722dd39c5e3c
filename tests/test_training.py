"""Training end to end: the data it reads, the figures, checkpoints and samples it writes, --resume ending where an
uninterrupted run ends, stop signals on real processes and at random moments, and the script on its own."""
import dataclasses
import gzip
import io
import json
import multiprocessing
import os
import random
import re
import shlex
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

import homework7 as hw
import tools.evaluate as ev
import tools.sample as ts
from conftest import ROOT, main, outputs, signal_at_step, tree, write_idx
from tools.vaegan import VAEGANTrainer

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- data
def test_the_default_data_are_mnists_60000_training_and_10000_test_images(mnist):
    train_x, test_x = hw.load_images(hw.VAEConfig())
    assert train_x.shape == (60000, 784) and test_x.shape == (10000, 784) and train_x.dtype == torch.float32
    raw = gzip.decompress((hw.MNIST_DIR / "train-images-idx3-ubyte.gz").read_bytes())
    assert torch.equal(train_x[0], torch.tensor(list(raw[16 : 16 + 784]), dtype=torch.float32) / 255)
    assert train_x.min() == 0 and train_x.max() == 1  # the IDX bytes / 255
    # with tools.evaluate's labels, the class counts published with MNIST
    assert torch.equal(mnist[0], train_x)
    assert torch.bincount(mnist[1]).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    test_y = ev.load_mnist_with_labels("t10k")[1]
    assert torch.bincount(test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.parametrize("kind", ["images-idx3", "labels-idx1"])
def test_the_checksum_of_each_mnist_file_is_checked(kind, tmp_path):
    for name in (*hw.MNIST_SHA256, *ev.LABELS_SHA256):
        shutil.copy(hw.MNIST_DIR / name, tmp_path / name)
    assert len(ev.load_mnist_with_labels("t10k", tmp_path)[1]) == 10000
    damaged = tmp_path / f"t10k-{kind}-ubyte.gz"
    raw = bytearray(damaged.read_bytes())
    raw[-20] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    with pytest.raises(hw.UsageError, match=f"t10k-{kind}-ubyte.gz: SHA-256 checksum mismatch"):
        ev.load_mnist_with_labels("t10k", tmp_path)


def test_idx_labels_are_read_and_told_apart_from_images(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x01" + len(labels).to_bytes(4, "big") + labels.tobytes())
    assert hw.read_idx(io.BytesIO(path.read_bytes()), path, ev.IDX_LABELS).tolist() == [3, 1, 4, 1, 5]
    with pytest.raises(hw.UsageError, match="neither a .npy file nor an IDX image file"):
        hw.read_image_file(path)


@pytest.mark.parametrize("layout", ["npy N×784", "npy N×28×28", "npy uint8", "idx", "idx.gz", "npy pipe", "idx pipe"])
def test_every_layout_of_an_image_file_gives_the_same_pixels(layout, tmp_path, images):
    """.npy files of floats (N×784, N×28×28) or bytes, IDX files plain or gzipped, and a file through a pipe, as
    --data <(cat FILE) gives it: read once only."""
    pixels = np.round(images[:10] * 255).astype(np.uint8).reshape(10, 28, 28)
    if layout.startswith("idx"):
        source = write_idx(tmp_path / "images-idx3-ubyte", pixels, gz=layout == "idx.gz")
    else:
        source = tmp_path / "images.npy"
        np.save(source, {"npy N×784": pixels.reshape(10, 784) / 255.0, "npy N×28×28": pixels / 255.0}.get(layout, pixels))
    path, writer = source, None
    if layout.endswith("pipe"):
        path = tmp_path / "pipe"
        os.mkfifo(path)
        writer = threading.Thread(target=lambda: path.write_bytes(source.read_bytes()))
        writer.start()
    try:
        x = hw.read_image_file(path)
    finally:
        if writer:
            writer.join(timeout=10)
    assert torch.equal(x, torch.from_numpy(pixels.reshape(10, 784) / np.float32(255)))  # float32, to the last bit


def test_data_flag_holds_out_a_test_set(small_npy):
    train_x, test_x = hw.load_images(hw.VAEConfig(data=str(small_npy)))
    assert len(train_x) == 270 and len(test_x) == 30
    train_x, _ = hw.load_images(hw.VAEConfig(data=str(small_npy), test_data=str(small_npy), n_train=50))
    assert len(train_x) == 50


# ----------------------------------------------------------------------------- end to end
def test_vae_end_to_end_writes_figures_checkpoint_and_samples(tmp_path, cli):
    status, out, _ = cli(main, "vae", "--n-train", "200", "--epochs", "2", *outputs(tmp_path))
    assert status == 0
    assert "vae epoch   2/2  train loss " in out and "  test -elbo " in out
    for name in ("vae.png", "vae_curves.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 10_000
    state = hw.load_checkpoint(tmp_path / "run" / "checkpoint.pt", "vae")
    assert state["epoch"] == 2 and state["config"].n_train == 200
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[1]["test"]["-elbo"] > 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["latent_dim"] == 32

    out_file = tmp_path / "samples.npy"
    status, _, _ = cli(main, "tools.sample", "vae", "--n", "1500", "--out", out_file,
                       "--checkpoint", tmp_path / "run" / "checkpoint.pt")
    samples = np.load(out_file)
    assert status == 0 and samples.shape == (1500, 784) and samples.dtype == np.float32
    assert 0 <= samples.min() and samples.max() <= 1


def test_gan_end_to_end_writes_figures_checkpoint_and_samples(tmp_path, small_npy, cli):
    status, out, _ = cli(main, "gan", "--data", small_npy, "--epochs", "3", *outputs(tmp_path))
    assert status == 0 and "gan epoch   3/3  train d_loss " in out and " d_g_z " in out
    for name in ("gan.png", "gan_curves.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 10_000
    state = hw.load_checkpoint(tmp_path / "run" / "checkpoint.pt", "gan")
    assert set(state["trainer"]) == {"G", "D", "opt_G", "opt_D", "d_steps", "G_ema", "standing"}
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 < metrics[-1]["train"]["d_x"] < 1 and "g_loss" in metrics[-1]["train"]

    status, _, _ = cli(main, "tools.sample", "gan", "--n", "10", "--out", tmp_path / "g.npy",
                       "--checkpoint", tmp_path / "run" / "checkpoint.pt")
    samples = np.load(tmp_path / "g.npy")
    assert status == 0 and samples.shape == (10, 784) and samples.dtype == np.float32


def test_the_test_set_leaves_training_alone(tmp_path, small_npy, images, cli):
    """The test metric draws its ε from a generator of its own: test sets of 30 and of 100 images train equal
    weights."""
    for n in (30, 100):
        np.save(tmp_path / f"test{n}.npy", images[300 : 300 + n])
        assert cli(main, "vae", "--data", small_npy, "--test-data", tmp_path / f"test{n}.npy", "--epochs", "2",
                   "--batch-size", "100", "--run-dir", tmp_path / f"r{n}", "--figures-dir", tmp_path / f"r{n}")[0] == 0
    assert_same_networks(tmp_path / "r30", tmp_path / "r100")


def assert_same_networks(run_a, run_b):
    """The two runs' checkpoints hold the same networks bit for bit: weights, moving averages, recomputed
    statistics and the mixture (what the optimizers hold aside)."""
    a, b = (hw.load_checkpoint(run / "checkpoint.pt", trainers=ts.TRAINERS)["trainer"] for run in (run_a, run_b))
    parts = [part for part, value in a.items() if isinstance(value, dict) and not part.startswith("opt")]
    assert parts == [part for part, value in b.items() if isinstance(value, dict) and not part.startswith("opt")]
    for part in parts:
        assert a[part].keys() == b[part].keys(), part
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)


@pytest.mark.parametrize("command, trainer_cls", [(["vae"], hw.VAETrainer), (["gan"], hw.GANTrainer),
                                                (["tools.vaegan", "vaegan"], VAEGANTrainer)])
def test_a_stop_keeps_the_last_epoch_and_resume_ends_where_an_uninterrupted_run_does(command, trainer_cls, tmp_path,
                                                                                      small_npy, monkeypatch, cli):
    common = [*command, "--data", small_npy, "--batch-size", "50", "--figures-dir", tmp_path / "figures"]
    assert cli(main, *common, "--epochs", "3", "--run-dir", tmp_path / "straight")[0] == 0

    with monkeypatch.context() as patch:
        signal_at_step(patch, trainer_cls, step=6 + 2)  # 6 steps an epoch: stopped inside epoch 2
        status, _, err = cli(main, *common, "--epochs", "3", "--run-dir", tmp_path / "cut")
    assert status == 143 and "--resume" in err
    assert hw.load_checkpoint(tmp_path / "cut" / "checkpoint.pt", trainers=ts.TRAINERS)["epoch"] == 1
    assert not list((tmp_path / "cut").glob(".*.tmp"))

    status, out, _ = cli(main, *common, "--epochs", "3", "--run-dir", tmp_path / "cut", "--resume")
    assert status == 0 and "resuming after epoch 1" in out
    assert_same_networks(tmp_path / "straight", tmp_path / "cut")
    assert cli(main, "tools.sample", command[-1], "--checkpoint", tmp_path / "cut" / "checkpoint.pt", "--n", "3",
               "--out", tmp_path / "s.npy")[0] == 0


def test_the_assignments_debugging_step_needs_no_other_flag_and_replaces_no_other_run(tmp_path, monkeypatch, cli):
    """`vae --n-train 100 --kl-weight 0`, as the assignment words it: it trains in a run directory of its own, beside
    the full run's checkpoint and figure (stand-ins here), which stay as they were; it reconstructs its 100
    training images almost perfectly (mean |y - x| <= 0.03, eval mode, z = mu), and its figure shows them."""
    monkeypatch.chdir(tmp_path)
    full_run = {Path("runs/vae/checkpoint.pt"): b"the full run", Path("figures/vae.png"): b"its figure"}
    for path, data in full_run.items():
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
    drawn, plot_rows = [], hw.plot_rows
    monkeypatch.setattr(hw, "plot_rows", lambda rows, path, title: drawn.append((rows, path)) or plot_rows(rows, path,
                                                                                                          title))
    status, out, _ = cli(main, "vae", "--n-train", "100", "--kl-weight", "0")
    assert status == 0 and all(path.read_bytes() == data for path, data in full_run.items())
    run = Path("runs/vae_kl-weight=0_n-train=100")
    assert f"run dir {run}" in out and "vae epoch 150/150  train loss " in out
    trainer = ts.trainer_from_checkpoint(run / "checkpoint.pt", CPU, "vae")
    x = hw.load_images(trainer.cfg)[0]
    assert (trainer.reconstruct(x) - x).abs().mean() <= 0.03
    [(rows, path)] = [(rows, path) for rows, path in drawn if path.name == "vae.png"]
    assert path == run / "vae.png" and rows[0][0] == "training images" and torch.equal(rows[0][1], x[:16])
    assert str(path) in json.loads((run / "figures.json").read_text())["figures"]


# ----------------------------------------------------------------------------- the script on its own
def test_the_script_alone_in_an_empty_directory_trains_both_models(tmp_path, small_npy, python_run):
    """The submission is one file, named as handed in: copied alone into an empty directory, it asks for --data
    in one line that names it, trains each model on the assignment's .npy (or on data/ where it lies beside the
    script) into a run directory named by its flags, and imports nothing of this project."""
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(ROOT / "homework7.py", alone / "homework7.jsmith.py")
    env = {"PYTHONPATH": None, "PYTHONIOENCODING": "cp1252"}  # as Windows writes to a file or a pipe: no μ, −, ≥

    def train(model, *flags):
        return python_run(["homework7.jsmith.py", model, "--epochs", "1", "--n-train", "200", *flags], alone, env)

    status, out, err = train("vae")
    assert status == 2 and out == ""
    assert err == (f"homework7.jsmith.py: error: MNIST not found in {alone / 'data'}/: pass --data with the "
                           "assignment's mnist_train_images.npy or an IDX image file (train-images-idx3-ubyte)\n")
    shutil.copy(small_npy, alone / small_npy.name)
    shutil.copytree(ROOT / "data", alone / "data")
    for model, flags, run in (("vae", ["--data", small_npy.name], "vae_data=mnist_train_images.npy_n-train=200"),
                              ("gan", [], "gan_n-train=200")):
        status, out, err = train(model, *flags)
        assert status == 0, err
        assert f"{model} epoch   1/1" in out
        assert (alone / "runs" / run / f"{model}.png").stat().st_size > 10_000  # not in figures/: not the defaults
        assert hw.load_checkpoint(alone / "runs" / run / "checkpoint.pt", model)["epoch"] == 1
        assert model == "gan" or "fitted a mixture of 2 Gaussians to 200 encodings mu(x)" in out  # one per 100
    assert "200 training and 10000 test images" in out
    assert sorted(p.name for p in alone.iterdir()) == ["data", "homework7.jsmith.py", "mnist_train_images.npy", "runs"]
    status, out, _ = python_run(["homework7.jsmith.py", "vae", "--help"], alone, env)
    assert status == 0 and "784?hidden?2p" in out  # each character cp1252 lacks as ?


def test_the_script_imports_only_what_the_design_card_allows():
    source = (ROOT / "homework7.py").read_text()
    imported = {line.split()[1].split(".")[0] for line in map(str.strip, source.splitlines())
                if line.startswith(("import ", "from "))}
    assert imported - set(sys.stdlib_module_names) == {"numpy", "torch", "matplotlib", "tqdm"}


# ----------------------------------------------------------------------------- the VAE's mixture
def test_vae_samples_from_its_fitted_mixture_and_from_the_prior(tmp_path, checkpoints, cli):
    """The shared VAEs, with a mixture of 2 and without one (whose samples come from the prior)."""
    path = checkpoints["vae"]
    mixture = torch.load(path, map_location="cpu", weights_only=True)["trainer"]["mixture"]
    assert mixture["weights"].shape == (2,) and mixture["means"].shape == (2, 32)
    assert mixture["covariances"].shape == (2, 32, 32)
    assert abs(mixture["weights"].sum().item() - 1) < 1e-9

    trainer = ts.trainer_from_checkpoint(path, CPU, "vae")
    for name, value in mixture.items():  # the round trip keeps the mixture bit for bit
        assert torch.equal(trainer.mixture[name], value), name
    images = trainer.sample(500, torch.Generator().manual_seed(1), sampler="mixture")
    assert images.shape == (500, hw.IMAGE_DIM) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    assert not torch.equal(images, trainer.sample(500, torch.Generator().manual_seed(1)))  # not N(0, I)

    assert trainer.sampler_labels() == {"prior": "z ~ N(0, I)", "mixture": "z ~ mixture of 2"}
    for flag, expected in (("mixture", "mixture"), ("prior", "prior"), (None, ts.DEFAULT_SAMPLER)):
        argv = ["tools.sample", "vae", "--checkpoint", path, "--n", "20", "--out", tmp_path / f"{flag}.npy"]
        status, out, _ = cli(main, *argv, *(["--sampler", flag] if flag else []))
        assert status == 0 and trainer.sampler_labels()[expected] in out
    mixture_images = np.load(tmp_path / "mixture.npy")
    expected = trainer.sample(20, torch.Generator().manual_seed(0), sampler="mixture").numpy()
    assert np.array_equal(mixture_images, expected)

    assert "mixture" not in hw.load_checkpoint(checkpoints["vae_prior"])["trainer"]
    status, out, _ = cli(main, "tools.sample", "vae", "--checkpoint", checkpoints["vae_prior"], "--n", "5", "--out",
                         tmp_path / "s.npy")
    assert status == 0 and "z ~ N(0, I)" in out  # the default falls back to the prior
    # the figures: rows of 0.75 inch at 100 dpi under 0.5 inch of title, the assignment's three and the mixture's
    for name, rows in (("vae", 4), ("vae_prior", 3)):
        assert imread(checkpoints[name].parent / "vae.png").shape[0] == round(100 * (rows * 0.75 + 0.5))


# ----------------------------------------------------------------------------- any machine, any moment
def test_a_cuda_index_past_the_last_device_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(hw.UsageError, match="not on this machine, which has cpu, cuda:0 "):
        hw.resolve_device("cuda:7")
    assert hw.resolve_device("cuda:0") == torch.device("cuda:0")


def test_two_writers_of_one_file_use_two_temporary_files(tmp_path, monkeypatch):
    target, real_fsync, calls = tmp_path / "classifier.pt", os.fsync, []

    def fsync(fd):  # a second run writes the same file while the first still holds its temporary file open
        calls.append(fd)
        if len(calls) == 1:
            hw.atomic_write(target, lambda g: g.write(b"inner"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    hw.atomic_write(target, lambda f: f.write(b"outer"))
    assert target.read_bytes() == b"outer" and [p.name for p in tmp_path.iterdir()] == ["classifier.pt"]


def test_every_generator_state_is_saved_and_restored(monkeypatch):
    """On a machine with a GPU the checkpoint keeps its generators' states too, and --resume restores them
    (faked here, for the functions that save and restore them only: an optimizer step would go looking for
    the GPU; the resume-equality test above stays on the CPU)."""
    cuda_state, restored = [torch.tensor([7, 7], dtype=torch.uint8)], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: cuda_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    states = hw.rng_states()
    assert set(states) == {"cpu", "cuda"} and torch.equal(states["cuda"][0], cuda_state[0])
    assert torch.equal(states["cpu"], torch.get_rng_state())
    torch.rand(3)  # the CPU's generator moves on
    hw.set_rng_states(states)
    assert restored == [cuda_state] and torch.equal(torch.get_rng_state(), states["cpu"])


@pytest.mark.parametrize("model", ["vae", "gan"])
def test_help_explains_every_flag_with_its_default(model, capsys):
    assert hw.main([model, "--help"]) == 0  # argparse's exit, turned into a status by run_cli
    out = "".join(capsys.readouterr().out.split())  # argparse wraps the help text, also at hyphens
    for f in dataclasses.fields(hw.TRAINERS[model].config_cls):
        flag = f"--{f.name.replace('_', '-')}{f.name.upper()}"
        assert flag in out, flag
        said = [f.metadata["help"], *([f"default: {f.default!r}"] if f.default is not None else []),
                *([f"within {f.metadata['within']}"] if f.metadata["within"] else [])]
        for words in said:
            assert "".join(words.split()) in out, (flag, words)
    assert "--resume" in out


# ----------------------------------------------------------------------------- threads, alone and in company
@pytest.mark.parametrize("given, expected", [
    ({}, ("1000", "0")),
    ({"GOMP_SPINCOUNT": "300000"}, ("300000", "0")),
    ({"KMP_BLOCKTIME": "200"}, ("1000", "200")),
    ({"OMP_WAIT_POLICY": "ACTIVE"}, (None, None)),  # the user's policy: no spin of ours overrides it
], ids=["unset", "GOMP_SPINCOUNT set", "KMP_BLOCKTIME set", "OMP_WAIT_POLICY set"])
def test_openmp_spins_briefly_before_torch_loads_unless_the_user_says_otherwise(given, expected, tmp_path,
                                                                                python_run):
    code = ("import builtins, json, os, sys\n"
            "real_import = builtins.__import__\n"
            "def spin_set_first(name, *args, **kwargs):\n"  # torch's OpenMP reads the variables as it loads
            "    if name == 'torch' and 'torch' not in sys.modules:\n"
            "        print(json.dumps([os.environ.get(k) for k in ('GOMP_SPINCOUNT', 'KMP_BLOCKTIME')]))\n"
            "    return real_import(name, *args, **kwargs)\n"
            "builtins.__import__ = spin_set_first\n"
            "import homework7\n")
    unset = dict.fromkeys(("GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_WAIT_POLICY"))
    status, out, err = python_run(["-c", code], tmp_path, env={**unset, **given})
    assert status == 0 and json.loads(out.splitlines()[0]) == list(expected), err


def test_threads_sets_torchs_thread_count_for_a_run_and_a_tool(tmp_path, small_npy):
    before, checkpoint = torch.get_num_threads(), tmp_path / "run" / "checkpoint.pt"
    flags = [str(a) for a in ["--data", small_npy, *outputs(tmp_path)]]
    try:
        assert hw.main(["gan", *flags, "--epochs", "1", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1 and hw.load_checkpoint(checkpoint)["config"].threads == 1
        torch.set_num_threads(3)
        assert ts.main(["gan", "--checkpoint", str(checkpoint), "--n", "3", "--out", str(tmp_path / "s.npy"),
                        "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        assert hw.main(["gan", *flags, "--epochs", "2", "--resume", "--threads", "2"]) == 0  # as --device may
        assert torch.get_num_threads() == 2 and hw.load_checkpoint(checkpoint)["config"].threads == 2
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- nothing destroyed, nothing half-done
def test_a_new_run_stopped_in_its_first_epoch_leaves_the_previous_run_as_it_was(tmp_path, small_npy, monkeypatch,
                                                                                cli):
    common = ["vae", "--data", small_npy, "--batch-size", "100", *outputs(tmp_path)]  # 3 steps an epoch
    assert cli(main, *common, "--epochs", "1")[0] == 0
    before = tree(tmp_path / "run")
    signal_at_step(monkeypatch, hw.VAETrainer, step=2)  # in the first epoch of the new run
    status, _, err = cli(main, *common, "--epochs", "3", "--latent-dim", "3")
    assert status == 143 and "no epoch of this run finished, so it wrote no checkpoint" in err
    assert tree(tmp_path / "run") == before
    status, out, _ = cli(main, *common, "--epochs", "2", "--resume")
    assert status == 0 and "resuming after epoch 1" in out


def test_the_mixture_is_fitted_once_training_has_ended_and_a_resume_fits_it_again(tmp_path, small_npy, monkeypatch,
                                                                                   cli):
    """Each epoch's checkpoint is saved once; the last after the mixture is fitted, and only the last holds it, so a
    run stopped after a resume never keeps a mixture fitted to an older encoder. A resume fits it again, as its
    flags now say."""
    common = ["vae", "--data", small_npy, "--batch-size", "50", "--mixture-fit-n", "100", *outputs(tmp_path)]
    path, saved, save_checkpoint = tmp_path / "run" / "checkpoint.pt", [], hw.save_checkpoint
    monkeypatch.setattr(hw, "save_checkpoint", lambda *args, **kwargs: saved.append(args[3][-1]["epoch"]) or
                        save_checkpoint(*args, **kwargs))
    assert cli(main, *common, "--epochs", "2", "--mixture-components", "2")[0] == 0
    assert saved == [1, 2] and "mixture" in hw.load_checkpoint(path)["trainer"]
    with monkeypatch.context() as patch:  # stopped in epoch 4, after epoch 3 was saved
        signal_at_step(patch, hw.VAETrainer, step=6 + 2)
        assert cli(main, *common, "--epochs", "4", "--resume", "--mixture-components", "2")[0] == 143
    state = hw.load_checkpoint(path)
    assert state["epoch"] == 3 and "mixture" not in state["trainer"]
    status, _, err = cli(main, "tools.sample", "vae", "--checkpoint", path, "--sampler", "mixture")
    assert status == 2 and "no fitted mixture" in err
    for k, fitted in ((2, "fitted a mixture of 2 Gaussians to 100"), (3, "fitted a mixture of 3 Gaussians to 100"),
                      (0, None)):
        status, out, _ = cli(main, *common, "--epochs", "4", "--resume", "--mixture-components", str(k))
        mixture = hw.load_checkpoint(path)["trainer"].get("mixture")
        assert status == 0 and (fitted in out if fitted else mixture is None), out
        assert fitted is None or len(mixture["weights"]) == k


def test_a_gan_resumed_after_it_finished_goes_on_as_a_straight_run(tmp_path, small_npy, cli):
    """The BatchNorm statistics recomputed after training draw the figures, but the moving average that
    training goes on with is untouched by them."""
    flags = ["gan", "--data", small_npy, "--batch-size", "100", "--bn-batches", "3", "--figures-dir", tmp_path / "f"]
    assert cli(main, *flags, "--epochs", "3", "--run-dir", tmp_path / "straight")[0] == 0
    assert cli(main, *flags, "--epochs", "1", "--run-dir", tmp_path / "resumed")[0] == 0
    assert cli(main, *flags, "--epochs", "3", "--run-dir", tmp_path / "resumed", "--resume")[0] == 0
    assert "standing" in hw.load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["trainer"]
    assert_same_networks(tmp_path / "straight", tmp_path / "resumed")


# ----------------------------------------------------------------------------- stop signals
@pytest.mark.parametrize("signum, status, words", [
    (signal.SIGINT, 130, "interrupted"),
    (signal.SIGTERM, 143, "stopped by SIGTERM"),
    (signal.SIGHUP, 129, "stopped by SIGHUP"),
], ids=["Ctrl-C", "SIGTERM", "SIGHUP"])
def test_every_stop_signal_ends_a_real_run_in_one_line_and_keeps_its_last_epoch(signum, status, words, tmp_path,
                                                                                small_npy, interrupt_child):
    run_dir = tmp_path / "my run"  # the advice quotes it
    code, out, err = interrupt_child([ROOT / "homework7.py", "vae", "--data", small_npy, "--epochs", "100000",
                                      "--figures-dir", tmp_path / "figures", "--run-dir", run_dir],
                                     "vae epoch   2/", tmp_path, signals=[signum])
    [line] = [line for line in err.splitlines() if line]  # its advice: the two tests below
    assert code == status and re.match(f"homework7.py: {words}; the checkpoint of epoch [0-9]+ is kept in "
                                       f"{re.escape(str(run_dir))}; continue with: ", line), err
    assert hw.load_checkpoint(run_dir / "checkpoint.pt", "vae")["epoch"] >= 2
    assert not list(tmp_path.rglob(".*.tmp"))


def test_the_advice_after_a_stop_is_the_command_that_continues_this_run(tmp_path, small_npy, interrupt_child,
                                                                        monkeypatch):
    """A resumed run, stopped in its first resumed epoch, before it saved a config of its own: its advice names the
    script as it was started (tools.report copies it as homework7.NAME.py), the run directory as --run-dir=-r
    (which argparse would take for a flag otherwise), and every setting a resume may change, as FLAG=VALUE, whatever
    the checkpoint held before."""
    shutil.copy(ROOT / "homework7.py", tmp_path / "homework7.alice.py")
    monkeypatch.chdir(tmp_path)
    flags = ["--data", str(small_npy), "--figures-dir", "figures", "--run-dir=-r"]
    assert hw.main(["vae", *flags, "--epochs", "1", "--mixture-components", "0"]) == 0
    code, _, err = interrupt_child(["homework7.alice.py", "vae", "--resume", "--epochs", "6", "--mixture-components",
                                    "20", "--mixture-fit-n", "250", *flags], "resuming after epoch 1", tmp_path,
                                   signals=[signal.SIGTERM])
    [line] = [line for line in err.splitlines() if line]
    assert code == 143 and "the checkpoint of epoch 1 is kept" in line
    assert line.endswith("; continue with: python homework7.alice.py vae --resume --device=auto "
                                         "--threads=0 --figures-dir=figures --run-dir=-r --epochs=6 "
                                         "--mixture-components=20 --mixture-fit-n=250"), err
    assert hw.main(shlex.split(line.split("continue with: ")[1])[2:]) == 0  # what follows `python homework7.alice.py`
    assert hw.load_checkpoint(tmp_path / "-r" / "checkpoint.pt")["epoch"] == 6  # the epochs it was given


def test_the_first_stop_signal_is_recorded_and_the_second_meets_the_systems_default():
    with hw.StopSignals() as stop:
        stop.check()  # nothing has come
        os.kill(os.getpid(), signal.SIGTERM)  # handled between two bytecodes, as the signal lands
        assert stop.signum == signal.SIGTERM
        assert all(signal.getsignal(s) == signal.SIG_DFL for s in hw.STOP_SIGNALS
                   if stop.previous[s] != signal.SIG_IGN)  # a second one ends the process at once
        with pytest.raises(hw.Stopped):
            stop.check()


def stop_child(argv, log):
    """The body of a child process of the crash test: homework7's main, its output into log."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever the process that forked it had
    sys.stdout = sys.stderr = open(log, "w", buffering=1)
    sys.exit(hw.main(argv))


def test_a_run_stopped_at_random_moments_always_resumes(tmp_path, small_npy):
    """Trains in a child process and stops it at seeded random moments, 8 times each with SIGINT, SIGTERM and
    SIGKILL; after each stop the run directory holds the previous checkpoint or a complete new one, config.json
    and metrics.json hold its config and its metrics (or, stopped between the writes, those of the epoch before),
    no temporary file is left but after SIGKILL, and the next run resumes after the checkpoint's epoch."""
    context = multiprocessing.get_context("forkserver")  # children forked from a process that has torch loaded
    context.set_forkserver_preload(["homework7", "torch._dynamo"])  # the second, which Adam imports, takes 1-2 s
    rng = random.Random(0)
    stops = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL] * 8
    rng.shuffle(stops)
    run_dir, log = tmp_path / "run", tmp_path / "child.log"
    argv = ["vae", "--data", str(small_npy), "--batch-size", "50", "--hidden", "32", "--latent-dim", "4",
            "--mixture-components", "0", "--epochs", "100000", "--run-dir", str(run_dir), "--figures-dir",
            str(tmp_path / "figures")]
    epoch, statuses, killed_leftovers = 0, [], 0
    for stop in stops:
        resume = ["--resume"] if (run_dir / "checkpoint.pt").exists() else []
        child = context.Process(target=stop_child, args=(argv + resume, log))
        child.start()
        while "training and" not in (log.read_text() if log.exists() else ""):  # its first line: signals handled
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.4))
        os.kill(child.pid, stop)
        child.join(30)
        statuses.append(child.exitcode)
        started = log.read_text()
        assert "resuming" not in started or f"resuming after epoch {epoch} " in started, started
        leftovers = sorted(p.name for p in tmp_path.rglob(".*.tmp"))
        assert stop == signal.SIGKILL or len(leftovers) == killed_leftovers, started
        killed_leftovers = len(leftovers)  # SIGKILL cannot be caught: what it cut short stays
        if epoch or (run_dir / "checkpoint.pt").exists():
            state = hw.load_checkpoint(run_dir / "checkpoint.pt", "vae")
            assert state["epoch"] >= epoch
            epoch = state["epoch"]
            if (run_dir / "config.json").exists():
                config = json.loads((run_dir / "config.json").read_text())
                assert config == {"model": "vae", **dataclasses.asdict(state["config"])}
            if (run_dir / "metrics.json").exists():
                assert json.loads((run_dir / "metrics.json").read_text()) in (state["metrics"], state["metrics"][:-1])
        print(f"{signal.Signals(stop).name}: exit {child.exitcode}, checkpoint of epoch {epoch}, "
              f"temporary files left: {leftovers or 'none'}")  # pytest -s shows what each stop left
        log.unlink()
    expected = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}
    assert statuses == [expected[s] for s in stops]
    assert epoch > 0
    status = hw.main(argv[:-6] + ["--epochs", str(epoch + 1), "--resume", *argv[-4:]])
    assert status == 0 and hw.load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == epoch + 1
