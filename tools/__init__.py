"""Instruments beside the submission: each module runs as `python -m tools.NAME` and imports homework7.

  evaluate  the MNIST classifier, the scores of samples, the VAE's IWAE bound
  sweep     one VAE per KL weight, scored
  report    the submission's PDF and zip
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


def add_threads_flag(parser):
    """--threads of a tool that trains or samples, as the training commands have it (RunConfig.threads)."""
    field = next(f for f in dataclasses.fields(RunConfig) if f.name == "threads")
    within = field.metadata["within"]
    parser.add_argument("--threads", type=number(int, within), default=field.default,
                        help=f"{field.metadata['help']} (default: {field.default}; within {within})")
