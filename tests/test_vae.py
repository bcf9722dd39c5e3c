"""The VAE: the loss against independent references, the model's shapes, and the assignment's own check."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Normal, kl_divergence

import homework7 as hw


def test_kl_term_matches_torch_distributions():
    mu, logvar = torch.randn(5, 16), torch.randn(5, 16)
    x, x_logits = torch.rand(5, hw.IMAGE_DIM), torch.randn(5, hw.IMAGE_DIM)
    _, _, kl = hw.vae_loss(x, x_logits, mu, logvar)
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros_like(mu), torch.ones_like(logvar))
    expected = kl_divergence(q, p).sum(1).mean()
    assert kl.item() == pytest.approx(expected.item(), rel=1e-5)


def test_reconstruction_term_is_a_sum_of_784_log_losses():
    x, x_logits = torch.rand(3, hw.IMAGE_DIM), torch.randn(3, hw.IMAGE_DIM)
    _, recon, _ = hw.vae_loss(x, x_logits, torch.zeros(3, 2), torch.zeros(3, 2))
    y = torch.sigmoid(x_logits).double()
    by_hand = [
        -sum(x[n, i].item() * math.log(y[n, i]) + (1 - x[n, i].item()) * math.log(1 - y[n, i]) for i in range(784))
        for n in range(3)
    ]
    assert recon.item() == pytest.approx(sum(by_hand) / 3, rel=1e-5)


def test_binary_reconstruction_is_bernoulli_log_likelihood_and_weight_scales_kl():
    x = (torch.rand(4, hw.IMAGE_DIM) > 0.5).float()
    x_logits, mu, logvar = torch.randn(4, hw.IMAGE_DIM), torch.randn(4, 3), torch.randn(4, 3)
    loss, recon, kl = hw.vae_loss(x, x_logits, mu, logvar, kl_weight=0.25)
    log_px = Bernoulli(logits=x_logits).log_prob(x).sum(1).mean()
    assert recon.item() == pytest.approx(-log_px.item(), rel=1e-5)
    assert loss.item() == pytest.approx(recon.item() + 0.25 * kl.item(), rel=1e-6)


def test_encoder_and_decoder_shapes_and_ranges():
    model = hw.VAE(latent_dim=7, hidden=20, dropout=0.1)
    x = torch.rand(11, hw.IMAGE_DIM)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (11, 7)
    assert torch.all(torch.exp(logvar) > 0)
    images = model.decode(torch.randn(11, 7) * 10)
    assert images.shape == (11, hw.IMAGE_DIM)
    assert torch.all((images >= 0) & (images <= 1))
    x_logits, _, _ = model(x)
    assert x_logits.shape == (11, hw.IMAGE_DIM)


def test_architecture_is_the_assignments():
    model = hw.VAE(latent_dim=16, hidden=200, dropout=0.1)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 200), (200, 32), (16, 200), (200, 784)]
    assert any(isinstance(m, torch.nn.Dropout) for m in model.encoder)
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.decoder)


def test_reparameterization_passes_gradients_and_uses_given_eps():
    mu = torch.randn(4, 3, requires_grad=True)
    logvar = torch.randn(4, 3, requires_grad=True)
    eps = torch.randn(4, 3)
    z = hw.reparameterize(mu, logvar, eps)
    assert torch.allclose(z, mu + torch.exp(0.5 * logvar) * eps)
    z.sum().backward()
    assert torch.allclose(mu.grad, torch.ones(4, 3))
    assert torch.allclose(logvar.grad, 0.5 * torch.exp(0.5 * logvar) * eps)


def test_eps_makes_the_forward_pass_deterministic():
    model = hw.VAE(latent_dim=4, hidden=10, dropout=0.0).eval()
    x, eps = torch.rand(2, hw.IMAGE_DIM), torch.randn(2, 4)
    assert torch.equal(model(x, eps)[0], model(x, eps)[0])


def test_kl_weight_zero_reconstructs_100_images(images):
    """The assignment's debugging check: with no KL term, 100 training images come back almost exactly."""
    torch.manual_seed(0)
    cfg = hw.VAEConfig(kl_weight=0.0)
    trainer = hw.VAETrainer(cfg, torch.device("cpu"))
    x = torch.from_numpy(images[:100])
    before = F.binary_cross_entropy(trainer.reconstruct(x), x).item()
    for _ in range(1000):
        trainer.train_step(x)
    error = (trainer.reconstruct(x) - x).abs().mean().item()
    assert F.binary_cross_entropy(trainer.reconstruct(x), x).item() < before / 2
    assert error < 0.025, f"mean absolute pixel error {error:.3f}"


def test_evaluate_reports_test_elbo_with_kl_weight_one(images):
    torch.manual_seed(0)
    trainer = hw.VAETrainer(hw.VAEConfig(kl_weight=0.0), torch.device("cpu"))
    x = torch.from_numpy(images[:50])
    result = trainer.evaluate(x)
    assert result["-elbo"] == pytest.approx(result["recon"] + result["kl"], rel=1e-5)
    assert result["kl"] > 0


def test_dropout_zeroes_a_share_p_keeps_the_mean_and_is_off_in_eval_mode():
    drop = hw.Dropout(0.3)
    x = torch.ones(200, 1000, requires_grad=True)
    y = drop(x)
    zeroed = (y == 0).float().mean().item()
    assert zeroed == pytest.approx(0.3, abs=0.01) and y.mean().item() == pytest.approx(1.0, abs=0.02)
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.7))
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() / 0.7)  # gradients pass where the unit was kept
    assert torch.equal(drop.eval()(x), x)
