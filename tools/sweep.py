"""The KL weight of Eq. 10, swept: one VAE per weight, each scored by the evaluation's classifier.

Usage:
  python -m tools.sweep --kl-weights 0 0.25 0.5 1 2 4 [any vae flag]

Each run keeps its checkpoint and figures in RUN_DIR/kl_<w> (RUN_DIR: runs/sweep); the table goes to
RUN_DIR/sweep.json and the terminal, the figure to FIGURES_DIR/vae_sweep.png.
"""
import argparse
import math
import sys
from pathlib import Path

import torch

from homework7 import RunConfig, UsageError, VAEConfig, add_config_flags, make_config, plot_rows, run_cli, save_json, train
from tools.evaluate import CLASSIFIER_PATH, evaluate_trainer, load_classifier, real_references, sampler_label


def sweep(given, kl_weights, n, classifier_path):
    """One VAE per KL weight; the figure of reconstructions and new images, and the table of scores."""
    if not kl_weights or any(not (w >= 0 and math.isfinite(w)) for w in kl_weights):
        raise UsageError("--kl-weights: give one or more weights, each 0 or more")
    if n < 1:
        raise UsageError(f"--n {n}: must be at least 1")
    sweep_dir = Path(given.get("run_dir") or "runs/sweep")
    figures_dir = Path(given.get("figures_dir") or RunConfig.figures_dir)
    rows, table, references = [], [], None
    for w in kl_weights:
        run_dir = sweep_dir / f"kl_{w:g}"  # each run keeps its own checkpoint and figures here
        cfg = make_config(VAEConfig, {**given, "kl_weight": w, "run_dir": str(run_dir),
                                      "figures_dir": str(run_dir)}, "vae")
        trainer, test_x = train("vae", cfg)
        if references is None:  # the same real images for every weight: classified once
            references = real_references(load_classifier(classifier_path, trainer.device)[0], trainer.device)
        report = evaluate_trainer(trainer, test_x, classifier_path, n=n, iwae_k=0, seed=cfg.seed,
                                  references=references)
        samples = report["samples"][sampler_label(trainer)]
        scores = {"kl_weight": w, "test_elbo": report["test_elbo"], "fid": samples["fid"],
                  "coverage": samples["coverage"], "confident": samples["confident"],
                  "inception_score": samples["inception_score"]}
        table.append(scores)
        save_json(sweep_dir / "sweep.json", table)
        new = trainer.sample(16, torch.Generator().manual_seed(cfg.seed))
        rows += [(f"w = {w:g}: reconstruction", trainer.reconstruct(test_x[:16])),
                 (f"new; −ELBO {scores['test_elbo']:.1f},\nFID* {scores['fid']:.1f}, "
                  f"{scores['coverage']}/10 classes", new)]
    plot_rows(rows, figures_dir / "vae_sweep.png",
              f"VAE with KL weight w (p = {cfg.latent_dim}, {cfg.epochs} epochs); −ELBO in nats with w = 1")
    print(format_sweep(table))
    return 0


def format_sweep(table):
    """The sweep's table in Markdown, for the terminal and the README."""
    lines = ["| KL weight | test −ELBO | FID* | coverage | confident | IS |", "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {s['kl_weight']:g} | {s['test_elbo']:.2f} | {s['fid']:.1f} | {s['coverage']}/10 | "
              f"{s['confident']:.3f} | {s['inception_score']:.2f} |" for s in table]
    return "\n".join(lines)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m tools.sweep", description=__doc__.split("\n\n")[0],
                                     epilog="Every other flag is the vae command's, passed to each run.")
    add_config_flags(parser, VAEConfig, skip={"kl_weight"})
    parser.add_argument("--kl-weights", type=float, nargs="+", default=[0, 0.25, 0.5, 1, 2, 4], metavar="W",
                        help="the KL weights to train (default: 0 0.25 0.5 1 2 4)")
    parser.add_argument("--n", type=int, default=10000, help="samples scored per weight (default: 10000)")
    parser.add_argument("--classifier", default=CLASSIFIER_PATH,
                        help=f"the cached MNIST classifier, trained if missing (default: {CLASSIFIER_PATH})")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items() if k not in ("kl_weights", "n", "classifier")}
    return run_cli("tools.sweep", lambda: sweep(given, args.kl_weights, args.n, args.classifier))


if __name__ == "__main__":
    sys.exit(main())
