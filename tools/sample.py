"""New images from a trained model, into a .npy file (float32, N×784, values in [0, 1]).

Usage:
  python -m tools.sample vae|gan [--n 10000] [--out samples.npy] [--checkpoint PATH] [--sampler prior|mixture]

The VAE draws z from the Gaussian mixture fitted after training where its checkpoint has one (the sampler
whose images scored better, README "The VAE"), from its prior N(0, I) otherwise or with --sampler prior.
"""
import sys
from pathlib import Path

import numpy as np
import torch

from homework7 import (IMAGE_DIM, GANTrainer, Parser, UsageError, load_checkpoint, resolve_device, restore, run_cli,
                       use_threads)
from tools import add_number_flag, add_threads_flag
from tools.outputs import NPY_FILE, check_replaceable, write_output
from tools.vaegan import TRAINERS

VAE_SAMPLERS = ("prior", "mixture")  # the VAE's new images: z ~ N(0, I), or z ~ the mixture fitted to μ(x)
DEFAULT_SAMPLER = "mixture"  # the one whose samples scored better


def add_checkpoint_flags(parser, n_help, sampler_default, n_within="[1, 1e9]"):
    """The flags of the commands that load a trained model (this one, and tools.evaluate)."""
    parser.add_argument("model", choices=TRAINERS, help="which model")
    add_number_flag(parser, "--n", int, n_within, 10000, n_help)
    parser.add_argument("--checkpoint", default="", help="checkpoint to load (default: runs/<model>/checkpoint.pt)")
    add_number_flag(parser, "--seed", int, "[0, 4294967295]", 0, "random seed of the noise")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default: auto)")
    add_threads_flag(parser)
    parser.add_argument("--sampler", choices=VAE_SAMPLERS, default=None,
                        help=f"VAE: z ~ its prior N(0, I) (prior) or z ~ the mixture fitted after training "
                             f"(default: {sampler_default})")


def trainer_from_checkpoint(path, device, model=None):
    """The trainer that the checkpoint at path holds (of the model, where given), on device."""
    state = load_checkpoint(path, model, TRAINERS)
    return restore(TRAINERS[state["model"]](state["config"], device), state, path)


def checkpoint_trainer(args):
    """The trainer restored from the checkpoint that --checkpoint (or the model's default run) names, with
    --n and --sampler checked against it."""
    if args.model == "gan" and args.sampler:
        raise UsageError("--sampler: only the VAE has a choice of sampler")
    use_threads(args.threads)
    path = Path(args.checkpoint or f"runs/{args.model}/checkpoint.pt")
    trainer = trainer_from_checkpoint(path, resolve_device(args.device), args.model)
    if args.sampler and args.sampler not in trainer.sampler_labels():
        raise UsageError(f"{path}: this VAE has no fitted mixture; use --sampler prior")
    return trainer, path


def sampler_labels(trainer):
    """Each way to draw the model's new images, by name, with its label: the VAE's, or the GAN's one (None)."""
    if isinstance(trainer, GANTrainer):
        return {None: "moving average of G" if trainer.G_ema else "G"}
    return trainer.sampler_labels()


def draw_samples(trainer, n, seed, sampler=None):
    """n new images (an n×784 float32 tensor in [0,1], on the CPU) from a trained model, drawn 1000 at a time
    from a seeded generator into one array that the tensor shares (sampler: the VAE's, by default its prior)."""
    generator, kwargs = torch.Generator().manual_seed(seed), {"sampler": sampler} if sampler else {}
    images = torch.from_numpy(np.empty((n, IMAGE_DIM), dtype=np.float32))
    for chunk in images.split(1000):
        chunk[:] = trainer.sample(len(chunk), generator, **kwargs).cpu()
    return images


def sample_command(args, stop):
    if not args.out:
        raise UsageError("--out '': must name a file")
    out_dir = Path(args.out).parent
    if not out_dir.is_dir():
        why = "is not a directory" if out_dir.exists() else "does not exist"
        raise UsageError(f"--out {args.out}: {out_dir} {why}")
    check_replaceable(args.out, NPY_FILE)
    trainer, _ = checkpoint_trainer(args)
    labels = sampler_labels(trainer)
    sampler = args.sampler or (DEFAULT_SAMPLER if DEFAULT_SAMPLER in labels else next(iter(labels)))
    images = draw_samples(trainer, args.n, args.seed, sampler)
    write_output(args.out, lambda f: np.save(f, images.numpy()), NPY_FILE)
    print(f"wrote {args.n} {args.model} samples ({args.n}x{IMAGE_DIM}, float32 in [0,1], {labels[sampler]}) "
          f"to {args.out}")
    return 0


def build_parser():
    parser = Parser(prog="python -m tools.sample", description=__doc__)
    add_checkpoint_flags(parser, "how many images", sampler_default=DEFAULT_SAMPLER)
    parser.add_argument("--out", default="samples.npy", help="output .npy file (default: samples.npy)")
    return parser


def main(argv=None):
    return run_cli(build_parser(), argv, sample_command)


if __name__ == "__main__":
    sys.exit(main())
