"""The VAE-GAN: homework7's VAE, its decoder also trained against a GAN's D on decoded z ~ N(0, I) (Larsen et al.
2016, in its simplest form), an experiment for the assignment's third row, new images from the prior.

Usage:
  python -m tools.vaegan vaegan --kl-weight 0.75 --prior-gan 0.4     train it (any flag of homework7's vae)
  python -m tools.sample vaegan --checkpoint runs/vaegan_kl-weight=0.75/checkpoint.pt
  python -m tools.evaluate vaegan --checkpoint runs/vaegan_kl-weight=0.75/checkpoint.pt

It trains, stops, resumes and draws as `python homework7.py vae` does, in a run directory of its own (runs/vaegan,
followed by its flags). tools/RESULTS.md, "The assignment's row, z ~ N(0, I)", has what it gave.
"""
import sys
from dataclasses import dataclass

import torch

import homework7 as hw
from homework7 import (Discriminator, GANConfig, VAEConfig, VAETrainer, arg, descend, discriminator_loss, frozen,
                       generator_loss, make_adam)


@dataclass
class VAEGANConfig(VAEConfig):
    """The VAE-GAN: homework7's VAE, its decoder also trained against a D on decoded z ~ N(0, I)."""

    prior_gan: float = arg(0.4, "γ of the GAN's generator loss on 100 decoded z ~ N(0, I) a step, added to the "
                                "decoder's Eq. 10, against a D that tells them from training images' "
                                "reconstructions", "[0, inf)")
    prior_gan_real: str = arg("reconstruction", "what that D takes as real: the reconstructions of training images, "
                                                "so that it judges where z came from, not the decoder's blur, or the "
                                                "images themselves (data)", choices=("reconstruction", "data"))
    prior_gan_dropout: float = arg(0.5, "rate of that D's input dropout layer (higher: a weaker D)", "[0, 1)")


class VAEGANTrainer(VAETrainer):
    """Each step: the VAE's, its decoder also on the GAN's generator loss of decoded z ~ N(0, I); then one of D, the
    default GAN's, with its Adam."""

    name, config_cls = "vaegan", VAEGANConfig
    columns = VAETrainer.columns + ("g_loss", "d_loss")
    saved = VAETrainer.saved + ("D", "opt_D")
    min_batch = 2  # D's BatchNorm
    prior_batch = 100  # decoded z ~ N(0, I) a step: fewer than a minibatch, for speed

    def __init__(self, cfg, device):
        super().__init__(cfg, device)
        gan = GANConfig()
        self.D = Discriminator(gan.hidden, cfg.prior_gan_dropout).to(device)
        self.opt_D = make_adam(self.D.parameters(), gan.lr, device, betas=(gan.beta1, gan.beta2))

    # With z' ~ N(0, I) and x̃ the decoder's reconstruction of a training image (with --prior-gan-real data, the
    # image itself), the decoder descends  −L + γ · −log D(decoder(z')),
    # then D ascends  log D(x̃) + log(1 − D(decoder(z')))
    def train_step(self, x):
        cfg = self.cfg
        loss, stats, x_logits = self.loss(x)
        m = min(self.prior_batch, len(x))
        real = x[:m] if cfg.prior_gan_real == "data" else torch.sigmoid(x_logits[:m]).detach()
        fake = self.model.pixel_means(torch.randn(m, cfg.latent_dim, device=x.device))
        with frozen(self.D):
            g_loss = generator_loss(self.D.logits(fake))
        descend(self.optimizer, loss + cfg.prior_gan * g_loss)
        d_loss, _, _ = discriminator_loss(self.D.logits(real), self.D.logits(fake.detach()))
        descend(self.opt_D, d_loss)
        return {**stats, "g_loss": g_loss.detach(), "d_loss": d_loss.detach()}


TRAINERS = {**hw.TRAINERS, VAEGANTrainer.name: VAEGANTrainer}  # every trainer a checkpoint can hold


def main(argv=None):
    return hw.main(argv, TRAINERS, prog="python -m tools.vaegan")


if __name__ == "__main__":
    sys.exit(main())
