"""The homework's math and models: each loss against an independent reference (torch.distributions, a formula
written out, scikit-learn), the architectures the assignment describes, what one training step moves, and the
experiments in tools/ that build on them."""
import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

import homework7 as hw
import tools.latent as tl
from tools.vaegan import VAEGANConfig, VAEGANTrainer

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- the VAE
def test_kl_term_matches_torch_distributions():
    mu, logvar = torch.randn(5, 16), torch.randn(5, 16)
    x, x_logits = torch.rand(5, hw.IMAGE_DIM), torch.randn(5, hw.IMAGE_DIM)
    _, _, kl = hw.vae_loss(x, x_logits, mu, logvar)
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros_like(mu), torch.ones_like(logvar))
    expected = kl_divergence(q, p).sum(1).mean()
    assert kl.item() == pytest.approx(expected.item(), rel=1e-5)


def test_reconstruction_term_is_a_sum_of_784_log_losses_and_the_weight_scales_kl():
    x, x_logits = torch.rand(3, hw.IMAGE_DIM), torch.randn(3, hw.IMAGE_DIM)
    loss, recon, kl = hw.vae_loss(x, x_logits, torch.randn(3, 2), torch.randn(3, 2), kl_weight=0.25)
    y = torch.sigmoid(x_logits).double()
    by_hand = [
        -sum(x[n, i].item() * math.log(y[n, i]) + (1 - x[n, i].item()) * math.log(1 - y[n, i]) for i in range(784))
        for n in range(3)
    ]
    assert recon.item() == pytest.approx(sum(by_hand) / 3, rel=1e-5)
    log_px = Bernoulli(logits=x_logits, validate_args=False).log_prob(x).sum(1).mean()  # grey pixels too
    assert recon.item() == pytest.approx(-log_px.item(), rel=1e-5)
    assert loss.item() == pytest.approx(recon.item() + 0.25 * kl.item(), rel=1e-6)


def test_the_architecture_is_the_assignments_with_its_shapes_and_ranges():
    model = hw.VAE(latent_dim=16, hidden=200, dropout=0.1)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 200), (200, 32), (16, 200), (200, 784)]
    assert any(isinstance(m, torch.nn.Dropout) for m in model.encoder)
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.decoder)
    x = torch.rand(11, hw.IMAGE_DIM)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (11, 16) and torch.all(torch.exp(logvar) > 0)
    images = model.pixel_means(torch.randn(11, 16) * 10)
    assert images.shape == (11, hw.IMAGE_DIM) and torch.all((images >= 0) & (images <= 1))
    assert model(x)[0].shape == (11, hw.IMAGE_DIM)


def test_reparameterization_passes_gradients_and_uses_given_eps():
    mu = torch.randn(4, 3, requires_grad=True)
    logvar = torch.randn(4, 3, requires_grad=True)
    eps = torch.randn(4, 3)
    z = hw.reparameterize(mu, logvar, eps)
    assert torch.allclose(z, mu + torch.exp(0.5 * logvar) * eps)
    z.sum().backward()
    assert torch.allclose(mu.grad, torch.ones(4, 3))
    assert torch.allclose(logvar.grad, 0.5 * torch.exp(0.5 * logvar) * eps)
    model = hw.VAE(latent_dim=3, hidden=10, dropout=0.0).eval()
    x = torch.rand(4, hw.IMAGE_DIM)
    assert torch.equal(model(x, eps)[0], model(x, eps)[0])  # the forward pass, made deterministic


def test_the_sizes_scale_with_a_small_training_set_and_stay_the_defaults_on_mnist(capsys):
    """MNIST's 60,000 images keep the defaults (minibatches of 500, 60 epochs, a mixture of 200); the assignment's
    100 get minibatches of 5, 150 epochs (3,000 steps) and a mixture of 1; a mixture that cannot be fitted is left
    out in one line; a size given as a flag is kept."""
    sizes = lambda cfg: (cfg.batch_size, cfg.epochs, cfg.mixture_components)
    assert sizes(hw.VAEConfig().for_training_set(60000)) == (500, 60, 200)
    assert sizes(hw.VAEConfig().for_training_set(100)) == (5, 150, 1)
    assert sizes(hw.VAEConfig().for_training_set(1000)) == (50, 150, 10)
    assert sizes(hw.VAEConfig(batch_size=10, epochs=3, mixture_components=4).for_training_set(100)) == (10, 3, 4)
    assert capsys.readouterr().out == ""
    assert sizes(hw.VAEConfig().for_training_set(99)) == (5, 150, 0)
    assert hw.VAEConfig(mixture_components=200).for_training_set(100).mixture_components == 0
    assert capsys.readouterr().out.splitlines() == [
        "vae: no mixture of one component per 100 encodings: the training set gives 99 encodings to fit it to",
        "vae: no mixture of 200: the training set gives 100 encodings to fit it to"]
    assert hw.VAEConfig(mixture_components=0).for_training_set(10).mixture_components == 0
    assert capsys.readouterr().out == ""  # none asked for, none said


def test_the_log_keeps_one_order_of_columns_and_one_format_of_numbers():
    """The GAN's R1 comes on some steps only: the first step of an epoch with or without it gives one order."""
    steps = [{"d_loss": torch.tensor(1.0), "r1": torch.tensor(0.5), "g_loss": torch.tensor(2.0)},
             {"d_loss": torch.tensor(3.0), "g_loss": torch.tensor(4.0)}]
    for order in (steps, steps[::-1]):
        assert list(hw.mean_of_steps(order, hw.GANTrainer.columns)) == ["d_loss", "r1", "g_loss"]
    assert hw.mean_of_steps(steps, hw.GANTrainer.columns) == {"d_loss": 2.0, "r1": 0.5, "g_loss": 3.0}
    record = {"train": {"loss": 110.5, "-elbo": 120.25, "recon": 100.0, "kl": 20.25}, "test": {"kl": 3.0}}
    assert hw.epoch_line(record) == ("train loss 110.5000 -elbo 120.2500 recon 100.0000 kl  20.2500  "
                                     "test kl   3.0000")


def test_evaluate_reports_test_elbo_with_kl_weight_one(images):
    torch.manual_seed(0)
    trainer = hw.VAETrainer(hw.VAEConfig(kl_weight=0.0), torch.device("cpu"))
    x = torch.from_numpy(images[:50])
    result = trainer.evaluate(x)
    assert result["-elbo"] == pytest.approx(result["recon"] + result["kl"], rel=1e-5)
    assert result["kl"] > 0


def test_dropout_zeroes_a_share_p_keeps_the_mean_and_is_off_in_eval_mode():
    drop = hw.FastDropout(0.3)
    x = torch.ones(200, 1000, requires_grad=True)
    y = drop(x)
    zeroed = (y == 0).float().mean().item()
    assert zeroed == pytest.approx(0.3, abs=0.01) and y.mean().item() == pytest.approx(1.0, abs=0.02)
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.7))
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() / 0.7)  # gradients pass where the unit was kept
    assert torch.equal(drop.eval()(x), x)


# ----------------------------------------------------------------------------- the GAN
def small_gan(**overrides):
    torch.manual_seed(0)
    return hw.GANTrainer(hw.GANConfig(**{"noise_dim": 8, "hidden": 32, **overrides}), CPU)


def test_adams_betas_of_both_networks_are_the_configs():
    gan = small_gan(beta1=0.3, beta2=0.95)
    for optimizer in (gan.opt_G, gan.opt_D):
        assert optimizer.param_groups[0]["betas"] == (0.3, 0.95)


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
    assert isinstance(D.net[0], torch.nn.Dropout) and isinstance(D.net[0], hw.FastDropout)
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
    gan.d_step(x, gan.G(gan.noise(16)).detach())
    assert all(changed(d0, gan.D)) and not any(changed(g0, gan.G))
    g1, d1 = snapshot(gan.G), snapshot(gan.D)
    gan.g_step(gan.G(gan.noise(16)))
    assert all(changed(g1, gan.G)) and not any(changed(d1, gan.D))


def test_shared_noise_reuses_ds_fakes_for_g_and_fresh_noise_draws_new_ones():
    x = torch.rand(16, hw.IMAGE_DIM)
    # per step: whether each pass of G kept its graph, and whether G took a step
    expected = {("fresh", 1): [([False, True], True)] * 2, ("shared", 1): [([True], True)] * 2,
                ("shared", 2): [([False], False), ([True], True)]}
    for (g_noise, k), steps in expected.items():
        gan = small_gan(g_noise=g_noise, k=k)
        passes = []
        gan.G.register_forward_hook(lambda module, inputs, output: passes.append(output.requires_grad))
        seen = []
        for _ in steps:
            passes.clear()
            stats = gan.train_step(x)
            seen.append((list(passes), "g_loss" in stats))
        assert seen == steps, (g_noise, k)


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


def test_an_epoch_where_d_has_won_or_its_loss_exploded_stops_the_gan():
    gan = small_gan()
    x = torch.zeros(4, hw.IMAGE_DIM)
    step = {"d_loss": torch.tensor(0.01), "d_g_z": torch.tensor(1e-5)}
    with pytest.raises(hw.Diverged, match="D has won"):
        gan.after_epoch(x, [step, {**step, "d_g_z": torch.tensor(2e-4)}])
    assert gan.after_epoch(x, [step, {**step, "d_g_z": torch.tensor(0.3)}]) == {}  # one step with signal is enough
    with pytest.raises(hw.Diverged, match="diverged"):
        gan.after_epoch(x, [{"d_loss": torch.tensor(1.5e8), "d_g_z": torch.tensor(1.0)}])


def test_moving_average_of_g_is_what_draws_the_samples():
    gan = small_gan(ema=0.9, ema_rampup=0)
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
    sampler = gan.sampling_generator()
    assert not sampler.training and torch.equal(sampler(z), gan.G_ema.eval()(z))
    assert not torch.allclose(sampler(z), gan.G.eval()(z))
    restored = small_gan(ema=0.9, ema_rampup=0)
    restored.load_state_dict(gan.state_dict())
    assert torch.equal(restored.sample(3, torch.Generator().manual_seed(2)), gan.sample(3, torch.Generator().manual_seed(2)))
    plain = small_gan(ema=0)
    assert plain.G_ema is None and torch.equal(plain.sampling_generator()(z), plain.G.eval()(z))
    plain.G.train()
    plain.sample(3)
    assert plain.G.training  # drawing samples leaves the G that trains as it was


def test_r1_penalty_equals_the_gradient_written_out_on_a_tiny_d():
    torch.manual_seed(0)
    W1, b1, w2 = torch.randn(3, 4), torch.randn(3), torch.randn(3)
    x = torch.randn(5, 4, requires_grad=True)
    logits = torch.relu(x @ W1.T + b1) @ w2  # a(x) = w2ᵀ relu(W1 x + b1)
    penalty = hw.r1_penalty(logits, x, gamma=0.3)
    by_hand = ((x @ W1.T + b1 > 0).float() * w2) @ W1  # ∂a/∂x = W1ᵀ (relu'(W1 x + b1) ⊙ w2), one row per image
    assert torch.allclose(penalty, 0.15 * by_hand.detach().pow(2).sum(1).mean())
    penalty.backward()  # the graph is kept: the penalty trains D
    assert x.grad is not None


def test_r1_comes_on_every_r1_every_d_steps():
    gan = small_gan(r1=1.0, r1_every=3)
    x = torch.rand(16, hw.IMAGE_DIM)
    assert ["r1" in gan.train_step(x) for _ in range(7)] == [True, False, False, True, False, False, True]
    assert all("r1" not in small_gan(r1=0).train_step(x) for _ in range(3))


def test_the_moving_average_ramps_up_with_gs_steps():
    gan = small_gan(ema=0.999, ema_rampup=0.1)
    assert gan.ema_decay() == 0  # before any step: a copy of G
    gan.d_steps = 100  # k = 1: 100 steps of G
    assert gan.ema_decay() == pytest.approx(0.9)  # spans 10 steps, a tenth of 100
    gan.d_steps = 10**6
    assert gan.ema_decay() == 0.999
    gan = small_gan(ema=0.999, ema_rampup=0.1)
    gan.train_step(torch.rand(16, hw.IMAGE_DIM))  # first step of G: the average is G
    for key, value in gan.G.state_dict().items():
        assert torch.equal(gan.G_ema.state_dict()[key], value), key


def test_standing_statistics_are_the_plain_means_over_the_batches_of_noise():
    gan = small_gan(batch_size=8, bn_batches=5)
    gan.after_training(torch.zeros(100, hw.IMAGE_DIM))  # more images than a batch: batches of 8
    generator = torch.Generator().manual_seed(gan.cfg.seed)  # the same noise, drawn again
    with torch.no_grad():
        h = [gan.G_ema.net[0](torch.randn(8, 8, generator=generator)) for _ in range(5)]  # G's first layer
    sampler = gan.sampling_generator()
    bn = sampler.net[1]
    assert torch.allclose(bn.running_mean, torch.stack([b.mean(0) for b in h]).mean(0), atol=1e-6)
    assert torch.allclose(bn.running_var, torch.stack([b.var(0) for b in h]).mean(0), atol=1e-5)
    assert bn.momentum == 0.1 and not sampler.training


def test_the_noise_of_the_standing_statistics_comes_in_training_s_batches_up_to_1000(monkeypatch):
    sizes = []
    monkeypatch.setattr(torch.optim.swa_utils, "update_bn", lambda batches, model: sizes.extend(map(len, batches)))
    small_gan(batch_size=10**6, bn_batches=3).after_training(torch.zeros(16, hw.IMAGE_DIM))
    assert sizes == [1000, 1000, 1000]  # not 10^6 noise vectors a batch
    small_gan(batch_size=8, bn_batches=2).after_training(torch.zeros(16, hw.IMAGE_DIM))
    assert sizes[3:] == [8, 8]


def test_what_is_derived_after_training_is_made_when_asked_kept_by_steps_and_saved_once_finished():
    x = torch.rand(16, hw.IMAGE_DIM)
    for bn_batches in (0, 3):
        gan = small_gan(bn_batches=bn_batches, batch_size=16)
        gan.train_step(x)
        before = gan.G_ema.state_dict()["net.1.running_mean"].clone()
        summary = gan.after_training(x)
        after = gan.sampling_generator().state_dict()["net.1.running_mean"]
        assert (summary is None) == (bn_batches == 0) and torch.equal(before, after) == (bn_batches == 0)
        assert torch.equal(gan.G_ema.state_dict()["net.1.running_mean"], before)  # training's average untouched
        standing = gan.standing
        gan.train_step(x)
        assert gan.standing is standing  # a step leaves it as it was
        assert "standing" not in gan.state_dict() and ("standing" in gan.state_dict(finished=True)) == bool(bn_batches)


def test_the_gan_draws_seeded_images():
    a, b = (small_gan(batch_size=16).sample(5, torch.Generator().manual_seed(1)) for _ in range(2))
    assert a.shape == (5, hw.IMAGE_DIM) and torch.equal(a, b) and torch.all((a >= 0) & (a <= 1))


# ----------------------------------------------------------------------------- the VAE's mixture
TWO_COMPONENTS = {  # a known mixture in 2-D: weights, means, covariances
    "weights": torch.tensor([0.3, 0.7], dtype=torch.float64),
    "means": torch.tensor([[-2.0, 0.0], [2.0, 1.0]], dtype=torch.float64),
    "covariances": torch.tensor([[[1.0, 0.5], [0.5, 1.0]], [[0.5, -0.2], [-0.2, 0.8]]], dtype=torch.float64),
}


def mixture(fitted):
    """A fitted mixture as a torch.distributions object, whose log_prob is the mixture's density: the reference."""
    return torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=fitted["weights"]),
        torch.distributions.MultivariateNormal(fitted["means"], covariance_matrix=fitted["covariances"]))


def test_the_fit_recovers_a_known_two_component_mixture_as_scikit_learn_does():
    from sklearn.mixture import GaussianMixture  # the independent reference

    z = mixture(TWO_COMPONENTS).sample((20000,))
    fitted = hw.fit_mixture(z.float(), 2)
    order = fitted["means"][:, 0].argsort()  # components come in any order
    fitted = {name: value[order] for name, value in fitted.items()}
    assert all(value.dtype == torch.float64 for value in fitted.values())
    assert torch.allclose(fitted["weights"], TWO_COMPONENTS["weights"], atol=0.02)
    assert torch.allclose(fitted["means"], TWO_COMPONENTS["means"], atol=0.05)
    assert torch.allclose(fitted["covariances"], TWO_COMPONENTS["covariances"], atol=0.06)

    sklearn_fit = GaussianMixture(2, covariance_type="full", random_state=0).fit(z.numpy())
    ours = mixture(fitted).log_prob(z).mean().item()  # mean log-likelihood, nats per point
    assert abs(ours - sklearn_fit.score(z.numpy())) < 1e-3
    assert torch.allclose(torch.logsumexp(hw.component_log_probs(fitted, z[:5]), 1), mixture(fitted).log_prob(z[:5]))


def test_mixture_samples_follow_the_stored_mixture():
    z = hw.sample_mixture(TWO_COMPONENTS, 40000, torch.Generator().manual_seed(0))
    assert z.shape == (40000, 2) and z.dtype == torch.float64
    expected_mean = TWO_COMPONENTS["weights"] @ TWO_COMPONENTS["means"]
    assert torch.allclose(z.mean(0), expected_mean, atol=0.03)
    again = hw.sample_mixture(TWO_COMPONENTS, 40000, torch.Generator().manual_seed(0))
    assert torch.equal(z, again)


@pytest.mark.parametrize("n, batch_size, sizes", [(101, 100, [101]), (201, 100, [100, 101]), (200, 100, [100, 100]),
                                                  (1, 100, [1]), (7, 3, [3, 4]), (2, 100, [2])])
def test_a_lone_leftover_image_joins_the_batch_before_it(n, batch_size, sizes):
    assert [end - start for start, end in hw.batch_bounds(n, batch_size)] == sizes
    batches = list(hw.minibatches(torch.arange(n).float()[:, None], batch_size))
    assert [len(b) for b in batches] == sizes and sorted(torch.cat(batches)[:, 0].tolist()) == list(range(n))


# ----------------------------------------------------------------------------- the experiments in tools/
@pytest.mark.parametrize("real", ["reconstruction", "data"])
def test_the_vae_gan_moves_the_decoder_by_ds_verdict_on_prior_samples_and_then_d(real):
    """tools.vaegan: D's judgement of decoded z ~ N(0, I) reaches the decoder alone, then D takes its step on
    training images (or their reconstructions) against those samples."""
    x = torch.rand(8, hw.IMAGE_DIM)
    trainer = VAEGANTrainer(VAEGANConfig(latent_dim=4, prior_gan=1.0, prior_gan_real=real), CPU)
    plain = hw.VAETrainer(hw.VAEConfig(latent_dim=4), CPU)
    plain.model.load_state_dict(trainer.model.state_dict())
    d0, seen = snapshot(trainer.D), []
    trainer.D.net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    torch.manual_seed(0)
    stats = trainer.train_step(x)
    assert set(stats) == {"loss", "-elbo", "recon", "kl", "g_loss", "d_loss"}
    assert all(changed(d0, trainer.D))
    assert len(seen) == 3 and torch.equal(seen[0], seen[2])  # D judged the decoded z, then the real against them
    assert torch.equal(seen[1], x) == (real == "data")
    decoder_grad = trainer.model.decoder[0].weight.grad.clone()
    encoder_grad = trainer.model.encoder[0].weight.grad.clone()
    torch.manual_seed(0)
    plain.train_step(x)
    assert torch.equal(plain.model.encoder[0].weight.grad, encoder_grad)  # the same z: the encoder's gradient is Eq. 10's
    assert not torch.allclose(plain.model.decoder[0].weight.grad, decoder_grad)
    assert "D" not in plain.state_dict() and {"D", "opt_D"} <= set(trainer.state_dict())


def test_interpolation_runs_from_one_encoding_to_the_other_and_manifold_covers_the_quantiles(checkpoints, tmp_path):
    """tools.latent, on a VAE of p = 2, then on the shared VAE's checkpoint."""
    torch.manual_seed(0)
    trainer = hw.VAETrainer(hw.VAEConfig(latent_dim=2, hidden=20), CPU)
    x_a, x_b = torch.rand(3, hw.IMAGE_DIM), torch.rand(3, hw.IMAGE_DIM)
    lines = tl.interpolate(trainer.model, x_a, x_b, steps=5)
    assert lines.shape == (3, 5, hw.IMAGE_DIM)
    with torch.no_grad():
        assert torch.allclose(lines[:, 0], trainer.model.pixel_means(trainer.model.encode(x_a)[0]))
        assert torch.allclose(lines[:, -1], trainer.model.pixel_means(trainer.model.encode(x_b)[0]))
    decoded = []
    trainer.model.pixel_means = lambda z: decoded.append(z) or torch.zeros(len(z), hw.IMAGE_DIM)
    assert tl.manifold(trainer.model, n=3).shape == (9, hw.IMAGE_DIM)
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor([0.05, 0.5, 0.95]))
    z = decoded[0].reshape(3, 3, 2)  # rows of the grid
    assert torch.allclose(z[0, :, 0], q) and torch.allclose(z[:, 0, 1], q.flip(0))  # z₁ across, z₂ down
    assert tl.main(["--checkpoint", str(checkpoints["vae"]), "--figures-dir", str(tmp_path)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["vae_interpolation.png"]  # p = 32: no manifold
