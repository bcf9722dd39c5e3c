"""homework7 — a variational auto-encoder and a GAN on MNIST (CS/DS 541, HW7).

Both models are fully connected and trained from scratch with PyTorch:

  * VAE: Kingma & Welling, "Auto-Encoding Variational Bayes", Algorithm 1 with the
    loss of Eq. 10 (https://arxiv.org/abs/1312.6114).
  * GAN: Goodfellow et al., "Generative Adversarial Nets", Algorithm 1
    (https://arxiv.org/abs/1406.2661).

Usage:
  python homework7.py vae [flags]        train the VAE, write figures/vae*.png
  python homework7.py gan [flags]        train the GAN, write figures/gan*.png
  python homework7.py vae --help         every flag with its default

Data: MNIST's four original IDX files in data/ beside this script, or --data FILE (the assignment's
mnist_train_images.npy, or an IDX image file).
Outputs: figures in figures/, checkpoint.pt, config.json and metrics.json in runs/<model>/.
Training can be stopped with Ctrl-C and continued with --resume.
"""

# ----------------------------------------------------------------------------- imports
import argparse
import contextlib
import copy
import dataclasses
import gzip
import hashlib
import io
import json
import math
import os
import secrets
import shlex
import signal
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

try:  # torch takes a second or more to load: a Ctrl-C then ends in one line too
    import numpy as np
    import torch
    import torch.nn.functional as F
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from torch import nn
    from tqdm import tqdm
except KeyboardInterrupt:
    print("\nhomework7.py: interrupted while starting", file=sys.stderr)
    sys.exit(130)

# ----------------------------------------------------------------------------- config
IMAGE_SIDE = 28  # MNIST images are 28×28 ...
IMAGE_DIM = IMAGE_SIDE * IMAGE_SIDE  # ... flattened to 784 pixels

MNIST_DIR = Path(__file__).resolve().parent / "data"  # MNIST's four original IDX files, beside this script
MNIST_SHA256 = {  # each file as published with MNIST (data/README.md says where it comes from)
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
IDX_IMAGES, IDX_LABELS = b"\x00\x00\x08\x03", b"\x00\x00\x08\x01"  # IDX magic numbers: uint8, 3 axes or 1
NPY_MAGIC = b"\x93NUMPY"  # how a .npy file begins
CHECKPOINT_FORMAT = 3  # bump when what a checkpoint holds changes (3: the GAN's standing statistics on their own)
GAN_COLLAPSE_D_FAKE = 1e-3  # stop when D(G(z)) stays below this for a whole epoch
GAN_DIVERGED_D_LOSS = 100.0  # stop when D's loss averages above this over an epoch (1.39 at D's equilibrium)


def arg(default, help, within=None, **argparse_kwargs):
    """A config field whose one-line help is also its command-line help; a number's range, within, is written
    as in mathematics ("[0, 1)", "(0, inf)"), said in that help and checked before any work (validate_config)."""
    return field(default=default, metadata={"help": help, "within": within, **argparse_kwargs})


def lies_within(value, interval):
    """Whether the number value lies in the interval, written as in mathematics: "[1, 1e6]", "[0, 1)"."""
    low, high = (float(end) for end in interval[1:-1].split(","))
    above = low <= value if interval[0] == "[" else low < value
    return above and (value <= high if interval[-1] == "]" else value < high)


@dataclass
class RunConfig:
    """What every training run shares."""

    epochs: int = arg(30, "passes over the training set", "[1, 1e6]")
    batch_size: int = arg(100, "minibatch size M", "[1, 1e6]")
    lr: float = arg(1e-3, "Adam learning rate", "(0, inf)")
    seed: int = arg(0, "random seed (data order, initial weights, noise)", "[0, 4294967295]")
    n_train: int = arg(None, "use only the first N training images (default: all)", "[1, 1e9]", type=int)
    data: str = arg("", "training images: .npy (N×784 or N×28×28) or IDX file; '' = MNIST from data/")
    test_data: str = arg("", "test images for --data; '' holds out the last 10% of --data")
    device: str = arg("auto", "cpu, cuda, cuda:N, mps, or auto (CUDA, then MPS, then CPU)")
    figures_dir: str = arg("figures", "where the PNG figures go")
    run_dir: str = arg("", "where the checkpoint, config.json and metrics.json go ('' = runs/<model>)")


@dataclass
class VAEConfig(RunConfig):
    """The VAE: encoder 784→hidden→2p (tanh, dropout), decoder p→hidden→784 sigmoids."""

    epochs: int = arg(60, "passes over the training set", "[1, 1e6]")
    batch_size: int = arg(500, "minibatch size M", "[1, 1e6]")
    lr: float = arg(4.5e-3, "Adam learning rate", "(0, inf)")
    latent_dim: int = arg(32, "p, the dimension of the latent code z", "[1, 1e9]")
    hidden: int = arg(200, "hidden units of encoder and decoder", "[1, 1e9]")
    dropout: float = arg(0.1, "dropout rate on the encoder's hidden layer", "[0, 1)")
    kl_weight: float = arg(0.5, "weight of the KL term of Eq. 10 against reconstruction", "[0, inf)")
    mixture_components: int = arg(200, "components of the Gaussian mixture fitted to the encodings μ(x) after "
                                      "training, a second prior to sample from (0 = none)", "[0, 1e6]")
    mixture_fit_n: int = arg(20000, "fit the mixture to the encodings of at most this many training images",
                             "[1, 1e9]")


@dataclass
class GANConfig(RunConfig):
    """The GAN: G with 4 linear layers, D with input dropout and 3 linear layers."""

    epochs: int = arg(60, "passes of D over the training set", "[1, 1e6]")
    batch_size: int = arg(500, "minibatch size m, of real images and of noise vectors (BatchNorm needs 2)",
                          "[2, 1e6]")
    lr: float = arg(2e-3, "Adam learning rate of both G and D", "(0, inf)")
    beta1: float = arg(0.5, "Adam beta1 of both G and D", "[0, 1)")
    beta2: float = arg(0.99, "Adam beta2 of both G and D", "[0, 1)")
    noise_dim: int = arg(100, "dimension of G's Gaussian noise z", "[1, 1e9]")
    hidden: int = arg(256, "hidden units of G and D", "[1, 1e9]")
    dropout: float = arg(0.1, "rate of D's input dropout layer", "[0, 1)")
    k: int = arg(1, "discriminator steps per generator step (Algorithm 1's k)", "[1, 1e6]")
    r1: float = arg(0.01, "γ of the R1 penalty γ/2 · ‖∇ₓ a(x)‖² on D's logit a over real images (0 = off)",
                    "[0, inf)")
    r1_every: int = arg(16, "apply R1 on every this many D steps, weighted by it (lazy regularisation)",
                        "[1, 1e6]")
    ema: float = arg(0.9995, "decay of a moving average of G's weights that draws the samples (0 = off)",
                     "[0, 1)")
    ema_rampup: float = arg(0.1, "the moving average spans at most this share of G's steps so far, so "
                                 "that it follows G early on (0 = off)", "[0, inf)")
    bn_batches: int = arg(200, "after training, recompute the sampler's BatchNorm statistics over this many "
                             "batches of noise (0 = keep those averaged from G's)", "[0, 1e5]")
    g_noise: str = arg("shared", "G's minibatch of noise: shared with D's step just before, whose G(z) it reuses "
                                 "(one pass of G fewer), or fresh, drawn anew as in Algorithm 1",
                       choices=("shared", "fresh"))
    generator_loss: str = arg(
        "non-saturating",
        "G's objective: minimax, log(1-D(G(z))), or non-saturating, -log D(G(z))",
        choices=("non-saturating", "minimax"),
    )


class UsageError(Exception):
    """Bad input or an unusable state: reported as one line, exit status 2."""


def first_line(error):
    """The first line of an exception's message, or its type's name where the message is empty."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# ----------------------------------------------------------------------------- data
def read_idx(path, magic, sha256=None):
    """An IDX file (LeCun's MNIST format, optionally gzipped) as a uint8 array, its SHA-256 checked if given."""
    raw = Path(path).read_bytes()
    if sha256 and hashlib.sha256(raw).hexdigest() != sha256:
        raise UsageError(f"{path}: SHA-256 checksum mismatch (corrupt, or not the original MNIST file)")
    return parse_idx(gunzip(raw, path), magic, path)


def gunzip(raw, path):
    """raw decompressed where it is gzip data, else as it is."""
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise UsageError(f"{path}: corrupt gzip data: {e}") from None


def parse_idx(raw, magic, path):
    """The bytes of an IDX file as a uint8 array: after the 4-byte magic number (0x00000803 for images
    N×rows×cols, 0x00000801 for labels N), one big-endian 4-byte size per axis, then the data."""
    kind = "image" if magic == IDX_IMAGES else "label"
    if len(raw) < 4 or raw[:4] != magic:
        raise UsageError(f"{path}: not an IDX {kind} file (magic number 0x{magic.hex()} expected)")
    ndim = magic[3]  # the magic number's last byte counts the axes: 3 for images, 1 for labels
    if len(raw) < 4 + 4 * ndim:
        raise UsageError(f"{path}: not an IDX {kind} file (its header is cut short)")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    if len(raw) != 4 + 4 * ndim + math.prod(shape):
        raise UsageError(f"{path}: truncated or corrupt: header says {'×'.join(map(str, shape))}, file has "
                         f"{len(raw) - 4 - 4 * ndim} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_mnist(split, data_dir=MNIST_DIR):
    """MNIST's "train" (60,000) or "t10k" (10,000) split from its original IDX files in data_dir, each file
    checked against its SHA-256: (images N×784 float32 in [0,1], labels N int64)."""
    paths = {kind: Path(data_dir) / f"{split}-{kind}" for kind in ("images-idx3-ubyte.gz", "labels-idx1-ubyte.gz")}
    if not all(path.exists() for path in paths.values()):
        raise UsageError(f"MNIST not found in {data_dir}/: pass --data with the assignment's "
                         "mnist_train_images.npy or an IDX image file (train-images-idx3-ubyte)")
    images, labels = (read_idx(path, magic, MNIST_SHA256[path.name])
                      for path, magic in zip(paths.values(), (IDX_IMAGES, IDX_LABELS)))
    return images_to_tensor(images, paths["images-idx3-ubyte.gz"]), torch.from_numpy(labels.astype(np.int64))


def read_image_file(path):
    """Images from a .npy file (the assignment's mnist_train_images.npy) or an IDX image file (optionally
    gzipped), told apart by name and first bytes, as an N×784 float32 tensor."""
    raw = Path(path).read_bytes()
    if str(path).lower().endswith(".npy") or raw.startswith(NPY_MAGIC):
        array = parse_npy(raw, path)
    else:
        raw = gunzip(raw, path)
        if not raw.startswith(IDX_IMAGES[:3]):
            raise UsageError(f"{path}: neither a .npy file nor an IDX image file (magic number 0x00000803 expected): "
                             "--data takes the assignment's .npy (N×784 or N×28×28) or an IDX file")
        array = parse_idx(raw, IDX_IMAGES, path)
    return images_to_tensor(array, path)


def parse_npy(raw, path):
    """The array in the bytes of a .npy file, its header checked against the bytes that follow it before any
    memory is taken for it (NumPy's format: a magic string and version, a header of shape and dtype, the data)."""
    f = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
    except (ValueError, EOFError) as e:
        raise UsageError(f"{path}: not a readable .npy file ({first_line(e)})") from None
    if dtype.hasobject:
        raise UsageError(f"{path}: not a .npy file of pixels (it holds Python objects)")
    if len(raw) - f.tell() != math.prod(shape) * dtype.itemsize:
        raise UsageError(f"{path}: truncated or corrupt: header says {'×'.join(map(str, shape))} of {dtype}, file has "
                         f"{len(raw) - f.tell()} bytes of data")
    return np.frombuffer(raw, dtype, math.prod(shape), f.tell()).reshape(shape, order="F" if fortran_order else "C")


def images_to_tensor(array, source):
    """Checks an image array (N×784 or N×28×28; floats in [0,1] or integers 0..255) → N×784 float32."""
    if array.ndim not in (2, 3) or array.shape[1:] not in ((IMAGE_DIM,), (IMAGE_SIDE, IMAGE_SIDE)):
        raise UsageError(f"{source}: images must be N×{IMAGE_DIM} or N×{IMAGE_SIDE}×{IMAGE_SIDE}, got shape {array.shape}")
    if len(array) == 0:
        raise UsageError(f"{source}: holds no images")
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise UsageError(f"{source}: integer pixels must lie in 0..255")
        array = array.astype(np.float32) / 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise UsageError(f"{source}: holds NaN or infinite pixels")
        if array.min() < 0 or array.max() > 1:
            raise UsageError(f"{source}: float pixels must lie in [0, 1], got [{array.min():.9g}, {array.max():.9g}]")
    else:
        raise UsageError(f"{source}: pixels must be numbers, got dtype {array.dtype}")
    return torch.from_numpy(np.array(array, dtype=np.float32).reshape(len(array), IMAGE_DIM))  # a writable copy


def load_images(cfg):
    """(train_x, test_x) as N×784 float32 tensors in [0,1], as the config asks."""
    if cfg.data:
        train_x = read_image_file(cfg.data)
        if cfg.test_data:
            test_x = read_image_file(cfg.test_data)
        else:  # hold out the last 10% of --data as the test set
            n_test = max(1, len(train_x) // 10)
            if len(train_x) - n_test < 1:
                raise UsageError(f"{cfg.data}: too few images to hold out a test set; pass --test-data")
            train_x, test_x = train_x[:-n_test], train_x[-n_test:]
    else:
        train_x, test_x = load_mnist("train")[0], load_mnist("t10k")[0]
    if cfg.n_train is not None:
        train_x = train_x[: cfg.n_train]
    return train_x, test_x


def batch_bounds(n, batch_size):
    """(start, end) of each minibatch of an epoch of n images; a lone leftover image joins the batch before
    it, since BatchNorm cannot normalise a batch of one."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return list(zip(starts, starts[1:] + [n]))


def minibatches(x, batch_size):
    """One epoch of shuffled minibatches, sliced from the tensor itself (no per-image DataLoader)."""
    order = torch.randperm(len(x)).to(x.device)
    for start, end in batch_bounds(len(x), batch_size):
        yield x.index_select(0, order[start:end])  # the same rows as x[...], ~3× faster on a CPU


# ----------------------------------------------------------------------------- models
class VAE(nn.Module):
    """Encoder Q_φ(z|x) = N(μ, diag σ²) and decoder P_θ(x|z) = Π Bernoulli(sigmoid(logits))."""

    def __init__(self, latent_dim=16, hidden=200, dropout=0.1):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(
            nn.Linear(IMAGE_DIM, hidden), nn.Tanh(), Dropout(dropout), nn.Linear(hidden, 2 * latent_dim)
        )
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, IMAGE_DIM))

    def encode(self, x):
        """x: B×784 → μ, log σ² (each B×p); exponentiating log σ² keeps the variance positive."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode_logits(self, z):
        return self.decoder(z)

    def decode(self, z):
        """z: B×p → the 784 Bernoulli means in (0, 1)."""
        return torch.sigmoid(self.decoder(z))

    def forward(self, x, eps=None):
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, eps)
        return self.decode_logits(z), mu, logvar


def reparameterize(mu, logvar, eps=None):
    """z = μ + σ ⊙ ε with ε ~ N(0, I): a sample of Q_φ(z|x) that gradients flow through."""
    if eps is None:
        eps = torch.randn_like(mu)
    return mu + torch.exp(0.5 * logvar) * eps


class Generator(nn.Module):
    """G: noise z → 4 linear layers, BatchNorm + ReLU between them → 784 sigmoids."""

    def __init__(self, noise_dim=100, hidden=256):
        super().__init__()
        self.noise_dim = noise_dim
        layers, width = [], noise_dim
        for _ in range(3):
            layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(hidden, IMAGE_DIM))

    def forward(self, z):
        return torch.sigmoid(self.net(z))


class Discriminator(nn.Module):
    """D: input dropout → 3 linear layers, BatchNorm + ReLU between them → one sigmoid."""

    def __init__(self, hidden=256, dropout=0.1):
        super().__init__()
        self.net = nn.Sequential(
            Dropout(dropout),
            nn.Linear(IMAGE_DIM, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def logits(self, x):
        """x: B×784 → B logits a, with D(x) = sigmoid(a); the losses use a for stability."""
        return self.net(x).squeeze(1)

    def forward(self, x):
        """The probability that x is real."""
        return torch.sigmoid(self.logits(x))


class Dropout(nn.Dropout):
    """nn.Dropout with its mask drawn by torch.rand: the same distribution, but on a CPU about 4× faster
    than the bernoulli_ kernel nn.Dropout uses (0.2 ms against 0.8 ms for 100 images of 784 pixels)."""

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = torch.rand_like(x) >= self.p  # each unit kept with probability 1 − p
        return x * (keep / (1 - self.p))  # one mask of 0 and 1/(1 − p): one multiply forward and backward


# ----------------------------------------------------------------------------- losses
# Kingma & Welling Eq. 10, negated and per image, with the KL term weighted by w:
#   −L(x) = −log p_θ(x|z) + w · ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²),   z = μ + σ ⊙ ε
# where −log p_θ(x|z) = −Σ_i [x_i log y_i + (1 − x_i) log(1 − y_i)] over the 784 pixels.
def vae_loss(x, x_logits, mu, logvar, kl_weight=1.0):
    """Minibatch means of (−L with weight w, reconstruction term, KL term), in nats per image."""
    recon = F.binary_cross_entropy_with_logits(x_logits, x, reduction="none").sum(1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    return (recon + kl_weight * kl).mean(), recon.mean(), kl.mean()


# Goodfellow et al. Algorithm 1, D ascends  log D(x) + log(1 − D(G(z)));  with D = sigmoid(a):
#   −log D(x) = softplus(−a_real),   −log(1 − D(G(z))) = softplus(a_fake)
def discriminator_loss(real_logits, fake_logits):
    """(D's loss, its real part, its fake part), minibatch means."""
    loss_real = F.softplus(-real_logits).mean()
    loss_fake = F.softplus(fake_logits).mean()
    return loss_real + loss_fake, loss_real, loss_fake


# G descends  log(1 − D(G(z))) = −softplus(a_fake)         (minimax, Algorithm 1)
#   or, as the paper advises in practice,  −log D(G(z)) = softplus(−a_fake)   (non-saturating)
def generator_loss(fake_logits, kind="non-saturating"):
    if kind == "minimax":
        return -F.softplus(fake_logits).mean()
    return F.softplus(-fake_logits).mean()


# R1 (Mescheder et al., ICML 2018): D's loss plus  γ/2 · E_x ‖∇_x a(x)‖²  over real images x,
# which pulls D's gradient on the data towards 0 (a: D's logit).
def r1_penalty(real_logits, real, gamma):
    """γ/2 times the minibatch mean of ‖∂a/∂x‖² (real must require grad; the graph is kept for backward).
    With BatchNorm in D, ∂(Σ a)/∂x_i also holds the other images' dependence on x_i through the batch's
    mean and variance, so this is the penalty of the summed logits, not of each image alone."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return 0.5 * gamma * grad.pow(2).sum(1).mean()


# ----------------------------------------------------------------------------- training
class VAETrainer:
    """Algorithm 1 of Kingma & Welling with L = 1 sample per image, Adam on θ and φ together."""

    name = "vae"

    def __init__(self, cfg, device):
        self.cfg, self.device = cfg, device
        self.model = VAE(cfg.latent_dim, cfg.hidden, cfg.dropout).to(device)
        self.optimizer = make_adam(self.model.parameters(), cfg.lr, device)
        self.prior = None  # the mixture fitted after training: {"weights", "means", "covariances"}

    def state_dict(self):
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                **({"prior": self.prior} if self.prior else {})}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.prior = state.get("prior")

    def after_training(self, train_x):
        """After the last epoch: fit the mixture prior (fit_prior), or with --mixture-components 0 drop one
        fitted before. Returns what was done, for the log (the checkpoint is then written again), or None."""
        if not self.cfg.mixture_components:
            dropped, self.prior = self.prior, None
            return "dropped the mixture fitted before (--mixture-components 0)" if dropped else None
        return self.fit_prior(train_x, self.cfg.mixture_components, self.cfg.mixture_fit_n)

    @torch.no_grad()
    def fit_prior(self, train_x, components, fit_n):
        """Fits a mixture of that many Gaussians to the encodings μ(x) of (up to) fit_n training images, drawn
        with the run's seed; it becomes the sampler "mixture"."""
        self.model.eval()
        pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(self.cfg.seed))
        x = train_x[pick[:fit_n]].to(self.device)
        mu = torch.cat([self.model.encode(x[i : i + 1000])[0] for i in range(0, len(x), 1000)])
        try:
            self.prior = fit_mixture(mu, components, seed=self.cfg.seed)
        except torch.linalg.LinAlgError:  # a covariance that float64 cannot hold: encodings of a diverged encoder
            raise UsageError("the mixture could not be fitted to these encodings; train with a lower --lr, or "
                             "pass --mixture-components 0") from None
        return f"fitted a mixture of {components} Gaussians to {len(x)} encodings mu(x)"

    def train_step(self, x):
        self.prior = None  # the encoder moves: a mixture fitted to its earlier encodings no longer fits them
        self.model.train()
        x_logits, mu, logvar = self.model(x)
        loss, recon, kl = vae_loss(x, x_logits, mu, logvar, self.cfg.kl_weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"-elbo": (recon + kl).detach(), "recon": recon.detach(), "kl": kl.detach()}

    @torch.inference_mode()
    def evaluate(self, test_x):
        """Test-set −ELBO (KL weight 1), reconstruction and KL, nats per image, model in eval mode."""
        self.model.eval()
        meter = Meter()
        for start in range(0, len(test_x), 1000):
            x = test_x[start : start + 1000]
            _, recon, kl = vae_loss(x, *self.model(x), kl_weight=1.0)
            meter.add({"-elbo": recon + kl, "recon": recon, "kl": kl}, weight=len(x))
        return meter.means()

    def stop_reason(self, train_stats):
        """Why training must stop after an epoch with these statistics, or None: fit() stops on NaN for both
        models; the VAE has no reason of its own."""
        return None

    def epoch_line(self, record):
        """The numbers of an epoch for its line of the log."""
        tr, te = record["train"], record["test"]
        return (
            f"train -ELBO {tr['-elbo']:7.2f} (recon {tr['recon']:6.2f}, KL {tr['kl']:5.2f})  "
            f"test -ELBO {te['-elbo']:7.2f} (recon {te['recon']:6.2f}, KL {te['kl']:5.2f})"
        )

    def samplers(self):
        """What draws new images, by name, each described: z ~ N(0, I), then the mixture once it is fitted."""
        names = {"standard": "z ~ N(0, I)"}
        if self.prior:
            names["mixture"] = f"z ~ mixture of {len(self.prior['weights'])}"
        return names

    @torch.inference_mode()
    def sample(self, n, generator=None, sampler="standard"):
        """n new images: z ~ N(0, I) (sampler "standard") or z ~ the fitted mixture ("mixture"), through the
        decoder alone (its Bernoulli means)."""
        self.model.eval()
        if sampler == "mixture":
            if not self.prior:
                raise ValueError("this VAE has no fitted mixture")
            z = sample_mixture(self.prior, n, generator).float()
        else:
            z = torch.randn(n, self.cfg.latent_dim, generator=generator)
        return self.model.decode(z.to(self.device))

    @torch.inference_mode()
    def reconstruct(self, x):
        """Decoder mean of the encoder mean, model in eval mode."""
        self.model.eval()
        mu, _ = self.model.encode(x)
        return self.model.decode(mu)

    @torch.inference_mode()
    def interpolate(self, x_a, x_b, steps=10):
        """Decoded points on the straight lines from the encoder means of x_a to those of x_b: B×steps×784."""
        self.model.eval()
        (mu_a, _), (mu_b, _) = self.model.encode(x_a), self.model.encode(x_b)
        t = torch.linspace(0, 1, steps, device=mu_a.device)[None, :, None]  # 1×steps×1
        z = mu_a[:, None] + t * (mu_b - mu_a)[:, None]  # B×steps×p
        return self.model.decode(z.reshape(-1, z.shape[-1])).reshape(len(x_a), steps, IMAGE_DIM)

    @torch.inference_mode()
    def manifold(self, n=20):
        """Kingma & Welling's Fig. 4 for p = 2: the decoder over an n×n grid of Gaussian quantiles, n²×784."""
        self.model.eval()
        q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n))
        z2, z1 = torch.cartesian_prod(q.flip(0), q).unbind(1)  # row by row: z₂ falls down, z₁ grows across
        return self.model.decode(torch.stack([z1, z2], 1).to(self.device))

    def write_figures(self, figures_dir, test_x, metrics):
        x = test_x[:16]
        new = self.sample(16, torch.Generator().manual_seed(self.cfg.seed))
        rows = [("MNIST test", x), ("reconstruction", self.reconstruct(x)), ("new: z ~ N(0, I)", new)]
        if self.prior:
            k = len(self.prior["weights"])
            rows.append((f"new: z ~ mixture\nof {k} Gaussians", self.sample(16, torch.Generator().manual_seed(
                self.cfg.seed), sampler="mixture")))
        title = f"VAE, p = {self.cfg.latent_dim}, KL weight {self.cfg.kl_weight:g}, {len(metrics)} epochs"
        plot_rows(rows, Path(figures_dir) / "vae.png", title)
        plot_curves(
            metrics,
            [("-elbo", "−ELBO"), ("recon", "reconstruction −log p(x|z)"), ("kl", "KL(q(z|x) ‖ p(z))")],
            Path(figures_dir) / "vae_curves.png",
            ylabel="nats per image",
        )
        ends = (torch.arange(16) % len(test_x)).tolist()  # test images 0 → 1, 2 → 3, ..., 14 → 15 (fewer: again)
        lines = self.interpolate(test_x[ends[0::2]], test_x[ends[1::2]])
        plot_rows([(f"test {a} → {b}", line) for a, b, line in zip(ends[0::2], ends[1::2], lines)],
                  Path(figures_dir) / "vae_interpolation.png",
                  "VAE: decoded straight lines between the encodings μ of two test digits")
        if self.cfg.latent_dim == 2:
            plot_grid(self.manifold(), Path(figures_dir) / "vae_manifold.png",
                      "VAE, p = 2: decoder over Gaussian quantiles of z₁ (across), z₂ (down)")


class GANTrainer:
    """Algorithm 1 of Goodfellow et al.: k steps of D, then one of G, each on m images / m noise vectors."""

    name = "gan"
    n_fixed = 64  # fixed noise vectors for the figures

    def __init__(self, cfg, device):
        self.cfg, self.device = cfg, device
        self.G = Generator(cfg.noise_dim, cfg.hidden).to(device)
        self.D = Discriminator(cfg.hidden, cfg.dropout).to(device)
        self.opt_G = make_adam(self.G.parameters(), cfg.lr, device, betas=(cfg.beta1, cfg.beta2))
        self.opt_D = make_adam(self.D.parameters(), cfg.lr, device, betas=(cfg.beta1, cfg.beta2))
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False) if cfg.ema > 0 else None
        # matching tensors of G_ema and G (weights and BatchNorm statistics), for update_ema()
        self.ema_pairs = []
        if self.G_ema:
            self.ema_pairs = list(zip(self.G_ema.state_dict().values(), self.G.state_dict().values()))
        self.fixed_z = torch.randn(self.n_fixed, cfg.noise_dim, generator=torch.Generator().manual_seed(cfg.seed))
        self.d_steps = 0
        self.snapshots = {}  # epoch → G(fixed z[:16]), for figures/gan_progress.png
        self.standing = None  # after training: a copy of the sampler with its BatchNorm statistics recomputed

    def state_dict(self):
        return {
            "G": self.G.state_dict(), "D": self.D.state_dict(),
            "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
            "d_steps": self.d_steps, "snapshots": self.snapshots,
            **({"G_ema": self.G_ema.state_dict()} if self.G_ema else {}),
            **({"G_standing": self.standing.state_dict()} if self.standing else {}),
        }

    def load_state_dict(self, state):
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.d_steps = state["d_steps"]
        self.snapshots = dict(state["snapshots"])
        if self.G_ema:
            self.G_ema.load_state_dict(state["G_ema"])
        self.standing = None
        if "G_standing" in state:
            self.standing = copy.deepcopy(self.G_ema or self.G)
            self.standing.load_state_dict(state["G_standing"])

    @property
    def sampler(self):
        """The generator that draws the samples, in eval mode: G or its moving average, or after training that
        one with its BatchNorm statistics recomputed."""
        return (self.standing or self.G_ema or self.G).eval()

    def noise(self, m):
        return torch.randn(m, self.cfg.noise_dim, device=self.device)

    def d_step(self, x, fake):
        """Ascend log D(x) + log(1 − D(G(z))) on a minibatch of real images x and of fakes G(z) (minus R1 when
        due); only D's parameters move."""
        cfg = self.cfg
        self.D.train()
        penalize = cfg.r1 > 0 and self.d_steps % cfg.r1_every == 0
        real = x.detach().requires_grad_(True) if penalize else x
        real_logits, fake_logits = self.D.logits(real), self.D.logits(fake)
        loss, loss_real, loss_fake = discriminator_loss(real_logits, fake_logits)
        stats = {
            "d_loss": loss.detach(), "d_real_loss": loss_real.detach(), "d_fake_loss": loss_fake.detach(),
            "d_x": torch.sigmoid(real_logits).mean().detach(), "d_g_z": torch.sigmoid(fake_logits).mean().detach(),
        }
        if penalize:  # lazy: every r1_every steps, weighted by r1_every (StyleGAN2); not part of d_loss above
            penalty = r1_penalty(real_logits, real, cfg.r1)
            loss = loss + cfg.r1_every * penalty
            stats["r1"] = penalty.detach()
        self.opt_D.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_D.step()
        self.d_steps += 1
        return stats

    def g_step(self, fake):
        """Descend G's objective on a minibatch of fakes G(z), made with their graph; only G's parameters move."""
        self.D.train()
        self.D.requires_grad_(False)  # gradients flow through D into G, but D's own are not needed
        loss = generator_loss(self.D.logits(fake), self.cfg.generator_loss)
        self.opt_G.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_G.step()
        self.D.requires_grad_(True)
        self.update_ema()
        return loss.detach()

    def ema_decay(self):
        """The moving average's decay; with --ema-rampup its span 1/(1 − decay) stays within that share of
        G's steps so far (StyleGAN2's ramp-up), so that early on it follows G instead of its first weights."""
        if self.cfg.ema_rampup <= 0:
            return self.cfg.ema
        g_steps = self.d_steps // self.cfg.k  # one step of G after every k of D
        return min(self.cfg.ema, 1 - 1 / max(1.0, self.cfg.ema_rampup * g_steps))

    @torch.no_grad()
    def update_ema(self):
        """θ_ema ← decay · θ_ema + (1 − decay) · θ after each step of G (G_ema starts as a copy of G)."""
        weight = 1 - self.ema_decay()
        for ema, current in self.ema_pairs:
            if ema.is_floating_point():
                ema.lerp_(current, weight)
            else:  # BatchNorm's count of batches
                ema.copy_(current)

    def train_step(self, x):
        """One step of D, then, after every k of them, one of G: on the minibatch of noise of D's step, whose
        G(z) it reuses (one pass of G fewer), or with --g-noise fresh on one drawn anew, as in Algorithm 1."""
        self.standing = None  # G moves on: statistics recomputed for its earlier weights no longer fit them
        self.G.train()
        g_step_follows = (self.d_steps + 1) % self.cfg.k == 0
        shared = g_step_follows and self.cfg.g_noise == "shared"
        with torch.set_grad_enabled(shared):  # G(z)'s graph is kept only for G's step to reuse
            fake = self.G(self.noise(len(x)))
        stats = self.d_step(x, fake.detach())
        if g_step_follows:
            stats["g_loss"] = self.g_step(fake if shared else self.G(self.noise(len(x))))
        return stats

    @torch.inference_mode()
    def evaluate(self, test_x):
        """No test metric for the GAN; keeps G(fixed z) of this epoch for the progress figure."""
        epoch = len(self.snapshots) + 1
        self.snapshots[epoch] = self.sampler(self.fixed_z[:16].to(self.device)).cpu()
        return {}

    def after_training(self, train_x):
        """With --bn-batches, standing_statistics(); returns what was done, for the log, or None."""
        return self.standing_statistics(self.cfg.bn_batches) if self.cfg.bn_batches else None

    def standing_statistics(self, batches):
        """A copy of the sampler, its BatchNorm statistics recomputed for its own weights over that many batches
        of noise (BigGAN's "standing statistics"), draws the samples until training goes on."""
        generator = torch.Generator().manual_seed(self.cfg.seed)
        noise = (torch.randn(self.cfg.batch_size, self.cfg.noise_dim, generator=generator).to(self.device)
                 for _ in range(batches))
        self.standing = recompute_batchnorm(copy.deepcopy(self.G_ema or self.G), noise)
        return f"recomputed the BatchNorm statistics of the sampler over {batches} batches of noise"

    def stop_reason(self, train_stats):
        """Why training must stop after an epoch with these statistics (D has won, or diverged), or None."""
        if train_stats["d_g_z_max"] < GAN_COLLAPSE_D_FAKE:
            return (
                f"D(G(z)) stayed below {GAN_COLLAPSE_D_FAKE:g} for the whole epoch: D has won and G gets no signal"
            )
        if train_stats["d_loss"] > GAN_DIVERGED_D_LOSS:
            return (f"D's loss averaged {train_stats['d_loss']:.3g} over the epoch (2 log 2 = 1.39 where D cannot "
                    "tell real from generated): training has diverged; try a lower --lr")
        return None

    def epoch_line(self, record):
        """The numbers of an epoch for its line of the log."""
        tr = record["train"]
        return (
            f"D loss {tr['d_loss']:.3f}  G loss {tr.get('g_loss', float('nan')):.3f}  "
            f"D(x) {tr['d_x']:.3f}  D(G(z)) {tr['d_g_z']:.3f}"
        )

    def samplers(self):
        """What draws new images, by name, described: the one generator, or its moving average."""
        return {"G": "moving average of G" if self.G_ema else "G"}

    @torch.inference_mode()
    def sample(self, n, generator=None, sampler="G"):
        """n new images G(z), z ~ N(0, I), G in eval mode."""
        return self.sampler(torch.randn(n, self.cfg.noise_dim, generator=generator).to(self.device))

    def write_figures(self, figures_dir, test_x, metrics):
        figures_dir = Path(figures_dir)
        with torch.inference_mode():
            images = self.sampler(self.fixed_z.to(self.device))
        plot_grid(images, figures_dir / "gan.png", f"GAN samples G(z) for fixed z, {len(metrics)} epochs")
        plot_curves(
            metrics,
            [("d_loss", "D loss"), ("g_loss", "G loss"), ("d_x", "mean D(x)"), ("d_g_z", "mean D(G(z))")],
            figures_dir / "gan_curves.png",
        )
        epochs = sorted(self.snapshots)
        picked = sorted({epochs[round(i * (len(epochs) - 1) / 5)] for i in range(6)})
        plot_rows([(f"epoch {e}", self.snapshots[e]) for e in picked], figures_dir / "gan_progress.png",
                  "GAN: G(z) for the same z as training goes on")


@torch.no_grad()
def recompute_batchnorm(model, inputs):
    """Each BatchNorm's running mean and variance set to their plain averages over the batches of inputs,
    which pass through model in training mode; model is left in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None: a cumulative average over the batches, not an exponential one
    model.train()
    for x in inputs:
        model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


TRAINERS = {"vae": (VAEConfig, VAETrainer), "gan": (GANConfig, GANTrainer)}


def make_adam(params, lr, device, **kwargs):
    """Adam; the fused kernel where this PyTorch has it for the device (same math, fewer kernel calls)."""
    return torch.optim.Adam(params, lr=lr, fused=device.type in ("cpu", "cuda"), **kwargs)


class Meter:
    """Running weighted means (and maxima) of named scalar tensors; reads them back in one sync."""

    def __init__(self):
        self.sums, self.weights, self.maxima = {}, {}, {}

    def add(self, values, weight=1):
        for key, value in values.items():
            value = value.detach().float()
            self.sums[key] = self.sums.get(key, 0) + value * weight
            self.weights[key] = self.weights.get(key, 0) + weight
            self.maxima[key] = value if key not in self.maxima else torch.maximum(self.maxima[key], value)

    def means(self):
        keys = list(self.sums)
        values = torch.stack([self.sums[k] / self.weights[k] for k in keys]).tolist() if keys else []
        return dict(zip(keys, values))

    def means_and_maxima(self):
        keys = list(self.maxima)
        maxima = torch.stack([self.maxima[k] for k in keys]).tolist() if keys else []
        return {**self.means(), **{f"{k}_max": v for k, v in zip(keys, maxima)}}


def resolve_device(name):
    """The device --device names (auto: CUDA, then MPS, then the CPU), or one line where this machine lacks it."""
    counts = {"cuda": torch.cuda.device_count(), "mps": int(torch.backends.mps.is_available()), "cpu": 1}
    if name == "auto":
        name = next(kind for kind, count in counts.items() if count)
    try:
        device = torch.device(name)
    except RuntimeError:  # not a device's name
        device = None
    if device is None or not 0 <= (device.index or 0) < counts.get(device.type, 0):
        here = ["cpu"] + [f"cuda:{i}" for i in range(counts["cuda"])] + ["mps"] * counts["mps"]
        raise UsageError(f"device {name!r}: not on this machine, which has {', '.join(here)} (or pass auto)")
    return device


def fit(trainer, cfg, train_x, test_x, run_dir, resume=False, log_every=25, on_epoch=None):
    """Trains epoch by epoch; after each one saves checkpoint and metrics, so Ctrl-C loses at most one epoch
    (on_epoch(trainer, record), when given, is called after each: the instruments in tools/ score runs there)."""
    run_dir = Path(run_dir)
    metrics, first_epoch = [], 1
    if resume:
        state = load_checkpoint(run_dir / "checkpoint.pt", trainer.name)
        restore(trainer, state, run_dir / "checkpoint.pt")
        set_rng_states(state["rng"])
        metrics, first_epoch = state["metrics"], state["epoch"] + 1
        print(f"{trainer.name}: resuming after epoch {state['epoch']} from {run_dir / 'checkpoint.pt'}")
    train_x, test_x = train_x.to(trainer.device), test_x.to(trainer.device)
    n_batches = len(batch_bounds(len(train_x), cfg.batch_size))
    # one progress bar for the run, not one an epoch: a stop signal that lands in a finalizer (a bar's __del__)
    # would be lost, so none runs between epochs
    bar = tqdm(total=n_batches, leave=False, disable=None)
    for epoch in range(first_epoch, cfg.epochs + 1):
        start, meter = time.perf_counter(), Meter()
        bar.reset()
        bar.set_description(f"{trainer.name} epoch {epoch}/{cfg.epochs}", refresh=False)
        for step, x in enumerate(minibatches(train_x, cfg.batch_size), 1):
            meter.add(trainer.train_step(x))
            bar.update()
            if step % log_every == 0 or step == n_batches:
                bar.set_postfix({k: f"{v:.3g}" for k, v in meter.means().items()}, refresh=False)
        train_stats = meter.means_and_maxima()
        record = {"epoch": epoch, "seconds": 0.0, "train": meter.means(), "test": trainer.evaluate(test_x)}
        record["seconds"] = round(time.perf_counter() - start, 3)
        if not all_finite([record, trainer.state_dict()]):  # what is saved as good, fitted to and drawn, is finite
            raise TrainingStopped(f"a loss, a test metric or a weight became NaN or infinite in epoch {epoch}", run_dir)
        reason = trainer.stop_reason(train_stats)
        if reason:
            raise TrainingStopped(f"epoch {epoch}: {reason}", run_dir)
        metrics.append(record)
        save_checkpoint(run_dir, trainer, cfg, epoch, metrics)
        print(f"{trainer.name} epoch {epoch:3d}/{cfg.epochs}  {trainer.epoch_line(record)}  {record['seconds']:.1f} s",
              flush=True)
        if on_epoch:
            on_epoch(trainer, record)
    bar.close()
    return metrics


def all_finite(obj):
    """Whether every number in obj (tensors, floats, and dicts and lists of them) is finite."""
    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, (dict, list, tuple)):
        return all(map(all_finite, obj.values() if isinstance(obj, dict) else obj))
    return True


class TrainingStopped(UsageError):
    """Training diverged; the checkpoint of the last good epoch stays on disk."""

    def __init__(self, reason, run_dir):
        super().__init__(f"training stopped: {reason}; {what_is_kept(run_dir)}")


def what_is_kept(run_dir, command=None):
    """What a run that stopped leaves in run_dir, as a phrase; with its command, how to continue from it."""
    try:
        epoch = load_checkpoint(Path(run_dir) / "checkpoint.pt")["epoch"]
    except UsageError:
        return "no epoch finished, so there is no checkpoint"
    advice = f"; continue with: {command} --resume --run-dir {shlex.quote(str(run_dir))}" if command else ""
    return f"the checkpoint of epoch {epoch} is kept in {run_dir}{advice}"


# ----------------------------------------------------------------------------- the VAE's fitted prior
# Ex-post density estimation (Ghosh et al., ICLR 2020, §4): after training, fit a Gaussian mixture
#   q(z) = Σ_k π_k N(z | m_k, S_k)
# to the encoder means μ(x) of the training images; new images are z ~ q(z) through the decoder alone.
def fit_mixture(z, k, iterations=100, tol=1e-3, seed=0, reg=1e-6):
    """EM for a full-covariance Gaussian mixture on the rows of z (N×p), seeded by k-means++ and 10 k-means
    steps; stops when the mean log-likelihood gains less than tol. Returns float64 tensors
    {"weights": k, "means": k×p, "covariances": k×p×p}."""
    z = z.detach().double().cpu()
    n, p = z.shape
    zz = outer_products(z)  # N×p²
    centres = kmeans(z, k, torch.Generator().manual_seed(seed))
    resp = F.one_hot(torch.cdist(z, centres).argmin(1), k).double()  # N×k responsibilities r_ik
    log_likelihood = -math.inf
    for _ in range(iterations):
        # M step: π_k = N_k / N,  m_k = Σ_i r_ik z_i / N_k,  S_k = Σ_i r_ik z_i z_iᵀ / N_k − m_k m_kᵀ + reg·I
        n_k = resp.sum(0) + 1e-10
        means = resp.T @ z / n_k[:, None]
        second_moments = (resp.T @ zz).reshape(k, p, p) / n_k[:, None, None]
        covariances = second_moments - means[:, :, None] * means[:, None, :] + reg * torch.eye(p, dtype=z.dtype)
        prior = {"weights": n_k / n, "means": means, "covariances": covariances}
        # E step: r_ik = π_k N(z_i | m_k, S_k) / Σ_j π_j N(z_i | m_j, S_j)
        log_joint = component_log_probs(prior, z)  # N×k
        resp = torch.softmax(log_joint, 1)
        previous, log_likelihood = log_likelihood, torch.logsumexp(log_joint, 1).mean().item()
        if log_likelihood - previous < tol:
            break
    return prior


def kmeans(z, k, generator, steps=10):
    """k centres: k-means++ (each new centre drawn with probability ∝ squared distance), then Lloyd steps."""
    centres = z[torch.randint(len(z), (1,), generator=generator)]
    d2 = torch.cdist(z, centres).squeeze(1).pow(2)
    for _ in range(1, k):
        new = z[torch.multinomial(d2 + 1e-30, 1, generator=generator)]
        centres = torch.cat([centres, new])
        d2 = torch.minimum(d2, torch.cdist(z, new).squeeze(1).pow(2))
    for _ in range(steps):
        nearest = F.one_hot(torch.cdist(z, centres).argmin(1), k).double()  # N×k
        count = nearest.sum(0)
        centres = torch.where(count[:, None] > 0, nearest.T @ z / count.clamp_min(1)[:, None], centres)
    return centres


def outer_products(z):
    """z_i z_iᵀ for each row of z (N×p), flattened: N×p²."""
    return (z[:, :, None] * z[:, None, :]).reshape(len(z), -1)


def component_log_probs(prior, z):
    """log π_k + log N(z_i | m_k, S_k) for each row z_i of z and each component k: N×k. With P_k = S_k⁻¹,
    (z − m)ᵀ P (z − m) = zᵀPz − 2 zᵀPm + mᵀPm: three matrix products over all components at once."""
    means, p = prior["means"], z.shape[1]
    L = torch.linalg.cholesky(prior["covariances"])  # S_k = L_k L_kᵀ
    P = torch.cholesky_inverse(L)  # k×p×p
    Pm = (P @ means[:, :, None]).squeeze(2)  # k×p
    quadratic = outer_products(z) @ P.reshape(len(means), p * p).T - 2 * z @ Pm.T + (means * Pm).sum(1)  # N×k
    log_det = 2 * L.diagonal(dim1=1, dim2=2).log().sum(1)  # log |S_k|
    return prior["weights"].log() - 0.5 * (quadratic + log_det + p * math.log(2 * math.pi))


def sample_mixture(prior, n, generator=None):
    """n draws z ~ q(z) (n×p float64): a component k ~ π, then z = m_k + L_k ε with L_k L_kᵀ = S_k and
    ε ~ N(0, I)."""
    k = torch.multinomial(prior["weights"], n, replacement=True, generator=generator)
    eps = torch.randn(n, prior["means"].shape[1], 1, generator=generator, dtype=torch.float64)
    return prior["means"][k] + (torch.linalg.cholesky(prior["covariances"])[k] @ eps).squeeze(2)


# ----------------------------------------------------------------------------- figures
def tile(images, ncols, pad=2):
    """B×784 images in [0,1] → one 2-D array of rows of ncols images, white gaps of pad pixels between."""
    images = images.detach().float().cpu().reshape(-1, IMAGE_SIDE, IMAGE_SIDE).numpy()  # B×28×28
    nrows = math.ceil(len(images) / ncols)
    step = IMAGE_SIDE + pad
    canvas = np.ones((nrows * step - pad, ncols * step - pad), dtype=np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, ncols)
        canvas[r * step : r * step + IMAGE_SIDE, c * step : c * step + IMAGE_SIDE] = image
    return canvas


def save_figure(fig, path):
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=fig.dpi))


def plot_rows(rows, path, title):
    """One labelled row of images per (label, B×784 images) pair."""
    ncols = max(len(images) for _, images in rows)
    fig = Figure(figsize=(ncols * 0.6 + 1.6, len(rows) * 0.75 + 0.5), dpi=100, layout="constrained")
    fig.suptitle(title, fontsize=10)
    for ax, (label, images) in zip(fig.subplots(len(rows), 1, squeeze=False)[:, 0], rows):
        ax.imshow(tile(images, ncols), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
        for spine in ax.spines.values():
            spine.set_visible(False)
    save_figure(fig, path)


def plot_grid(images, path, title):
    """A square-ish grid of images."""
    ncols = math.ceil(math.sqrt(len(images)))
    fig = Figure(figsize=(6, 6.3), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.imshow(tile(images, ncols), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)


def plot_curves(metrics, series, path, ylabel=""):
    """One panel per (key, label): train (and test, where measured) per epoch."""
    epochs = [m["epoch"] for m in metrics]
    fig = Figure(figsize=(4 * len(series), 3.2), dpi=100, layout="constrained")
    for ax, (key, label) in zip(fig.subplots(1, len(series), squeeze=False)[0], series):
        for split in ("train", "test"):
            points = [(e, m[split][key]) for e, m in zip(epochs, metrics) if key in m[split]]
            if points:
                ax.plot(*zip(*points), marker="." if len(points) < 30 else None, label=split)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


# ----------------------------------------------------------------------------- checkpoints and stops
def atomic_write(path, write):
    """Calls write(file) on a temporary file beside path, then renames it over path: path holds the old file
    or the new one, never half of one. Where writing fails (a full disk), the previous file stays."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")  # named before it exists: a stop at any
    try:  # moment, even as it is made, finds the name to remove; a name of its own for each writer
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:  # a stop signal too: no temporary file is left behind
        tmp.unlink(missing_ok=True)
        e = error  # torch.save cut short raises its own RuntimeError about the file; what cut it is the context
        while not isinstance(e, (KeyboardInterrupt, OSError)) and e.__context__ is not None:
            e = e.__context__
        if not isinstance(e, OSError):
            raise e if isinstance(e, KeyboardInterrupt) else error
        kept = "; the previous file is kept" if path.is_file() else ""
        raise UsageError(f"could not write {path}: {e.strerror or e}{kept}") from None


def save_json(path, obj):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def save_checkpoint(run_dir, trainer, cfg, epoch, metrics):
    """Model(s), optimizer(s), config, epoch, metrics and RNG states: all that --resume needs; then readable
    copies of its config and metrics, config.json and metrics.json."""
    state = {"format": CHECKPOINT_FORMAT, "model": trainer.name, "config": dataclasses.asdict(cfg), "epoch": epoch,
             "metrics": metrics, "trainer": trainer.state_dict(), "rng": rng_states()}
    atomic_write(Path(run_dir) / "checkpoint.pt", lambda f: torch.save(state, f))
    save_json(Path(run_dir) / "config.json", {"model": trainer.name, **state["config"]})
    save_json(Path(run_dir) / "metrics.json", metrics)


def rng_states():
    """The state of every random generator a run draws from: the CPU's, and each GPU's where there is one."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        states["mps"] = torch.mps.get_rng_state()
    return states


def set_rng_states(states):
    """Restores what rng_states() saved, so a resumed run draws the noise an uninterrupted one would."""
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "mps" in states and torch.backends.mps.is_available():
        torch.mps.set_rng_state(states["mps"])


def load_checkpoint(path, model=None):
    """The checkpoint at path, its config as a config object; one line where it is not this version's or model's."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no checkpoint here (train first, or pass --checkpoint / --run-dir)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a corrupt file
        # torch's advice for a file of other objects, to load it with weights_only=False, would run a pickle's code
        reason = "it holds objects other than tensors and plain data" if "weights_only" in str(e) else first_line(e)
        raise UsageError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(state, dict) or state.get("model") not in TRAINERS:
        raise UsageError(f"{path}: not a homework7 checkpoint")
    config_cls = TRAINERS[state["model"]][0]
    if state.get("format") != CHECKPOINT_FORMAT or set(state["config"]) != {f.name for f in
                                                                           dataclasses.fields(config_cls)}:
        raise UsageError(f"{path}: written by another version of homework7.py; train it again")
    if model and state["model"] != model:
        raise UsageError(f"{path}: a {state['model']} checkpoint, not a {model} one")
    state["config"] = config_cls(**state["config"])
    return state


def trainer_from_checkpoint(state, device, path):
    return restore(TRAINERS[state["model"]][1](state["config"], device), state, path)


def restore(trainer, state, path):
    """The trainer with the checkpoint's weights and optimizer states, or one line where they do not fit it."""
    try:
        trainer.load_state_dict(state["trainer"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
        raise UsageError(f"{path}: a damaged checkpoint, or one written by another version of homework7.py "
                         f"({first_line(e)}); train it again") from None
    return trainer


# Ctrl-C; kill, timeout or a scheduler; a closed terminal (Windows has no SIGHUP)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def stop(signum, frame):
    """The one handler of the stop signals: the first raises KeyboardInterrupt(its number) in the main thread,
    wherever it is; those after it are ignored, so that a second Ctrl-C cannot cut short the way out."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    raise KeyboardInterrupt(signum)


@contextlib.contextmanager
def stop_signals_handled():
    """stop() handles the stop signals while the block runs, except one the parent ignores (as nohup ignores
    SIGHUP); the previous handlers come back after it, unless a signal came."""
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s, before in previous.items():
        if before is not signal.SIG_IGN:
            signal.signal(s, stop)
    try:
        yield
    finally:
        for s, before in previous.items():
            if signal.getsignal(s) is stop:
                signal.signal(s, before)


# ----------------------------------------------------------------------------- command line
class Parser(argparse.ArgumentParser):
    """argparse, with a bad flag answered in one line (the usage is one --help away) and exit status 2, and
    no abbreviated flags (--epoch is a typo, not --epochs)."""

    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_config_flags(parser, config_cls, skip=()):
    """One --flag per config field; defaults are left out of the namespace so given flags can be told apart."""
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        kwargs = {"type": f.type, "metavar": f.name.upper(), **f.metadata}
        within = kwargs.pop("within")
        said = ([] if f.default is None else [f"default: {f.default!r}"]) + ([f"within {within}"] if within else [])
        kwargs["help"] = (kwargs["help"] + (f" ({'; '.join(said)})" if said else "")).replace("%", "%%")
        parser.add_argument("--" + f.name.replace("_", "-"), default=argparse.SUPPRESS, **kwargs)


def build_parser():
    parser = Parser(prog="homework7.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{vae,gan}")
    for name, (config_cls, _) in TRAINERS.items():
        sub = commands.add_parser(name, help=f"train the {name.upper()} and write its figures",
                                  description=config_cls.__doc__)
        add_config_flags(sub, config_cls)
        sub.add_argument("--resume", action="store_true",
                         help="continue from the checkpoint in the run directory (its config is kept)")
    return parser


RESUMABLE_CHANGES = {"epochs", "device", "figures_dir", "run_dir", "mixture_components", "mixture_fit_n"}


def make_config(config_cls, given, name, resume=False):
    """The run's config: defaults updated by the given flags, or, with --resume, the checkpoint's config."""
    run_dir = Path(given.get("run_dir") or f"runs/{name}")
    if not resume:
        cfg = config_cls(**given)
    else:
        state = load_checkpoint(run_dir / "checkpoint.pt", name)
        saved = dataclasses.asdict(state["config"])
        changed = sorted(k for k, v in given.items() if k not in RESUMABLE_CHANGES and saved.get(k) != v)
        if changed:
            raise UsageError(f"--resume keeps the checkpoint's config; it differs in: {', '.join(changed)}")
        cfg = config_cls(**{**saved, **given})
        if cfg.epochs < state["epoch"]:
            raise UsageError(f"--epochs {cfg.epochs}: the checkpoint has trained {state['epoch']} epochs already; "
                             f"pass --epochs {state['epoch']} or more")
    cfg.run_dir = str(run_dir)
    validate_config(cfg)
    return cfg


def validate_config(cfg):
    """Refuses, before any work, a number outside its field's range, and flags that do not go together."""
    for f in dataclasses.fields(cfg):
        value, within = getattr(cfg, f.name), f.metadata.get("within")
        if within and value is not None and not lies_within(value, within):
            raise UsageError(f"--{f.name.replace('_', '-')} {value}: must lie within {within}")
    if cfg.test_data and not cfg.data:
        raise UsageError("--test-data needs --data (MNIST from data/ has its own test set)")
    if not cfg.figures_dir:
        raise UsageError("--figures-dir '': must name a directory")


def train(name, cfg, resume=False):
    """Trains one model as cfg says and writes its figures; returns (trainer, test images on its device)."""
    device = resolve_device(cfg.device)
    trainer_cls = TRAINERS[name][1]
    train_x, test_x = load_images(cfg)
    n_fit = min(len(train_x), getattr(cfg, "mixture_fit_n", 0))
    if getattr(cfg, "mixture_components", 0) > n_fit:
        raise UsageError(f"--mixture-components {cfg.mixture_components}: more components than the {n_fit} "
                         f"training encodings the mixture is fitted to; pass --mixture-components {n_fit} or fewer "
                         "(0: no mixture)")
    if name == "gan" and len(train_x) < 2:
        raise UsageError("the GAN needs at least 2 training images (BatchNorm normalises over a minibatch)")
    with output_dirs(("--run-dir", cfg.run_dir), ("--figures-dir", cfg.figures_dir)):
        print(f"{name}: {len(train_x)} training and {len(test_x)} test images on {device}; run dir {cfg.run_dir}")
        torch.manual_seed(cfg.seed)  # initial weights, data order, dropout and noise
        trainer = trainer_cls(cfg, device)
        start = time.perf_counter()
        metrics = fit(trainer, cfg, train_x, test_x, cfg.run_dir, resume=resume)
        finish_start = time.perf_counter()
        done = trainer.after_training(train_x)  # the VAE's mixture, the GAN's BatchNorm statistics: into the checkpoint
        if done:  # the state changed since fit() checked it: checked again before it is saved and drawn
            if not all_finite(trainer.state_dict()):
                raise TrainingStopped(f"after training, {done}: it holds NaN or infinite numbers", cfg.run_dir)
            print(f"{name}: {done} in {time.perf_counter() - finish_start:.1f} s")
            save_checkpoint(cfg.run_dir, trainer, cfg, metrics[-1]["epoch"], metrics)
        test_x = test_x.to(device)
        trainer.write_figures(cfg.figures_dir, test_x, metrics)
    print(f"{name}: trained in {time.perf_counter() - start:.1f} s; figures in {cfg.figures_dir}/, "
          f"checkpoint in {cfg.run_dir}/")
    return trainer, test_x


@contextlib.contextmanager
def output_dirs(*flagged_dirs):
    """Makes each (flag, directory) before any work, or says in one line why it cannot be used; when the block
    ends, those it made that stayed empty are removed, so that a run that wrote nothing leaves nothing."""
    made = [p for _, d in flagged_dirs for p in (Path(d), *Path(d).parents) if not p.exists()]  # deepest first
    try:
        for flag, directory in flagged_dirs:
            try:
                Path(directory).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UsageError(f"{flag} {directory}: {e.strerror or e}") from None
            if not os.access(directory, os.W_OK | os.X_OK):
                raise UsageError(f"{flag} {directory}: not writable")
        yield
    finally:
        for path in made:
            with contextlib.suppress(OSError):  # one that holds files stays
                path.rmdir()


def train_command(name, given, resume):
    cfg = make_config(TRAINERS[name][0], given, name, resume)
    try:
        train(name, cfg, resume)
    except KeyboardInterrupt as e:  # Ctrl-C, or another stop signal
        status, why = stopped_by(e)
        print(f"\n{name}: {why}; {what_is_kept(cfg.run_dir, f'python homework7.py {name}')}", file=sys.stderr)
        return status
    return 0


def stopped_by(error):
    """(exit status 128 + the signal's number, words for the log) of the KeyboardInterrupt of a stop signal."""
    signum = error.args[0] if error.args else signal.SIGINT  # stop() passes the number, Python's own Ctrl-C none
    return 128 + signum, "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"


def run_cli(parser, argv, command):
    """Parses argv and runs command(args), for every command of this script and of tools/: whatever the
    console's encoding, what they print is written (a character it lacks as ?); bad input, a file that cannot
    be read or written, and memory that runs out end in one line and exit status 2; a stop signal in one line
    and status 128 + its number: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    try:
        with stop_signals_handled():
            return command(parser.parse_args(argv))
    except UsageError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
    except OSError as e:  # one of the files the command names (a named file's error says which), or its output
        if e.filename is None:  # the output: nothing more is written to it, not even at the exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            if isinstance(e, BrokenPipeError):  # its reader has gone (| head): end quietly, as a Unix filter does
                return 128 + 13  # SIGPIPE's status
        print(f"{parser.prog}: error: {e.filename or 'the output'}: {e.strerror or e}", file=sys.stderr)
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        print(f"{parser.prog}: error: out of memory ({first_line(e)}); choose smaller sizes", file=sys.stderr)
    except KeyboardInterrupt as e:  # Ctrl-C, or another stop signal
        status, why = stopped_by(e)
        print(f"\n{parser.prog}: {why}", file=sys.stderr)
        return status
    return 2


def out_of_memory(error):
    """Whether an exception says that memory ran out (numpy's MemoryError, PyTorch's CPU allocator or CUDA)."""
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(error)


def dispatch(args):
    """The command the arguments name: train a model."""
    given = {k: v for k, v in vars(args).items() if k not in ("command", "resume")}
    return train_command(args.command, given, args.resume)


def main(argv=None):
    return run_cli(build_parser(), argv, dispatch)


if __name__ == "__main__":
    sys.exit(main())
