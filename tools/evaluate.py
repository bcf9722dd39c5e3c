"""Scores for trained models: an MNIST classifier judges the samples (coverage of the ten classes, share of
confident samples, Inception score, Fréchet distance on its features); for the VAE also the test −ELBO and
the IWAE bound on −log p(x) (Burda et al., 2016).

Usage:
  python -m tools.evaluate vae|gan [--n 10000] [--checkpoint PATH]   writes eval.json beside the checkpoint
  python -m tools.evaluate vae --sampler mixture                     the VAE's samples from one sampler only

The classifier is trained on MNIST's labels on first use (a few minutes on a CPU) and cached in
runs/classifier.pt. It judges the models; it is not part of either.
"""
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from homework7 import (IMAGE_DIM, IMAGE_SIDE, MNIST_DIR, MNIST_SHA256, Parser, UsageError, VAETrainer, descend,
                       load_images, load_mnist, make_adam, read_mnist_file, run_cli, save_json, sha256, torch_load)
from tools import add_number_flag
from tools.outputs import CHECKPOINT_FILE, check_replaceable, write_output
from tools.sample import add_checkpoint_flags, checkpoint_trainer, draw_samples, sampler_labels

CLASSIFIER_PATH = "runs/classifier.pt"  # where the trained classifier is cached
CLASSIFIER_VERSION = 2  # bump when the classifier or its training changes: cached copies are rebuilt
CLASSIFIER_MIN_ACCURACY = 0.99  # a judge worse than this on the MNIST test set is not trusted
CONFIDENT = 0.9  # a sample is "clearly a digit" when one class gets at least this probability
COVERED = 0.05  # a class is covered when it holds at least this share of the samples
N_CLASSES = 10
LABELS_SHA256 = {  # MNIST's label files as published, beside the image files homework7 reads
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
IDX_LABELS = b"\x00\x00\x08\x01"  # the IDX magic number of labels: uint8, 1 axis


class DigitClassifier(nn.Module):
    """The judge of generated images: a small CNN trained on MNIST's labels (not part of either model)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Unflatten(1, (1, IMAGE_SIDE, IMAGE_SIDE)),  # B×784 → B×1×28×28
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # B×32×14×14
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # B×64×7×7
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),  # B×128: the features of the FID
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(128, N_CLASSES))

    def forward(self, x):
        return self.head(self.features(x))


@torch.inference_mode()
def classify(classifier, x, batch_size=1000):
    """(p(y|x) as B×10, penultimate features as B×128) for images x (on any device), on the CPU."""
    classifier.eval()
    device = next(classifier.parameters()).device
    probs, features = [], []
    for chunk in x.split(batch_size):
        h = classifier.features(chunk.to(device))
        probs.append(torch.softmax(classifier.head(h), 1).cpu())
        features.append(h.cpu())
    return torch.cat(probs), torch.cat(features)


def train_classifier(train_x, train_y, test_x, test_y, device, epochs=10, seed=0, log=print, stop=None):
    """Adam on cross-entropy, each minibatch shifted by up to 2 pixels, the learning rate shrinking each
    epoch; returns (classifier, test accuracy). Between steps it checks stop (homework7.StopSignals), if given."""
    torch.manual_seed(seed)
    classifier = DigitClassifier().to(device)
    optimizer = make_adam(classifier.parameters(), 1e-3, device)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.7)
    train_x, train_y = train_x.to(device), train_y.to(device)
    n_batches = math.ceil(len(train_x) / 100)
    with tqdm(total=epochs * n_batches, desc="classifier", unit="batch", disable=None) as bar:
        for epoch in range(1, epochs + 1):
            classifier.train()
            order = torch.randperm(len(train_x), device=device)
            for batch in order.split(100):
                if stop:
                    stop.check()
                shift = torch.randint(-2, 3, (2,)).tolist()  # MNIST's 4-pixel black border makes wrapping harmless
                x = train_x[batch].reshape(-1, IMAGE_SIDE, IMAGE_SIDE).roll(shift, dims=(1, 2))  # B×28×28
                descend(optimizer, F.cross_entropy(classifier(x.reshape(-1, IMAGE_DIM)), train_y[batch]))
                bar.update()
            schedule.step()
            probs, _ = classify(classifier, test_x.to(device))
            accuracy = (probs.argmax(1) == test_y).float().mean().item()
            bar.set_postfix(epoch=epoch, test_accuracy=f"{accuracy:.4f}")
    log(f"classifier: MNIST test accuracy {accuracy:.4f} after {epochs} epochs")
    return classifier.cpu(), accuracy


def load_mnist_with_labels(split, data_dir=MNIST_DIR):
    """MNIST's images of that split (homework7's load_mnist) and their labels (N int64), each file checked
    against its SHA-256."""
    path = Path(data_dir) / f"{split}-labels-idx1-ubyte.gz"
    labels = read_mnist_file(path, IDX_LABELS, LABELS_SHA256[path.name])
    return load_mnist(split, data_dir), torch.from_numpy(labels.astype(np.int64))


def classifier_stamp():
    """What a cached classifier must have been made by: this version of its code, on these MNIST files."""
    return {"version": CLASSIFIER_VERSION, "data_sha256": {**MNIST_SHA256, **LABELS_SHA256}}


def load_classifier(path, device, log=print, stop=None):
    """The cached MNIST classifier; trained (and cached) when missing or stale."""
    path = Path(path)
    stamp = classifier_stamp()
    classifier = DigitClassifier()
    if path.exists():
        check_replaceable(path, CHECKPOINT_FILE)  # a file of another kind is never trained over
        try:
            state = torch_load(path)
        except UsageError as e:  # a corrupt cache is rebuilt, not fatal
            state = None
            log(f"{e}; retraining")
        if state is not None:
            if not isinstance(state, dict) or "stamp" not in state:
                raise UsageError(f"{path} is not a classifier of tools.evaluate; not replaced (pass another "
                                 "--classifier)")
            if state["stamp"] == stamp:
                classifier.load_state_dict(state["model"])
                return classifier.to(device), state["accuracy"]
            log(f"{path}: made by another version of this script; retraining")
    log(f"training the MNIST classifier that judges the samples (cached in {path})")
    classifier, accuracy = train_classifier(*load_mnist_with_labels("train"), *load_mnist_with_labels("t10k"), device,
                                            log=log, stop=stop)
    if accuracy < CLASSIFIER_MIN_ACCURACY:
        raise UsageError(f"the MNIST classifier reached only {accuracy:.4f} test accuracy "
                         f"(< {CLASSIFIER_MIN_ACCURACY}); its scores would not be trusted")
    state = {"stamp": stamp, "model": classifier.state_dict(), "accuracy": accuracy}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_output(path, lambda f: torch.save(state, f), CHECKPOINT_FILE)
    return classifier.to(device), accuracy


def class_histogram(probs):
    """How many samples the classifier puts in each of the 10 classes."""
    return torch.bincount(probs.argmax(1), minlength=N_CLASSES)


def coverage(probs, min_share=COVERED):
    """The number of classes holding at least min_share of the samples."""
    return int((class_histogram(probs) >= min_share * len(probs)).sum())


def confident_share(probs, threshold=CONFIDENT):
    """The share of samples whose most likely class has probability at least threshold."""
    return probs.max(1).values.ge(threshold).float().mean().item()


# Salimans et al. (2016): IS = exp E_x[KL(p(y|x) ‖ p(y))],  p(y) = E_x[p(y|x)]
def inception_score(probs):
    """1 for samples all of one class, up to 10 for confident samples spread evenly over 10 classes."""
    probs = probs.double().clamp_min(1e-12)
    p_y = probs.mean(0, keepdim=True)
    return math.exp((probs * (probs.log() - p_y.log())).sum(1).mean().item())


# Heusel et al. (2017): d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)
def frechet_distance(features_1, features_2):
    """Fréchet distance between Gaussians fitted to two N×d feature sets."""
    f1, f2 = features_1.double(), features_2.double()
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = torch.cov(f1.T), torch.cov(f2.T)
    # Tr((Σ₁ Σ₂)^½) = Σ √λ over the eigenvalues λ of the symmetric Σ₁^½ Σ₂ Σ₁^½
    lam, vec = torch.linalg.eigh(s1)
    s1_half = vec @ torch.diag(lam.clamp_min(0).sqrt()) @ vec.T
    tr_sqrt = torch.linalg.eigvalsh(s1_half @ s2 @ s1_half).clamp_min(0).sqrt().sum()
    return ((mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * tr_sqrt).item()


def sample_scores(probs, features, reference_features):
    """The numbers of one row of the evaluation table."""
    return {
        "coverage": coverage(probs),
        "confident": confident_share(probs),
        "inception_score": inception_score(probs),
        "fid": frechet_distance(features, reference_features),
        "histogram": class_histogram(probs).tolist(),
    }


# Burda et al. (2016), Eq. 8:  log p(x) ≥ L_K = E log (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x),  z_k ~ q(z|x);
# L_1 is the ELBO, and L_K rises towards log p(x) as K grows.
@torch.inference_mode()
def iwae_bound(model, x, k, eps=None):
    """L_K for each image of x (B values, nats), model in eval mode; eps: K×B×p noise, or None."""
    model.eval()
    mu, logvar = model.encode(x)  # B×p each
    std = torch.exp(0.5 * logvar)
    if eps is None:
        eps = torch.randn(k, *mu.shape, device=mu.device)
    z = mu + std * eps  # K×B×p
    log_px_z = -F.binary_cross_entropy_with_logits(
        model.decoder(z), x.expand(k, *x.shape), reduction="none").sum(-1)  # K×B
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_qz_x = torch.distributions.Normal(mu, std).log_prob(z).sum(-1)
    return torch.logsumexp(log_px_z + log_pz - log_qz_x, dim=0) - math.log(k)


def iwae_nll(model, x, k, chunk_elements=2_000_000):
    """−L_K averaged over the images of x, in nats per image (an upper bound on −log p(x))."""
    batch = max(1, chunk_elements // (k * IMAGE_DIM))
    bounds = [iwae_bound(model, chunk, k) for chunk in x.split(batch)]
    return -torch.cat(bounds).mean().item()


def real_references(classifier, device):
    """(the classifier's features of the MNIST test set, FID's reference; the scores of 10,000 real
    training images, the table's reference row): the same for every model the classifier judges."""
    _, reference = classify(classifier, load_mnist("t10k").to(device))
    real_x = load_mnist("train")[:10000].to(device)
    return reference, sample_scores(*classify(classifier, real_x), reference)


def evaluate_trainer(trainer, test_x, classifier_path, n=10000, iwae_k=1000, iwae_n=1000, seed=0, log=print,
                     references=None, samplers=None, stop=None):
    """The evaluation table of a trained model, with 10,000 real training images as the reference row
    (iwae_k = 0 skips the VAE's IWAE bound; references: real_references() computed before, or None;
    samplers: the names of the ways to draw to score, by default every one the trainer has)."""
    classifier, accuracy = load_classifier(classifier_path, trainer.device, log=log, stop=stop)
    reference, real_scores = references or real_references(classifier, trainer.device)
    report = {"model": trainer.name, "n_samples": n, "classifier_accuracy": accuracy, "real": real_scores,
              "samples": {}}
    labels = sampler_labels(trainer)
    for sampler in samplers or labels:
        samples = draw_samples(trainer, n, seed, sampler)
        report["samples"][labels[sampler]] = sample_scores(*classify(classifier, samples), reference)
    if isinstance(trainer, VAETrainer):  # its test-set bounds; the IWAE bound is computed on the VAE itself
        torch.manual_seed(seed)
        report["test_elbo"] = trainer.evaluate(test_x)["-elbo"]
        if iwae_k > 0:
            subset = test_x[:iwae_n]
            report["iwae"] = {"k": iwae_k, "n_images": len(subset), "elbo": iwae_nll(trainer.model, subset, 1),
                              "nll": iwae_nll(trainer.model, subset, iwae_k)}
    return report


def score_rows(report):
    """(label, scores) for each row of the evaluation table: the real images first, then each sampler's."""
    return [("real MNIST, 10000 train", report["real"])] + [
        (f"{report['model']}: {sampler}", scores) for sampler, scores in report["samples"].items()]


def format_report(report):
    """The evaluation report as a small table for the terminal."""
    lines = [f"{'':28s}{'coverage':>9s}{'confident':>11s}{'IS':>7s}{'FID*':>8s}   class histogram"]
    for label, s in score_rows(report):
        lines.append(f"{label:28s}{s['coverage']:>6d}/10{s['confident']:>11.3f}{s['inception_score']:>7.2f}"
                     f"{s['fid']:>8.2f}   {' '.join(map(str, s['histogram']))}")
    lines += score_notes(report)
    return "\n".join(lines)


def score_notes(report):
    """What the table's numbers mean, and the VAE's likelihood bounds, as lines of text."""
    lines = [f"{report['n_samples']} samples judged by an MNIST CNN with test accuracy "
             f"{report['classifier_accuracy']:.4f}; confident: p(y|x) >= {CONFIDENT}; covered: >= {COVERED:.0%} of "
             "samples; IS in [1, 10]",
             "* FID here uses that CNN's 128 penultimate features against the MNIST test set: "
             "not comparable with Inception-v3 FID"]
    if "test_elbo" in report:
        lines.append(f"test -ELBO {report['test_elbo']:.2f} nats per image")
    if "iwae" in report:
        w = report["iwae"]
        lines.append(f"on the first {w['n_images']} test images: -ELBO {w['elbo']:.2f}, "
                     f"IWAE bound (K={w['k']}) -log p(x) <= {w['nll']:.2f} nats per image")
    return lines


def build_parser():
    parser = Parser(
        prog="python -m tools.evaluate", description=__doc__,
        epilog="Writes eval.json beside the checkpoint; tools.report puts it in the PDF.")
    add_checkpoint_flags(parser, "how many samples to score (a Frechet distance needs 2)",
                         sampler_default="both, where the checkpoint has a mixture; a GAN has none", n_within="[2, 1e9]")
    add_number_flag(parser, "--iwae-k", int, "[1, 1e6]", 1000, "VAE: importance samples K per image")
    add_number_flag(parser, "--iwae-n", int, "[1, 1e9]", 1000, "VAE: the IWAE bound uses the first N test images")
    parser.add_argument("--classifier", default=CLASSIFIER_PATH,
                        help=f"the cached MNIST classifier, trained if missing (default: {CLASSIFIER_PATH})")
    return parser


def evaluate_command(args, stop):
    trainer, path = checkpoint_trainer(args)
    _, test_x = load_images(trainer.cfg)
    report = evaluate_trainer(trainer, test_x.to(trainer.device), args.classifier, args.n, args.iwae_k,
                              args.iwae_n, args.seed, samplers=args.sampler and (args.sampler,), stop=stop)
    report["checkpoint_sha256"] = sha256(path)  # the checkpoint scored: tools.report matches it to the figures
    save_json(path.parent / "eval.json", report)
    print(format_report(report))
    print(f"wrote {path.parent / 'eval.json'}")
    return 0


def main(argv=None):
    return run_cli(build_parser(), argv, evaluate_command)


if __name__ == "__main__":
    sys.exit(main())
