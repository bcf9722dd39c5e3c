"""tools/bench.py: what it counts (its times are measurements, not behaviour, and are not asserted)."""
import pytest

import homework7 as hw
import tools.bench as bench


def test_bench_counts_the_matrix_products_of_a_training_step():
    vae = bench.step_products("vae", hw.VAEConfig(latent_dim=4, batch_size=100))
    assert len(vae) == 4 + 4 + 3  # forward, weight gradients, input gradients except into the first layer
    assert (100, 784, 200) in vae and (200, 100, 784) in vae  # first layer: x·Wᵀ and ∂W
    assert vae.count((100, 200, 784)) == 1  # the last layer's forward; no gradient into the images
    gan = bench.step_products("gan", hw.GANConfig(g_noise="fresh"))
    # D step: G forward (4), D on real and fake (2 × 8); G step: G (4 + 4 + 3), D forward and input gradients (6)
    assert len(gan) == 4 + 16 + 11 + 6
    assert len(bench.step_products("gan", hw.GANConfig())) == 16 + 11 + 6  # shared noise: G runs once a step


def test_both_loops_run_a_few_steps_on_the_same_models(images):
    import torch
    x = torch.from_numpy(images[:300])
    for name, plain in (("vae", bench.plain_vae_steps), ("gan", bench.plain_gan_steps)):
        cfg = bench.default_config(name, x)
        assert plain(x, 3, cfg) > 0 and bench.project_steps(name, x, 3, cfg) > 0


def test_a_whole_epoch_of_fit_is_timed_with_its_parts(images, tmp_path):
    import torch
    x = torch.from_numpy(images[:300])
    for name in ("vae", "gan"):
        cfg = hw.VAEConfig(mixture_components=0).for_training_set(200) if name == "vae" else hw.GANConfig()
        whole, steps, evaluate, checkpoint = bench.epoch_parts(name, x[:200], x[200:], cfg, tmp_path / name,
                                                               hw.StopSignals())
        assert 0 < steps < whole and 0 < evaluate < whole and 0 < checkpoint < whole
        assert (tmp_path / name / "checkpoint.pt").exists()


def test_time_loop_times_exactly_the_asked_steps_after_the_warm_up():
    seen = []
    seconds = bench.time_loop(seen.append, iter(range(100)), steps=7, warmup=3)
    assert seen == list(range(10)) and seconds >= 0  # 3 untimed calls, then 7 timed ones, batch after batch


def test_endless_minibatches_show_every_image_once_an_epoch():
    import torch
    x = torch.arange(10, dtype=torch.float32)[:, None]  # ten one-pixel "images", each its own index
    batches = bench.endless_minibatches(x, 4)
    epochs = [torch.cat([next(batches) for _ in range(3)]).squeeze(1) for _ in range(2)]  # 4 + 4 + 2 a time
    assert all(sorted(e.tolist()) == list(range(10)) for e in epochs)
    assert not torch.equal(epochs[0], epochs[1])  # shuffled anew each epoch


def test_epoch_seconds_converts_steps_to_epochs_of_each_config_and_keeps_the_fastest_round(images, monkeypatch):
    import torch
    timed = []

    def project_steps(name, train_x, steps, cfg):  # a clock: 1 ms per image in round 1, 0.5 ms after
        timed.append(cfg.batch_size)
        return steps * cfg.batch_size * (1e-3 if len(timed) <= 2 else 5e-4)

    monkeypatch.setattr(bench, "project_steps", project_steps)
    configs = {b: ("vae", hw.VAEConfig(batch_size=b)) for b in (100, 300)}
    seconds = bench.epoch_seconds(configs, torch.from_numpy(images[:1000]), 5, hw.StopSignals(), rounds=2)
    assert timed == [100, 300, 100, 300]
    # 1,000 images: 10 batches of 100; 4 of 300 (the last of 100), each timed as a full one
    assert seconds == pytest.approx({100: 5e-4 * 100 * 10, 300: 5e-4 * 300 * 4})
