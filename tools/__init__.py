"""Instruments beside the submission: each module runs as `python -m tools.NAME` and imports homework7.

  evaluate  the MNIST classifier, the scores of samples, the VAE's IWAE bound
  sweep     one VAE per KL weight, scored
  report    the submission's PDF and zip
  latent    the VAE's latent space, drawn from its checkpoint
  vaegan    the VAE-GAN, an experiment for the assignment's third row
  bench     training speed against a plain loop and the torch.mm limit

homework7.py never imports this package: it runs on its own.
"""
import argparse
import dataclasses

from homework7 import RunConfig, lies_within


def number(kind, within):
    """An argparse type: a number of that kind (int or float) within the interval, written as in mathematics
    ("[2, 1e9]"), or argparse's one line saying so, before any work."""
    def convert(text):
        value = kind(text)
        if not lies_within(value, within):
            raise argparse.ArgumentTypeError(f"{text}: must lie within {within}")
        return value
    return convert


def add_number_flag(parser, flag, kind, within, default, help, shown=None, **kwargs):
    """A flag that takes a number of that kind (or several, with nargs) within the interval; its help ends as
    the help of homework7's own flags does: "(default: ...; within ...)"."""
    if shown is None:
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
    each = "each " if "nargs" in kwargs else ""
    parser.add_argument(flag, type=number(kind, within), default=default,
                        help=f"{help} (default: {shown}; {each}within {within})", **kwargs)


def add_threads_flag(parser):
    """--threads of a tool that trains or samples, as the training commands have it (RunConfig.threads)."""
    field = next(f for f in dataclasses.fields(RunConfig) if f.name == "threads")
    add_number_flag(parser, "--threads", int, field.metadata["within"], field.default, field.metadata["help"])
