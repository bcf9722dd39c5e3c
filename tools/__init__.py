"""Instruments beside the submission: each module runs as `python -m tools.NAME` and imports homework7.

  evaluate  the MNIST classifier, the scores of samples, the VAE's IWAE bound
  sweep     one VAE per KL weight, scored
  report    the submission's PDF and zip
  bench     training speed against a plain loop and the torch.mm limit

homework7.py never imports this package: it runs on its own.
"""
