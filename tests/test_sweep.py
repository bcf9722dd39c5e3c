"""tools/sweep.py: one VAE per KL weight, its figure and its table."""
import json

import homework7 as hw
import tools.sweep


def run(capsys, *argv):
    status = tools.sweep.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_sweep_trains_one_vae_per_weight_and_writes_its_figure_and_table(tmp_path, stub_classifier, capsys):
    status, out, _ = run(capsys, "--kl-weights", "0", "2", "--epochs", "1", "--n-train", "200",
                         "--n", "200", "--classifier", stub_classifier, "--figures-dir", tmp_path / "figures", "--run-dir", tmp_path / "run")
    assert status == 0 and "| KL weight | test −ELBO |" in out
    table = json.loads((tmp_path / "run" / "sweep.json").read_text())
    assert [row["kl_weight"] for row in table] == [0, 2] and all(row["test_elbo"] > 0 for row in table)
    assert (tmp_path / "figures" / "vae_sweep.png").stat().st_size > 10_000
    assert hw.load_checkpoint(tmp_path / "run" / "kl_2" / "checkpoint.pt")["config"]["kl_weight"] == 2
    assert not (tmp_path / "figures" / "vae.png").exists()  # each run's own figures stay in its run directory
    status, _, err = run(capsys, "--kl-weights", "-1")
    assert status == 2 and "--kl-weights" in err


