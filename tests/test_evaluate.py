"""tools/evaluate.py: each score against an independent computation or a case with a known answer, the
classifier's cache, and the command."""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import homework7 as hw
import tools.evaluate as ev


def one_hot(classes, confidence=1.0):
    """Probability rows putting `confidence` on the given classes and the rest evenly on the others."""
    probs = torch.full((len(classes), 10), (1 - confidence) / 9)
    probs[torch.arange(len(classes)), torch.tensor(classes)] = confidence
    return probs


def test_coverage_histogram_and_confident_share_count_right():
    classes = [0] * 50 + [1] * 30 + [2] * 15 + [3] * 4 + [4] * 1  # 100 samples
    probs = torch.cat([one_hot(classes[:60], 0.95), one_hot(classes[60:], 0.5)])
    assert ev.class_histogram(probs).tolist() == [50, 30, 15, 4, 1, 0, 0, 0, 0, 0]
    assert ev.coverage(probs) == 3  # 4% and 1% are below the 5% bar
    assert ev.confident_share(probs) == pytest.approx(0.6)


def test_inception_score_is_1_for_one_class_and_10_for_ten_confident_balanced_classes():
    assert ev.inception_score(one_hot([3] * 1000)) == pytest.approx(1.0, abs=1e-6)
    assert ev.inception_score(one_hot(list(range(10)) * 100)) == pytest.approx(10.0, rel=1e-6)
    uncertain = ev.inception_score(one_hot(list(range(10)) * 100, confidence=0.5))
    assert 1 < uncertain < 10


def test_inception_score_against_its_formula_written_out():
    probs = torch.softmax(torch.randn(200, 10) * 3, 1).double()
    p_y = probs.mean(0)
    by_hand = math.exp(sum(sum(p[c] * math.log(p[c] / p_y[c]) for c in range(10)) for p in probs) / len(probs))
    assert ev.inception_score(probs) == pytest.approx(by_hand, rel=1e-9)


def test_frechet_distance_is_zero_for_a_set_with_itself_and_grows_as_sets_move_apart():
    features = torch.randn(2000, 8) @ torch.randn(8, 8)
    assert ev.frechet_distance(features, features) == pytest.approx(0, abs=1e-6)
    distances = [ev.frechet_distance(features, features + shift) for shift in (0.1, 0.5, 1.0, 2.0)]
    assert distances == sorted(distances) and distances[0] > 0
    assert distances[-1] == pytest.approx(8 * 2.0**2, rel=1e-6)  # a pure shift adds ‖Δμ‖² only


def test_frechet_distance_against_scipy_free_reference():
    a = torch.randn(3000, 5) @ torch.randn(5, 5)
    b = torch.randn(3000, 5) @ torch.randn(5, 5) + 1
    s1, s2 = np.cov(a.numpy().T), np.cov(b.numpy().T)
    # Tr((Σ₁Σ₂)^½) from the (real, non-negative) eigenvalues of the non-symmetric product
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    mean_gap = ((a.numpy().mean(0) - b.numpy().mean(0)) ** 2).sum()
    expected = mean_gap + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert ev.frechet_distance(a, b) == pytest.approx(expected, rel=1e-4)


def test_iwae_bound_is_at_least_the_elbo_and_tightens_as_k_grows(images):
    torch.manual_seed(0)
    trainer = hw.VAETrainer(hw.VAEConfig(latent_dim=4, hidden=50, lr=1e-3, kl_weight=1.0), torch.device("cpu"))
    x = torch.from_numpy(images[:200])
    for _ in range(300):  # some training, by the trainer that ships, so that q(z|x) is worth improving on
        trainer.train_step(x)
    model = trainer.model
    torch.manual_seed(1)
    nll = {k: ev.iwae_nll(model, x, k) for k in (1, 10, 100, 1000)}
    assert nll[1] > nll[10] > nll[100] and nll[1000] < nll[10]  # measured: 186.5, 185.6, 185.3, 185.3
    assert nll[1] - nll[100] > 0.5
    model.eval()
    with torch.no_grad():
        _, recon, kl = hw.vae_loss(x, *model(x))
    assert nll[1] == pytest.approx((recon + kl).item(), abs=1.0)  # L_1 is a one-sample estimate of the ELBO


def test_iwae_bound_with_given_noise_against_torch_distributions():
    torch.manual_seed(0)
    model = hw.VAE(latent_dim=3, hidden=10, dropout=0.1).eval()
    x, eps = torch.rand(4, hw.IMAGE_DIM), torch.randn(5, 4, 3)
    bound = ev.iwae_bound(model, x, 5, eps=eps)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
        z = mu + torch.exp(0.5 * logvar) * eps
        log_w = torch.stack([
            torch.distributions.Bernoulli(logits=model.decoder(z[i]), validate_args=False).log_prob(x).sum(1)
            + torch.distributions.Normal(0, 1).log_prob(z[i]).sum(1) - q.log_prob(z[i]).sum(1)
            for i in range(5)])
    expected = torch.log(torch.exp(log_w.double()).mean(0))
    assert torch.allclose(bound.double(), expected, rtol=1e-4)


# ----------------------------------------------------------------------------- classifier cache and the command
def test_a_stale_or_corrupt_classifier_cache_is_rebuilt(tmp_path, stub_classifier, monkeypatch):
    trained = []
    monkeypatch.setattr(ev, "train_classifier",
                        lambda *a, **k: trained.append(1) or (ev.DigitClassifier(), 0.995))
    _, accuracy = ev.load_classifier(stub_classifier, torch.device("cpu"), log=lambda _: None)
    assert accuracy == 0.5 and not trained  # current stamp: loaded as it is
    state = torch.load(stub_classifier)
    state["stamp"]["version"] = -1
    torch.save(state, stub_classifier)
    _, accuracy = ev.load_classifier(stub_classifier, torch.device("cpu"), log=lambda _: None)
    assert accuracy == 0.995 and trained == [1]
    stub_classifier.write_bytes(stub_classifier.read_bytes()[:1000])  # a cache cut short
    ev.load_classifier(stub_classifier, torch.device("cpu"), log=lambda _: None)
    assert trained == [1, 1] and torch.load(stub_classifier)["accuracy"] == 0.995


@pytest.mark.parametrize("content", [b"# a README\n", "model"], ids=["text", "a model"])
def test_a_file_that_is_not_a_classifier_is_never_trained_over(tmp_path, content, monkeypatch):
    path = tmp_path / "not_a_classifier"
    if content == "model":
        torch.save({"model": {"weight": torch.zeros(2)}, "format": 2}, path)
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    monkeypatch.setattr(ev, "train_classifier", lambda *a, **k: pytest.fail("trained over a file of another kind"))
    with pytest.raises(hw.UsageError, match="not replaced"):
        ev.load_classifier(path, torch.device("cpu"), log=lambda _: None)
    assert path.read_bytes() == before


def test_a_classifier_below_99_percent_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(ev, "train_classifier", lambda *a, **k: (ev.DigitClassifier(), 0.95))
    with pytest.raises(hw.UsageError, match="only 0.9500 test accuracy"):
        ev.load_classifier(tmp_path / "c.pt", torch.device("cpu"), log=lambda _: None)


def a_copy(checkpoint, tmp_path):
    """The shared checkpoint, copied into tmp_path/run: what a tool writes beside it stays there."""
    (tmp_path / "run").mkdir()
    return Path(shutil.copy(checkpoint, tmp_path / "run" / "checkpoint.pt"))


def test_evaluate_scores_a_trained_vae_and_writes_eval_json(tmp_path, stub_classifier, checkpoints, cli):
    checkpoint = a_copy(checkpoints["vae"], tmp_path)
    status, out, _ = cli(ev.main, "vae", "--checkpoint", checkpoint, "--classifier", stub_classifier,
                         "--n", "300", "--iwae-k", "20", "--iwae-n", "30")
    assert status == 0 and "real MNIST, 10000 train" in out and "IWAE bound (K=20)" in out
    assert "not comparable with Inception-v3 FID" in out
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["n_samples"] == 300 and sum(report["samples"]["z ~ N(0, I)"]["histogram"]) == 300
    assert sum(report["samples"]["z ~ mixture of 2"]["histogram"]) == 300
    assert sum(report["real"]["histogram"]) == 10000
    assert report["iwae"]["k"] == 20 and report["iwae"]["n_images"] == 30
    assert report["iwae"]["nll"] <= report["iwae"]["elbo"]

    status, _, _ = cli(ev.main, "vae", "--checkpoint", checkpoint, "--classifier", stub_classifier,
                       "--n", "100", "--iwae-k", "2", "--iwae-n", "5", "--sampler", "prior")
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert status == 0 and list(report["samples"]) == ["z ~ N(0, I)"]


def test_the_report_prints_on_a_console_without_mathematical_signs(tmp_path, stub_classifier, checkpoints,
                                                                  ascii_console):
    checkpoint = a_copy(checkpoints["vae_prior"], tmp_path)
    read = ascii_console()
    status = ev.main(["vae", "--checkpoint", str(checkpoint), "--classifier",
                      str(stub_classifier), "--n", "100", "--iwae-k", "2", "--iwae-n", "5"])
    out, err = read()
    assert status == 0, err
    assert "confident: p(y|x) >= 0.9" in out and "test -ELBO" in out and "-log p(x) <= " in out


def test_ctrl_c_while_the_classifier_trains_leaves_no_file(tmp_path, checkpoints, interrupt_child):
    checkpoint = a_copy(checkpoints["vae"], tmp_path)
    before = sorted(tmp_path.rglob("*"))
    status, _, err = interrupt_child(["-m", "tools.evaluate", "vae", "--checkpoint", checkpoint,
                                      "--classifier", tmp_path / "classifier.pt"],
                                     "training the MNIST classifier", tmp_path)
    assert status == 130 and [line for line in err.splitlines() if line] == ["python -m tools.evaluate: interrupted"]
    assert sorted(tmp_path.rglob("*")) == before  # no classifier, no eval.json, no temporary file
