"""Training speed: this project's VAE and GAN steps against the loop a newcomer writes, and against the
limit of torch.mm alone on the same matrix products; peak memory of a one-epoch default run.

Usage:
  python -m tools.bench [--models vae gan] [--steps 300]      prints a Markdown table
  python -m tools.bench --models vae --batch-sizes 100 250 500   seconds per epoch at each batch size
"""
import contextlib
import dataclasses
import io
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import homework7 as hw
from tools import add_number_flag, add_threads_flag
from homework7 import (TRAINERS, VAE, Discriminator, FastDropout, Generator, Parser, RunConfig, UsageError,
                       batch_bounds, fit, load_images, mean_of_steps, minibatches, reparameterize, run_cli,
                       save_checkpoint, use_threads)


def with_stock_dropout(model):
    """The model with torch's own nn.Dropout in place of this project's FastDropout, as a newcomer's code has it."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, FastDropout):
                setattr(module, name, nn.Dropout(child.p))
    return model


def plain_vae_steps(train_x, steps, cfg):
    """The loop a newcomer writes (pytorch/examples style): the same model with nn.Dropout, DataLoader,
    default Adam, sigmoid + BCE, loss.item() every step. Returns seconds for `steps` steps after a short warm-up."""
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train_x), batch_size=cfg.batch_size,
                                         shuffle=True)
    model = with_stock_dropout(VAE(cfg.latent_dim, cfg.hidden, cfg.dropout))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def step(x):
        mu, logvar = model.encode(x)
        y = model.pixel_means(reparameterize(mu, logvar))
        recon = F.binary_cross_entropy(y, x, reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = (recon + kl) / len(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    return time_loop(step, (x for (x,) in cycle(loader)), steps)


def plain_gan_steps(train_x, steps, cfg):
    """The newcomer's GAN loop (pytorch/examples DCGAN style): the same models with nn.Dropout, DataLoader,
    nn.BCELoss on D's probabilities with label tensors, default Adam, .item() of both losses every step;
    like this project (and the DCGAN example) G's step reuses the fakes of D's step."""
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train_x), batch_size=cfg.batch_size,
                                         shuffle=True)
    G, D = Generator(cfg.noise_dim, cfg.hidden), with_stock_dropout(Discriminator(cfg.hidden, cfg.dropout))
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    bce = nn.BCELoss()

    def step(x):
        ones, zeros = torch.ones(len(x)), torch.zeros(len(x))
        D.zero_grad()
        loss_real = bce(D(x), ones)
        loss_real.backward()
        fake = G(torch.randn(len(x), cfg.noise_dim))  # with its graph: G's step below reuses it
        loss_fake = bce(D(fake.detach()), zeros)
        loss_fake.backward()
        opt_D.step()
        G.zero_grad()
        loss_G = bce(D(fake), ones)
        loss_G.backward()
        opt_G.step()
        return (loss_real + loss_fake).item(), loss_G.item()

    return time_loop(step, (x for (x,) in cycle(loader)), steps)


def project_steps(name, train_x, steps, cfg):
    """This project's training step, as fit() runs it: sliced minibatches, the steps' numbers kept as tensors."""
    torch.manual_seed(cfg.seed)
    trainer = TRAINERS[name](cfg, torch.device("cpu"))
    kept = []
    seconds = time_loop(lambda x: kept.append(trainer.train_step(x)), endless_minibatches(train_x, cfg.batch_size), steps)
    mean_of_steps(kept, trainer.columns)  # the one read-back an epoch does
    return seconds


def epoch_seconds(configs, train_x, steps, stop, rounds=3):
    """Seconds per epoch of the bare training steps of each config (by label: (model, config)), from `steps` steps,
    the fastest of `rounds` rounds alternating over the configs; checks stop between two timings."""
    best = dict.fromkeys(configs, math.inf)
    for _ in range(rounds):
        for label, (name, cfg) in configs.items():
            stop.check()
            seconds = project_steps(name, train_x, steps, cfg)
            best[label] = min(best[label], seconds / steps * len(batch_bounds(len(train_x), cfg.batch_size)))
    return best


def endless_minibatches(x, batch_size):
    """fit()'s shuffled minibatches, one epoch after another, for as many steps as a timing wants."""
    while True:
        yield from minibatches(x, batch_size)


def cycle(loader):
    while True:
        yield from loader


def time_loop(step, batches, steps, warmup=20):
    """Seconds that `steps` calls of step(batch) take, after `warmup` untimed calls."""
    for _ in range(warmup):
        step(next(batches))
    start = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    return time.perf_counter() - start


def linear_products(layers, batch, input_grad_first, weight_grads=True):
    """(m, k, n) of the matrix products of fully-connected layers, forward and backward, at this batch size:
    forward x·Wᵀ, backward the weight gradient (where wanted) and (except into a first layer that needs
    none) the input's."""
    products = []
    for i, layer in enumerate(layers):
        out_f, in_f = layer.out_features, layer.in_features
        products.append((batch, in_f, out_f))  # forward
        if weight_grads:
            products.append((out_f, batch, in_f))  # gradient of the weights
        if i > 0 or input_grad_first:
            products.append((batch, out_f, in_f))  # gradient of the layer's input
    return products


def step_products(name, cfg):
    """Every matrix product of one training step of the model (batch cfg.batch_size)."""
    linears = lambda module: [m for m in module.modules() if isinstance(m, nn.Linear)]
    b = cfg.batch_size
    if name == "vae":
        return linear_products(linears(VAE(cfg.latent_dim, cfg.hidden, cfg.dropout)), b, False)
    G, D = linears(Generator(cfg.noise_dim, cfg.hidden)), linears(Discriminator(cfg.hidden, cfg.dropout))
    g_forward = [(b, m.in_features, m.out_features) for m in G]
    # G(z) without gradients (with --g-noise shared, G's step below makes it); D on real, then on fake
    d_step = (g_forward if cfg.g_noise == "fresh" else []) + 2 * linear_products(D, b, False)
    # G's step: gradients flow through D into G, but D's own weight gradients are not needed
    g_step = linear_products(G, b, False) + linear_products(D, b, True, weight_grads=False)
    return d_step + g_step


def matmul_seconds(products, repeats=200):
    """Seconds torch.mm needs for one pass over the products: the hardware limit of a step."""
    operands = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in products]
    outputs = [torch.empty(m, n) for m, _, n in products]

    def one_pass():
        for (a, b), out in zip(operands, outputs):
            torch.mm(a, b, out=out)

    for _ in range(20):
        one_pass()
    start = time.perf_counter()
    for _ in range(repeats):
        one_pass()
    return (time.perf_counter() - start) / repeats


def timed_steps(trainer_cls):
    """The trainer class whose train_step also adds up the seconds it takes, in step_seconds, and which makes
    nothing after training: fit() is timed epoch by epoch, one epoch a call."""
    class TimedSteps(trainer_cls):
        step_seconds = 0.0

        def after_training(self, train_x):
            return None

        def train_step(self, x):
            start = time.perf_counter()
            self.last_stats = super().train_step(x)
            self.step_seconds += time.perf_counter() - start
            return self.last_stats

    return TimedSteps


def epoch_parts(name, train_x, test_x, cfg, run_dir, stop, epochs=3):
    """Seconds of one whole epoch of fit() (the fastest of the epochs after the first) and of its parts: the
    training steps inside it, the trainer's after_epoch() and the checkpoint's save (each timed on its own)."""
    cfg = dataclasses.replace(cfg, epochs=epochs, run_dir=str(run_dir))
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    trainer = timed_steps(TRAINERS[name])(cfg, torch.device("cpu"))
    ends, metrics = [], []
    with contextlib.redirect_stdout(io.StringIO()):  # fit()'s line per epoch
        for epoch in range(1, epochs + 1):  # one epoch a call: fit() goes on where it stopped
            metrics = fit(trainer, dataclasses.replace(cfg, epochs=epoch), train_x, test_x, stop, metrics)
            ends.append((time.perf_counter(), trainer.step_seconds))
    whole, steps = min((b[0] - a[0], b[1] - a[1]) for a, b in zip(ends, ends[1:]))
    evaluate, checkpoint = math.inf, math.inf
    for _ in range(3):
        start = time.perf_counter()
        trainer.after_epoch(test_x, [trainer.last_stats])
        evaluate = min(evaluate, time.perf_counter() - start)
        start = time.perf_counter()
        save_checkpoint(run_dir, trainer, cfg, metrics)
        checkpoint = min(checkpoint, time.perf_counter() - start)
    return whole, steps, evaluate, checkpoint


def peak_memory_mb(name, tmp_dir):
    """Peak resident memory of a one-epoch run of the model with default flags, in a child process."""
    report_peak = ("import resource, sys, homework7; status = homework7.main(sys.argv[1:]); "
                   "print('peak KiB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(status)")
    done = subprocess.run(
        [sys.executable, "-c", report_peak, name, "--epochs", "1",
         "--run-dir", str(tmp_dir / name), "--figures-dir", str(tmp_dir / name)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(hw.__file__).resolve().parent)})
    if done.returncode:
        raise UsageError(f"the {name} memory run failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return int(done.stdout.rsplit("peak KiB", 1)[1]) / 1024


def default_config(name, train_x):
    """The model's default config, its sizes filled in for these training images."""
    return TRAINERS[name].config_cls().for_training_set(len(train_x))


def bench(models, steps, stop, batch_sizes=None):
    """Images per second of this project's steps, of the plain loop, and of the torch.mm limit; or, with
    batch_sizes, the seconds per epoch of the project's steps at each. Checks stop between two timings."""
    train_x, test_x = load_images(RunConfig())
    if batch_sizes:
        print(f"bench: {torch.get_num_threads()} threads, {steps} timed steps per batch size, fastest of 3 rounds")
        for name in models:
            sizes = {b: (name, dataclasses.replace(default_config(name, train_x), batch_size=b)) for b in batch_sizes}
            for batch_size, seconds in epoch_seconds(sizes, train_x, steps, stop).items():
                print(f"{name} batch {batch_size}: {seconds:.2f} s per epoch of {len(train_x):,} images")
        return 0
    batches = ", ".join(f"{name} {default_config(name, train_x).batch_size}" for name in models)
    print(f"bench: {torch.get_num_threads()} threads, PyTorch {torch.__version__}, each model's default batch size "
          f"({batches}), {steps} timed steps each, fastest of 3")
    rows, lines, epochs = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            cfg = default_config(name, train_x)
            plain_steps = {"vae": plain_vae_steps, "gan": plain_gan_steps}[name]
            products, plain, ours, limit = step_products(name, cfg), math.inf, math.inf, math.inf
            for _ in range(3):  # alternate and keep the fastest, so a slow moment of the machine hits all three
                stop.check()
                plain = min(plain, plain_steps(train_x, steps, cfg))
                ours = min(ours, project_steps(name, train_x, steps, cfg))
                limit = min(limit, matmul_seconds(products) * steps)
            memory = peak_memory_mb(name, Path(tmp))
            whole, in_fit, evaluate, checkpoint = epoch_parts(name, train_x, test_x, cfg, Path(tmp) / f"{name}_epochs",
                                                              stop)
            bare = ours / steps * len(batch_bounds(len(train_x), cfg.batch_size))
            epochs.append((name, bare, in_fit, evaluate, checkpoint, whole - in_fit - evaluate - checkpoint, whole))
            per_s = {k: steps * cfg.batch_size / v for k, v in (("ours", ours), ("plain", plain), ("mm", limit))}
            rows += [(name, "homework7 train_step", per_s["ours"], f"{per_s['ours'] / per_s['plain']:.2f}×",
                      f"{limit / ours:.0%}"),
                     (name, "plain DataLoader loop", per_s["plain"], "1.00×", f"{limit / plain:.0%}"),
                     (name, "torch.mm limit", per_s["mm"], "", "100%")]
            lines.append(f"{name}: {per_s['ours']:,.0f} images/s ({60000 / per_s['ours']:.1f} s per epoch of 60,000), "
                         f"{per_s['ours'] / per_s['plain']:.2f}× the plain loop, {limit / ours:.0%} of the torch.mm "
                         f"limit; peak memory of a default run {memory:,.0f} MiB")
    print("| model | loop | images/s | s/epoch | vs plain | of mm limit |\n|---|---|---:|---:|---:|---:|")
    for name, loop, rate, ratio, share in rows:
        print(f"| {name} | {loop} | {rate:,.0f} | {60000 / rate:.1f} | {ratio} | {share} |")
    print(f"\nOne epoch of {len(train_x):,} images, seconds: the bare steps (as above); inside one whole epoch of "
          "fit() (the fastest of epochs 2-3), its steps, after_epoch() and the checkpoint, the rest, and the whole")
    print("| model | bare steps | steps in fit() | after_epoch() | checkpoint | the rest: means, progress, shuffling "
          "| whole epoch |\n|---|---:|---:|---:|---:|---:|---:|")
    for name, *seconds in epochs:
        print(f"| {name} | " + " | ".join(f"{s:.2f}" for s in seconds) + " |")
    print("\n".join(lines))
    return 0


def build_parser():
    parser = Parser(
        prog="python -m tools.bench", description=__doc__,
        epilog="Images per second at each model's default batch size, the fastest of three alternating rounds "
               "of each loop; then one whole epoch of fit() beside its bare steps.")
    parser.add_argument("--models", nargs="+", choices=TRAINERS, default=list(TRAINERS),
                        help="which models (default: vae gan)")
    add_number_flag(parser, "--steps", int, "[1, 1e6]", 300, "timed training steps per loop")
    add_number_flag(parser, "--batch-sizes", int, "[2, 1e6]", None, "instead of the table: seconds per epoch of the "
                    "bare steps at each batch size, timed side by side", shown="off", nargs="+", metavar="B")
    add_threads_flag(parser)
    return parser


def bench_command(args, stop):
    use_threads(args.threads)
    return bench(args.models, args.steps, stop, args.batch_sizes)


def main(argv=None):
    return run_cli(build_parser(), argv, bench_command)


if __name__ == "__main__":
    sys.exit(main())
