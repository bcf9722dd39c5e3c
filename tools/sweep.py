"""The VAE's choices, swept: one VAE per latent dimension p and KL weight of Eq. 10, scored by the evaluation's
classifier from both samplers (z ~ the prior N(0, I), and z ~ Gaussian mixtures of each size fitted to the encodings μ(x)).

Usage:
  python -m tools.sweep --kl-weights 0 0.25 0.5 1 2 4 [any vae flag]
  python -m tools.sweep --latent-dims 4 16 32 --kl-weights 0.5 1 --epochs-list 20 40 --components 10 50 100
  python -m tools.sweep --latent-dims 16 --kl-weights 0.5 --components 50 100 --fit-sizes 10000 60000

Each (p, w) run keeps its checkpoint and figures in RUN_DIR/p<p>_kl<w> (RUN_DIR: runs/sweep); the runs of
--epochs-list continue one another with --resume. The table goes to RUN_DIR/sweep.json and the terminal, the
figure to FIGURES_DIR/vae_sweep.png.
"""
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from homework7 import (Parser, Stopped, UsageError, VAEConfig, VAETrainer, add_config_flags, load_images,
                       make_config, output_dirs, plot_rows, run, run_cli, save_json)
from tools import add_number_flag
from tools.evaluate import CLASSIFIER_PATH, evaluate_trainer, load_classifier, real_references


def sweep(given, latent_dims, kl_weights, epochs_list, components, n, classifier_path, stop, fit_sizes=None):
    """One VAE per (p, w), trained to each epoch count in turn; at each, the N(0, I) samples and those of a
    mixture of each size, fitted to each number of encodings, are scored: one row of the table (sweep.json)
    per sampler, mixture size and fit size."""
    fit_sizes = fit_sizes or [given.get("mixture_fit_n", VAEConfig.mixture_fit_n)]
    check_lists(epochs_list)
    sweep_dir = Path(given.get("run_dir") or "runs/sweep")
    figures_dir = Path(given.get("figures_dir") or "figures")
    rows, table, references = [], [], None
    for p in latent_dims:
        for w in kl_weights:
            run_dir = sweep_dir / f"p{p}_kl{w:g}"  # each run keeps its own checkpoint and figures here
            for i, epochs in enumerate(epochs_list):
                flags = {**given, "latent_dim": p, "kl_weight": w, "epochs": epochs, "run_dir": str(run_dir),
                         "figures_dir": str(run_dir), "mixture_components": components[0],
                         "mixture_fit_n": fit_sizes[0]}
                cfg, state = make_config(VAETrainer, flags, resume=i > 0)
                train_x = load_images(cfg)[0]
                if max(components) > min(len(train_x), *fit_sizes):
                    raise UsageError(f"--components {max(components)}: more components than the "
                                     f"{min(len(train_x), *fit_sizes)} training encodings")
                trainer, test_x = run(VAETrainer, cfg, stop, state)
                if references is None:  # the same real images for every run: classified once
                    references = real_references(load_classifier(classifier_path, trainer.device, stop=stop)[0],
                                                 trainer.device)
                metrics = json.loads((run_dir / "metrics.json").read_text())
                point = {"latent_dim": p, "kl_weight": w, "epochs": epochs,
                         "train_seconds": round(sum(m["seconds"] for m in metrics), 1)}
                table += score_samplers(trainer, train_x, test_x, components, fit_sizes, n, classifier_path,
                                        references, point)
                save_json(sweep_dir / "sweep.json", table)
            generator = torch.Generator().manual_seed(cfg.seed)  # the figure: the last mixture fitted, no refit
            rows += [(f"p = {p}, w = {w:g}:\nreconstruction", trainer.reconstruct(test_x[:16])),
                     ("new: z ~ N(0, I)", trainer.sample(16, generator)),
                     (f"new: {trainer.sampler_labels()['mixture']}", trainer.sample(16, generator, "mixture"))]
    with output_dirs(("--figures-dir", figures_dir)):
        plot_rows(rows, figures_dir / "vae_sweep.png",
                  f"VAE with latent dimension p and KL weight w ({epochs_list[-1]} epochs)")
    print(format_sweep(table))
    return 0


def check_lists(epochs_list):
    if epochs_list != sorted(set(epochs_list)):
        raise UsageError("--epochs-list: increasing epoch counts")


def score_samplers(trainer, train_x, test_x, components, fit_sizes, n, classifier_path, references, point):
    """Rows of the table for one trained VAE: its N(0, I) samples, then a mixture of each size fitted to each
    number of encodings (after_training, as the run's config would have it)."""
    cfg = trainer.cfg
    report = evaluate_trainer(trainer, test_x, classifier_path, n=n, iwae_k=0, seed=cfg.seed,
                              references=references, samplers=("prior",))
    point = {**point, "test_elbo": report["test_elbo"]}
    rows = [{**point, "sampler": "prior", "components": None, "fit_n": None, "fit_seconds": None,
             **report["samples"][trainer.sampler_labels()["prior"]]}]
    for k in components:
        for fit_n in fit_sizes:
            start = time.perf_counter()
            trainer.cfg = dataclasses.replace(cfg, mixture_components=k, mixture_fit_n=fit_n)
            trainer.after_training(train_x)
            fit_seconds = round(time.perf_counter() - start, 2)
            report = evaluate_trainer(trainer, test_x, classifier_path, n=n, iwae_k=0, seed=cfg.seed,
                                      references=references, samplers=("mixture",))
            rows.append({**point, "sampler": "mixture", "components": k, "fit_n": min(fit_n, len(train_x)),
                         "fit_seconds": fit_seconds, **report["samples"][trainer.sampler_labels()["mixture"]]})
    return rows


def format_sweep(table):
    """The sweep's table in Markdown, for the terminal and the README."""
    lines = ["| p | KL weight | epochs | test −ELBO | z ~ | FID* | coverage | confident | IS |",
             "|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for s in table:
        sampler = ("N(0, I)" if s["sampler"] == "prior" else
                 f"mixture of {s['components']} ({s['fit_n']} μ, {s['fit_seconds']:.0f} s)")
        lines.append(f"| {s['latent_dim']} | {s['kl_weight']:g} | {s['epochs']} | {s['test_elbo']:.2f} | {sampler} | "
                     f"{s['fid']:.1f} | {s['coverage']}/10 | {s['confident']:.3f} | {s['inception_score']:.2f} |")
    return "\n".join(lines)


def build_parser():
    parser = Parser(prog="python -m tools.sweep", description=__doc__,
                                     epilog="Every other flag is the vae command's, passed to each run.")
    add_config_flags(parser, VAEConfig, skip={"kl_weight", "latent_dim", "epochs", "mixture_components",
                                              "mixture_fit_n"})
    vae = VAEConfig().for_training_set(60000)  # the defaults on MNIST
    add_number_flag(parser, "--kl-weights", float, "[0, inf)", [0, 0.25, 0.5, 1, 2, 4], "the KL weights to train",
                    nargs="+", metavar="W")
    add_number_flag(parser, "--latent-dims", int, "[1, 1e9]", [vae.latent_dim], "the latent dimensions p to train",
                    nargs="+", metavar="P")
    add_number_flag(parser, "--epochs-list", int, "[1, 1e6]", [vae.epochs], "score each run after each of these "
                    "epoch counts, in increasing order", nargs="+", metavar="E")
    add_number_flag(parser, "--components", int, "[1, 1e6]", [vae.mixture_components], "mixture sizes fitted and "
                    "scored at each point", nargs="+", metavar="K")
    add_number_flag(parser, "--fit-sizes", int, "[1, 1e9]", [vae.mixture_fit_n], "numbers of training encodings each "
                    "mixture is fitted to", nargs="+", metavar="N")
    add_number_flag(parser, "--n", int, "[2, 1e9]", 10000, "samples scored per sampler (a Frechet distance needs 2)")
    parser.add_argument("--classifier", default=CLASSIFIER_PATH,
                        help=f"the cached MNIST classifier, trained if missing (default: {CLASSIFIER_PATH})")
    return parser


def sweep_command(args, stop):
    lists = ("kl_weights", "latent_dims", "epochs_list", "components", "fit_sizes", "n", "classifier")
    given = {k: v for k, v in vars(args).items() if k not in lists}
    try:
        return sweep(given, args.latent_dims, args.kl_weights, args.epochs_list, args.components, args.n,
                     args.classifier, stop, args.fit_sizes)
    except Stopped as e:  # run again, a sweep starts its runs over: no command of homework7's continues it
        raise Stopped(*e.args[:2], "") from None


def main(argv=None):
    return run_cli(build_parser(), argv, sweep_command)


if __name__ == "__main__":
    sys.exit(main())
