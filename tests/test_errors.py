"""The error contract of homework7.py and of every tool, checked here on real processes and real files.

Bad input
- Bad input gets one line on stderr that names the problem, and exit status 2: no traceback, no file written
  or changed, no directory left behind. Every number a flag takes has a range, said in --help and checked
  before any work (BAD_INPUTS below holds every field's, generated from the config's `within`).
- A file that cannot be read or written (missing, a directory, permission denied, a name too long, a failing
  read) gets one line that names it and the reason, exit status 2. A data file is read once, as a pipe can
  be, and no further than its header promises: an endless input is refused at its header, and one whose data
  would not fit in memory beside their float32 pixels in one line; the data are held at most about twice over.
  Then it is checked: a .npy file by NumPy's own reader of its header (never unpickled), an IDX file by its
  header before its data are shaped, MNIST by SHA-256, pixels by their type and range (the line shows a value
  that breaks it), a checkpoint by its format, model and config fields (one of another version, or whose
  weights do not fit, gets a line that says to train again).
- Memory that runs out gets one line, exit status 2, also where torch.save's writer then fails in words of its
  own; so does a diverged run. A message keeps its one line even
  where a path in it holds a newline (written as \\n).
- A value a tool takes by name (tools.gan_quality's FIELD=VALUE) is read as its flag is: the same type,
  choices and range. The tools' one reader of JSON refuses, in one line, a file that is not JSON, is nested
  deeper than the parser follows, or (a record) lacks the shape it must have.
- Every size accepted runs end to end, down to a test set of one image.

Files
- Every file is written whole or not at all: made in memory, written to a temporary file beside it, then
  renamed. A full disk gets one line wherever it strikes, and the previous checkpoint stays; a temporary file
  that cannot even be removed (a read-only disk) changes nothing in that line, which names the file. The files a
  user names to a tool (tools.sample --out, tools.evaluate --classifier, tools.gan_quality --figure,
  tools.report's three) replace only a file of their own kind, never a symlink, a FIFO, a directory or
  another kind of file.
- A run never replaces another run's files: each has a run directory named by the flags that change what it
  trains, and only a run of the defaults draws into figures/. Run again with the same flags, it starts over.
- tools.report shows only the figures its two runs drew, each as it drew it, with that run's config and the
  scores of its checkpoint (figures.json holds the path and SHA-256 of each figure a run drew and the SHA-256
  of its checkpoint; eval.json that of the checkpoint it scored). It refuses in one line where a run's
  <model>.png is missing or drawn again since, and says in one line what else it left out; it describes each
  run in words, a name that is not UTF-8 escaped.

Stops and divergence
- A stop signal is recorded, and training stops between two steps with one line and status 128 + its number:
  Ctrl-C 130, SIGTERM 143, SIGHUP 129. The checkpoint of the last finished epoch stays, and the line gives
  the command that resumes this run: the script under the name it was started by, --resume and every setting
  a resume may change (as FLAG=VALUE, quoted for a shell on one line), whatever its checkpoint held before
  (where no epoch of this run finished, it says so, whatever an earlier run left in the directory). A second
  signal ends the process at once, as the system does. A SIGINT or SIGHUP that the parent ignores (nohup, a
  script's &) stays ignored. tools.company ends the runs it started however it ends, a second signal included;
  tools.bench acts on a stop between two timings; tools.sweep says what it keeps, and no command.
- Nothing diverged is saved as good or drawn: an epoch whose losses, test metrics or weights are not all
  finite, or in which D has won or its loss exploded, stops the run in one line (status 2), and the last good
  checkpoint stays; nothing made from it (a mixture, a figure) is saved or drawn.

The output, and how Python is started
- A closed pipe (| head) ends the command quietly with status 141; an output that cannot be written
  (> /dev/full) gets one line. The last lines are flushed before the command ends, so this holds for them
  too, unbuffered or not. A closed or full stderr (2> /dev/full) loses the line, not the status. A
  character the console's encoding lacks prints as ?.
- A HOME that does not exist or cannot be written adds nothing to the output; python -OO and a stderr closed
  at the start (2>&-) change nothing but where the progress bar goes.

What is not promised
- The start-up second: while Python loads torch, Ctrl-C ends the script in one line (status 130), but SIGTERM
  and SIGHUP end it as the system does. The tools load torch before homework7.py, so a Ctrl-C there prints
  Python's traceback.
- A second stop signal ends the process at once: a checkpoint it cuts short stays as it was (the rename never
  happened), but a hidden .checkpoint.pt.*.tmp may stay beside it, as after SIGKILL.
- A run stopped between writing checkpoint.pt and metrics.json leaves metrics.json one epoch behind until the
  next save; two runs in one --run-dir at once overwrite each other's checkpoint.
- A long tool command that trains no model (tools.report, tools.sample) stops when it has finished.
- Checkpoints edited by hand (a config field of the wrong type, an epoch of -3) are not guarded against: a
  checkpoint is checked for its format, model and config fields, not for lies.
"""
import argparse
import contextlib
import dataclasses
import math
import errno
import resource
import gzip
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import homework7 as hw
import tools.gan_quality as gq
import tools.report
from conftest import ROOT, child_process, drawn_run, main, outputs, tree, write_idx

NOBODY = 65534  # the unprivileged user of Debian and most Linux systems


# ----------------------------------------------------------------------------- bad input, one line each
def write_npy(path, header, data=b"", version=b"\x01\x00"):
    """A .npy file with the header written by hand (NumPy's np.save refuses what it does not write)."""
    text = header.encode("latin1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY" + version + len(text).to_bytes(2, "little") + text + data)


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
    np.save(d / "small.npy", images[:300])
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
    for name, pixel in (("over_by_1e-12", 1 + 1e-12), ("under_by_1e-12", -1e-12)):
        barely = images[:10].astype(np.float64)
        barely[0, 0] = pixel
        np.save(d / f"{name}.npy", barely)
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
    # headers that NumPy's own reader refuses, or whose dtype holds no numbers
    npy_header = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }"
    write_npy(d / "negative_dims.npy", npy_header % ("<f4", "(-1, -784)"), b"\0" * 3136)
    write_npy(d / "zero_and_huge.npy", npy_header % ("<f4", f"(0, {2**70})"))
    write_npy(d / "huge.npy", npy_header % ("<f4", f"({2**60}, 1)"), b"\0" * 3136)  # 4 EiB said, 3 KiB there
    write_npy(d / "void0.npy", npy_header % ("|V0", "(10, 784)"))
    write_npy(d / "str0.npy", npy_header % ("<U0", "(10, 784)"))
    write_npy(d / "bool_shape.npy", npy_header % ("<f4", "(True, 784)"), b"\0" * 3136)
    write_npy(d / "version9.npy", npy_header % ("<f4", "(1, 784)"), b"\0" * 3136, version=b"\x09\x00")
    state = torch.load(d / "vae.pt", weights_only=True)
    state["config"]["beta_schedule"] = "linear"  # a field this version does not know
    (d / "other_version").mkdir()
    torch.save(state, d / "other_version" / "checkpoint.pt")
    state = torch.load(d / "gan.pt", weights_only=True)
    state["trainer"]["G_ema"] = {f"module.{k}": v for k, v in state["trainer"]["G_ema"].items()}  # another layout
    torch.save(state, d / "other_layout.pt")
    (d / "run").mkdir()
    shutil.copy(d / "vae.pt", d / "run" / "checkpoint.pt")
    # what the tools read
    (d / "text.json").write_text("not json")
    (d / "other.json").write_text('{"not": "a record"}')
    (d / "dir.json").mkdir()
    gq.quality_dir(d).mkdir(parents=True)
    (gq.quality_dir(d) / "old.json").write_text('{"config": 1')  # a saved record that was damaged
    (d / "deep.json").write_text("[" * 100_000 + "]" * 100_000)  # deeper than the parser follows
    record = {"method": "new", "seed": 0, "epoch_seconds_median": 1.0, "threads": 1, "at": [1],
              "points": [{"epoch": 1, "minutes": 0.1, "confident": 0.9, "inception_score": 9.0, "fid": 4.0}]}
    (d / "at_of_text.json").write_text(json.dumps({**record, "at": ["one"]}))
    (d / "bn_a_list.json").write_text(json.dumps({**record, "points": [{**record["points"][0], "bn": [1]}]}))
    (d / "idx_huge-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + bytes(4) + (2**32 - 1).to_bytes(4, "big") * 2)
    return d


BAD_INPUTS = [  # (id, argv with {d} for the directory of bad files, words the one line must hold)
    ("strings", "vae --data {d}/strings.npy", "pixels must be numbers, got dtype <U1"),
    ("complex", "vae --data {d}/complex.npy", "pixels must be numbers, got dtype complex64"),
    ("objects", "vae --data {d}/objects.npy", "pixels must be numbers, got dtype object"),
    ("nan", "vae --data {d}/nan.npy", "NaN or infinite"),
    ("inf", "gan --data {d}/inf.npy", "NaN or infinite"),
    ("float over 1", "vae --data {d}/over_one.npy", "float pixels must lie in [0, 1]"),
    ("float below 0", "vae --data {d}/negative.npy", "float pixels must lie in [0, 1]"),
    ("int over 255", "vae --data {d}/over_255.npy", "integer pixels must lie in [0, 255]"),
    ("int below 0", "vae --data {d}/negative_int.npy", "integer pixels must lie in [0, 255]"),
    ("27x28 images", "vae --data {d}/shape_27x28.npy", "got shape (10, 27, 28)"),
    ("4-d array", "vae --data {d}/shape_4d.npy", "got shape (10, 1, 28, 28)"),
    ("1-d array", "vae --data {d}/shape_1d.npy", "got shape (784,)"),
    ("no images", "vae --data {d}/empty.npy", "holds no images"),
    ("no test set", "vae --data {d}/one_image.npy", "too few images to hold out a test set"),
    ("bad test data", "vae --data {d}/over_one.npy --test-data {d}/nan.npy", "over_one.npy: float pixels"),
    ("truncated npy", "vae --data {d}/truncated.npy", "truncated: the header says 10×784 of float32, the file has 4872 bytes of data"),
    ("zero-byte npy", "vae --data {d}/zero_bytes.npy", "neither a .npy file nor an IDX image file"),
    ("text as npy", "vae --data {d}/text.npy", "neither a .npy file nor an IDX image file"),
    ("missing file", "vae --data {d}/missing.npy", "missing.npy: No such file or directory"),
    ("directory as npy", "vae --data {d}/directory.npy", "directory.npy: Is a directory"),
    ("directory as idx", "vae --data {d}/directory-idx3-ubyte", "Is a directory"),
    ("idx count lies", "vae --data {d}/idx_count-idx3-ubyte", "header says 1000×28×28"),
    ("idx magic lies", "vae --data {d}/idx_magic-idx3-ubyte", "magic number 0x00000803 expected"),
    ("idx header cut", "vae --data {d}/idx_short-idx3-ubyte", "nor an IDX image file"),
    ("idx truncated", "gan --data {d}/idx_truncated-idx3-ubyte", "truncated: the header says 10×28×28"),
    ("truncated gz", "vae --data {d}/truncated-idx3-ubyte.gz", "corrupt gzip data"),
    ("unreadable file", "vae --data {d}/unreadable-idx3-ubyte", "unreadable-idx3-ubyte: Permission denied"),
    ("a file that fails to read", "vae --data /proc/self/mem", "/proc/self/mem: Input/output error"),
    ("other model's checkpoint", "tools.sample vae --checkpoint {d}/gan.pt", "a gan checkpoint, not a vae one"),
    ("truncated checkpoint", "tools.sample vae --checkpoint {d}/truncated.pt", "not a readable checkpoint"),
    ("zero-byte checkpoint", "tools.sample gan --checkpoint {d}/zero_bytes.pt", "not a readable checkpoint"),
    ("not a checkpoint", "tools.sample vae --checkpoint {d}/a_list.pt", "not a homework7 checkpoint"),
    ("older checkpoint", "tools.sample vae --checkpoint {d}/older_version.pt", "written by another version"),
    ("older checkpoint, resumed", "vae --resume --run-dir {d}/older", "written by another version"),
    ("no checkpoint", "tools.sample vae --checkpoint {d}/nowhere.pt", "no checkpoint here"),
    ("no mixture", "tools.sample vae --checkpoint {d}/vae_prior.pt --sampler mixture", "no fitted mixture"),
    ("sampler of a GAN", "tools.sample gan --checkpoint {d}/gan.pt --sampler prior", "only the VAE"),
    ("--out in no directory", "tools.sample vae --checkpoint {d}/vae.pt --out {d}/nowhere/s.npy", "does not exist"),
    ("--out under a file", "tools.sample vae --checkpoint {d}/vae.pt --out {d}/not_a_dir/s.npy", "not a directory"),
    ("--run-dir under a file", "vae --n-train 300 --run-dir {d}/not_a_dir/run", "--run-dir"),
    ("--figures-dir under a file", "gan --n-train 50 --figures-dir {d}/not_a_dir/f", "--figures-dir"),
    ("epochs not a number", "vae --epochs ten", "invalid int value: 'ten'"),
    ("GAN on 1 image", "gan --n-train 1", "gan needs minibatches of at least 2 images, and so as many training"),
    ("GAN whose loss explodes", "gan --data {d}/small.npy --lr 1e3 --batch-size 20 --epochs 3",
     "training has diverged; try a lower --lr"),
    ("VAE-GAN, minibatch of 1", "tools.vaegan vaegan --batch-size 1", "vaegan needs minibatches of at least 2"),
    ("unknown loss", "gan --generator-loss wasserstein", "invalid choice: 'wasserstein'"),
    ("device tpu", "vae --device tpu", "device 'tpu': not on this machine"),
    ("device cuda:-1", "gan --device cuda:-1", "device 'cuda:-1'"),
    ("sample n 0", "tools.sample vae --checkpoint {d}/vae.pt --n 0", "argument --n: 0: must lie within [1, 1e9]"),
    ("sample n negative", "tools.sample gan --checkpoint {d}/gan.pt --n -5", "--n: -5: must lie within [1, 1e9]"),
    ("unknown flag", "vae --epoch 3", "unrecognized arguments: --epoch 3"),
    ("unknown command", "train", "invalid choice: 'train'"),
    # outputs: only a regular file of the kind written is replaced
    ("--out a FIFO", "tools.sample vae --checkpoint {d}/vae.pt --out {d}/fifo.npy", "is not a regular file; not replaced"),
    ("--out a symlink", "tools.sample vae --checkpoint {d}/vae.pt --out {d}/link.npy", "is a symbolic link; not replaced"),
    ("--out the checkpoint", "tools.sample vae --checkpoint {d}/vae.pt --out {d}/vae.pt", "not a NumPy .npy file"),
    ("--out another file", "tools.sample gan --checkpoint {d}/gan.pt --out {d}/unrelated.npy", "not a NumPy .npy file"),
    ("--out a directory", "tools.sample gan --checkpoint {d}/gan.pt --out {d}/directory.npy", "not a regular file"),
    ("--out ''", "tools.sample vae --checkpoint {d}/vae.pt --out=", "--out '': must name a file"),
    ("--run-dir a dangling link", "vae --n-train 300 --run-dir {d}/dangling", "--run-dir"),
    # checkpoints that parse but lie, to sample and to --resume
    ("pickled object", "tools.sample vae --checkpoint {d}/pickled.pt", "holds objects other than tensors and plain data"),
    ("no optimizer", "vae --resume --run-dir {d}/no_optimizer", "damaged, or written by another version"),
    ("resume to fewer epochs", "vae --resume --run-dir {d}/two_epochs --epochs 1", "trained 2 epochs already"),
    # sizes the machine cannot hold, refused before any work
    ("hidden 10^8", "vae --hidden 100000000", "out of memory ("),
    ("latent dim 10^9", "vae --latent-dim 1000000000", "out of memory ("),
    ("GAN hidden 10^6", "gan --hidden 1000000", "out of memory ("),
    ("sample n 10^9", "tools.sample vae --checkpoint {d}/vae.pt --n 1000000000", "out of memory ("),
    # values that were taken without a word, and misleading messages
    ("--test-data without --data", "vae --test-data {d}/over_one.npy", "--test-data"),
    ("--data .npz", "vae --data {d}/x.npz", "neither a .npy file nor an IDX image file"),
    ("--data .npy.gz", "vae --data {d}/x.npy.gz", "neither a .npy file nor an IDX image file"),
    ("--data .csv", "vae --data {d}/x.csv", "neither a .npy file nor an IDX image file"),
    ("--data .NPY", "vae --data {d}/X.NPY", "float pixels must lie in [0, 1]"),
    ("npz named .npy", "vae --data {d}/npz.npy", "neither a .npy file nor an IDX image file"),
    ("npy header lies", "vae --data {d}/lies.npy", "the header says 10000000000×784 of float32: 3.14e+04 GB, which with its float32 pixels does not fit"),
    ("npy header of 2^62 bytes", "vae --data {d}/huge.npy", "the header says 1152921504606846976×1 of float32"),
    ("npy header too long", "vae --data {d}/long_header.npy", "not a readable .npy file (Header info length"),
    ("pixel 1.0000001", "vae --data {d}/just_over_one.npy", "float pixels must lie in [0, 1], got one of 1.0000001192092896"),
    ("pixel 1 + 1e-12", "vae --data {d}/over_by_1e-12.npy", "float pixels must lie in [0, 1], got one of 1.000000000001"),
    ("pixel -1e-12", "vae --data {d}/under_by_1e-12.npy", "float pixels must lie in [0, 1], got one of -1e-12"),
    ("sample seed 2^64", "tools.sample gan --checkpoint {d}/gan.pt --seed 18446744073709551616", "[0, 4294967295]"),
    ("name too long", "vae --data {d}/" + "x" * 300 + ".npy", "File name too long"),
    # headers NumPy refuses, dtypes of no numbers, an IDX header of 2^64 pixels an image
    ("npy dims negative", "vae --data {d}/negative_dims.npy", "not a readable .npy file (all elements of broadcast shape must be non-negative"),
    ("npy 0 x 2^70", "vae --data {d}/zero_and_huge.npy", "not a readable .npy file ("),
    ("npy dtype V0", "vae --data {d}/void0.npy", "pixels must be numbers, got dtype |V0"),
    ("npy dtype U0", "gan --data {d}/str0.npy", "pixels must be numbers, got dtype <U0"),
    ("npy shape True", "vae --data {d}/bool_shape.npy", "not a readable .npy file ("),
    ("npy version 9", "vae --data {d}/version9.npy", "not a readable .npy file (version 9.0, not one NumPy writes"),
    ("idx 0 x 2^32 x 2^32", "vae --data {d}/idx_huge-idx3-ubyte", "images must be 28×28, the header says 4294967295×"),
    # checkpoints of another version, and a run resumed with other flags
    ("config field unknown", "tools.sample vae --checkpoint {d}/other_version/checkpoint.pt", "another version of homework7"),
    ("config field unknown, resumed", "vae --resume --run-dir {d}/other_version", "another version of homework7.py"),
    ("weights of another layout", "tools.sample gan --checkpoint {d}/other_layout.pt", "another version of homework7"),
    ("resume, another config", "vae --resume --run-dir {d}/run --latent-dim 3", "differs in: latent_dim"),
    # the tools' numbers and readers
    ("report without figures", "tools.report --user ab --vae-run nowhere",
     "nowhere: no vae.png drawn by this run's checkpoint; run python homework7.py vae first"),
    ("quality n 1", "tools.gan_quality --methods new --n 1", "--n: 1: must lie within [2, 1e9]"),
    ("quality seed 2^64", "tools.gan_quality --methods new --seeds 18446744073709551616", "[0, 4294967295]"),
    ("evaluate n 1", "tools.evaluate vae --n 1", "--n: 1: must lie within [2, 1e9]"),
    ("sweep n 1", "tools.sweep --n 1", "--n: 1: must lie within [2, 1e9]"),
    ("sweep KL weight -1", "tools.sweep --kl-weights -1", "--kl-weights: -1: must lie within [0, inf)"),
    ("sweep epochs down", "tools.sweep --epochs-list 2 1", "--epochs-list: increasing epoch counts"),
    ("sweep 0 components", "tools.sweep --components 0", "--components: 0: must lie within [1, 1e6]"),
    ("sweep fit size 0", "tools.sweep --fit-sizes 0", "--fit-sizes: 0: must lie within [1, 1e9]"),
    ("sweep p 0", "tools.sweep --latent-dims 0", "--latent-dims: 0: must lie within [1, 1e9]"),
    ("sweep more components", "tools.sweep --n-train 10 --components 11", "more components than the 10"),
    ("evaluate IWAE K 0", "tools.evaluate vae --iwae-k 0", "--iwae-k: 0: must lie within [1, 1e6]"),
    ("GAN sampler", "tools.evaluate gan --sampler mixture", "--sampler: only the VAE has a choice of sampler"),
    ("report user ../x", "tools.report --user ../x", "--user: give 1 to 3 user names"),
    ("GAN batch 10^20", "gan --batch-size 99999999999999999999 --bn-batches 5", "must lie within [1, 1e6]"),
    ("records missing", "tools.gan_quality --records {d}/missing.json", "missing.json: No such file or directory"),
    ("records not JSON", "tools.gan_quality --records {d}/text.json", "not JSON"),
    ("records not a record", "tools.gan_quality --records {d}/other.json", "not a record of tools.gan_quality"),
    ("records a directory", "tools.gan_quality --records {d}/dir.json", "Is a directory"),
    ("records nested deep", "tools.gan_quality --records {d}/deep.json", "deep.json: not JSON (maximum recursion depth"),
    ("records, epochs of text", "tools.gan_quality --records {d}/at_of_text.json", "not a record of tools.gan_quality"),
    ("records, bn a list", "tools.gan_quality --records {d}/bn_a_list.json", "not a record of tools.gan_quality"),
    ("--figure a README", "tools.gan_quality --records {d}/deep.json --figure {d}/unrelated.npy", "not a PNG file"),
    ("--figure a symlink", "tools.gan_quality --records {d}/deep.json --figure {d}/link.npy", "is a symbolic link"),
    # a method's FIELD=VALUE, read as its flag is
    ("method lr=abc", "tools.gan_quality --methods new+lr=abc", "'new+lr=abc': argument --lr: invalid float value: 'abc'"),
    ("method epochs=1.5", "tools.gan_quality --methods new+epochs=1.5", "argument --epochs: invalid int value: '1.5'"),
    ("method ema=", "tools.gan_quality --methods new+ema=", "argument --ema: invalid float value: ''"),
    ("method g_noise=bogus", "tools.gan_quality --methods new+g_noise=bogus", "--g-noise: invalid choice: 'bogus'"),
    ("unknown method", "tools.gan_quality --methods r3", "unknown method 'r3'"),
    ("method of no field", "tools.gan_quality --methods new+bogus=1", "unrecognized arguments: --bogus=1"),
    ("method lr out of range", "tools.gan_quality --methods new+lr=-1", "--lr -1.0: must lie within (0, inf)"),
]


def out_of_range(config_cls, model):
    """For each field of config_cls with a range: a value just outside each end (the end itself where it is
    open), and NaN for a float, each with the words that refuse it: (id, argv, words) rows of BAD_INPUTS."""
    for f in dataclasses.fields(config_cls):
        within = f.metadata["within"]
        if not within:
            continue
        low, high = (float(end) for end in within[1:-1].split(","))
        values = [low if within[0] == "(" else low - 1, high if within[-1] == ")" else high + 1]
        for value in values + ([math.nan] if f.type is float else []):
            text = str(f.type(value) if math.isfinite(value) else value)
            flag = "--" + f.name.replace("_", "-")
            yield f"{model} {flag} {text}", f"{model} {flag} {text}", f"{flag} {text}: must lie within {within}"


BAD_INPUTS += [case for model, trainer in hw.TRAINERS.items() for case in out_of_range(trainer.config_cls, model)]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, images, checkpoints):
    """The directory of bad files, made once: each case checks that it leaves every one of them as it was."""
    return make_bad_inputs(tmp_path_factory.mktemp("bad"), images, checkpoints)


@pytest.mark.parametrize("argv, words", [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_gets_one_line_status_2_and_changes_no_file(argv, words, tmp_path, bad_inputs, cli, monkeypatch):
    d = bad_inputs
    monkeypatch.chdir(tmp_path)  # a command's default outputs (runs/, figures/) would land here
    if os.geteuid() == 0:  # root may read a file of mode 000: refuse it as the file system does for a user
        def open_(path, *args, **kwargs):
            if Path(path).stat().st_mode & 0o400 == 0:
                raise PermissionError(13, "Permission denied", str(path))
            return open(path, *args, **kwargs)
        monkeypatch.setattr(hw, "open", open_, raising=False)
    before = tree(d)
    status, _, err = cli(main, *argv.format(d=d).split())
    assert status == 2, err
    assert words in err, err
    prog = f"python -m {argv.split()[0]}" if argv.startswith("tools.") else "homework7.py"
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith(prog), err
    assert tree(d) == before and list(tmp_path.iterdir()) == []


def test_a_diverged_run_is_never_saved_fitted_to_or_drawn_and_leaves_the_previous_run(tmp_path, small_npy, cli):
    """One step an epoch at lr 1e30: its training means may still read as numbers, its weights and test -ELBO
    do not. A fresh run leaves nothing; one into the directory of an earlier run leaves that run as it was."""
    flags = ["vae", "--data", small_npy, "--batch-size", "500", *outputs(tmp_path)]
    status, _, err = cli(hw.main, *flags, "--lr", "1e30")
    assert status == 2 and err.count("\n") == 1 and "training stopped: " in err and "NaN or infinite" in err
    assert "no epoch of this run finished, so it wrote no checkpoint" in err
    assert list(tmp_path.iterdir()) == [small_npy]  # no checkpoint, no figure, no directory
    assert cli(hw.main, *flags, "--epochs", "1", "--mixture-components", "0")[0] == 0
    before = tree(tmp_path)
    status, _, err = cli(hw.main, *flags, "--epochs", "2", "--lr", "1e30")
    assert status == 2 and "no epoch of this run finished" in err and tree(tmp_path) == before


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


def test_file_system_errors_as_an_ordinary_user_end_in_one_line(user_dir, python_run):
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
        ("tools.report", ["--user", "ab", "--vae-run", locked, "--out-dir", str(d)], locked),
        ("tools.evaluate", ["vae", "--checkpoint", vae, "--classifier", f"{locked}/c.pt"], "Permission denied"),
        # replaced, not read: an unreadable figure of the script's own is written anew
        ("homework7", ["vae", "--data", small, "--epochs", "1", "--mixture-components", "2", "--run-dir",
                       str(d / "run2"), "--figures-dir", str(d / "figures")], None),
    ]
    status, out, err = python_run(["-c", AS_A_USER, json.dumps([c[:2] for c in cases])], d)
    assert status == 0, err
    for (module, argv, words), (status, err) in zip(cases, json.loads(out.splitlines()[-1])):
        assert "Traceback" not in err, (argv, err)
        if words is None:
            assert status == 0, (argv, err)
        else:
            assert status == 2 and err.count("\n") == 1 and words in err, (argv, err)


# ----------------------------------------------------------------------------- the output
@pytest.mark.parametrize("command, output", [("help", "closed"), ("sample", "closed"), ("sample", "full"),
                                             ("train", "full")])
def test_the_last_lines_into_a_closed_or_full_output_end_as_the_rules_say(command, output, tmp_path, small_npy,
                                                                          checkpoints, python_run):
    """Its output into a pipe its reader has closed, or into /dev/full, buffered as Python buffers a pipe or a
    file (no PYTHONUNBUFFERED)."""
    argv = {"help": [ROOT / "homework7.py", "vae", "--help"],
            "sample": ["-m", "tools.sample", "vae", "--checkpoint", checkpoints["vae"], "--n", "5", "--out", "s.npy"],
            "train": [ROOT / "homework7.py", "vae", "--data", small_npy, "--epochs", "1", *outputs(tmp_path)]}[command]
    if output == "closed":
        read, out = os.pipe()
        os.close(read)
    else:
        out = os.open("/dev/full", os.O_WRONLY)
    try:
        status, _, err = python_run(argv, tmp_path, {"PYTHONUNBUFFERED": None}, stdout=out)
    finally:
        os.close(out)
    prog = "python -m tools.sample" if command == "sample" else "homework7.py"
    assert (status, err) == ((141, "") if output == "closed" else
                             (2, f"{prog}: error: the output: No space left on device\n"))


def test_a_closed_pipe_ends_quietly_and_keeps_the_last_epoch(tmp_path, small_npy):
    with child_process([ROOT / "homework7.py", "vae", "--data", small_npy, "--epochs", "100000",
                        "--figures-dir", tmp_path / "figures", "--run-dir", tmp_path / "run"], tmp_path) as child:
        while "vae epoch   2/" not in child.stdout.readline():  # as `| head` reads a little, then goes
            pass
        child.stdout.close()
        err = child.stderr.read()
    assert child.wait(timeout=60) == 128 + signal.SIGPIPE and err == ""
    assert hw.load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] >= 2


@pytest.mark.parametrize("stderr", ["full", "closed"])
def test_a_full_or_closed_stderr_keeps_the_exit_status(stderr, tmp_path, python_run):
    err = os.open("/dev/full", os.O_WRONLY) if stderr == "full" else subprocess.DEVNULL
    try:
        status, out, _ = python_run([ROOT / "homework7.py", "vae", "--lr", "nan"], tmp_path,
                                    preexec=None if stderr == "full" else lambda: os.close(2), stderr=err)
    finally:
        if stderr == "full":
            os.close(err)
    assert status == 2 and out == ""


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


def test_a_test_metric_turning_nan_keeps_the_last_good_checkpoint(tmp_path, small_npy, monkeypatch, cli):
    real_evaluate, calls = hw.VAETrainer.evaluate, []

    def evaluate(self, x):  # epoch 1 is scored, then the test -ELBO turns NaN
        calls.append(1)
        return real_evaluate(self, x) if len(calls) < 2 else {**real_evaluate(self, x), "-elbo": float("nan")}

    monkeypatch.setattr(hw.VAETrainer, "evaluate", evaluate)
    status, _, err = cli(hw.main, "vae", "--data", small_npy, "--epochs", "3", "--figures-dir", tmp_path / "figures",
                         "--run-dir", tmp_path / "run")
    assert status == 2 and "training stopped: a loss, a test metric, a weight" in err
    assert "checkpoint of epoch 1 is kept" in err
    assert hw.load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1
    assert not (tmp_path / "figures").exists()


# ----------------------------------------------------------------------------- the readers of the tools
def test_the_report_draws_text_from_files_as_written_and_checks_each_file(tmp_path, cli):
    figures, runs = tmp_path / "figures", tmp_path / "runs"
    figures.mkdir()
    for name in ("vae.png", "gan.png", "gan_curves.png"):
        hw.plot_grid(torch.rand(4, hw.IMAGE_DIM), figures / name, name)
    scores = {"coverage": 10, "confident": 0.9, "inception_score": 9.0, "fid": 5.0, "histogram": [1] * 10}
    eval_json = drawn_run(runs, figures, "gan", scores=scores) / "eval.json"
    eval_json.write_text(eval_json.read_text().replace("moving average of G", "cost $_$ x"))
    (runs / "gan" / "config.json").write_text("[1, 2]")  # JSON, but not a config
    drawn_run(runs, figures, "vae")
    status, _, err = cli(tools.report.main, "--user", "ab", "--vae-run", runs / "vae", "--gan-run", runs / "gan",
                         "--out-dir", tmp_path / "out")
    assert status == 0 and "config.json is not a JSON object" in err, err
    (figures / "gan_curves.png").write_bytes(b"")  # a figure cut to nothing
    status, _, err = cli(tools.report.main, "--user", "ab", "--gan-run", runs / "gan", "--vae-run", runs / "vae",
                         "--out-dir", tmp_path / "out2")
    assert status == 0 and "gan_curves.png is not as the run in" in err  # left out of the PDF
    (figures / "gan.png").unlink()
    (figures / "gan.png").mkdir()  # a directory where a figure should be
    status, _, err = cli(tools.report.main, "--user", "ab", "--gan-run", runs / "gan", "--vae-run", runs / "vae",
                         "--out-dir", tmp_path / "out3")
    assert status == 2 and err.endswith("no gan.png drawn by this run's checkpoint; run python homework7.py gan first "
                                        "(or pass --gan-run)\n")
    assert not (tmp_path / "out3").exists()  # a failed report leaves no directory


# ----------------------------------------------------------------------------- stops
def test_ctrl_c_while_torch_loads_ends_in_one_line(tmp_path):
    child = child_process([ROOT / "homework7.py", "vae", "--epochs", "1"], tmp_path)
    time.sleep(0.2)  # the interpreter has started; torch takes a second or more to load
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130 and "Traceback" not in err
    assert len([line for line in err.splitlines() if line]) == 1, err


def marked_processes(mark):
    """The processes whose environment holds HOMEWORK7_MARK=mark: a tool's and those it started."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if f"HOMEWORK7_MARK={mark}".encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
    return found


@pytest.mark.parametrize("argv, started, signals, status", [
    (["tools.company", "--cases", "vae + busy", "--repeats", "1", "--epochs", "1000"], 3, [signal.SIGINT], 130),
    (["tools.company", "--cases", "vae + busy", "--repeats", "1", "--epochs", "1000"], 3, [signal.SIGINT] * 2,
     -signal.SIGINT),
    (["tools.bench", "--models", "vae", "--steps", "1"], 1, [signal.SIGINT], 130),
], ids=["company, Ctrl-C", "company, Ctrl-C twice", "bench, Ctrl-C"])
def test_a_tool_stops_at_once_and_ends_what_it_started(argv, started, signals, status, tmp_path):
    """Each signal once the tool and what it starts run; the first is acted on within seconds (one line), a second
    ends the tool at once, and either way no run it started goes on."""
    mark = f"{os.getpid()}-{time.monotonic_ns()}"
    child = child_process(["-m", *argv], tmp_path, env={"HOMEWORK7_MARK": mark})
    try:
        child.stdout.readline()  # its first line: torch and the data are loaded
        deadline = time.monotonic() + 60
        while len(marked_processes(mark)) < started and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # the runs load torch and their data
        for number in signals:
            child.send_signal(number)
            time.sleep(0.05)
        _, err = child.communicate(timeout=30)
        deadline = time.monotonic() + 10
        while marked_processes(mark) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = marked_processes(mark)
    finally:
        for pid in [child.pid, *marked_processes(mark)]:  # where the tool failed to, so that no run is left here
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    assert child.returncode == status and "Traceback" not in err, err
    assert status < 0 or err.strip() == f"python -m {argv[0]}: interrupted", err
    assert left == []


@pytest.mark.parametrize("text", ['[{"epoch": 1}]', '{"seconds": 1}', '[{"seconds": "x"}]', "[" * 100_000])
def test_a_metrics_file_that_company_cannot_read_is_one_line(text, tmp_path):
    import tools.company
    (tmp_path / "metrics.json").write_text(text)
    with pytest.raises(hw.UsageError, match="metrics.json: not "):
        tools.company.recorded_seconds(tmp_path)


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, small_npy, monkeypatch, cli):
    """The second checkpoint's own write finds the disk full half-way."""
    real_open, opened = open, []

    class FullDisk:  # the file atomic_write opens, whose write stops half-way with ENOSPC
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exception):
            self.f.close()

        def write(self, data):
            self.f.write(bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    def open_(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if ".checkpoint.pt." in str(path):
            opened.append(path)
        return FullDisk(f) if len(opened) == 2 and ".checkpoint.pt." in str(path) else f

    monkeypatch.setattr(hw, "open", open_, raising=False)
    status, _, err = cli(main, "vae", "--data", small_npy, "--epochs", "3", *outputs(tmp_path))
    assert status == 2 and err.count("\n") == 1
    assert "checkpoint.pt: No space left on device; the previous file is kept" in err
    assert hw.load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1
    assert not list((tmp_path / "run").glob(".*.tmp"))


def limited_memory():
    """In a child, before it runs: at most 2 GB of address space, so that a reader without a bound, or a model too
    large, fails in the child, never on the machine's whole memory."""
    resource.setrlimit(resource.RLIMIT_AS, (2 * 10**9, 2 * 10**9))


@pytest.mark.parametrize("source", ["zeros", "a header of 10^8 images, then zeros"])
def test_an_endless_input_is_read_no_further_than_its_header_promises(source, tmp_path, python_run):
    header = tmp_path / "h.npy"
    write_npy(header, "{'descr': '<f4', 'fortran_order': False, 'shape': (100000000, 784), }")
    feed = subprocess.Popen(["cat", *([header] if source != "zeros" else []), "/dev/zero"], stdout=subprocess.PIPE)
    try:
        status, _, err = python_run([ROOT / "homework7.py", "vae", "--data", "/dev/stdin"], tmp_path,
                                    preexec=limited_memory, stdin=feed.stdout)
    finally:
        feed.kill()
        feed.wait()
    expected = {"zeros": "neither a .npy file nor an IDX image file",
                "a header of 10^8 images, then zeros": "the header says 100000000×784 of float32: 314 GB"}[source]
    assert status == 2 and err.count("\n") == 1 and expected in err, err


def test_memory_that_runs_out_while_a_checkpoint_is_made_ends_in_one_line(tmp_path, python_run):
    """A VAE of 30,000 hidden units, under 2 GB: its checkpoint, made in memory, does not fit (torch.save's writer
    then fails in words of its own)."""
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((300, 784), dtype=np.float32))
    status, _, err = python_run([ROOT / "homework7.py", "vae", "--data", "x.npy", "--hidden", "30000", "--lr", "1e-7",
                                 "--epochs", "1", "--batch-size", "100", "--mixture-components", "0"], tmp_path,
                                preexec=limited_memory)
    assert status == 2 and err.startswith("homework7.py: error: out of memory (") and err.count("\n") == 1, err
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob(".*.tmp"))


def test_a_write_whose_cleanup_fails_too_names_the_file_it_wrote(tmp_path, monkeypatch):
    """A read-only disk refuses the temporary file, and then its removal as well."""
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(hw, "open", read_only, raising=False)
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(hw.UsageError, match=f"could not write {tmp_path / 's.npy'}: Read-only file system$"):
        hw.atomic_write(tmp_path / "s.npy", lambda f: f.write(b"x"))


def test_memory_that_runs_out_ends_in_one_line(tmp_path, small_npy, monkeypatch, cli):
    def allocate(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 62720000000 bytes.")

    monkeypatch.setattr(hw.VAETrainer, "train_step", allocate)
    status, _, err = cli(main, "vae", "--data", small_npy, *outputs(tmp_path))
    assert status == 2 and err.count("\n") == 1 and "out of memory (" in err and "Traceback" not in err


def test_a_path_with_a_newline_keeps_the_error_one_line(tmp_path, cli):
    status, _, err = cli(hw.main, "vae", "--data", tmp_path / "two\nlines.npy")
    assert status == 2 and err.count("\n") == 1 and "two\\nlines.npy: No such file or directory" in err


# ----------------------------------------------------------------------------- however Python is started
def test_a_home_that_does_not_exist_adds_nothing_to_an_error(tmp_path, python_run):
    """A container's user, or Debian's nobody: matplotlib cannot make its cache under HOME, even as root."""
    env = {"HOME": "/dev/null/home", "MPLCONFIGDIR": None, "XDG_CONFIG_HOME": None, "XDG_CACHE_HOME": None}
    for argv in ([ROOT / "homework7.py", "vae", "--data", "missing.npy"],
                 ["-m", "tools.sample", "vae", "--checkpoint", "missing.pt"]):
        status, _, err = python_run(argv, tmp_path, env)
        assert status == 2 and err.count("\n") == 1 and "missing." in err, err


def test_python_with_its_docstrings_stripped_or_its_stderr_closed_runs_as_usual(tmp_path, small_npy, python_run):
    status, _, err = python_run(["-OO", ROOT / "homework7.py", "vae", "--epochs", "0"], tmp_path)
    assert status == 2 and err == "homework7.py: error: --epochs 0: must lie within [1, 1e6]\n"
    status, out, _ = python_run([ROOT / "homework7.py", "vae", "--data", small_npy, "--epochs", "1",
                                 *outputs(tmp_path)], tmp_path, preexec=lambda: os.close(2))  # 2>&-
    assert status == 0 and "vae epoch   1/1" in out and hw.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
