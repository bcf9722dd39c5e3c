"""tools/sweep.py: one VAE per latent dimension and KL weight, both samplers scored, its figure and its table."""
import json

import homework7 as hw
import tools.sweep
from conftest import signal_at_step


def test_sweep_scores_both_samplers_for_each_weight_and_epoch_count(tmp_path, stub_classifier, cli):
    status, out, _ = cli(tools.sweep.main, "--kl-weights", "2", "--epochs-list", "1", "2", "--components", "3", "5",
                         "--fit-sizes", "100", "500", "--n-train", "200", "--n", "200", "--classifier", stub_classifier,
                         "--figures-dir", tmp_path / "figures", "--run-dir", tmp_path / "run")
    assert status == 0 and "| p | KL weight | epochs | test −ELBO | z ~ |" in out
    assert "| mixture of 5 (200 μ, " in out
    table = json.loads((tmp_path / "run" / "sweep.json").read_text())
    keys = [(row["kl_weight"], row["epochs"], row["sampler"], row["components"], row["fit_n"]) for row in table]
    assert keys == [(2, e, sampler, k, n) for e in (1, 2)  # a fit size past the data fits them all
                    for sampler, k, n in (("prior", None, None), ("mixture", 3, 100), ("mixture", 3, 200),
                                        ("mixture", 5, 100), ("mixture", 5, 200))]
    assert all(row["test_elbo"] > 0 and sum(row["histogram"]) == 200 for row in table)
    assert all((row["fit_seconds"] is None) == (row["sampler"] == "prior") for row in table)
    assert (tmp_path / "figures" / "vae_sweep.png").stat().st_size > 10_000
    state = hw.load_checkpoint(tmp_path / "run" / "p32_kl2" / "checkpoint.pt")
    assert state["config"].kl_weight == 2 and state["epoch"] == 2  # the second epoch count resumed the first
    assert not (tmp_path / "figures" / "vae.png").exists()  # each run's own figures stay in its run directory


def test_a_stopped_sweep_says_what_it_keeps_and_gives_no_command_that_would_continue_one_vae(tmp_path, stub_classifier,
                                                                                          monkeypatch, cli):
    signal_at_step(monkeypatch, hw.VAETrainer, step=25)  # 20 steps an epoch: stopped in epoch 2
    status, _, err = cli(tools.sweep.main, "--kl-weights", "2", "--epochs-list", "3", "--n-train", "200",
                         "--classifier", stub_classifier, "--figures-dir", tmp_path, "--run-dir", tmp_path / "run")
    assert status == 143 and err.strip() == (f"python -m tools.sweep: stopped by SIGTERM; the checkpoint of epoch 1 "
                                             f"is kept in {tmp_path / 'run' / 'p32_kl2'}")
