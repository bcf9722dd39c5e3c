"""homework7 — a variational auto-encoder and a GAN on MNIST (CS/DS 541, HW7).

  * VAE: Kingma & Welling, "Auto-Encoding Variational Bayes", Algorithm 1 with the
    loss of Eq. 10 (https://arxiv.org/abs/1312.6114).
  * GAN: Goodfellow et al., "Generative Adversarial Nets", Algorithm 1
    (https://arxiv.org/abs/1406.2661).

Usage: python homework7.py vae|gan [flags]; --help lists every flag with its default.
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
import logging
import math
import os
import secrets
import shlex
import signal
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

SCRIPT = Path(__file__).name  # as handed in (homework7.jsmith.py): the name its messages give

# torch's CPU threads (OpenMP) spin while they wait for one another (libgomp for milliseconds, LLVM's and Intel's for
# 200 ms), holding the core that another busy process needs: a run in company slows many times over. A short spin
# keeps it near its one-thread speed there; read as torch loads, and a setting of the user's own wins.
SHORT_SPIN = {"GOMP_SPINCOUNT": "1000", "KMP_BLOCKTIME": "0"}  # GNU's spin in rounds, LLVM's and Intel's in ms
if "OMP_WAIT_POLICY" not in os.environ:
    for name, value in SHORT_SPIN.items():
        os.environ.setdefault(name, value)

try:  # torch takes a second or more to load: a Ctrl-C then ends in one line too
    import numpy as np
    import torch
    import torch.nn.functional as F
    logging.getLogger("matplotlib").setLevel(logging.ERROR)  # with no writable HOME it caches in /tmp, unsaid
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from torch import nn
    from tqdm import tqdm
except KeyboardInterrupt:
    print(f"\n{SCRIPT}: interrupted while starting", file=sys.stderr)
    sys.exit(130)

# ----------------------------------------------------------------------------- config
IMAGE_SIDE = 28  # MNIST images are 28×28 ...
IMAGE_DIM = IMAGE_SIDE * IMAGE_SIDE  # ... flattened to 784 pixels


def arg(default, help, within=None, **argparse_kwargs):
    """A config field whose one-line help is also its command-line help; a number's range, within, is written
    as in mathematics ("[0, 1)", "(0, inf)"), said in that help and checked before any work (validate_config)."""
    return field(default=default, metadata={"help": help, "within": within, **argparse_kwargs})


@dataclass
class RunConfig:
    """What every training run shares."""

    seed: int = arg(0, "random seed (data order, initial weights, noise)", "[0, 4294967295]")
    n_train: int = arg(None, "use only the first N training images (default: all)", "[1, 1e9]", type=int)
    data: str = arg("", "training images: .npy (N×784 or N×28×28) or IDX file; '' = MNIST from data/")
    test_data: str = arg("", "test images for --data; '' holds out the last 10% of --data")
    device: str = arg("auto", "cpu, cuda, cuda:N, mps, or auto (CUDA, then MPS, then CPU)")
    threads: int = arg(0, "CPU threads of torch's operations (0 = torch's choice, one per core; 1 for several "
                          "runs at once)", "[0, 1024]")
    figures_dir: str = arg("", "where the PNG figures go ('' = figures/ for a run of the defaults, otherwise its "
                               "run directory)")
    run_dir: str = arg("", "where the checkpoint, config.json and metrics.json go ('' = runs/<model>, followed by the "
                           "flags that change what it trains, as in runs/vae_n-train=100)")

    def for_training_set(self, n):
        """The config with the sizes left to the training set of n images filled in (here none are)."""
        return self


@dataclass
class VAEConfig(RunConfig):
    """The VAE: encoder 784→hidden→2p (tanh, dropout), decoder p→hidden→784 sigmoids."""

    epochs: int = arg(None, "passes over the training set (default: 60, or on a small training set as many as "
                            "make 3,000 steps)", "[1, 1e6]", type=int)
    batch_size: int = arg(None, "minibatch size M (default: 500, or a twentieth of a smaller training set)",
                          "[1, 1e6]", type=int)
    lr: float = arg(4.5e-3, "Adam learning rate", "(0, inf)")
    latent_dim: int = arg(32, "p, the dimension of the latent code z", "[1, 1e9]")
    hidden: int = arg(200, "hidden units of encoder and decoder", "[1, 1e9]")
    dropout: float = arg(0.1, "dropout rate on the encoder's hidden layer", "[0, 1)")
    kl_weight: float = arg(0.5, "weight of the KL term of Eq. 10 against reconstruction", "[0, inf)")
    mixture_components: int = arg(None, "components of the Gaussian mixture fitted to the encodings μ(x) after "
                                       "training, a second way to draw z (default: 200, or one per 100 encodings "
                                       "where that is fewer; 0 = none)", "[0, 1e6]", type=int)
    mixture_fit_n: int = arg(20000, "fit the mixture to the encodings of at most this many training images",
                             "[1, 1e9]")

    def for_training_set(self, n):
        """The config with the sizes left to the training set of n images filled in. MNIST's 60,000 get minibatches
        of 500 for 60 epochs and a mixture of 200; the assignment's debugging run on 100 images gets minibatches of
        5 for 150 epochs, enough steps to reconstruct them almost perfectly at KL weight 0, and a mixture of 1."""
        batch_size = self.batch_size or min(500, math.ceil(n / 20))
        epochs = self.epochs or max(60, math.ceil(3000 / len(batch_bounds(n, batch_size))))
        n_fit = min(n, self.mixture_fit_n)
        components = min(200, n_fit // 100) if self.mixture_components is None else self.mixture_components
        if components > n_fit or (components == 0 and self.mixture_components != 0):  # asked for, but cannot be
            print(f"vae: no mixture of {components or 'one component per 100 encodings'}: the training set gives "
                  f"{n_fit} encodings to fit it to")
            components = 0
        return dataclasses.replace(self, batch_size=batch_size, epochs=epochs, mixture_components=components)


@dataclass
class GANConfig(RunConfig):
    """The GAN: G with 4 linear layers, D with input dropout and 3 linear layers."""

    epochs: int = arg(60, "passes of D over the training set", "[1, 1e6]")
    batch_size: int = arg(500, "minibatch size m, of real images and of noise vectors; 2 or more, since D's "
                               "BatchNorm normalises over it", "[1, 1e6]")
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
    bn_batches: int = arg(200, "after training, recompute the BatchNorm statistics of the G that draws the "
                             "samples over this many batches of noise (0 = keep those averaged from G's)", "[0, 1e5]")
    g_noise: str = arg("shared", "G's minibatch of noise: shared with D's step just before, whose G(z) it reuses "
                                 "(one pass of G fewer), or fresh, drawn anew as in Algorithm 1",
                       choices=("shared", "fresh"))
    generator_loss: str = arg("non-saturating", "G's objective: minimax, log(1-D(G(z))), or non-saturating, "
                                                 "-log D(G(z))", choices=("non-saturating", "minimax"))


# ----------------------------------------------------------------------------- models
class VAE(nn.Module):
    """Encoder Q_φ(z|x) = N(μ, diag σ²) and decoder P_θ(x|z) = Π Bernoulli(sigmoid(logits))."""

    def __init__(self, latent_dim, hidden, dropout):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(IMAGE_DIM, hidden), nn.Tanh(), FastDropout(dropout), nn.Linear(hidden, 2 * latent_dim)
        )
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, IMAGE_DIM))

    def encode(self, x):
        """x: B×784 → μ, log σ² (each B×p); exponentiating log σ² keeps the variance positive."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def pixel_means(self, z):
        """z: B×p → the 784 Bernoulli means y = sigmoid(decoder(z)) in (0, 1); decoder(z) itself gives their logits."""
        return torch.sigmoid(self.decoder(z))

    def forward(self, x, eps=None):
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, eps)
        return self.decoder(z), mu, logvar


def reparameterize(mu, logvar, eps=None):
    """z = μ + σ ⊙ ε with ε ~ N(0, I): a sample of Q_φ(z|x) that gradients flow through."""
    if eps is None:
        eps = torch.randn_like(mu)
    return mu + torch.exp(0.5 * logvar) * eps


class Generator(nn.Module):
    """G: noise z → 4 linear layers, BatchNorm + ReLU between them → 784 sigmoids."""

    def __init__(self, noise_dim, hidden):
        super().__init__()
        layers, width = [], noise_dim
        for _ in range(3):
            layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(hidden, IMAGE_DIM))

    def forward(self, z):
        return torch.sigmoid(self.net(z))


class Discriminator(nn.Module):
    """D: input dropout → 3 linear layers, BatchNorm + ReLU between them → one sigmoid."""

    def __init__(self, hidden, dropout):
        super().__init__()
        self.net = nn.Sequential(
            FastDropout(dropout),
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


class FastDropout(nn.Dropout):
    """nn.Dropout with its mask drawn by torch.rand: the same distribution, but on a CPU faster than the
    bernoulli_ kernel that nn.Dropout uses."""

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
# Each trainer holds its networks and optimizers, and gives fit() one minibatch step (train_step), what ends
# an epoch (after_epoch) and what follows the last one (after_training), its new images (sample) and its figures.
class Trainer:
    """What a checkpoint holds of a trainer: the attributes named in `saved` (a network or an optimizer by its
    state_dict(), a number as it is) and, once training has ended, those in `derived`, which after_training()
    makes from the trained weights and no step changes."""

    saved, derived = (), ()
    min_batch = 1  # the fewest images in a minibatch (a D's BatchNorm needs 2)

    def state_dict(self, finished=False):
        names = self.saved + (self.derived if finished else ())
        return {name: value.state_dict() if hasattr(value, "state_dict") else value
                for name in names if (value := getattr(self, name)) is not None}

    def load_state_dict(self, state):
        for name in self.saved:
            if hasattr(getattr(self, name), "load_state_dict"):
                getattr(self, name).load_state_dict(state[name])
            else:
                setattr(self, name, state[name])
        for name in self.derived:
            setattr(self, name, state.get(name))


class VAETrainer(Trainer):
    """Algorithm 1 of Kingma & Welling with L = 1 sample per image, Adam on θ and φ together."""

    name, config_cls = "vae", VAEConfig
    columns = ("loss", "-elbo", "recon", "kl")  # of the log: the loss descended, then its parts
    saved, derived = ("model", "optimizer"), ("mixture",)

    def __init__(self, cfg, device):
        self.cfg, self.device = cfg, device
        self.model = VAE(cfg.latent_dim, cfg.hidden, cfg.dropout).to(device)
        self.optimizer = make_adam(self.model.parameters(), cfg.lr, device)
        self.mixture = None  # after training: {"weights", "means", "covariances"}

    def train_step(self, x):
        """One step of Adam down the loss of Eq. 10."""
        loss, stats, _ = self.loss(x)
        descend(self.optimizer, loss)
        return stats

    def loss(self, x):
        """(the loss of Eq. 10 on the minibatch x, its parts for the log, the logits of the reconstructions), model
        in training mode."""
        self.model.train()
        mu, logvar = self.model.encode(x)
        x_logits = self.model.decoder(reparameterize(mu, logvar))
        loss, recon, kl = vae_loss(x, x_logits, mu, logvar, self.cfg.kl_weight)
        return loss, {"loss": loss.detach(), "-elbo": (recon + kl).detach(), "recon": recon.detach(),
                      "kl": kl.detach()}, x_logits

    def after_epoch(self, test_x, steps):
        return self.evaluate(test_x)

    @torch.inference_mode()
    def evaluate(self, test_x):
        """Test-set −ELBO (KL weight 1), reconstruction and KL, nats per image, model in eval mode. Its ε comes from a
        generator of its own, so that the test set changes none of training's random numbers."""
        self.model.eval()
        generator, totals = torch.Generator(test_x.device).manual_seed(self.cfg.seed), {}
        for x in test_x.split(1000):
            eps = torch.randn(len(x), self.cfg.latent_dim, generator=generator, device=x.device)
            _, recon, kl = vae_loss(x, *self.model(x, eps), kl_weight=1.0)
            for key, value in {"-elbo": recon + kl, "recon": recon, "kl": kl}.items():
                totals[key] = totals.get(key, 0) + value * len(x)
        return {key: (total / len(test_x)).item() for key, total in totals.items()}

    @torch.no_grad()
    def after_training(self, train_x):
        """The mixture: --mixture-components Gaussians fitted to the encodings μ(x) of (up to) --mixture-fit-n
        training images, drawn with the run's seed; None with 0. Returns what was done, for the log, or None."""
        cfg, self.mixture = self.cfg, None
        if not cfg.mixture_components:
            return None
        self.model.eval()
        pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(cfg.seed))
        x = train_x[pick[: cfg.mixture_fit_n]].to(self.device)
        mu = torch.cat([self.model.encode(chunk)[0] for chunk in x.split(1000)])
        try:
            self.mixture = fit_mixture(mu, cfg.mixture_components, seed=cfg.seed)
        except torch.linalg.LinAlgError:  # a covariance that float64 cannot hold: encodings of a diverged encoder
            raise Diverged("the mixture could not be fitted to these encodings; train with a lower --lr, or "
                           "pass --mixture-components 0") from None
        k = cfg.mixture_components
        return f"fitted a mixture of {k} Gaussian{'s' if k > 1 else ''} to {len(x)} encodings mu(x)"

    def sampler_labels(self):
        """The ways to draw new images, by name, each with its label: the prior z ~ N(0, I), then the mixture."""
        labels = {"prior": "z ~ N(0, I)"}
        if self.mixture:
            labels["mixture"] = f"z ~ mixture of {len(self.mixture['weights'])}"
        return labels

    @torch.inference_mode()
    def sample(self, n, generator=None, sampler="prior"):
        """n new images: z ~ N(0, I) (sampler "prior") or z ~ the mixture ("mixture"), through the decoder alone
        (its Bernoulli means)."""
        self.model.eval()
        if sampler == "mixture":
            z = sample_mixture(self.mixture, n, generator).float()
        else:
            z = torch.randn(n, self.cfg.latent_dim, generator=generator)
        return self.model.pixel_means(z.to(self.device))

    @torch.inference_mode()
    def reconstruct(self, x):
        """Decoder mean of the encoder mean, model in eval mode."""
        self.model.eval()
        mu, _ = self.model.encode(x)
        return self.model.pixel_means(mu)

    def write_figures(self, figures_dir, train_x, test_x, metrics):
        """Draws the run's figures in figures_dir and returns their paths. The images reconstructed are test images,
        or, for a model trained on fewer images than the test set holds, as the debugging run on 100 is, the
        training images: it cannot yet reconstruct images it never saw."""
        shown, which = (train_x, "training") if len(train_x) < len(test_x) else (test_x, "test")
        x = shown[:16].to(self.device)
        rows = [(f"{which} images", x), ("reconstruction", self.reconstruct(x))]  # then the prior's, the mixture's
        rows += [(f"new: {words}", self.sample(16, torch.Generator().manual_seed(self.cfg.seed), sampler))
                 for sampler, words in self.sampler_labels().items()]
        cfg = self.cfg
        title = f"{self.name.upper()}, p = {cfg.latent_dim}, KL weight {cfg.kl_weight:g}, {len(metrics)} epochs"
        series = [("-elbo", "−ELBO"), ("recon", "reconstruction −log p(x|z)"), ("kl", "KL(q(z|x) ‖ p(z))")]
        return [plot_rows(rows, Path(figures_dir) / "vae.png", title),
                plot_curves(metrics, series, Path(figures_dir) / "vae_curves.png", ylabel="nats per image")]


class GANTrainer(Trainer):
    """Algorithm 1 of Goodfellow et al.: k steps of D, then one of G, each on m images / m noise vectors."""

    name, config_cls = "gan", GANConfig
    columns = ("d_loss", "d_real_loss", "d_fake_loss", "d_x", "d_g_z", "r1", "g_loss")  # of the log
    derived = ("standing",)
    min_batch = 2
    n_fixed = 64  # images in the figure, from noise drawn with the run's seed
    collapse_d_fake = 1e-3  # stop when D(G(z)) stays below this for a whole epoch
    diverged_d_loss = 100.0  # stop when D's loss averages above this over an epoch (1.39 at D's equilibrium)

    def __init__(self, cfg, device):
        self.cfg, self.device = cfg, device
        self.G = Generator(cfg.noise_dim, cfg.hidden).to(device)
        self.D = Discriminator(cfg.hidden, cfg.dropout).to(device)
        self.opt_G = make_adam(self.G.parameters(), cfg.lr, device, betas=(cfg.beta1, cfg.beta2))
        self.opt_D = make_adam(self.D.parameters(), cfg.lr, device, betas=(cfg.beta1, cfg.beta2))
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False) if cfg.ema > 0 else None
        # matching tensors of G_ema and G (weights and BatchNorm statistics), for update_ema()
        self.ema_pairs = list(zip(self.G_ema.state_dict().values(), self.G.state_dict().values())) if self.G_ema else []
        self.saved = ("G", "D", "opt_G", "opt_D", "d_steps") + (("G_ema",) if self.G_ema else ())
        self.d_steps = 0
        self.standing = None  # after training: the BatchNorm statistics of the sampling G, recomputed

    def noise(self, m):
        return torch.randn(m, self.cfg.noise_dim, device=self.device)

    def train_step(self, x):
        """One step of D, then, after every k of them, one of G: on the minibatch of noise of D's step, whose
        G(z) it reuses, or with --g-noise fresh on one drawn anew."""
        self.G.train()
        g_step_follows = (self.d_steps + 1) % self.cfg.k == 0
        shared = g_step_follows and self.cfg.g_noise == "shared"
        with torch.set_grad_enabled(shared):  # G(z)'s graph is kept only for G's step to reuse
            fake = self.G(self.noise(len(x)))
        stats = self.d_step(x, fake.detach())
        if g_step_follows:
            stats["g_loss"] = self.g_step(fake if shared else self.G(self.noise(len(x))))
        return stats

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
        descend(self.opt_D, loss)
        self.d_steps += 1
        return stats

    def g_step(self, fake):
        """Descend G's objective on a minibatch of fakes G(z), made with their graph; only G's parameters move."""
        self.D.train()
        with frozen(self.D):
            loss = generator_loss(self.D.logits(fake), self.cfg.generator_loss)
        descend(self.opt_G, loss)
        self.update_ema()
        return loss.detach()

    def ema_decay(self):
        """The moving average's decay, its span 1/(1 − decay) within --ema-rampup of G's steps so far."""
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

    def sampling_generator(self):
        """The G that draws the samples: a copy of G_ema (or of G), in eval mode, with the BatchNorm statistics
        recomputed after training where there are some."""
        G = copy.deepcopy(self.G_ema or self.G).eval()
        if self.standing:
            G.load_state_dict(self.standing, strict=False)
        return G

    def after_epoch(self, test_x, steps):
        """Stops where D has won or diverged; the GAN has no test metric."""
        if max(s["d_g_z"] for s in steps) < self.collapse_d_fake:
            raise Diverged(f"D(G(z)) stayed below {self.collapse_d_fake:g} for the whole epoch: D has won and G "
                           "gets no signal")
        d_loss = mean_of_steps(steps, ["d_loss"])["d_loss"]
        if d_loss > self.diverged_d_loss:
            raise Diverged(f"D's loss averaged {d_loss:.3g} over the epoch (2 log 2 = 1.39 where D cannot tell real "
                           "from generated): training has diverged; try a lower --lr")
        return {}

    def after_training(self, train_x):
        """The standing statistics (BigGAN): the BatchNorm statistics of the sampling G recomputed for its own
        weights over --bn-batches batches of noise; None with 0. Returns what was done, for the log, or None."""
        self.standing = None
        if not self.cfg.bn_batches:
            return None
        generator, m = torch.Generator().manual_seed(self.cfg.seed), min(self.cfg.batch_size, 1000)
        noise = (torch.randn(m, self.cfg.noise_dim, generator=generator).to(self.device)  # past 1,000 vectors a
                 for _ in range(self.cfg.bn_batches))  # batch, the means over batches cost time, gain nothing
        G = self.sampling_generator()
        torch.optim.swa_utils.update_bn(noise, G)  # plain means over the batches, in training mode
        self.standing = {name: buffer.clone() for name, buffer in G.named_buffers()}
        return f"recomputed the BatchNorm statistics of the sampling G over {self.cfg.bn_batches} batches of noise"

    @torch.inference_mode()
    def sample(self, n, generator=None):
        """n new images G(z), z ~ N(0, I), G in eval mode."""
        return self.sampling_generator()(torch.randn(n, self.cfg.noise_dim, generator=generator).to(self.device))

    def write_figures(self, figures_dir, train_x, test_x, metrics):
        """Draws the run's figures in figures_dir and returns their paths."""
        images = self.sample(self.n_fixed, torch.Generator().manual_seed(self.cfg.seed))
        series = [("d_loss", "D loss"), ("g_loss", "G loss"), ("d_x", "mean D(x)"), ("d_g_z", "mean D(G(z))")]
        title = f"GAN samples G(z) for fixed z, {len(metrics)} epochs"
        return [plot_grid(images, Path(figures_dir) / "gan.png", title),
                plot_curves(metrics, series, Path(figures_dir) / "gan_curves.png")]


TRAINERS = {trainer.name: trainer for trainer in (VAETrainer, GANTrainer)}


def make_adam(params, lr, device, **kwargs):
    """Adam; the fused kernel where this PyTorch has it for the device (same math, fewer kernel calls)."""
    return torch.optim.Adam(params, lr=lr, fused=device.type in ("cpu", "cuda"), **kwargs)


def descend(optimizer, loss):
    """One step of the optimizer down the loss's gradient."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@contextlib.contextmanager
def frozen(module):
    """Within the block, gradients flow through the module to what feeds it, but its own are not computed."""
    module.requires_grad_(False)
    try:
        yield module
    finally:
        module.requires_grad_(True)


def fit(trainer, cfg, train_x, test_x, stop, metrics=()):
    """Trains epoch by epoch after the epochs of metrics (those of a resumed run) up to cfg.epochs, then makes what
    is derived from the trained weights (after_training). Saves the checkpoint and metrics in cfg.run_dir after
    each epoch, the last once that is made, so a stop loses at most one epoch; checks stop between steps. Returns
    the metrics of all epochs."""
    metrics, saved = list(metrics), len(metrics)
    train_x, test_x = train_x.to(trainer.device), test_x.to(trainer.device)
    n_batches = len(batch_bounds(len(train_x), cfg.batch_size))
    try:
        for epoch in range(len(metrics) + 1, cfg.epochs + 1):
            start, steps = time.perf_counter(), []
            bar = tqdm(minibatches(train_x, cfg.batch_size), f"{trainer.name} epoch {epoch}/{cfg.epochs}", n_batches,
                       leave=False, disable=None)
            for x in bar:
                stop.check()
                steps.append(trainer.train_step(x))
                if len(steps) % 25 == 0:  # the means of the last 25 steps
                    bar.set_postfix({k: f"{v:.3g}" for k, v in mean_of_steps(steps[-25:], trainer.columns).items()},
                                    refresh=False)
            train, test = mean_of_steps(steps, trainer.columns), trainer.after_epoch(test_x, steps)
            metrics.append({"epoch": epoch, "seconds": round(time.perf_counter() - start, 3), "train": train,
                            "test": test})
            print(f"{trainer.name} epoch {epoch:3d}/{cfg.epochs}  {epoch_line(metrics[-1])}  "
                  f"{metrics[-1]['seconds']:.1f} s", flush=True)
            if epoch < cfg.epochs:
                saved = save_checkpoint(cfg.run_dir, trainer, cfg, metrics)
        start = time.perf_counter()
        summary = trainer.after_training(train_x)  # the VAE's mixture, the GAN's BatchNorm statistics, or None
        saved = save_checkpoint(cfg.run_dir, trainer, cfg, metrics, finished=True)
        if summary:
            print(f"{trainer.name}: {summary} in {time.perf_counter() - start:.1f} s")
        stop.check()  # a signal while the last was made: what is saved is whole
    except Stopped as e:
        raise Stopped(e.args[0], what_is_kept(cfg, saved), resume_command(cfg, trainer.name) if saved else "") from None
    except Diverged as e:
        raise Diverged(f"training stopped: {e}; {what_is_kept(cfg, saved)}") from None
    return metrics


def epoch_line(record):
    """An epoch's numbers for its line of the log, each in one format: "train loss 110.1234 -elbo ..."."""
    return "  ".join(f"{split} " + " ".join(f"{k} {v:8.4f}" for k, v in record[split].items())
                     for split in ("train", "test") if record[split])


def mean_of_steps(steps, keys):
    """The mean of each of the keys over the steps that returned it (dicts of scalar tensors), in the keys' order,
    read back in one sync."""
    keys = [key for key in keys if any(key in stats for stats in steps)]
    values = [[stats[key].float() for stats in steps if key in stats] for key in keys]
    return dict(zip(keys, torch.stack([sum(v) / len(v) for v in values]).tolist()))


def all_finite(obj):
    """Whether every number in obj (tensors, floats, and dicts and lists of them) is finite."""
    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, (dict, list, tuple)):
        return all(map(all_finite, obj.values() if isinstance(obj, dict) else obj))
    return True


def minibatches(x, batch_size):
    """One epoch of shuffled minibatches, sliced from the tensor itself (no per-image DataLoader)."""
    order = torch.randperm(len(x)).to(x.device)
    for start, end in batch_bounds(len(x), batch_size):
        yield x.index_select(0, order[start:end])  # the same rows as x[order[start:end]], faster on a CPU


def batch_bounds(n, batch_size):
    """(start, end) of each minibatch of an epoch of n images; a lone leftover image joins the batch before
    it, since BatchNorm cannot normalise a batch of one."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return list(zip(starts, starts[1:] + [n]))

# ----------------------------------------------------------------------------- the VAE's mixture
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
        mixture = {"weights": n_k / n, "means": means, "covariances": covariances}
        # E step: r_ik = π_k N(z_i | m_k, S_k) / Σ_j π_j N(z_i | m_j, S_j)
        log_joint = component_log_probs(mixture, z)  # N×k
        resp = torch.softmax(log_joint, 1)
        previous, log_likelihood = log_likelihood, torch.logsumexp(log_joint, 1).mean().item()
        if log_likelihood - previous < tol:
            break
    return mixture


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


def component_log_probs(mixture, z):
    """log π_k + log N(z_i | m_k, S_k) for each row z_i of z and each component k: N×k. With P_k = S_k⁻¹,
    (z − m)ᵀ P (z − m) = zᵀPz − 2 zᵀPm + mᵀPm: three matrix products over all components at once."""
    means, p = mixture["means"], z.shape[1]
    L = torch.linalg.cholesky(mixture["covariances"])  # S_k = L_k L_kᵀ
    P = torch.cholesky_inverse(L)  # k×p×p
    Pm = (P @ means[:, :, None]).squeeze(2)  # k×p
    quadratic = outer_products(z) @ P.reshape(len(means), p * p).T - 2 * z @ Pm.T + (means * Pm).sum(1)  # N×k
    log_det = 2 * L.diagonal(dim1=1, dim2=2).log().sum(1)  # log |S_k|
    return mixture["weights"].log() - 0.5 * (quadratic + log_det + p * math.log(2 * math.pi))


def sample_mixture(mixture, n, generator=None):
    """n draws z ~ q(z) (n×p float64): a component k ~ π, then z = m_k + L_k ε with L_k L_kᵀ = S_k and
    ε ~ N(0, I)."""
    k = torch.multinomial(mixture["weights"], n, replacement=True, generator=generator)
    eps = torch.randn(n, mixture["means"].shape[1], 1, generator=generator, dtype=torch.float64)
    return mixture["means"][k] + (torch.linalg.cholesky(mixture["covariances"])[k] @ eps).squeeze(2)


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
    """Writes the figure as a PNG file at path, and returns path."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=fig.dpi))
    return path


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
    return save_figure(fig, path)


def plot_grid(images, path, title):
    """A square-ish grid of images."""
    ncols = math.ceil(math.sqrt(len(images)))
    fig = Figure(figsize=(6, 6.3), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.imshow(tile(images, ncols), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


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
    return save_figure(fig, path)


# ============================================================================= the plumbing
# Below: files, checkpoints, stop signals and the command line, each kind of fault met in one place.
class UsageError(Exception):
    """Bad input or a file that cannot be used: reported as one line, exit status 2."""


class Diverged(Exception):
    """Training diverged: one line, exit status 2; the checkpoint of the last good epoch stays."""


class Stopped(Exception):
    """A stop signal came: one line, exit status 128 + its number; args: (signal, what the run keeps or '', the
    command that continues it or '')."""


def first_line(error):
    """The first line of an exception's message, or its type's name where the message is empty."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# ----------------------------------------------------------------------------- data files
MNIST_DIR = Path(__file__).resolve().parent / "data"  # MNIST's original IDX files, beside this script
MNIST_SHA256 = {  # each image file as published with MNIST (data/README.md says where it comes from)
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
}
IDX_IMAGES = b"\x00\x00\x08\x03"  # the IDX magic number of images: uint8, 3 axes


def load_images(cfg):
    """(train_x, test_x) as N×784 float32 tensors in [0,1], as the config asks."""
    if not cfg.data:
        train_x, test_x = load_mnist("train"), load_mnist("t10k")
    elif cfg.test_data:
        train_x, test_x = read_image_file(cfg.data), read_image_file(cfg.test_data)
    else:  # hold out the last 10% of --data as the test set
        x = read_image_file(cfg.data)
        n_test = max(1, len(x) // 10)
        if len(x) <= n_test:
            raise UsageError(f"{cfg.data}: too few images to hold out a test set; pass --test-data")
        train_x, test_x = x[:-n_test], x[-n_test:]
    return train_x[: cfg.n_train], test_x


def load_mnist(split, data_dir=MNIST_DIR):
    """MNIST's "train" (60,000) or "t10k" (10,000) images from their original IDX file in data_dir, as an N×784
    float32 tensor in [0,1]."""
    path = Path(data_dir) / f"{split}-images-idx3-ubyte.gz"
    if not path.exists():
        raise UsageError(f"MNIST not found in {data_dir}/: pass --data with the assignment's "
                         "mnist_train_images.npy or an IDX image file (train-images-idx3-ubyte)")
    return images_to_tensor(read_mnist_file(path, IDX_IMAGES, MNIST_SHA256[path.name]), path)


def read_mnist_file(path, magic, digest):
    """One of MNIST's original IDX files, read whole and checked against its SHA-256 as published."""
    with reading(path) as f:
        raw = f.read()
    if hashlib.sha256(raw).hexdigest() != digest:
        raise UsageError(f"{path}: SHA-256 checksum mismatch (corrupt, or not the original MNIST file)")
    return read_idx(gzip.GzipFile(fileobj=io.BytesIO(raw)), path, magic)


def read_image_file(path):
    """Images from a .npy or an IDX image file (optionally gzipped), told apart by their first bytes, as an N×784
    float32 tensor; read once, as a pipe can be, and no further than its header promises."""
    with reading(path) as f:
        start = f.peek(8)[:8]
        if start.startswith(b"\x93NUMPY"):
            array = read_npy(f, path)
        else:
            array = read_idx(gzip.GzipFile(fileobj=f) if start.startswith(b"\x1f\x8b") else f, path, IDX_IMAGES)
    return images_to_tensor(array, path)


@contextlib.contextmanager
def reading(path):
    """The file at path, open to read in binary; an error of the system while it is read names it (a failing
    read, as of /proc/self/mem, carries no file name of its own)."""
    try:
        with open(path, "rb") as f:
            yield f
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror or first_line(e)}") from None


def read_npy(f, source):
    """The array of a .npy file, its header read by NumPy's own reader, then as many bytes as it promises
    (read_promised); only numbers are read (a file of Python objects is never unpickled)."""
    formats = np.lib.format
    try:
        version = formats.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"version {version[0]}.{version[1]}, not one NumPy writes")
        shape, fortran_order, dtype = (formats.read_array_header_1_0 if version == (1, 0)
                                       else formats.read_array_header_2_0)(f)
        if dtype.kind not in "uif":  # unsigned, signed integers or floats
            raise UsageError(f"{source}: pixels must be numbers, got dtype {dtype}")
        np.broadcast_to(np.empty((), dtype), shape)  # NumPy's own check of the shape, with no memory behind it
    except (ValueError, OverflowError, TypeError, EOFError) as e:
        raise UsageError(f"{source}: not a readable .npy file ({first_line(e)})") from None
    count = math.prod(shape)
    promise = f"{'×'.join(map(str, shape))} of {dtype}"
    array = read_promised(f, count * dtype.itemsize, source, promise, count).view(dtype)
    return array.reshape(shape[::-1]).T if fortran_order else array.reshape(shape)


def read_idx(f, source, magic):
    """An IDX file (LeCun's MNIST format) as a uint8 array: after the 4-byte magic number (0x00000803 for images
    N×28×28, 0x00000801 for labels N), one big-endian 4-byte size per axis, then the data."""
    ndim = magic[3]  # the magic number's last byte counts the axes: 3 for images, 1 for labels
    try:
        header = f.read(4 + 4 * ndim)
        if header[:4] != magic or len(header) < 4 + 4 * ndim:
            raise UsageError(f"{source}: neither a .npy file nor an IDX {'image' if ndim == 3 else 'label'} file "
                             f"(magic number 0x{magic.hex()} expected)")
        shape = tuple(int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
        if shape[1:] not in ((), (IMAGE_SIDE, IMAGE_SIDE)):  # before the data are shaped: 0×2³²×2³² cannot be
            raise UsageError(f"{source}: images must be {IMAGE_SIDE}×{IMAGE_SIDE}, the header says "
                             f"{shape[1]}×{shape[2]}")
        n = math.prod(shape)  # one byte each
        return read_promised(f, n, source, "×".join(map(str, shape)), n).reshape(shape)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise UsageError(f"{source}: corrupt gzip data: {e}") from None


def read_promised(f, nbytes, source, promise, count):
    """The nbytes of data that a file's header promises, read into one array and no further; one line where they
    would not fit in this machine's memory beside their count float32 pixels, or where the file ends first."""
    memory = machine_memory()
    if memory and nbytes + 4 * count > memory:
        raise UsageError(f"{source}: the header says {promise}: {nbytes / 1e9:.3g} GB, which with its float32 pixels "
                         f"does not fit in this machine's {memory / 1e9:.3g} GB of memory")
    data, done = np.empty(nbytes, dtype=np.uint8), 0  # pages that are never written take no memory
    while done < nbytes:
        n = f.readinto(memoryview(data)[done : done + (1 << 24)])
        if not n:
            raise UsageError(f"{source}: truncated: the header says {promise}, the file has {done} bytes of data")
        done += n
    return data


def machine_memory():
    """This machine's memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def images_to_tensor(array, source):
    """Checks an image array (N×784 or N×28×28; floats in [0,1] or integers 0..255) → N×784 float32."""
    if array.ndim not in (2, 3) or array.shape[1:] not in ((IMAGE_DIM,), (IMAGE_SIDE, IMAGE_SIDE)):
        raise UsageError(f"{source}: images must be N×{IMAGE_DIM} or N×{IMAGE_SIDE}×{IMAGE_SIDE}, got shape "
                         f"{array.shape}")
    if len(array) == 0:
        raise UsageError(f"{source}: holds no images")
    if not np.isfinite(array).all():
        raise UsageError(f"{source}: holds NaN or infinite pixels")
    kind, high = ("integer", 255) if array.dtype.kind in "ui" else ("float", 1)
    lowest, highest = array.min(), array.max()
    if lowest < 0 or highest > high:
        raise UsageError(f"{source}: {kind} pixels must lie in [0, {high}], got one of "
                         f"{(lowest if lowest < 0 else highest).item()!r}")
    pixels = array.astype(np.float32, copy=False).reshape(len(array), IMAGE_DIM)  # float32 pixels as they were read
    if high != 1:  # integers, converted to a new array: divided in place, so the data are held at most twice over
        pixels /= high
    return torch.from_numpy(pixels)


# ----------------------------------------------------------------------------- checkpoints
CHECKPOINT_FORMAT = 6  # bump when what a checkpoint holds changes


def atomic_write(path, write):
    """Calls write(file) on a file in memory, then writes its bytes to a temporary file beside path and renames
    that over path: path holds the old file or the new one. Only plain writes reach the disk, so a full disk is an
    OSError wherever it strikes (in torch's zip writer it would be a RuntimeError)."""
    path = Path(path)
    buffer = io.BytesIO()
    write(buffer)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")  # a name of its own for each writer
    try:
        with open(tmp, "xb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):  # a cleanup that fails (a read-only disk) never hides the write's error
            tmp.unlink(missing_ok=True)
        if not isinstance(e, OSError):
            raise
        kept = "; the previous file is kept" if path.is_file() else ""
        raise UsageError(f"could not write {path}: {e.strerror or e}{kept}") from None


def sha256(path):
    with reading(path) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_json(path, obj):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def save_checkpoint(run_dir, trainer, cfg, metrics, finished=False):
    """Model(s), optimizer(s), config, metrics and RNG states: all that --resume needs, and once finished what
    after_training() made; then readable copies of its config and metrics, config.json and metrics.json. What is
    not finite is refused (Diverged), never saved as good, fitted to or drawn. Returns the epoch saved."""
    state = {"format": CHECKPOINT_FORMAT, "model": trainer.name, "config": dataclasses.asdict(cfg),
             "epoch": metrics[-1]["epoch"], "metrics": metrics, "trainer": trainer.state_dict(finished),
             "rng": rng_states()}
    if not all_finite([metrics, state["trainer"]]):
        raise Diverged("a loss, a test metric, a weight or what was fitted to them became NaN or infinite")
    atomic_write(Path(run_dir) / "checkpoint.pt", lambda f: torch.save(state, f))
    save_json(Path(run_dir) / "config.json", {"model": trainer.name, **state["config"]})
    save_json(Path(run_dir) / "metrics.json", metrics)
    return state["epoch"]


def rng_states():
    """The state of every random generator a run draws from: the CPU's, and each GPU's where there is one."""
    return {"cpu": torch.get_rng_state(),
            **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
            **({"mps": torch.mps.get_rng_state()} if torch.backends.mps.is_available() else {})}


def set_rng_states(states):
    """Restores what rng_states() saved, so a resumed run draws the noise an uninterrupted one would."""
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "mps" in states and torch.backends.mps.is_available():
        torch.mps.set_rng_state(states["mps"])


def load_checkpoint(path, model=None, trainers=TRAINERS):
    """The checkpoint at path, its config as a config object; one line where it is not this version's or one of the
    trainers' (the model's, where given)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no checkpoint here (train first, or pass --checkpoint / --run-dir)")
    state = torch_load(path)
    if not isinstance(state, dict) or state.get("model") not in trainers:
        raise UsageError(f"{path}: not a homework7 checkpoint")
    config_cls = trainers[state["model"]].config_cls
    if state.get("format") != CHECKPOINT_FORMAT or set(state["config"]) != {f.name for f in
                                                                           dataclasses.fields(config_cls)}:
        raise another_version(path, "its format or config")
    if model and state["model"] != model:
        raise UsageError(f"{path}: a {state['model']} checkpoint, not a {model} one")
    state["config"] = config_cls(**state["config"])
    return state


def another_version(path, what):
    """The one line for a checkpoint that this version cannot use, with what it finds amiss."""
    return UsageError(f"{path}: damaged, or written by another version of {SCRIPT} ({what}); train it again")


def torch_load(path):
    """The tensors and plain data of a file torch.save wrote, on the CPU, or one line where it is damaged or holds
    other objects (whose code a pickle would run)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a corrupt file
        # torch's advice for a file of other objects, to load it with weights_only=False, would run a pickle's code
        reason = "it holds objects other than tensors and plain data" if "weights_only" in str(e) else first_line(e)
        raise UsageError(f"{path}: not a readable checkpoint ({reason})") from None


def restore(trainer, state, path):
    """The trainer with the checkpoint's weights and optimizer states, or one line where they do not fit it."""
    try:
        trainer.load_state_dict(state["trainer"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
        raise another_version(path, first_line(e)) from None
    return trainer


def what_is_kept(cfg, epoch):
    """What a run that stopped after that many epochs leaves in its run directory, as a phrase."""
    if not epoch:
        return "no epoch of this run finished, so it wrote no checkpoint"
    return f"the checkpoint of epoch {epoch} is kept in {cfg.run_dir}"


def resume_command(cfg, model):
    """The command that continues the run, as this script was started: --resume and every setting that a resume
    may change (RESUMABLE_CHANGES), so that it continues this run whatever its checkpoint held before."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)  # python -m NAME has one; python FILE has none
    started = ["-m", spec.name] if spec else [sys.argv[0]]
    settings = [f"{flag(f.name)}={shell_word(str(getattr(cfg, f.name)))}" for f in dataclasses.fields(cfg)
                if f.name in RESUMABLE_CHANGES]
    return f"python {' '.join(map(shell_word, started))} {model} --resume {' '.join(settings)}"


def shell_word(text):
    """text as one word of a POSIX shell's command line, on one line: shlex's quoting, or bash's $'...' where text
    holds a control character or a byte of a name that is not UTF-8 (read by Python as a lone surrogate)."""
    if text.isprintable():
        return shlex.quote(text)

    def escaped(c):
        if 0xDC80 <= ord(c) <= 0xDCFF:  # the byte ord(c) − 0xDC00 of the name
            return f"\\x{ord(c) - 0xDC00:02x}"
        if c in "\\'":
            return "\\" + c
        return c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
    return "$'" + "".join(map(escaped, text)) + "'"


# ----------------------------------------------------------------------------- stop signals
# Ctrl-C; kill, timeout or a scheduler; a closed terminal (Windows has no SIGHUP)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class StopSignals:
    """While a command runs, the first stop signal is only recorded, and training stops at its next check; the
    system's defaults then come back for a second. A signal that the parent ignores (nohup) stays ignored."""

    def __init__(self):
        self.signum = None
        self.previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}

    def __enter__(self):
        for s, before in self.previous.items():
            if before is not signal.SIG_IGN:
                signal.signal(s, self.record)
        return self

    def record(self, signum, frame):
        self.signum = signum
        for s, before in self.previous.items():
            if before is not signal.SIG_IGN:
                signal.signal(s, signal.SIG_DFL)

    def check(self):
        """Raises Stopped where a signal has come."""
        if self.signum is not None:
            raise Stopped(self.signum, "", "")

    def __exit__(self, *exception):
        if self.signum is None:  # after a signal, the defaults stay: a second one during the exit ends it at once
            for s, before in self.previous.items():
                signal.signal(s, before)


# ----------------------------------------------------------------------------- command line
class Parser(argparse.ArgumentParser):
    """argparse, with a bad flag answered in one line (the usage is one --help away) and exit status 2, and
    no abbreviated flags (--epoch is a typo, not --epochs)."""

    def __init__(self, description=None, **kwargs):  # description: a docstring, whose first paragraph is used
        super().__init__(allow_abbrev=False, description=(description or "").split("\n\n")[0], **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def flag(field_name):
    """The command-line flag of a config field: --n-train for n_train."""
    return "--" + field_name.replace("_", "-")


def add_config_flags(parser, config_cls, skip=()):
    """One --flag per config field; defaults are left out of the namespace so given flags can be told apart."""
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        kwargs = {"type": f.type, "metavar": f.name.upper(), **f.metadata}
        within = kwargs.pop("within")
        said = ([] if f.default is None else [f"default: {f.default!r}"]) + ([f"within {within}"] if within else [])
        kwargs["help"] = (kwargs["help"] + (f" ({'; '.join(said)})" if said else "")).replace("%", "%%")
        parser.add_argument(flag(f.name), default=argparse.SUPPRESS, **kwargs)


def build_parser(trainers=TRAINERS, prog=SCRIPT):
    parser = Parser(prog=prog, description=__doc__)  # None under python -OO
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(trainers) + "}")
    for name, trainer_cls in trainers.items():
        sub = commands.add_parser(name, help=f"train the {name.upper()} and write its figures",
                                  description=trainer_cls.config_cls.__doc__)
        add_config_flags(sub, trainer_cls.config_cls)
        sub.add_argument("--resume", action="store_true",
                         help="continue from the checkpoint in the run directory (its config is kept)")
    return parser


RESUMABLE_CHANGES = {"epochs", "device", "threads", "figures_dir", "run_dir", "mixture_components", "mixture_fit_n"}


def make_config(trainer_cls, given, resume=False):
    """(the run's config, the checkpoint to resume or None): the defaults updated by the given flags, or, with
    --resume, the checkpoint's config updated by those that may change. The run directory is named by the flags
    that change what it trains, so that a run of other flags never replaces another run's checkpoint or figures."""
    config_cls, name = trainer_cls.config_cls, trainer_cls.name
    named = run_name(config_cls, given, name)
    run_dir, state = Path(given.get("run_dir") or Path("runs") / named), None
    if not resume:
        cfg = config_cls(**given)
    else:
        state = load_checkpoint(run_dir / "checkpoint.pt", name, {name: trainer_cls})
        saved = dataclasses.asdict(state["config"])
        changed = sorted(k for k, v in given.items() if k not in RESUMABLE_CHANGES and saved.get(k) != v)
        if changed:
            raise UsageError(f"--resume keeps the checkpoint's config; it differs in: {', '.join(changed)}")
        cfg = config_cls(**{**saved, **given})
        if cfg.epochs < state["epoch"]:
            raise UsageError(f"--epochs {cfg.epochs}: the checkpoint has trained {state['epoch']} epochs already; "
                             f"pass --epochs {state['epoch']} or more")
    cfg.run_dir = str(run_dir)
    cfg.figures_dir = cfg.figures_dir or ("figures" if named in TRAINERS else cfg.run_dir)  # the defaults' run
    validate_config(cfg)
    return cfg, state


def run_name(config_cls, given, model):
    """The model, then each given flag that changes what it trains and is not its default, as FLAG=VALUE
    ("vae_kl-weight=0_n-train=100"); a character a file name should not hold (a path's /) becomes -."""
    default = config_cls()
    named = sorted(f"{flag(k)[2:]}={format(v, 'g') if isinstance(v, float) else v}" for k, v in given.items()
                   if k not in RESUMABLE_CHANGES and v != getattr(default, k))
    return "".join(c if c.isalnum() or c in "._=-" else "-" for c in "_".join([model, *named]))


def validate_config(cfg):
    """Refuses, before any work, a number outside its field's range and flags that do not go together."""
    for f in dataclasses.fields(cfg):
        value, within = getattr(cfg, f.name), f.metadata.get("within")
        if within and value is not None and not lies_within(value, within):
            raise UsageError(f"{flag(f.name)} {value}: must lie within {within}")
    if cfg.test_data and not cfg.data:
        raise UsageError("--test-data needs --data (MNIST from data/ has its own test set)")


def lies_within(value, interval):
    """Whether the number value lies in the interval, written as in mathematics: "[1, 1e6]", "[0, 1)"."""
    low, high = (float(end) for end in interval[1:-1].split(","))
    above = low <= value if interval[0] == "[" else low < value
    return above and (value <= high if interval[-1] == "]" else value < high)


def run(trainer_cls, cfg, stop, state=None):
    """The run: loads the data, trains one model as cfg says (from the checkpoint state where resumed) and writes
    its figures; returns (trainer, test images on its device)."""
    use_threads(cfg.threads)
    device, name = resolve_device(cfg.device), trainer_cls.name
    train_x, test_x = load_images(cfg)
    cfg = cfg.for_training_set(len(train_x))
    if min(cfg.batch_size, len(train_x)) < trainer_cls.min_batch:  # a lone leftover joins the minibatch before it
        raise UsageError(f"{name} needs minibatches of at least {trainer_cls.min_batch} images, and so as many "
                         "training images (D's BatchNorm normalises over a minibatch)")
    with output_dirs(("--run-dir", cfg.run_dir), ("--figures-dir", cfg.figures_dir)):
        print(f"{name}: {len(train_x)} training and {len(test_x)} test images on {device}; run dir {cfg.run_dir}")
        torch.manual_seed(cfg.seed)  # initial weights, data order, dropout and noise
        trainer, metrics = trainer_cls(cfg, device), []
        if state:
            path = Path(cfg.run_dir) / "checkpoint.pt"
            restore(trainer, state, path)
            set_rng_states(state["rng"])  # the noise an uninterrupted run would draw
            metrics = state["metrics"]
            print(f"{name}: resuming after epoch {state['epoch']} from {path}")
        start = time.perf_counter()
        metrics = fit(trainer, cfg, train_x, test_x, stop, metrics)
        test_x = test_x.to(device)
        figures = trainer.write_figures(cfg.figures_dir, train_x, test_x, metrics)
        save_json(Path(cfg.run_dir) / "figures.json",  # which figures this run drew, and from which checkpoint
                  {"checkpoint.pt": sha256(Path(cfg.run_dir) / "checkpoint.pt"),
                   "figures": {str(path): sha256(path) for path in figures}})
    print(f"{name}: trained in {time.perf_counter() - start:.1f} s; figures in {cfg.figures_dir}/, "
          f"checkpoint in {cfg.run_dir}/")
    return trainer, test_x


def resolve_device(name):
    """The device --device names (auto: CUDA, then MPS, then the CPU), or one line where this machine lacks it."""
    here = ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    here += ["mps"] if torch.backends.mps.is_available() else []
    if name == "auto":
        name = "cuda:0" if "cuda:0" in here else here[-1]  # CUDA, then MPS, then the CPU
    if name not in here and not (name == "cuda" and "cuda:0" in here):
        raise UsageError(f"device {name!r}: not on this machine, which has {', '.join(here)} (or pass auto)")
    return torch.device(name)


def use_threads(threads):
    """torch's CPU operations on that many threads (0: as many as torch chose, one per core)."""
    if threads:
        torch.set_num_threads(threads)


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


def run_cli(parser, argv, command):
    """Parses argv and runs command(args, stop) (stop: StopSignals) for every command of this script and of tools/,
    its output written whatever the console's encoding (a character it lacks as ?) and flushed before the end;
    returns the exit status of outcome()."""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:  # closed when Python started (2>&-): what goes there is dropped
            setattr(sys, name, open(os.devnull, "w"))
        elif hasattr(getattr(sys, name), "reconfigure"):
            getattr(sys, name).reconfigure(errors="replace")
    status, line = outcome(parser, argv, command)
    if line:
        with contextlib.suppress(OSError):  # a closed or full stderr: the status still tells
            print(line, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):  # an output that cannot take what is left gets nothing more, not even
        try:  # at the exit
            stream.flush()
        except OSError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    return status


def outcome(parser, argv, command):
    """(the exit status, the one line for stderr or None) of command(args, stop): bad input, a file that cannot be
    used, memory that runs out and a diverged run give one line and 2, a closed pipe 141 quietly, a stop signal
    one line and 128 + its number (Ctrl-C 130, SIGTERM 143, SIGHUP 129)."""
    try:
        with StopSignals() as stop:
            try:
                status = command(parser.parse_args(argv), stop)
            except SystemExit as e:  # --help, or argparse's one line about a flag
                status = e.code
            sys.stdout.flush()  # the last lines, while an output that cannot take them can still be told
            stop.check()  # a signal during the last work after training: it ends as a stop still
            return status, None
    except (UsageError, Diverged) as e:
        error = str(e)
    except OSError as e:  # one of the files the command names (a named file's error says which), or its output
        if e.filename is None and isinstance(e, BrokenPipeError):  # its reader has gone (| head): end quietly,
            return 128 + 13, None  # as a Unix filter does, with SIGPIPE's status
        error = f"{e.filename or 'the output'}: {e.strerror or e}"
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        error = f"out of memory ({first_line(e)}); choose smaller sizes"
    except Stopped as e:
        signum, kept, command = e.args
        why = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        line = f"{parser.prog}: {why}" + "".join(f"; {words}" for words in (kept, command and f"continue with: "
                                                                              f"{command}") if words)
        return 128 + signum, "\n" + line.replace("\n", "\\n")  # on a line of its own after the ^C
    return 2, f"{parser.prog}: error: " + error.replace("\n", "\\n")  # one line, whatever a path holds


def out_of_memory(error):
    """Whether an exception says that memory ran out (numpy's MemoryError, PyTorch's CPU allocator or CUDA), or was
    raised while one that did was handled (torch.save's writer, after a MemoryError, fails in its own words)."""
    while error is not None:
        if isinstance(error, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(error):
            return True
        error = error.__context__
    return False


def train_command(args, stop, trainers=TRAINERS):
    """`vae` or `gan` (or a tool's trainer): train that model."""
    given = {k: v for k, v in vars(args).items() if k not in ("command", "resume")}
    cfg, state = make_config(trainers[args.command], given, args.resume)
    run(trainers[args.command], cfg, stop, state)
    return 0


def main(argv=None, trainers=TRAINERS, prog=SCRIPT):
    return run_cli(build_parser(trainers, prog), argv, lambda args, stop: train_command(args, stop, trainers))


if __name__ == "__main__":
    sys.exit(main())
