"""The VAE's latent space, drawn from a checkpoint: decoded straight lines between the encodings μ of pairs of test
images (vae_interpolation.png), and for p = 2 the decoder over a grid of Gaussian quantiles of z (vae_manifold.png,
Kingma & Welling's Fig. 4). tools.report draws them into its PDF's appendix.

Usage:
  python -m tools.latent [--checkpoint runs/vae/checkpoint.pt] [--figures-dir DIR]
"""
import sys
from pathlib import Path

import torch

from homework7 import IMAGE_DIM, Parser, UsageError, VAETrainer, load_images, output_dirs, plot_grid, plot_rows, run_cli
from tools.sample import trainer_from_checkpoint


@torch.inference_mode()
def interpolate(model, x_a, x_b, steps=10):
    """Decoded points on the straight lines from the encoder means of x_a to those of x_b: B×steps×784."""
    model.eval()
    (mu_a, _), (mu_b, _) = model.encode(x_a), model.encode(x_b)
    t = torch.linspace(0, 1, steps, device=mu_a.device)[None, :, None]  # 1×steps×1
    z = mu_a[:, None] + t * (mu_b - mu_a)[:, None]  # B×steps×p
    return model.pixel_means(z.reshape(-1, z.shape[-1])).reshape(len(x_a), steps, IMAGE_DIM)


@torch.inference_mode()
def manifold(model, n=20):
    """The decoder over an n×n grid of Gaussian quantiles of a 2-dimensional z, n²×784, model in eval mode."""
    model.eval()
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n))
    z2, z1 = torch.cartesian_prod(q.flip(0), q).unbind(1)  # row by row: z₂ falls down, z₁ grows across
    return model.pixel_means(torch.stack([z1, z2], 1))


def draw_latent(checkpoint, figures_dir):
    """Draws the figures of the VAE in the checkpoint, on the CPU, with the test images of its run, in
    figures_dir; returns their paths."""
    trainer = trainer_from_checkpoint(checkpoint, torch.device("cpu"))
    if not isinstance(trainer, VAETrainer):
        raise UsageError(f"{checkpoint}: a {trainer.name} checkpoint; only a VAE has a latent space to draw")
    test_x = load_images(trainer.cfg)[1]
    ends = (torch.arange(16) % len(test_x)).tolist()  # test images 0 → 1, 2 → 3, ..., 14 → 15 (fewer: again)
    lines = interpolate(trainer.model, test_x[ends[0::2]], test_x[ends[1::2]])
    paths = [plot_rows([(f"pair {i + 1}", line) for i, line in enumerate(lines)],
                       Path(figures_dir) / "vae_interpolation.png",
                       "VAE: decoded straight lines between the encodings μ of two test images")]
    if trainer.cfg.latent_dim == 2:
        paths.append(plot_grid(manifold(trainer.model), Path(figures_dir) / "vae_manifold.png",
                               "VAE, p = 2: decoder over Gaussian quantiles of z₁ (across), z₂ (down)"))
    return paths


def latent_command(args, stop):
    figures_dir = args.figures_dir or str(Path(args.checkpoint).parent)
    with output_dirs(("--figures-dir", figures_dir)):
        paths = draw_latent(Path(args.checkpoint), figures_dir)
    print(f"wrote {', '.join(map(str, paths))}")
    return 0


def main(argv=None):
    parser = Parser(prog="python -m tools.latent", description=__doc__)
    parser.add_argument("--checkpoint", default="runs/vae/checkpoint.pt",
                        help="the VAE's checkpoint (default: runs/vae/checkpoint.pt)")
    parser.add_argument("--figures-dir", default="", help="where the figures go (default: beside the checkpoint)")
    return run_cli(parser, argv, latent_command)


if __name__ == "__main__":
    sys.exit(main())
