"""The GAN's training methods, measured: each trained from the GAN's old default (batch 100, 75 epochs) with one
change (or several, joined by +), its samples scored at chosen epochs against the minutes of training spent so far;
prints the table of methods and draws the three scores against training minutes.

Usage:
  python -m tools.gan_quality --methods old r1 ema-rampup   train (or reuse) each run, print the table
  python -m tools.gan_quality --methods old new --figure figures/gan_quality.png

Each run keeps its checkpoint in runs/gan_quality/T-thread/NAME/ and its scores in
runs/gan_quality/T-thread/NAME.json (T: torch's thread count, --threads), reused while the config,
epochs and sample count match (--retrain trains again). Runs with --bn-batches 0 are also
scored with the BatchNorm statistics recomputed (row "NAME + bn"), which needs no training of its own.
"""
import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from homework7 import (GANConfig, GANTrainer, Parser, UsageError, add_config_flags, fit, flag,
                       load_images, output_dirs, resolve_device, run_cli, save_json, use_threads, validate_config)
from tools import add_number_flag, add_threads_flag
from tools.bench import epoch_seconds
from tools.outputs import PNG_FILE, check_replaceable, read_json, write_output
from tools.evaluate import CLASSIFIER_PATH, classify, load_classifier, real_references, sample_scores
from tools.sample import draw_samples, trainer_from_checkpoint

# the GAN's old default: GANConfig's first defaults, with the training methods below switched off
OLD_DEFAULT = {"epochs": 75, "batch_size": 100, "lr": 4e-4, "beta1": 0.5, "beta2": 0.999, "noise_dim": 100,
               "hidden": 256, "dropout": 0.5, "k": 1, "r1": 0.0, "r1_every": 16, "ema": 0.9999, "ema_rampup": 0.0,
               "bn_batches": 0, "generator_loss": "non-saturating", "g_noise": "fresh"}
# each method: the flags it changes from the old default (the methods measured and dropped: tools/RESULTS.md)
METHODS = {
    "old": {},
    "r1": {"r1": 0.01, "r1_every": 16},  # R1 γ 0.01 on every 16th D step, weighted by 16
    "ema-rampup": {"ema_rampup": 0.1},  # the average spans at most the last 10% of G's steps
    "bn": {"bn_batches": 200},  # the sampler's BatchNorm statistics recomputed over 200 batches of noise
    "batch-250": {"batch_size": 250, "lr": 6.3e-4, "ema": 0.99975},  # lr × √2.5, decay^2.5: the same span in images
    "batch-500": {"batch_size": 500, "lr": 8.9e-4, "ema": 0.9995},  # lr × √5, decay^5
    "batch-1000": {"batch_size": 1000, "lr": 1.26e-3, "ema": 0.999},  # lr × √10, decay^10
    "shared-noise": {"g_noise": "shared"},  # G's step reuses D's G(z): one pass of G fewer per step
    "fresh-noise": {"g_noise": "fresh"},  # G's step on a minibatch of noise of its own, as in Algorithm 1
}
QUALITY_DIR = Path("runs/gan_quality")
# (key, title, the target line of the figure: what 110 epochs of the old default gave, the axis's range)
SCORES = (("confident", "confident share", 0.89, (0.75, 0.95)), ("inception_score", "IS", 9.0, (8.0, 9.4)),
          ("fid", "FID* (log scale)", 3.5, (2.0, 60.0)))
POINT_SCORES = tuple(key for key, *_ in SCORES)  # what each scored point of a record holds


def quality_dir(out_dir):
    """Where the runs go: one directory per thread count, since the minutes depend on it."""
    return Path(out_dir) / f"{torch.get_num_threads()}-thread"


def method_config(name, epochs=None, out_dir=QUALITY_DIR, n_train=None, seed=0):
    """The config of a method: a+b joins methods' flags on the old default, or on today's GANConfig defaults
    when the name begins with 'new' (new, new+shared-noise, ...). Seeds other than 0 run in NAME-seedS."""
    parts = name.split("+")
    on_new = parts[0] == "new"
    flags = {} if on_new else dict(OLD_DEFAULT)
    for part in parts[1:] if on_new else parts:
        if "=" in part:  # FIELD=VALUE sets one field: new+lr=1.2e-3+beta2=0.99
            flags.update(field_flags(part, name))
            continue
        if part not in METHODS:
            raise UsageError(f"unknown method {part!r}: use new or {', '.join(METHODS)}, joined by +")
        flags.update(METHODS[part])
    cfg = GANConfig(**flags, seed=seed)
    if epochs is not None:
        cfg.epochs = epochs
    if n_train is not None:  # --n-train, over a method's own n_train=N
        cfg.n_train = n_train
    cfg.run_dir = cfg.figures_dir = str(quality_dir(out_dir) / run_name(name, seed))
    validate_config(cfg)
    return cfg


class FieldParser(Parser):
    """homework7's parser of GANConfig's flags, whose errors become one line of this tool."""

    def error(self, message):
        raise UsageError(message)


def field_flags(part, name):
    """FIELD=VALUE of a method, read as homework7 reads --field VALUE: the same type and choices (the range is
    checked with the config, validate_config)."""
    parser = FieldParser(prog="")
    add_config_flags(parser, GANConfig)
    key, value = part.split("=", 1)
    try:
        return vars(parser.parse_args([f"{flag(key)}={value}"]))
    except UsageError as e:
        raise UsageError(f"method {name!r}: {e}") from None


def run_name(name, seed):
    return name if seed == 0 else f"{name}-seed{seed}"


def score(trainer, train_x, classifier, reference, n, seed, standing_batches=None):
    """The scores of n samples of the trainer as fit() leaves it, or of a copy with its BatchNorm statistics
    recomputed over standing_batches batches of noise instead."""
    if standing_batches:
        trainer = copy.deepcopy(trainer)  # training goes on with the original, untouched
        trainer.cfg = dataclasses.replace(trainer.cfg, bn_batches=standing_batches)
        trainer.after_training(train_x)
    scores = sample_scores(*classify(classifier, draw_samples(trainer, n, seed)), reference)
    return {k: v for k, v in scores.items() if k != "histogram"}


def run_method(name, at, n, epochs, stop, retrain=False, out_dir=QUALITY_DIR, n_train=None,
               classifier_path=CLASSIFIER_PATH, seed=0):
    """Trains one method's run, scoring it at the epochs in at; returns (and saves) its record."""
    cfg = method_config(name, epochs, out_dir, n_train, seed)
    path = quality_dir(out_dir) / f"{run_name(name, seed)}.json"
    wanted = {"config": dataclasses.asdict(cfg), "at": at, "n": n}
    if path.exists() and not retrain:
        saved = read_record(path)
        if {k: saved.get(k) for k in wanted} == wanted:
            return saved
        print(f"{path}: recorded for another config, --at or --n; training again")
    device = resolve_device(cfg.device)
    classifier = load_classifier(classifier_path, device, stop=stop)[0]
    reference = real_references(classifier, device)[0]
    train_x, test_x = load_images(cfg)
    torch.manual_seed(cfg.seed)
    trainer = GANTrainer(cfg, device)
    points, metrics, training = [], [], 0.0
    with output_dirs(("run dir", cfg.run_dir)):
        for epoch in sorted({e for e in at if e <= cfg.epochs} | {cfg.epochs}):  # fit() goes on where it stopped
            began = time.perf_counter()
            metrics = fit(trainer, dataclasses.replace(cfg, epochs=epoch), train_x, test_x, stop, metrics)
            training += time.perf_counter() - began
            if epoch not in at:
                continue
            point = {"epoch": epoch, "minutes": training / 60,  # unrounded: two points never tie, however fast
                     **score(trainer, train_x, classifier, reference, n, cfg.seed)}
            if not cfg.bn_batches:
                point["bn"] = score(trainer, train_x, classifier, reference, n, cfg.seed,
                                    standing_batches=METHODS["bn"]["bn_batches"])
            points.append(point)
            print(f"{name} epoch {epoch}: {point}", flush=True)
    seconds = [m["seconds"] for m in metrics]
    result = {**wanted, "method": name, "seed": seed, "points": points,
              "epoch_seconds_median": statistics.median(seconds),
              "epoch_seconds_min": min(seconds), "threads": torch.get_num_threads()}
    save_json(path, result)
    return result


def read_record(path):
    """A record that run_method saved (NAME.json), or one line where the file is not one."""
    record = read_json(path)
    numeric = (int, float)

    def scores(point):
        return isinstance(point, dict) and all(isinstance(point.get(k), numeric) for k in POINT_SCORES)

    points_fit = isinstance(record, dict) and isinstance(record.get("points"), list) and all(
        scores(p) and all(isinstance(p.get(k), numeric) for k in ("epoch", "minutes")) and scores(p.get("bn", p))
        for p in record["points"])
    if not (points_fit and isinstance(record.get("method"), str) and isinstance(record.get("at"), list)
            and all(isinstance(epoch, int) for epoch in record["at"])
            and all(isinstance(record.get(k), numeric) for k in ("seed", "epoch_seconds_median", "threads"))):
        raise UsageError(f"{path}: not a record of tools.gan_quality (its method, seed, epochs or scores are "
                         "missing)")
    return record


def r1_batch_coupling(D, x):
    """R1 on the batch x two ways, D in training mode (batch statistics, as in training): the penalty of the
    summed logits, as r1_penalty computes it, and that of each image's own logit alone, ∂a_i/∂x_i (WGAN-GP's
    warning: through BatchNorm each a_j depends on every x_i). Returns both mean squared gradient norms."""
    D.train()
    x = x.detach().requires_grad_(True)
    torch.manual_seed(0)
    logits = D.logits(x)
    summed = torch.autograd.grad(logits.sum(), x, retain_graph=True)[0]
    own = torch.stack([torch.autograd.grad(logits[i], x, retain_graph=True)[0][i] for i in range(len(x))])
    norm = lambda g: g.pow(2).sum(1).mean().item()
    return {"summed_logits": norm(summed), "own_logit": norm(own), "difference": norm(summed - own)}


def scored_epochs(results):
    """Every epoch at which any of the records was scored, in order."""
    return sorted({e for r in results for e in r["at"]})


def runs_by_method(results):
    """The records grouped by method (one per seed), each as {epoch: its scored point}."""
    by_method = {}
    for r in results:
        by_method.setdefault(r["method"], []).append({p["epoch"]: p for p in r["points"]})
    return by_method


def format_table(results):
    """One row per method (and per method + bn), scores at each epoch: confident / IS / FID*."""
    at = scored_epochs(results)
    lines = ["| method | " + " | ".join(f"{e} epochs: conf / IS / FID*" for e in at) + " | s/epoch (median) |",
             "|---|" + "---:|" * (len(at) + 1)]
    for r in results:
        name = run_name(r["method"], r.get("seed", 0))
        for label, key in ((name, None), (f"{name} + bn", "bn")):
            points = {p["epoch"]: (p[key] if key else p) for p in r["points"] if not key or key in p}
            if not points:
                continue
            cells = [f"{points[e]['confident']:.3f} / {points[e]['inception_score']:.2f} / {points[e]['fid']:.1f}"
                     if e in points else "" for e in at]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {r['epoch_seconds_median']:.2f} |")
    return "\n".join(lines)


def format_seed_table(results):
    """One row per method run with several seeds, at each epoch: the mean of each score over the seeds, and
    its spread (largest minus smallest): conf / IS / FID*, then the spreads in brackets."""
    at = scored_epochs(results)
    lines = ["| method | seeds | " + " | ".join(f"{e} epochs: mean conf / IS / FID* (spread)" for e in at) + " |",
             "|---|---:|" + "---:|" * len(at)]
    for method, runs in runs_by_method(results).items():
        if len(runs) < 2:
            continue
        cells = []
        for e in at:
            values = [[run[e][key] for run in runs if e in run] for key in ("confident", "inception_score", "fid")]
            if len(values[0]) < len(runs):
                cells.append("")
                continue
            means = [statistics.mean(v) for v in values]
            spreads = [max(v) - min(v) for v in values]
            cells.append(f"{means[0]:.3f} / {means[1]:.2f} / {means[2]:.1f} "
                         f"({spreads[0]:.3f} / {spreads[1]:.2f} / {spreads[2]:.1f})")
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def plot_quality(results, path, epoch_seconds=None):
    """The three scores against minutes of training, one line per method: the mean over the seeds scored at
    each epoch, and a band from the lowest to the highest where it has several. The minutes are the recorded
    ones (their mean over seeds), or epochs × epoch_seconds[method], the step cost timed side by side, where
    that is given."""
    fig = Figure(figsize=(12, 4), dpi=100, layout="constrained")
    axes = fig.subplots(1, 3)
    by_method = runs_by_method(results)
    for ax, (key, label, target, limits) in zip(axes, SCORES):
        for method, runs in by_method.items():
            epochs = sorted(set().union(*runs))  # each scored epoch, over the seeds scored there
            if epoch_seconds:
                minutes = [e * epoch_seconds[method] / 60 for e in epochs]
            else:
                minutes = [statistics.mean(run[e]["minutes"] for run in runs if e in run) for e in epochs]
            values = [[run[e][key] for run in runs if e in run] for e in epochs]
            seeds = f" ({len(runs)} seeds)" if len(runs) > 1 else ""
            (line,) = ax.plot(minutes, [statistics.mean(v) for v in values], marker="o", markersize=3,
                              label=method + seeds)
            if len(runs) > 1:
                ax.fill_between(minutes, [min(v) for v in values], [max(v) for v in values], alpha=0.2,
                                color=line.get_color())
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label="target")
        threads = torch.get_num_threads() if epoch_seconds else results[0]["threads"]
        ax.set_xlabel(f"minutes of training ({threads} thread{'s' if threads > 1 else ''})")
        ax.set_title(label)
        ax.set_ylim(*limits)
        if key == "fid":
            ax.set_yscale("log")
    axes[0].legend(fontsize=8, loc="lower right")
    source = "epochs × the step cost timed side by side" if epoch_seconds else "as each run recorded them"
    fig.suptitle("GAN sample quality against training time: 10,000 samples scored by the project's classifier\n"
                 f"the mean and range over seeds; minutes: {source}", fontsize=10)
    write_output(path, lambda f: fig.savefig(f, format="png", dpi=fig.dpi), PNG_FILE)
    return fig


def build_parser():
    parser = Parser(prog="python -m tools.gan_quality", description=__doc__)
    parser.add_argument("--methods", nargs="+", default=["old", "new"],
                        help=f"runs: new (today's defaults) or {', '.join(METHODS)}, or several joined by + "
                             "(default: old new)")
    add_number_flag(parser, "--at", int, "[1, 1e6]", [10, 20, 30, 40, 50, 55, 60, 75],
                    "epochs at which the samples are scored", nargs="+")
    add_number_flag(parser, "--epochs", int, "[1, 1e6]", None, "train this many epochs", shown="the method's")
    add_number_flag(parser, "--n", int, "[2, 1e9]", 10000, "samples scored at each point (a Frechet distance needs 2)")
    add_number_flag(parser, "--seeds", int, "[0, 4294967295]", [0], "train each method with each of these seeds",
                    nargs="+")
    parser.add_argument("--records", nargs="+", metavar="JSON", default=None,
                        help="instead of training: the tables and the figure of these saved records (NAME.json)")
    parser.add_argument("--figure", default=None, help="also draw the scores against minutes into this PNG")
    parser.add_argument("--retrain", action="store_true", help="train again even where a saved record matches")
    add_number_flag(parser, "--n-train", int, "[1, 1e9]", None, "train on the first N images", shown="all")
    parser.add_argument("--out-dir", default=str(QUALITY_DIR), help=f"where the runs go (default: {QUALITY_DIR})")
    parser.add_argument("--classifier", default=CLASSIFIER_PATH,
                        help=f"the judge's cache, trained on first use (default: {CLASSIFIER_PATH})")
    parser.add_argument("--step-cost", action="store_true",
                        help="instead of training: seconds per epoch of each method's bare steps, timed side by side; "
                             "with --figure, its minutes of training are epochs times these")
    parser.add_argument("--r1-coupling", metavar="CHECKPOINT", default=None,
                        help="instead of training: R1's squared gradient norms on 100 test images through the "
                             "checkpoint's D, of the summed logits and of each image's own logit")
    add_threads_flag(parser)
    return parser


def main(argv=None):
    return run_cli(build_parser(), argv, quality)


def quality(args, stop):
    use_threads(args.threads)
    if args.figure:  # refused before any work where it names a file of another kind
        check_replaceable(args.figure, PNG_FILE)
    if args.records:
        results = [read_record(path) for path in args.records]
        args.methods = list(dict.fromkeys(r["method"] for r in results))
    step_cost = None
    if args.step_cost:
        train_x = load_images(method_config("old"))[0]
        step_cost = epoch_seconds({name: ("gan", method_config(name)) for name in args.methods}, train_x, 300, stop)
        for name, seconds in step_cost.items():
            print(f"{name}: {seconds:.2f} s per epoch of {len(train_x):,} images ({torch.get_num_threads()} threads)")
        if not args.figure:
            return 0
    if args.r1_coupling:
        trainer = trainer_from_checkpoint(args.r1_coupling, torch.device("cpu"), "gan")
        test_x = load_images(trainer.cfg)[1]
        print(json.dumps(r1_batch_coupling(trainer.D, test_x[: trainer.cfg.batch_size])))
        return 0
    if not args.records:
        for name in args.methods:
            method_config(name, args.epochs, args.out_dir, args.n_train)  # bad names refused before any training
        at = sorted(set(args.at))
        results = [run_method(name, at, args.n, args.epochs, stop, args.retrain, args.out_dir, args.n_train,
                              args.classifier, seed)
                   for name in args.methods for seed in args.seeds]
    print(format_table(results))
    print(format_seed_table(results))
    if args.figure:
        plot_quality(results, Path(args.figure), step_cost)
        print(f"figure in {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
