"""homework7.py, the submission: data loading, the VAE and the GAN with their losses against independent
references, the command line end to end, bad input, Ctrl-C and --resume, and the script running on its own."""
import argparse
import dataclasses
import errno
import gzip
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli, Normal, kl_divergence

import homework7 as hw
import tools.sample as ts

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


def main(argv):
    """homework7's main for `vae` and `gan`; for `sample ...`, that of python -m tools.sample, which draws
    from homework7's checkpoints."""
    argv = [str(a) for a in argv]
    return ts.main(argv[1:]) if argv[:1] == ["sample"] else hw.main(argv)




def outputs(tmp_path):
    """Figures and run directory under tmp_path."""
    return ["--figures-dir", tmp_path / "figures", "--run-dir", tmp_path / "run"]


# ----------------------------------------------------------------------------- data
def test_data_holds_the_full_mnist_with_its_labels(mnist):
    train_x, train_y = mnist
    test_x, test_y = hw.load_mnist("t10k")
    assert train_x.shape == (60000, 784) and test_x.shape == (10000, 784)
    assert train_y.shape == (60000,) and test_y.shape == (10000,)
    # the class counts published with MNIST
    assert torch.bincount(train_y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert train_x.min() == 0 and train_x.max() == 1  # the IDX bytes / 255


def test_default_data_is_60000_train_and_10000_test():
    train_x, test_x = hw.load_images(hw.VAEConfig())
    assert train_x.shape == (60000, 784) and test_x.shape == (10000, 784)
    assert train_x.dtype == torch.float32
    raw = gzip.decompress((hw.MNIST_DIR / "train-images-idx3-ubyte.gz").read_bytes())
    assert torch.equal(train_x[0], torch.tensor(list(raw[16 : 16 + 784]), dtype=torch.float32) / 255)


def test_the_checksum_of_each_mnist_file_is_checked(tmp_path):
    for name in hw.MNIST_SHA256:
        shutil.copy(hw.MNIST_DIR / name, tmp_path / name)
    assert len(hw.load_mnist("t10k", tmp_path)[0]) == 10000
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(labels.read_bytes())
    raw[-20] ^= 0xFF
    labels.write_bytes(bytes(raw))
    with pytest.raises(hw.UsageError, match="t10k-labels-idx1-ubyte.gz: SHA-256 checksum mismatch"):
        hw.load_mnist("t10k", tmp_path)


def test_without_mnist_files_the_error_names_the_data_flag(tmp_path):
    with pytest.raises(hw.UsageError, match="MNIST not found in .*: pass --data with the assignment's "
                                            "mnist_train_images.npy or an IDX image file"):
        hw.load_mnist("train", tmp_path)


def test_idx_labels_are_read_and_told_apart_from_images(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x01" + len(labels).to_bytes(4, "big") + labels.tobytes())
    assert hw.read_idx(path, hw.IDX_LABELS).tolist() == [3, 1, 4, 1, 5]
    with pytest.raises(hw.UsageError, match="not an IDX image file"):
        hw.read_image_file(path)


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


def make_bad_inputs(tmp_path, images, checkpoints):
    """Writes each bad file the table below names into tmp_path/in; returns that directory."""
    d = tmp_path / "in"
    d.mkdir()
    pixels = np.round(images[:10] * 255).astype(np.uint8).reshape(10, 28, 28)
    np.save(d / "strings.npy", np.array([["7"] * 784] * 10))
    np.save(d / "complex.npy", images[:10].astype(np.complex64))
    np.save(d / "objects.npy", np.array([object()] * 10), allow_pickle=True)
    nan = images[:10].copy()
    nan[3, 5] = np.nan
    np.save(d / "nan.npy", nan)
    np.save(d / "inf.npy", np.where(images[:10] > 0.5, np.inf, 0).astype(np.float32))
    np.save(d / "over_one.npy", images[:10] * 2)
    np.save(d / "negative.npy", images[:10] - 0.5)
    np.save(d / "over_255.npy", pixels.astype(np.int32) + 200)
    np.save(d / "negative_int.npy", pixels.astype(np.int16) - 1)
    np.save(d / "shape_27x28.npy", np.zeros((10, 27, 28), np.float32))
    np.save(d / "shape_4d.npy", np.zeros((10, 1, 28, 28), np.float32))
    np.save(d / "shape_1d.npy", np.zeros(784, np.float32))
    np.save(d / "empty.npy", np.zeros((0, 784), np.float32))
    np.save(d / "one_image.npy", images[:1])
    np.save(d / "truncated.npy", images[:10])
    (d / "truncated.npy").write_bytes((d / "truncated.npy").read_bytes()[:5000])
    (d / "zero_bytes.npy").write_bytes(b"")
    (d / "text.npy").write_text("these are not images\n")
    (d / "directory.npy").mkdir()
    (d / "directory-idx3-ubyte").mkdir()
    raw = write_idx(d / "idx_count-idx3-ubyte", pixels).read_bytes()
    (d / "idx_count-idx3-ubyte").write_bytes(raw[:4] + (1000).to_bytes(4, "big") + raw[8:])  # says 1000 images
    (d / "idx_magic-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + raw[4:])  # a label file's magic number
    (d / "idx_short-idx3-ubyte").write_bytes(raw[:10])
    (d / "idx_truncated-idx3-ubyte").write_bytes(raw[:-100])
    gz = write_idx(d / "idx-idx3-ubyte.gz", pixels, gz=True).read_bytes()
    (d / "truncated-idx3-ubyte.gz").write_bytes(gz[:-50])
    (d / "idx-idx3-ubyte.gz").unlink()
    write_idx(d / "unreadable-idx3-ubyte", pixels).chmod(0)
    for name, source in checkpoints.items():
        shutil.copy(source, d / f"{name}.pt")
    raw = (d / "vae.pt").read_bytes()
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (d / "zero_bytes.pt").write_bytes(b"")
    torch.save([1, 2, 3], d / "a_list.pt")
    old = torch.load(d / "vae.pt", weights_only=True)
    old.pop("format", None)  # as the checkpoints of the version before the fitted prior
    old["rng"] = old["rng"]["cpu"] if isinstance(old["rng"], dict) else old["rng"]
    torch.save(old, d / "older_version.pt")
    (d / "older").mkdir()
    torch.save(old, d / "older" / "checkpoint.pt")
    (d / "not_a_dir").write_text("a file where a directory should be\n")
    # files whose names or first bytes say another format
    np.savez(d / "x.npz", images=images[:10])
    (d / "x.npy.gz").write_bytes(gzip.compress((d / "over_one.npy").read_bytes()))
    (d / "x.csv").write_text("0,0,0\n")
    (d / "X.NPY").write_bytes((d / "over_one.npy").read_bytes())
    torch.save(argparse.Namespace(epochs=1), d / "pickled.pt")  # loads only with weights_only=False
    # .npy files whose header says what the next step cannot take
    (d / "npz.npy").write_bytes((d / "x.npz").read_bytes())
    raw = (d / "over_one.npy").read_bytes()
    (d / "lies.npy").write_bytes(raw.replace(b"(10, 784)", b"(10000000000, 784)", 1))
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (10, 784), }" + b" " * 30000 + b"\n"
    (d / "long_header.npy").write_bytes(b"\x93NUMPY\x02\x00" + len(header).to_bytes(4, "little") + header + raw[128:])
    just_over = images[:10].copy()
    just_over[0, 0] = np.float32(1.0000001)
    np.save(d / "just_over_one.npy", just_over)
    # outputs that must not be replaced
    os.mkfifo(d / "fifo.npy")
    (d / "target.npy").write_bytes((d / "over_one.npy").read_bytes())
    (d / "link.npy").symlink_to(d / "target.npy")
    (d / "dangling").symlink_to(d / "nothing")
    (d / "unrelated.npy").write_text("a README, say\n")
    (d / "figures").mkdir()
    (d / "figures" / "vae.png").write_text("notes kept where a figure would go\n")
    state = torch.load(d / "vae.pt", weights_only=True)
    state["trainer"].pop("optimizer")  # a checkpoint whose trainer lacks a part
    (d / "no_optimizer").mkdir()
    torch.save(state, d / "no_optimizer" / "checkpoint.pt")
    two_epochs = torch.load(d / "vae.pt", weights_only=True)
    two_epochs["epoch"], two_epochs["metrics"] = 2, two_epochs["metrics"] * 2
    (d / "two_epochs").mkdir()
    torch.save(two_epochs, d / "two_epochs" / "checkpoint.pt")
    return d


BAD_INPUTS = [  # (id, argv with {d} for the directory of bad files, words the one line must hold)
    ("strings", "vae --data {d}/strings.npy", "pixels must be numbers, got dtype <U1"),
    ("complex", "vae --data {d}/complex.npy", "pixels must be numbers, got dtype complex64"),
    ("objects", "vae --data {d}/objects.npy", "it holds Python objects"),
    ("nan", "vae --data {d}/nan.npy", "NaN or infinite"),
    ("inf", "gan --data {d}/inf.npy", "NaN or infinite"),
    ("float over 1", "vae --data {d}/over_one.npy", "float pixels must lie in [0, 1]"),
    ("float below 0", "vae --data {d}/negative.npy", "float pixels must lie in [0, 1]"),
    ("int over 255", "vae --data {d}/over_255.npy", "integer pixels must lie in 0..255"),
    ("int below 0", "vae --data {d}/negative_int.npy", "integer pixels must lie in 0..255"),
    ("27x28 images", "vae --data {d}/shape_27x28.npy", "got shape (10, 27, 28)"),
    ("4-d array", "vae --data {d}/shape_4d.npy", "got shape (10, 1, 28, 28)"),
    ("1-d array", "vae --data {d}/shape_1d.npy", "got shape (784,)"),
    ("no images", "vae --data {d}/empty.npy", "holds no images"),
    ("no test set", "vae --data {d}/one_image.npy", "too few images to hold out a test set"),
    ("bad test data", "vae --data {d}/over_one.npy --test-data {d}/nan.npy", "over_one.npy: float pixels"),
    ("truncated npy", "vae --data {d}/truncated.npy", "truncated or corrupt: header says 10×784 of float32"),
    ("zero-byte npy", "vae --data {d}/zero_bytes.npy", "not a readable .npy file"),
    ("text as npy", "vae --data {d}/text.npy", "not a readable .npy file"),
    ("missing file", "vae --data {d}/missing.npy", "missing.npy: No such file or directory"),
    ("directory as npy", "vae --data {d}/directory.npy", "directory.npy: Is a directory"),
    ("directory as idx", "vae --data {d}/directory-idx3-ubyte", "Is a directory"),
    ("idx count lies", "vae --data {d}/idx_count-idx3-ubyte", "header says 1000×28×28"),
    ("idx magic lies", "vae --data {d}/idx_magic-idx3-ubyte", "magic number 0x00000803 expected"),
    ("idx header cut", "vae --data {d}/idx_short-idx3-ubyte", "not an IDX image file"),
    ("idx truncated", "gan --data {d}/idx_truncated-idx3-ubyte", "truncated or corrupt"),
    ("truncated gz", "vae --data {d}/truncated-idx3-ubyte.gz", "corrupt gzip data"),
    ("unreadable file", "vae --data {d}/unreadable-idx3-ubyte", "unreadable-idx3-ubyte: Permission denied"),
    ("other model's checkpoint", "sample vae --checkpoint {d}/gan.pt", "a gan checkpoint, not a vae one"),
    ("truncated checkpoint", "sample vae --checkpoint {d}/truncated.pt", "not a readable checkpoint"),
    ("zero-byte checkpoint", "sample gan --checkpoint {d}/zero_bytes.pt", "not a readable checkpoint"),
    ("not a checkpoint", "sample vae --checkpoint {d}/a_list.pt", "not a homework7 checkpoint"),
    ("older checkpoint", "sample vae --checkpoint {d}/older_version.pt", "written by another version"),
    ("older checkpoint, resumed", "vae --resume --run-dir {d}/older", "written by another version"),
    ("no checkpoint", "sample vae --checkpoint {d}/nowhere.pt", "no checkpoint here"),
    ("no mixture", "sample vae --checkpoint {d}/vae_standard.pt --prior mixture", "no fitted mixture"),
    ("prior of a GAN", "sample gan --checkpoint {d}/gan.pt --prior standard", "only the VAE"),
    ("--out in no directory", "sample vae --checkpoint {d}/vae.pt --out {d}/nowhere/s.npy", "does not exist"),
    ("--out under a file", "sample vae --checkpoint {d}/vae.pt --out {d}/not_a_dir/s.npy", "not a directory"),
    ("--run-dir under a file", "vae --n-train 300 --run-dir {d}/not_a_dir/run", "--run-dir"),
    ("--figures-dir under a file", "gan --n-train 50 --figures-dir {d}/not_a_dir/f", "--figures-dir"),
    ("epochs 0", "vae --epochs 0", "--epochs 0: must lie within [1, 1e6]"),
    ("epochs negative", "gan --epochs -3", "--epochs -3: must lie within [1, 1e6]"),
    ("epochs not a number", "vae --epochs ten", "invalid int value: 'ten'"),
    ("batch size 0", "vae --batch-size 0", "--batch-size 0"),
    ("GAN batch of 1", "gan --batch-size 1", "--batch-size 1: must lie within [2, 1e6]"),
    ("lr 0", "vae --lr 0", "--lr 0.0: must lie within (0, inf)"),
    ("lr negative", "gan --lr -0.001", "--lr -0.001"),
    ("lr nan", "vae --lr nan", "--lr nan"),
    ("lr inf", "gan --lr inf", "--lr inf"),
    ("n-train 0", "vae --n-train 0", "--n-train 0: must lie within [1, 1e9]"),
    ("GAN on 1 image", "gan --n-train 1", "at least 2 training images"),
    ("hidden 0", "gan --hidden 0", "--hidden 0"),
    ("dropout 1", "vae --dropout 1", "--dropout 1.0: must lie within [0, 1)"),
    ("dropout nan", "gan --dropout nan", "--dropout nan"),
    ("latent dim 0", "vae --latent-dim 0", "--latent-dim 0"),
    ("kl weight negative", "vae --kl-weight -1", "--kl-weight -1.0"),
    ("kl weight inf", "vae --kl-weight inf", "--kl-weight inf"),
    ("mixture negative", "vae --mixture-components -1", "--mixture-components -1"),
    ("mixture too large", "vae --n-train 30 --mixture-components 31", "more components than the 30"),
    ("mixture fit on 0", "vae --mixture-fit-n 0", "--mixture-fit-n 0"),
    ("noise dim 0", "gan --noise-dim 0", "--noise-dim 0"),
    ("beta1 1", "gan --beta1 1", "--beta1 1.0"),
    ("beta2 1", "gan --beta2 1", "--beta2 1.0: must lie within [0, 1)"),
    ("ema 1", "gan --ema 1", "--ema 1.0"),
    ("ema nan", "gan --ema nan", "--ema nan"),
    ("k 0", "gan --k 0", "--k 0"),
    ("r1 negative", "gan --r1 -0.1", "--r1 -0.1"),
    ("r1 nan", "gan --r1 nan", "--r1 nan"),
    ("r1 every 0", "gan --r1-every 0", "--r1-every 0"),
    ("ema ramp-up negative", "gan --ema-rampup -1", "--ema-rampup -1.0"),
    ("bn batches negative", "gan --bn-batches -1", "--bn-batches -1"),
    ("unknown loss", "gan --generator-loss wasserstein", "invalid choice: 'wasserstein'"),
    ("device tpu", "vae --device tpu", "device 'tpu': not on this machine"),
    ("device cuda:-1", "gan --device cuda:-1", "device 'cuda:-1'"),
    ("sample n 0", "sample vae --checkpoint {d}/vae.pt --n 0", "argument --n: 0: must lie within [1, 1e9]"),
    ("sample n negative", "sample gan --checkpoint {d}/gan.pt --n -5", "--n: -5: must lie within [1, 1e9]"),
    ("unknown flag", "vae --epoch 3", "unrecognized arguments: --epoch 3"),
    ("unknown command", "train", "invalid choice: 'train'"),
    # outputs: only a regular file of the kind written is replaced
    ("--out a FIFO", "sample vae --checkpoint {d}/vae.pt --out {d}/fifo.npy", "is not a regular file; not replaced"),
    ("--out a symlink", "sample vae --checkpoint {d}/vae.pt --out {d}/link.npy", "is a symbolic link; not replaced"),
    ("--out the checkpoint", "sample vae --checkpoint {d}/vae.pt --out {d}/vae.pt", "not a NumPy .npy file"),
    ("--out another file", "sample gan --checkpoint {d}/gan.pt --out {d}/unrelated.npy", "not a NumPy .npy file"),
    ("--out a directory", "sample gan --checkpoint {d}/gan.pt --out {d}/directory.npy", "not a regular file"),
    ("--out ''", "sample vae --checkpoint {d}/vae.pt --out=", "--out '': must name a file"),
    ("--run-dir a dangling link", "vae --n-train 300 --run-dir {d}/dangling", "--run-dir"),
    # checkpoints that parse but lie, to sample and to --resume
    ("pickled object", "sample vae --checkpoint {d}/pickled.pt", "holds objects other than tensors and plain data"),
    ("no optimizer", "vae --resume --run-dir {d}/no_optimizer", "a damaged checkpoint"),
    ("resume to fewer epochs", "vae --resume --run-dir {d}/two_epochs --epochs 1", "trained 2 epochs already"),
    # sizes the machine cannot hold, refused before any work
    ("hidden 10^8", "vae --hidden 100000000", "out of memory ("),
    ("latent dim 10^9", "vae --latent-dim 1000000000", "out of memory ("),
    ("GAN hidden 10^6", "gan --hidden 1000000", "out of memory ("),
    ("sample n 10^9", "sample vae --checkpoint {d}/vae.pt --n 1000000000", "out of memory ("),
    # values that were taken without a word, and misleading messages
    ("--test-data without --data", "vae --test-data {d}/over_one.npy", "--test-data"),
    ("--data .npz", "vae --data {d}/x.npz", "neither a .npy file nor an IDX image file"),
    ("--data .npy.gz", "vae --data {d}/x.npy.gz", "neither a .npy file nor an IDX image file"),
    ("--data .csv", "vae --data {d}/x.csv", "neither a .npy file nor an IDX image file"),
    ("--data .NPY", "vae --data {d}/X.NPY", "float pixels must lie in [0, 1]"),
    ("npz named .npy", "vae --data {d}/npz.npy", "not a readable .npy file (the magic string is not correct"),
    ("npy header lies", "vae --data {d}/lies.npy", "header says 10000000000×784 of float32, file has 313"),
    ("npy header too long", "vae --data {d}/long_header.npy", "not a readable .npy file (Header info length"),
    ("pixel 1.0000001", "vae --data {d}/just_over_one.npy", "must lie in [0, 1], got [0, 1.00000012]"),
    ("seed 2^64", "vae --seed 18446744073709551616", "--seed 18446744073709551616: must lie within [0, 4294967295]"),
    ("sample seed 2^64", "sample gan --checkpoint {d}/gan.pt --seed 18446744073709551616", "[0, 4294967295]"),
    ("name too long", "vae --data {d}/" + "x" * 300 + ".npy", "File name too long"),
]


def tree(directory):
    """Every path under directory with its mode and bytes: what a refused command must leave as it was."""
    return {p: (p.lstat().st_mode, p.read_bytes() if p.is_file() and not p.is_symlink() and p.stat().st_mode & 0o400
                else os.readlink(p) if p.is_symlink() else None)
            for p in sorted(Path(directory).rglob("*"))}


def exit_status(argv):
    """main(argv)'s exit status, also where argparse exits from inside it."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, images, checkpoints):
    """The directory of bad files, made once: each case checks that it leaves every one of them as it was."""
    return make_bad_inputs(tmp_path_factory.mktemp("bad"), images, checkpoints)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A trained VAE (with and without a mixture) and GAN, one epoch on 200 images each."""
    d = tmp_path_factory.mktemp("checkpoints")
    for name, argv in (("vae", ["vae", "--mixture-components", "2"]),
                       ("vae_standard", ["vae", "--mixture-components", "0"]), ("gan", ["gan"])):
        assert hw.main([*argv, "--n-train", "200", "--epochs", "1", "--run-dir", str(d / name),
                        "--figures-dir", str(d / name)]) == 0
    return {name: d / name / "checkpoint.pt" for name in ("vae", "vae_standard", "gan")}


@pytest.mark.parametrize("argv, words", [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_gets_one_line_status_2_and_changes_no_file(argv, words, tmp_path, bad_inputs, capsys,
                                                                 monkeypatch):
    d = bad_inputs
    monkeypatch.chdir(tmp_path)  # a command's default outputs (runs/, figures/) would land here
    if os.geteuid() == 0:  # root may read a file of mode 000: refuse it as the file system does for a user
        real_read_bytes = Path.read_bytes

        def read_bytes(path):
            if path.stat().st_mode & 0o400 == 0:
                raise PermissionError(13, "Permission denied", str(path))
            return real_read_bytes(path)
        monkeypatch.setattr(Path, "read_bytes", read_bytes)
    before = tree(d)
    status = exit_status(argv.format(d=d).split())
    _, err = capsys.readouterr()
    assert status == 2, err
    assert words in err, err
    prog = "python -m tools.sample" if argv.startswith("sample") else "homework7.py"
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith(prog), err
    assert tree(d) == before and list(tmp_path.iterdir()) == []


def test_cuda_asked_for_where_there_is_none(cli):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    status, _, err = cli(main, "vae", "--device", "cuda")
    assert status == 2 and "device 'cuda': not on this machine, which has cpu" in err


def test_a_diverging_run_stops_with_a_clear_line(tmp_path, small_npy, cli):
    status, _, err = cli(main, "vae", "--data", small_npy, "--batch-size", "100", "--lr", "1e30", *outputs(tmp_path))
    assert status == 2
    assert "NaN or infinite in epoch 1" in err and "no checkpoint" in err


# ----------------------------------------------------------------------------- the VAE
def test_kl_term_matches_torch_distributions():
    mu, logvar = torch.randn(5, 16), torch.randn(5, 16)
    x, x_logits = torch.rand(5, hw.IMAGE_DIM), torch.randn(5, hw.IMAGE_DIM)
    _, _, kl = hw.vae_loss(x, x_logits, mu, logvar)
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros_like(mu), torch.ones_like(logvar))
    expected = kl_divergence(q, p).sum(1).mean()
    assert kl.item() == pytest.approx(expected.item(), rel=1e-5)


def test_reconstruction_term_is_a_sum_of_784_log_losses():
    x, x_logits = torch.rand(3, hw.IMAGE_DIM), torch.randn(3, hw.IMAGE_DIM)
    _, recon, _ = hw.vae_loss(x, x_logits, torch.zeros(3, 2), torch.zeros(3, 2))
    y = torch.sigmoid(x_logits).double()
    by_hand = [
        -sum(x[n, i].item() * math.log(y[n, i]) + (1 - x[n, i].item()) * math.log(1 - y[n, i]) for i in range(784))
        for n in range(3)
    ]
    assert recon.item() == pytest.approx(sum(by_hand) / 3, rel=1e-5)


def test_binary_reconstruction_is_bernoulli_log_likelihood_and_weight_scales_kl():
    x = (torch.rand(4, hw.IMAGE_DIM) > 0.5).float()
    x_logits, mu, logvar = torch.randn(4, hw.IMAGE_DIM), torch.randn(4, 3), torch.randn(4, 3)
    loss, recon, kl = hw.vae_loss(x, x_logits, mu, logvar, kl_weight=0.25)
    log_px = Bernoulli(logits=x_logits).log_prob(x).sum(1).mean()
    assert recon.item() == pytest.approx(-log_px.item(), rel=1e-5)
    assert loss.item() == pytest.approx(recon.item() + 0.25 * kl.item(), rel=1e-6)


def test_encoder_and_decoder_shapes_and_ranges():
    model = hw.VAE(latent_dim=7, hidden=20, dropout=0.1)
    x = torch.rand(11, hw.IMAGE_DIM)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (11, 7)
    assert torch.all(torch.exp(logvar) > 0)
    images = model.decode(torch.randn(11, 7) * 10)
    assert images.shape == (11, hw.IMAGE_DIM)
    assert torch.all((images >= 0) & (images <= 1))
    x_logits, _, _ = model(x)
    assert x_logits.shape == (11, hw.IMAGE_DIM)


def test_architecture_is_the_assignments():
    model = hw.VAE(latent_dim=16, hidden=200, dropout=0.1)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 200), (200, 32), (16, 200), (200, 784)]
    assert any(isinstance(m, torch.nn.Dropout) for m in model.encoder)
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.decoder)


def test_reparameterization_passes_gradients_and_uses_given_eps():
    mu = torch.randn(4, 3, requires_grad=True)
    logvar = torch.randn(4, 3, requires_grad=True)
    eps = torch.randn(4, 3)
    z = hw.reparameterize(mu, logvar, eps)
    assert torch.allclose(z, mu + torch.exp(0.5 * logvar) * eps)
    z.sum().backward()
    assert torch.allclose(mu.grad, torch.ones(4, 3))
    assert torch.allclose(logvar.grad, 0.5 * torch.exp(0.5 * logvar) * eps)


def test_eps_makes_the_forward_pass_deterministic():
    model = hw.VAE(latent_dim=4, hidden=10, dropout=0.0).eval()
    x, eps = torch.rand(2, hw.IMAGE_DIM), torch.randn(2, 4)
    assert torch.equal(model(x, eps)[0], model(x, eps)[0])


def test_kl_weight_zero_reconstructs_100_images(images):
    """The assignment's debugging check: with no KL term, 100 training images come back almost exactly."""
    torch.manual_seed(0)
    cfg = hw.VAEConfig(kl_weight=0.0, latent_dim=4)  # the tolerance below was measured at p = 4
    trainer = hw.VAETrainer(cfg, torch.device("cpu"))
    x = torch.from_numpy(images[:100])
    before = F.binary_cross_entropy(trainer.reconstruct(x), x).item()
    for _ in range(1000):
        trainer.train_step(x)
    error = (trainer.reconstruct(x) - x).abs().mean().item()
    assert F.binary_cross_entropy(trainer.reconstruct(x), x).item() < before / 2
    assert error < 0.025, f"mean absolute pixel error {error:.3f}"


def test_evaluate_reports_test_elbo_with_kl_weight_one(images):
    torch.manual_seed(0)
    trainer = hw.VAETrainer(hw.VAEConfig(kl_weight=0.0), torch.device("cpu"))
    x = torch.from_numpy(images[:50])
    result = trainer.evaluate(x)
    assert result["-elbo"] == pytest.approx(result["recon"] + result["kl"], rel=1e-5)
    assert result["kl"] > 0


def test_dropout_zeroes_a_share_p_keeps_the_mean_and_is_off_in_eval_mode():
    drop = hw.Dropout(0.3)
    x = torch.ones(200, 1000, requires_grad=True)
    y = drop(x)
    zeroed = (y == 0).float().mean().item()
    assert zeroed == pytest.approx(0.3, abs=0.01) and y.mean().item() == pytest.approx(1.0, abs=0.02)
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.7))
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() / 0.7)  # gradients pass where the unit was kept
    assert torch.equal(drop.eval()(x), x)


# ----------------------------------------------------------------------------- the GAN
def small_gan(**overrides):
    torch.manual_seed(0)
    return hw.GANTrainer(hw.GANConfig(**{"noise_dim": 8, "hidden": 32, **overrides}), CPU)


def test_adams_betas_of_both_networks_are_the_configs():
    gan = small_gan(beta1=0.3, beta2=0.95)
    for optimizer in (gan.opt_G, gan.opt_D):
        assert optimizer.param_groups[0]["betas"] == (0.3, 0.95)


def test_generator_shapes_ranges_and_layers():
    G = hw.Generator(noise_dim=10, hidden=256)
    images = G(torch.randn(7, 10) * 5)
    assert images.shape == (7, hw.IMAGE_DIM)
    assert torch.all((images >= 0) & (images <= 1))
    linears = [m for m in G.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 256), (256, 256), (256, 256), (256, 784)]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in G.modules()) == 3
    assert sum(isinstance(m, torch.nn.ReLU) for m in G.modules()) == 3


def test_discriminator_shapes_ranges_and_layers():
    D = hw.Discriminator(hidden=256, dropout=0.2).eval()  # eval: dropout off, so two calls agree
    x = torch.rand(6, hw.IMAGE_DIM)
    p = D(x)
    assert p.shape == (6,)
    assert torch.all((p > 0) & (p < 1))
    assert torch.allclose(p, torch.sigmoid(D.logits(x)))
    assert isinstance(D.net[0], torch.nn.Dropout) and isinstance(D.net[0], hw.Dropout)
    linears = [m for m in D.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 256), (256, 256), (256, 1)]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in D.modules()) == 2


def test_batchnorm_uses_the_batch_in_train_mode_and_running_stats_in_eval_mode():
    G = hw.Generator(noise_dim=4, hidden=16)
    z = torch.randn(8, 4)
    G.train()
    alone, in_batch = G(z[:2]), G(z)[:2]
    assert not torch.allclose(alone, in_batch)  # batch statistics depend on the batch
    G.eval()
    assert torch.allclose(G(z[:2]), G(z)[:2])  # running statistics do not
    assert not torch.allclose(G(z[:2]), alone)


def test_discriminator_loss_against_its_formula():
    real_logits, fake_logits = torch.randn(9), torch.randn(9)
    loss, loss_real, loss_fake = hw.discriminator_loss(real_logits, fake_logits)
    d_x, d_g_z = torch.sigmoid(real_logits), torch.sigmoid(fake_logits)
    assert loss_real.item() == pytest.approx(-torch.log(d_x).mean().item(), rel=1e-5)
    assert loss_fake.item() == pytest.approx(-torch.log(1 - d_g_z).mean().item(), rel=1e-5)
    assert loss.item() == pytest.approx(loss_real.item() + loss_fake.item(), rel=1e-6)


def test_generator_losses_against_their_formulas():
    fake_logits = torch.randn(9)
    d_g_z = torch.sigmoid(fake_logits)
    minimax = hw.generator_loss(fake_logits, "minimax")
    non_saturating = hw.generator_loss(fake_logits, "non-saturating")
    assert minimax.item() == pytest.approx(torch.log(1 - d_g_z).mean().item(), rel=1e-5)
    assert non_saturating.item() == pytest.approx(-torch.log(d_g_z).mean().item(), rel=1e-5)


def test_losses_stay_finite_where_probabilities_saturate():
    big = torch.tensor([200.0, -200.0])
    assert torch.isfinite(hw.discriminator_loss(big, big)[0])
    assert torch.isfinite(hw.generator_loss(big, "minimax"))
    assert torch.isfinite(hw.generator_loss(big, "non-saturating"))


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return [not torch.equal(b, p) for b, p in zip(before, module.parameters())]


def test_d_step_moves_only_d_and_g_step_only_g():
    gan = small_gan()
    x = torch.rand(16, hw.IMAGE_DIM)
    g0, d0 = snapshot(gan.G), snapshot(gan.D)
    gan.d_step(x, gan.G(gan.noise(16)).detach())
    assert all(changed(d0, gan.D)) and not any(changed(g0, gan.G))
    g1, d1 = snapshot(gan.G), snapshot(gan.D)
    gan.g_step(gan.G(gan.noise(16)))
    assert all(changed(g1, gan.G)) and not any(changed(d1, gan.D))


def test_shared_noise_reuses_ds_fakes_for_g_and_fresh_noise_draws_new_ones():
    x = torch.rand(16, hw.IMAGE_DIM)
    # per step: whether each pass of G kept its graph, and whether G took a step
    expected = {("fresh", 1): [([False, True], True)] * 2, ("shared", 1): [([True], True)] * 2,
                ("shared", 2): [([False], False), ([True], True)]}
    for (g_noise, k), steps in expected.items():
        gan = small_gan(g_noise=g_noise, k=k)
        passes = []
        gan.G.register_forward_hook(lambda module, inputs, output: passes.append(output.requires_grad))
        seen = []
        for _ in steps:
            passes.clear()
            stats = gan.train_step(x)
            seen.append((list(passes), "g_loss" in stats))
        assert seen == steps, (g_noise, k)


def adam_steps(optimizer):
    return int(next(iter(optimizer.state.values()))["step"]) if optimizer.state else 0


@pytest.mark.parametrize("k", [1, 3])
def test_k_discriminator_updates_per_generator_update(k):
    gan = small_gan(k=k)
    x = torch.rand(16, hw.IMAGE_DIM)
    for _ in range(6):
        stats = gan.train_step(x)
    assert adam_steps(gan.opt_D) == 6
    assert adam_steps(gan.opt_G) == 6 // k
    assert ("g_loss" in stats) == (6 % k == 0)


def test_collapse_watch_flags_d_of_g_z_pinned_at_zero():
    gan = small_gan()
    assert gan.stop_reason({"d_g_z_max": 1e-5, "d_loss": 0.01}) is not None
    assert gan.stop_reason({"d_g_z_max": 0.3, "d_loss": 1.3}) is None
    assert "diverged" in gan.stop_reason({"d_g_z_max": 1.0, "d_loss": 1.5e8})


def test_samples_are_images_and_seeded():
    gan = small_gan()
    a = gan.sample(5, torch.Generator().manual_seed(1))
    b = gan.sample(5, torch.Generator().manual_seed(1))
    assert a.shape == (5, hw.IMAGE_DIM) and torch.equal(a, b)
    assert torch.all((a >= 0) & (a <= 1))


def test_moving_average_of_g_is_what_draws_the_samples():
    gan = small_gan(ema=0.9, ema_rampup=0)
    x = torch.rand(16, hw.IMAGE_DIM)
    snapshot = lambda: {k: v.clone() for k, v in gan.G.state_dict().items()}
    before = snapshot()
    gan.train_step(x)
    after_1 = snapshot()
    gan.train_step(x)
    after_2 = snapshot()
    for key, ema in gan.G_ema.state_dict().items():
        if ema.is_floating_point():  # weights and BatchNorm statistics: 0.9² θ₀ + 0.9 · 0.1 θ₁ + 0.1 θ₂
            assert torch.allclose(ema, 0.81 * before[key] + 0.09 * after_1[key] + 0.1 * after_2[key]), key
        else:  # BatchNorm's batch count
            assert torch.equal(ema, after_2[key])
    z = torch.randn(5, 8)
    assert gan.sampler is gan.G_ema and not gan.sampler.training
    assert not torch.allclose(gan.sampler(z), gan.G.eval()(z))
    restored = small_gan(ema=0.9, ema_rampup=0)
    restored.load_state_dict(gan.state_dict())
    assert torch.equal(restored.sample(3, torch.Generator().manual_seed(2)), gan.sample(3, torch.Generator().manual_seed(2)))
    plain = small_gan(ema=0)
    assert plain.G_ema is None and plain.sampler is plain.G


def test_r1_penalty_equals_the_gradient_written_out_on_a_tiny_d():
    torch.manual_seed(0)
    W1, b1, w2 = torch.randn(3, 4), torch.randn(3), torch.randn(3)
    x = torch.randn(5, 4, requires_grad=True)
    logits = torch.relu(x @ W1.T + b1) @ w2  # a(x) = w2ᵀ relu(W1 x + b1)
    penalty = hw.r1_penalty(logits, x, gamma=0.3)
    by_hand = ((x @ W1.T + b1 > 0).float() * w2) @ W1  # ∂a/∂x = W1ᵀ (relu'(W1 x + b1) ⊙ w2), one row per image
    assert torch.allclose(penalty, 0.15 * by_hand.detach().pow(2).sum(1).mean())
    penalty.backward()  # the graph is kept: the penalty trains D
    assert x.grad is not None


def test_r1_comes_on_every_r1_every_d_steps():
    gan = small_gan(r1=1.0, r1_every=3)
    x = torch.rand(16, hw.IMAGE_DIM)
    assert ["r1" in gan.train_step(x) for _ in range(7)] == [True, False, False, True, False, False, True]
    assert all("r1" not in small_gan(r1=0).train_step(x) for _ in range(3))


def test_the_moving_average_ramps_up_with_gs_steps():
    gan = small_gan(ema=0.999, ema_rampup=0.1)
    assert gan.ema_decay() == 0  # before any step: a copy of G
    gan.d_steps = 100  # k = 1: 100 steps of G
    assert gan.ema_decay() == pytest.approx(0.9)  # spans 10 steps, a tenth of 100
    gan.d_steps = 10**6
    assert gan.ema_decay() == 0.999
    gan = small_gan(ema=0.999, ema_rampup=0.1)
    gan.train_step(torch.rand(16, hw.IMAGE_DIM))  # first step of G: the average is G
    for key, value in gan.G.state_dict().items():
        assert torch.equal(gan.G_ema.state_dict()[key], value), key


def test_recomputed_batchnorm_statistics_are_the_plain_means_over_the_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    batches = [torch.randn(8, 3) * (i + 1) for i in range(5)]
    hw.recompute_batchnorm(model, batches)
    with torch.no_grad():
        h = [model[0](x) for x in batches]
    assert torch.allclose(model[1].running_mean, torch.stack([b.mean(0) for b in h]).mean(0), atol=1e-6)
    assert torch.allclose(model[1].running_var, torch.stack([b.var(0) for b in h]).mean(0), atol=1e-5)
    assert model[1].momentum == 0.1 and not model.training


def test_gan_finish_recomputes_the_samplers_statistics_only_when_asked():
    x = torch.rand(16, hw.IMAGE_DIM)
    for bn_batches in (0, 3):
        gan = small_gan(bn_batches=bn_batches, batch_size=16)
        gan.train_step(x)
        before = gan.G_ema.state_dict()["net.1.running_mean"].clone()
        done = gan.after_training(x)
        after = gan.sampler.state_dict()["net.1.running_mean"]
        assert (done is None) == (bn_batches == 0) and torch.equal(before, after) == (bn_batches == 0)
        assert torch.equal(gan.G_ema.state_dict()["net.1.running_mean"], before)  # training's average untouched
        gan.train_step(x)
        assert gan.sampler is gan.G_ema  # training goes on: the recomputed statistics no longer fit


def test_each_trainer_names_what_draws_its_samples_and_draws_from_each():
    gan = small_gan(batch_size=16)
    assert gan.samplers() == {"G": "moving average of G"} and small_gan(ema=0).samplers() == {"G": "G"}
    assert torch.equal(gan.sample(4, torch.Generator().manual_seed(0), "G"),
                       gan.sample(4, torch.Generator().manual_seed(0)))
    torch.manual_seed(0)
    vae = hw.VAETrainer(hw.VAEConfig(latent_dim=2, hidden=16), CPU)
    assert vae.samplers() == {"standard": "z ~ N(0, I)"}
    done = vae.fit_prior(torch.rand(50, hw.IMAGE_DIM), components=3, fit_n=40)
    assert done == "fitted a mixture of 3 Gaussians to 40 encodings mu(x)"
    assert vae.samplers()["mixture"] == "z ~ mixture of 3" and vae.prior["means"].shape == (3, 2)
    standard, mixture = (vae.sample(5, torch.Generator().manual_seed(0), name) for name in ("standard", "mixture"))
    assert standard.shape == mixture.shape == (5, hw.IMAGE_DIM) and not torch.equal(standard, mixture)


# ----------------------------------------------------------------------------- end to end
def test_vae_end_to_end_writes_figures_checkpoint_and_samples(tmp_path, cli):
    status, out, _ = cli(main, "vae", "--n-train", "200", "--epochs", "2", *outputs(tmp_path))
    assert status == 0
    assert "vae epoch   2/2" in out and "test -ELBO" in out
    for name in ("vae.png", "vae_curves.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 10_000
    state = hw.load_checkpoint(tmp_path / "run" / "checkpoint.pt", "vae")
    assert state["epoch"] == 2 and state["config"].n_train == 200
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[1]["test"]["-elbo"] > 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["latent_dim"] == 32

    out_file = tmp_path / "samples.npy"
    status, _, _ = cli(main, "sample", "vae", "--n", "1500", "--out", out_file,
                       "--checkpoint", tmp_path / "run" / "checkpoint.pt")
    samples = np.load(out_file)
    assert status == 0 and samples.shape == (1500, 784) and samples.dtype == np.float32
    assert 0 <= samples.min() and samples.max() <= 1

    status, _, err = cli(main, "sample", "gan", "--checkpoint", tmp_path / "run" / "checkpoint.pt")
    assert status == 2 and "a vae checkpoint, not a gan one" in err


def test_gan_end_to_end_writes_figures_checkpoint_and_samples(tmp_path, small_npy, cli):
    status, out, _ = cli(main, "gan", "--data", small_npy, "--epochs", "3", *outputs(tmp_path))
    assert status == 0 and "gan epoch   3/3" in out and "D(G(z))" in out
    for name in ("gan.png", "gan_curves.png", "gan_progress.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 10_000
    state = hw.load_checkpoint(tmp_path / "run" / "checkpoint.pt", "gan")
    assert set(state["trainer"]) >= {"G", "D", "opt_G", "opt_D"} and sorted(state["trainer"]["snapshots"]) == [1, 2, 3]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 < metrics[-1]["train"]["d_x"] < 1 and "g_loss" in metrics[-1]["train"]

    status, _, _ = cli(main, "sample", "gan", "--n", "10", "--out", tmp_path / "g.npy",
                       "--checkpoint", tmp_path / "run" / "checkpoint.pt")
    samples = np.load(tmp_path / "g.npy")
    assert status == 0 and samples.shape == (10, 784) and samples.dtype == np.float32


def test_the_script_runs_as_a_program_and_reports_errors_without_a_traceback(tmp_path, python_run):
    status, _, err = python_run([ROOT / "homework7.py", "vae", "--data", tmp_path / "none.npy"], tmp_path)
    assert status == 2 and "none.npy: No such file or directory" in err and "Traceback" not in err
    status, out, _ = python_run([ROOT / "homework7.py", "gan", "--help"], tmp_path)
    assert status == 0 and "--generator-loss" in out and "(default: 1; within [1, 1e6])" in out


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
def test_ctrl_c_keeps_the_last_epoch_and_resume_ends_where_an_uninterrupted_run_does(model, trainer_cls, tmp_path,
                                                                                     small_npy, monkeypatch, cli):
    common = [model, "--data", small_npy, "--batch-size", "50", "--figures-dir", tmp_path / "figures"]
    assert cli(main, *common, "--epochs", "3", "--run-dir", tmp_path / "straight")[0] == 0

    with monkeypatch.context() as patch:
        interrupt_after(patch, trainer_cls, steps=6 + 2)  # 6 steps an epoch: stopped inside epoch 2
        status, _, err = cli(main, *common, "--epochs", "3", "--run-dir", tmp_path / "cut")
    assert status == 130 and "--resume" in err
    assert hw.load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    assert not list((tmp_path / "cut").glob(".*.tmp"))

    status, out, _ = cli(main, *common, "--epochs", "3", "--run-dir", tmp_path / "cut", "--resume")
    assert status == 0 and "resuming after epoch 1" in out
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "cut")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_resume_refuses_a_changed_config(tmp_path, small_npy, cli):
    common = ["vae", "--data", small_npy, *outputs(tmp_path)]
    assert cli(main, *common, "--epochs", "1")[0] == 0
    status, _, err = cli(main, *common, "--epochs", "2", "--resume", "--latent-dim", "3")
    assert status == 2 and "differs in: latent_dim" in err


def test_a_loss_turning_nan_keeps_the_last_good_checkpoint(tmp_path, small_npy, monkeypatch, cli):
    real_step, calls = hw.VAETrainer.train_step, []

    def step(self, x):  # epoch 1 trains normally, then the loss turns NaN
        calls.append(1)
        stats = real_step(self, x)
        return stats if len(calls) <= 3 else {**stats, "-elbo": torch.tensor(float("nan"))}

    monkeypatch.setattr(hw.VAETrainer, "train_step", step)
    status, _, err = cli(main, "vae", "--data", small_npy, "--batch-size", "100", "--epochs", "3", *outputs(tmp_path))
    assert status == 2 and "NaN or infinite in epoch 2" in err and "checkpoint of epoch 1 is kept" in err
    assert hw.load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1


def test_a_checkpoint_from_another_version_gets_a_clear_line(tmp_path, small_npy, cli):
    assert cli(main, "vae", "--data", small_npy, "--epochs", "1", *outputs(tmp_path))[0] == 0
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["config"]["beta_schedule"] = "linear"  # a field this version does not know
    torch.save(state, path)
    for argv in (["sample", "vae", "--checkpoint", path], ["vae", "--data", small_npy, *outputs(tmp_path), "--resume"]):
        status, _, err = cli(main, *argv)
        assert status == 2 and "another version of homework7.py" in err


def test_a_checkpoint_whose_weights_do_not_fit_gets_a_clear_line(tmp_path, cli):
    trainer = hw.GANTrainer(hw.GANConfig(noise_dim=8, hidden=16), torch.device("cpu"))
    state = {"format": hw.CHECKPOINT_FORMAT, "model": "gan", "config": dataclasses.asdict(trainer.cfg), "epoch": 1,
             "metrics": [{}], "trainer": trainer.state_dict(), "rng": hw.rng_states()}
    state["trainer"]["G_ema"] = {f"module.{k}": v for k, v in state["trainer"]["G_ema"].items()}  # another layout
    path = tmp_path / "old.pt"
    torch.save(state, path)
    status, _, err = cli(main, "sample", "gan", "--checkpoint", path, "--n", "4")
    assert status == 2 and "another version of homework7.py" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- the script on its own
def test_the_script_alone_in_an_empty_directory_trains_both_models(tmp_path, small_npy, python_run):
    """The submission is one file: copied alone into an empty directory, it asks for --data in one line,
    trains each model on the assignment's .npy (or on data/ where it lies beside the script) and writes
    its figures there, importing nothing of this project."""
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(ROOT / "homework7.py", alone / "homework7.py")
    env = {"PYTHONPATH": None, "PYTHONIOENCODING": "cp1252"}  # as Windows writes to a file or a pipe: no μ, −, ≥

    def train(model, *flags):
        return python_run(["homework7.py", model, "--epochs", "1", "--n-train", "200", *flags], alone, env)

    status, out, err = train("vae")
    assert status == 2 and out == ""
    assert err == (f"homework7.py: error: MNIST not found in {alone / 'data'}/: pass --data with the "
                           "assignment's mnist_train_images.npy or an IDX image file (train-images-idx3-ubyte)\n")
    shutil.copy(small_npy, alone / small_npy.name)
    shutil.copytree(ROOT / "data", alone / "data")
    for model, flags in (("vae", ["--data", small_npy.name]), ("gan", [])):
        status, out, err = train(model, *flags)
        assert status == 0, err
        assert f"{model} epoch   1/1" in out
        assert (alone / "figures" / f"{model}.png").stat().st_size > 10_000
        assert hw.load_checkpoint(alone / "runs" / model / "checkpoint.pt", model)["epoch"] == 1
        assert model == "gan" or "Gaussians to 200 encodings mu(x)" in out
    assert "200 training and 10000 test images" in out
    assert sorted(p.name for p in alone.iterdir()) == ["data", "figures", "homework7.py", "mnist_train_images.npy",
                                                       "runs"]


def test_a_console_without_greek_letters_prints_what_it_can(tmp_path, small_npy, ascii_console):
    read = ascii_console()
    status = hw.main([str(a) for a in ["vae", "--data", small_npy, "--epochs", "1", "--mixture-components", "3",
                                       "--mixture-fit-n", "100", *outputs(tmp_path)]])
    out, err = read()
    assert status == 0 and "fitted a mixture of 3 Gaussians to 100 encodings mu(x)" in out
    assert "train -ELBO" in out
    with pytest.raises(SystemExit):
        hw.main(["vae", "--help"])
    out, _ = read()
    assert "encodings ?(x) after training" in out and "784?hidden?2p" in out  # each character it lacks as ?


def test_the_script_imports_only_what_the_design_card_allows():
    source = (ROOT / "homework7.py").read_text()
    imported = {line.split()[1].split(".")[0] for line in map(str.strip, source.splitlines())
                if line.startswith(("import ", "from "))}
    assert imported - set(sys.stdlib_module_names) == {"numpy", "torch", "matplotlib", "tqdm"}


def test_interpolation_runs_from_one_encoding_to_the_other_and_manifold_covers_the_quantiles():
    torch.manual_seed(0)
    trainer = hw.VAETrainer(hw.VAEConfig(latent_dim=2, hidden=20), CPU)
    x_a, x_b = torch.rand(3, hw.IMAGE_DIM), torch.rand(3, hw.IMAGE_DIM)
    lines = trainer.interpolate(x_a, x_b, steps=5)
    assert lines.shape == (3, 5, hw.IMAGE_DIM)
    with torch.no_grad():
        assert torch.allclose(lines[:, 0], trainer.model.decode(trainer.model.encode(x_a)[0]))
        assert torch.allclose(lines[:, -1], trainer.model.decode(trainer.model.encode(x_b)[0]))
    decoded = []
    trainer.model.decode = lambda z: decoded.append(z) or torch.zeros(len(z), hw.IMAGE_DIM)
    assert trainer.manifold(n=3).shape == (9, hw.IMAGE_DIM)
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor([0.05, 0.5, 0.95]))
    z = decoded[0].reshape(3, 3, 2)  # rows of the grid
    assert torch.allclose(z[0, :, 0], q) and torch.allclose(z[:, 0, 1], q.flip(0))  # z₁ across, z₂ down


# ----------------------------------------------------------------------------- the VAE's fitted prior
TWO_COMPONENTS = {  # a known mixture in 2-D: weights, means, covariances
    "weights": torch.tensor([0.3, 0.7], dtype=torch.float64),
    "means": torch.tensor([[-2.0, 0.0], [2.0, 1.0]], dtype=torch.float64),
    "covariances": torch.tensor([[[1.0, 0.5], [0.5, 1.0]], [[0.5, -0.2], [-0.2, 0.8]]], dtype=torch.float64),
}


def mixture(prior):
    """A fitted prior as a torch.distributions object, whose log_prob is the mixture's density: the reference."""
    return torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=prior["weights"]),
        torch.distributions.MultivariateNormal(prior["means"], covariance_matrix=prior["covariances"]))


def test_the_fit_recovers_a_known_two_component_mixture_as_scikit_learn_does():
    from sklearn.mixture import GaussianMixture  # the independent reference

    z = mixture(TWO_COMPONENTS).sample((20000,))
    fitted = hw.fit_mixture(z.float(), 2)
    order = fitted["means"][:, 0].argsort()  # components come in any order
    fitted = {name: value[order] for name, value in fitted.items()}
    assert all(value.dtype == torch.float64 for value in fitted.values())
    assert torch.allclose(fitted["weights"], TWO_COMPONENTS["weights"], atol=0.02)
    assert torch.allclose(fitted["means"], TWO_COMPONENTS["means"], atol=0.05)
    assert torch.allclose(fitted["covariances"], TWO_COMPONENTS["covariances"], atol=0.06)

    sklearn_fit = GaussianMixture(2, covariance_type="full", random_state=0).fit(z.numpy())
    ours = mixture(fitted).log_prob(z).mean().item()  # mean log-likelihood, nats per point
    assert abs(ours - sklearn_fit.score(z.numpy())) < 1e-3
    assert torch.allclose(torch.logsumexp(hw.component_log_probs(fitted, z[:5]), 1), mixture(fitted).log_prob(z[:5]))


def test_mixture_samples_follow_the_stored_mixture():
    z = hw.sample_mixture(TWO_COMPONENTS, 40000, torch.Generator().manual_seed(0))
    assert z.shape == (40000, 2) and z.dtype == torch.float64
    expected_mean = TWO_COMPONENTS["weights"] @ TWO_COMPONENTS["means"]
    assert torch.allclose(z.mean(0), expected_mean, atol=0.03)
    again = hw.sample_mixture(TWO_COMPONENTS, 40000, torch.Generator().manual_seed(0))
    assert torch.equal(z, again)


def test_vae_samples_from_its_fitted_mixture(tmp_path, cli):
    status, out, _ = cli(main, "vae", "--n-train", "300", "--epochs", "1", "--mixture-components", "5",
                         *outputs(tmp_path))
    assert status == 0
    path = tmp_path / "run" / "checkpoint.pt"
    prior = torch.load(path, map_location="cpu", weights_only=True)["trainer"]["prior"]
    assert prior["weights"].shape == (5,) and prior["means"].shape == (5, 32)
    assert prior["covariances"].shape == (5, 32, 32)
    assert abs(prior["weights"].sum().item() - 1) < 1e-9

    trainer = hw.trainer_from_checkpoint(hw.load_checkpoint(path, "vae"), CPU, path)
    for name, value in prior.items():  # the round trip keeps the mixture bit for bit
        assert torch.equal(trainer.prior[name], value), name
    images = trainer.sample(500, torch.Generator().manual_seed(1), sampler="mixture")
    assert images.shape == (500, hw.IMAGE_DIM) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    assert not torch.equal(images, trainer.sample(500, torch.Generator().manual_seed(1)))  # not N(0, I)

    assert trainer.samplers() == {"standard": "z ~ N(0, I)", "mixture": "z ~ mixture of 5"}
    for prior_flag, expected in (("mixture", "mixture"), ("standard", "standard"), (None, ts.DEFAULT_PRIOR)):
        argv = ["sample", "vae", "--checkpoint", path, "--n", "20", "--out", tmp_path / f"{prior_flag}.npy"]
        status, out, _ = cli(main, *argv, *(["--prior", prior_flag] if prior_flag else []))
        assert status == 0 and trainer.samplers()[expected] in out
    mixture_images = np.load(tmp_path / "mixture.npy")
    expected = trainer.sample(20, torch.Generator().manual_seed(0), sampler="mixture").numpy()
    assert np.array_equal(mixture_images, expected)

    # the figure: the assignment's three rows and the mixture's, 0.75 inch each at 100 dpi, 0.5 inch of title
    height = __import__("matplotlib.image").image.imread(tmp_path / "figures" / "vae.png").shape[0]
    assert height == round(100 * (4 * 0.75 + 0.5))


def test_a_vae_without_a_mixture_refuses_prior_mixture(tmp_path, cli):
    assert cli(main, "vae", "--n-train", "200", "--epochs", "1", "--mixture-components", "0",
               *outputs(tmp_path))[0] == 0
    path = tmp_path / "run" / "checkpoint.pt"
    assert "prior" not in hw.load_checkpoint(path)["trainer"]
    height = __import__("matplotlib.image").image.imread(tmp_path / "figures" / "vae.png").shape[0]
    assert height == round(100 * (3 * 0.75 + 0.5))  # the assignment's three rows only
    status, _, err = cli(main, "sample", "vae", "--checkpoint", path, "--prior", "mixture",
                         "--out", tmp_path / "s.npy")
    assert status == 2 and "no fitted mixture" in err and err.count("\n") == 1
    assert not (tmp_path / "s.npy").exists()
    status, out, _ = cli(main, "sample", "vae", "--checkpoint", path, "--n", "5", "--out", tmp_path / "s.npy")
    assert status == 0 and "z ~ N(0, I)" in out  # the default falls back to the prior it has
    status, _, err = cli(main, "sample", "gan", "--prior", "standard", "--out", tmp_path / "g.npy")
    assert status == 2 and "only the VAE" in err


def test_more_components_than_training_images_are_refused(tmp_path, cli):
    status, _, err = cli(main, "vae", "--n-train", "20", "--mixture-components", "21", *outputs(tmp_path))
    assert status == 2 and "more components than the 20 training encodings" in err and err.count("\n") == 1
    assert "pass --mixture-components 2" in err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- any machine, any moment
@pytest.mark.parametrize("n, batch_size, sizes", [(101, 100, [101]), (201, 100, [100, 101]), (200, 100, [100, 100]),
                                                  (1, 100, [1]), (7, 3, [3, 4]), (2, 100, [2])])
def test_a_lone_leftover_image_joins_the_batch_before_it(n, batch_size, sizes):
    assert [end - start for start, end in hw.batch_bounds(n, batch_size)] == sizes
    batches = list(hw.minibatches(torch.arange(n).float()[:, None], batch_size))
    assert [len(b) for b in batches] == sizes and sorted(torch.cat(batches)[:, 0].tolist()) == list(range(n))


def test_the_gan_trains_on_101_images(tmp_path, cli):
    status, out, err = cli(main, "gan", "--n-train", "101", "--epochs", "1", "--hidden", "16", *outputs(tmp_path))
    assert status == 0 and "gan epoch   1/1" in out, err


def test_a_cuda_index_past_the_last_device_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(hw.UsageError, match="not on this machine, which has cpu, cuda:0 "):
        hw.resolve_device("cuda:7")
    assert hw.resolve_device("cuda:0") == torch.device("cuda:0")


def test_two_writers_of_one_file_use_two_temporary_files(tmp_path):
    target = tmp_path / "classifier.pt"

    def outer(f):  # a second run writes the same file while the first is still writing it
        hw.atomic_write(target, lambda g: g.write(b"inner"))
        f.write(b"outer")

    hw.atomic_write(target, outer)
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


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, small_npy, monkeypatch, cli):
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):  # the second checkpoint finds the disk full half-way through
        calls.append(1)
        if len(calls) == 2:
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    status, _, err = cli(main, "vae", "--data", small_npy, "--epochs", "3", *outputs(tmp_path))
    assert status == 2 and err.count("\n") == 1
    assert "checkpoint.pt: No space left on device; the previous file is kept" in err
    assert hw.load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_ctrl_c_on_a_real_training_process(tmp_path, small_npy, interrupt_child):
    status, out, err = interrupt_child([ROOT / "homework7.py", "vae", "--data", small_npy, "--epochs", "100000",
                                        *outputs(tmp_path)], "vae epoch   3/", tmp_path)
    assert status == 130 and "Traceback" not in err
    [line] = [line for line in err.splitlines() if line]
    assert re.fullmatch(f"vae: interrupted; the checkpoint of epoch [0-9]+ is kept in {re.escape(str(tmp_path))}/run; "
                        f"continue with: python homework7.py vae --resume --run-dir {re.escape(str(tmp_path))}/run",
                        line), line
    state = hw.load_checkpoint(tmp_path / "run" / "checkpoint.pt", "vae")  # complete, not half written
    assert state["epoch"] >= 3 and len(json.loads((tmp_path / "run" / "metrics.json").read_text())) >= 3
    assert not list(tmp_path.rglob(".*.tmp"))


# ----------------------------------------------------------------------------- --help says what the code does
@pytest.mark.parametrize("model", ["vae", "gan"])
def test_help_explains_every_flag_with_its_default(model, capsys):
    with pytest.raises(SystemExit) as stopped:
        hw.main([model, "--help"])
    out = "".join(capsys.readouterr().out.split())  # argparse wraps the help text, also at hyphens
    assert stopped.value.code == 0
    for f in dataclasses.fields(hw.TRAINERS[model][0]):
        flag = f"--{f.name.replace('_', '-')}{f.name.upper()}"
        assert flag in out, flag
        said = [f.metadata["help"], *([f"default: {f.default!r}"] if f.default is not None else []),
                *([f"within {f.metadata['within']}"] if f.metadata["within"] else [])]
        for words in said:
            assert "".join(words.split()) in out, (flag, words)
    assert "--resume" in out


# ----------------------------------------------------------------------------- nothing destroyed, nothing half-done
@pytest.mark.parametrize("how", ["ctrl-c", "diverged"])
def test_a_new_run_stopped_in_its_first_epoch_leaves_the_previous_run_as_it_was(how, tmp_path, small_npy,
                                                                                monkeypatch, cli):
    common = ["vae", "--data", small_npy, "--batch-size", "100", *outputs(tmp_path)]  # 3 steps an epoch
    assert cli(main, *common, "--epochs", "1")[0] == 0
    before = tree(tmp_path / "run")
    with monkeypatch.context() as patch:
        if how == "ctrl-c":
            interrupt_after(patch, hw.VAETrainer, steps=2)
            status, _, err = cli(main, *common, "--epochs", "3", "--latent-dim", "3")
        else:
            status, _, err = cli(main, *common, "--epochs", "3", "--lr", "1e30")
    assert status == (130 if how == "ctrl-c" else 2)
    assert f"the checkpoint of epoch 1 is kept in {tmp_path / 'run'}" in err
    assert tree(tmp_path / "run") == before
    status, out, _ = cli(main, *common, "--epochs", "2", "--resume")
    assert status == 0 and "resuming after epoch 1" in out


def test_a_resumed_run_never_keeps_a_mixture_fitted_to_an_older_encoder(tmp_path, small_npy, monkeypatch, cli):
    common = ["vae", "--data", small_npy, "--batch-size", "50", "--mixture-components", "2", *outputs(tmp_path)]
    path = tmp_path / "run" / "checkpoint.pt"
    assert cli(main, *common, "--epochs", "1")[0] == 0
    assert "prior" in hw.load_checkpoint(path)["trainer"]
    with monkeypatch.context() as patch:  # stopped in epoch 3, after epoch 2 was saved, before the refit
        interrupt_after(patch, hw.VAETrainer, steps=6 + 2)
        assert cli(main, *common, "--epochs", "3", "--resume")[0] == 130
    state = hw.load_checkpoint(path)
    assert state["epoch"] == 2 and "prior" not in state["trainer"]
    status, _, err = cli(main, "sample", "vae", "--checkpoint", path, "--prior", "mixture")
    assert status == 2 and "no fitted mixture" in err
    assert cli(main, *common, "--epochs", "3", "--resume")[0] == 0
    assert "prior" in hw.load_checkpoint(path)["trainer"]
    status, out, _ = cli(main, *common, "--epochs", "3", "--resume", "--mixture-components", "0")
    assert status == 0 and "dropped the mixture fitted before" in out
    assert "prior" not in hw.load_checkpoint(path)["trainer"]


def test_a_gan_whose_loss_explodes_stops_with_a_clear_line(tmp_path, small_npy, cli):
    status, _, err = cli(main, "gan", "--data", small_npy, "--lr", "1e3", "--batch-size", "20", "--epochs", "3",
                         *outputs(tmp_path))
    assert status == 2 and err.count("\n") == 1 and "training has diverged; try a lower --lr" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "figures").exists()


def test_memory_that_runs_out_ends_in_one_line(tmp_path, small_npy, monkeypatch, cli):
    def allocate(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 62720000000 bytes.")

    monkeypatch.setattr(hw.VAETrainer, "train_step", allocate)
    status, _, err = cli(main, "vae", "--data", small_npy, *outputs(tmp_path))
    assert status == 2 and err.count("\n") == 1 and "out of memory (" in err and "Traceback" not in err


@pytest.mark.parametrize("signals, status, words", [
    ([signal.SIGTERM], 143, "vae: stopped by SIGTERM"),
    ([signal.SIGHUP], 129, "vae: stopped by SIGHUP"),
    ([signal.SIGINT] * 3, 130, "vae: interrupted"),
], ids=["SIGTERM", "SIGHUP", "Ctrl-C three times"])
def test_every_stop_signal_ends_a_real_run_in_one_line_and_keeps_its_last_epoch(signals, status, words, tmp_path,
                                                                                small_npy, interrupt_child):
    code, out, err = interrupt_child([ROOT / "homework7.py", "vae", "--data", small_npy, "--epochs", "100000",
                                      *outputs(tmp_path)], "vae epoch   2/", tmp_path, signals=signals)
    [line] = [line for line in err.splitlines() if line]
    assert code == status and re.fullmatch(f"{words}; the checkpoint of epoch [0-9]+ is kept in "
                                           f"{re.escape(str(tmp_path))}/run; continue with: python homework7.py vae "
                                           f"--resume --run-dir {re.escape(str(tmp_path))}/run", line), err
    assert hw.load_checkpoint(tmp_path / "run" / "checkpoint.pt", "vae")["epoch"] >= 2
    assert not list(tmp_path.rglob(".*.tmp"))


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
    status = exit_status(argv[:-6] + ["--epochs", str(epoch + 1), "--resume", *argv[-4:]])
    assert status == 0 and hw.load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == epoch + 1
