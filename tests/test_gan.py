"""The GAN: the networks the assignment describes, Algorithm 1's updates, and the losses against their formulas."""
import pytest
import torch

import homework7 as hw

CPU = torch.device("cpu")


def small_gan(**overrides):
    torch.manual_seed(0)
    return hw.GANTrainer(hw.GANConfig(**{"noise_dim": 8, "hidden": 32, **overrides}), CPU)


def test_generator_shapes_ranges_and_layers():
    G = hw.Generator(noise_dim=10, hidden=256)
    images = G(torch.randn(7, 10) * 5)
    assert images.shape == (7, hw.IMAGE_DIM)
    assert torch.all((images >= 0) & (images <= 1))
    linears = [m for m in G.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 256), (256, 256), (256, 256), (256, 784)]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in G.modules()) == 3
    assert sum(isinstance(m, torch.nn.ReLU) for m in G.modules()) == 3


def test_discriminator_shapes_ranges_and_layers():
    D = hw.Discriminator(hidden=256, dropout=0.2).eval()  # eval: dropout off, so two calls agree
    x = torch.rand(6, hw.IMAGE_DIM)
    p = D(x)
    assert p.shape == (6,)
    assert torch.all((p > 0) & (p < 1))
    assert torch.allclose(p, torch.sigmoid(D.logits(x)))
    assert isinstance(D.net[0], torch.nn.Dropout) and isinstance(D.net[0], hw.Dropout)
    linears = [m for m in D.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 256), (256, 256), (256, 1)]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in D.modules()) == 2


def test_batchnorm_uses_the_batch_in_train_mode_and_running_stats_in_eval_mode():
    G = hw.Generator(noise_dim=4, hidden=16)
    z = torch.randn(8, 4)
    G.train()
    alone, in_batch = G(z[:2]), G(z)[:2]
    assert not torch.allclose(alone, in_batch)  # batch statistics depend on the batch
    G.eval()
    assert torch.allclose(G(z[:2]), G(z)[:2])  # running statistics do not
    assert not torch.allclose(G(z[:2]), alone)


def test_discriminator_loss_against_its_formula():
    real_logits, fake_logits = torch.randn(9), torch.randn(9)
    loss, loss_real, loss_fake = hw.discriminator_loss(real_logits, fake_logits)
    d_x, d_g_z = torch.sigmoid(real_logits), torch.sigmoid(fake_logits)
    assert loss_real.item() == pytest.approx(-torch.log(d_x).mean().item(), rel=1e-5)
    assert loss_fake.item() == pytest.approx(-torch.log(1 - d_g_z).mean().item(), rel=1e-5)
    assert loss.item() == pytest.approx(loss_real.item() + loss_fake.item(), rel=1e-6)


def test_generator_losses_against_their_formulas():
    fake_logits = torch.randn(9)
    d_g_z = torch.sigmoid(fake_logits)
    minimax = hw.generator_loss(fake_logits, "minimax")
    non_saturating = hw.generator_loss(fake_logits, "non-saturating")
    assert minimax.item() == pytest.approx(torch.log(1 - d_g_z).mean().item(), rel=1e-5)
    assert non_saturating.item() == pytest.approx(-torch.log(d_g_z).mean().item(), rel=1e-5)


def test_losses_stay_finite_where_probabilities_saturate():
    big = torch.tensor([200.0, -200.0])
    assert torch.isfinite(hw.discriminator_loss(big, big)[0])
    assert torch.isfinite(hw.generator_loss(big, "minimax"))
    assert torch.isfinite(hw.generator_loss(big, "non-saturating"))


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return [not torch.equal(b, p) for b, p in zip(before, module.parameters())]


def test_d_step_moves_only_d_and_g_step_only_g():
    gan = small_gan()
    x = torch.rand(16, hw.IMAGE_DIM)
    g0, d0 = snapshot(gan.G), snapshot(gan.D)
    gan.d_step(x)
    assert all(changed(d0, gan.D)) and not any(changed(g0, gan.G))
    g1, d1 = snapshot(gan.G), snapshot(gan.D)
    gan.g_step(16)
    assert all(changed(g1, gan.G)) and not any(changed(d1, gan.D))


def adam_steps(optimizer):
    return int(next(iter(optimizer.state.values()))["step"]) if optimizer.state else 0


@pytest.mark.parametrize("k", [1, 3])
def test_k_discriminator_updates_per_generator_update(k):
    gan = small_gan(k=k)
    x = torch.rand(16, hw.IMAGE_DIM)
    for _ in range(6):
        stats = gan.train_step(x)
    assert adam_steps(gan.opt_D) == 6
    assert adam_steps(gan.opt_G) == 6 // k
    assert ("g_loss" in stats) == (6 % k == 0)


def test_collapse_watch_flags_d_of_g_z_pinned_at_zero():
    gan = small_gan()
    assert gan.check({"d_g_z_max": 1e-5}) is not None
    assert gan.check({"d_g_z_max": 0.3}) is None


def test_samples_are_images_and_seeded():
    gan = small_gan()
    a = gan.sample(5, torch.Generator().manual_seed(1))
    b = gan.sample(5, torch.Generator().manual_seed(1))
    assert a.shape == (5, hw.IMAGE_DIM) and torch.equal(a, b)
    assert torch.all((a >= 0) & (a <= 1))


def test_moving_average_of_g_is_what_draws_the_samples():
    gan = small_gan(ema=0.9)
    x = torch.rand(16, hw.IMAGE_DIM)
    snapshot = lambda: {k: v.clone() for k, v in gan.G.state_dict().items()}
    before = snapshot()
    gan.train_step(x)
    after_1 = snapshot()
    gan.train_step(x)
    after_2 = snapshot()
    for key, ema in gan.G_ema.state_dict().items():
        if ema.is_floating_point():  # weights and BatchNorm statistics: 0.9² θ₀ + 0.9 · 0.1 θ₁ + 0.1 θ₂
            assert torch.allclose(ema, 0.81 * before[key] + 0.09 * after_1[key] + 0.1 * after_2[key]), key
        else:  # BatchNorm's batch count
            assert torch.equal(ema, after_2[key])
    z = torch.randn(5, 8)
    assert gan.sampler is gan.G_ema and not gan.sampler.training
    assert not torch.allclose(gan.sampler(z), gan.G.eval()(z))
    restored = small_gan(ema=0.9)
    restored.load_state_dict(gan.state_dict())
    assert torch.equal(restored.sample(3, torch.Generator().manual_seed(2)), gan.sample(3, torch.Generator().manual_seed(2)))
    plain = small_gan(ema=0)
    assert plain.G_ema is None and plain.sampler is plain.G
