"""tools/gan_quality.py: the methods' configs, a run scored at chosen epochs, its table and figure, and the
R1 coupling it measures through BatchNorm."""
import dataclasses
import json

import pytest
import torch

import homework7 as hw
import tools.gan_quality as gq


def test_methods_change_only_their_flags_of_the_old_default():
    old = gq.method_config("old")
    assert old.epochs == 75 and old.lr == 4e-4 and old.ema == 0.9999 and old.r1 == 0 and old.bn_batches == 0
    joined = dataclasses.asdict(gq.method_config("r1+bn"))
    changed = {k for k, v in joined.items() if v != dataclasses.asdict(old)[k]}
    assert changed == {"r1", "bn_batches", "run_dir", "figures_dir"} and joined["r1"] == 0.01
    new = dataclasses.asdict(gq.method_config("new"))
    assert {k: v for k, v in new.items() if k not in ("run_dir", "figures_dir")} == {
        k: v for k, v in dataclasses.asdict(hw.GANConfig()).items() if k not in ("run_dir", "figures_dir")}
    with pytest.raises(hw.UsageError, match="unknown method 'r2'"):
        gq.method_config("r1+r2")
    recipe = gq.method_config("new+lr=2e-3+dropout=0.2+beta2=0.9")  # fields set by name on today's defaults
    assert (recipe.lr, recipe.dropout, recipe.beta2, recipe.r1) == (2e-3, 0.2, 0.9, hw.GANConfig.r1)
    with pytest.raises(hw.UsageError, match="unrecognized arguments: --gamma=3"):
        gq.method_config("new+gamma=3")
    assert gq.method_config("new+n_train=5+g_noise=fresh").n_train == 5  # a field whose default is None
    on_new = gq.method_config("new+batch-1000+fresh-noise", seed=2)  # on today's defaults, a directory per seed
    assert (on_new.batch_size, on_new.g_noise, on_new.seed, on_new.r1) == (1000, "fresh", 2, hw.GANConfig.r1)
    assert on_new.run_dir.endswith("new+batch-1000+fresh-noise-seed2") and old.g_noise == "fresh"
    assert gq.method_config("new").run_dir.endswith("new")


def test_a_run_is_scored_at_the_asked_epochs_and_reused(tmp_path, stub_classifier, images, monkeypatch, capsys):
    # FID's reference from 500 real images instead of the 10,000 test images: the same code, 20× less to classify
    monkeypatch.setattr(gq, "real_references",
                        lambda classifier, device: (gq.classify(classifier, torch.from_numpy(images[:500]))[1], None))
    argv = ["--methods", "old", "r1+bn", "--epochs", "2", "--at", "1", "2", "--n", "300", "--n-train", "300",
            "--out-dir", str(tmp_path), "--classifier", str(stub_classifier), "--figure", str(tmp_path / "q.png")]
    assert gq.main(argv) == 0
    out = capsys.readouterr().out
    assert "| old | " in out and "| old + bn | " in out and "| r1+bn | " in out and "| r1+bn + bn |" not in out
    record = json.loads((gq.quality_dir(tmp_path) / "old.json").read_text())
    assert [p["epoch"] for p in record["points"]] == [1, 2] and 0 < record["points"][0]["minutes"]
    assert record["points"][0]["minutes"] < record["points"][1]["minutes"]
    assert all(0 <= p["confident"] <= 1 and p["inception_score"] >= 1 and "bn" in p for p in record["points"])
    assert (tmp_path / "q.png").stat().st_size > 10_000
    mtime = (gq.quality_dir(tmp_path) / "old.json").stat().st_mtime_ns
    assert gq.main(argv) == 0 and (gq.quality_dir(tmp_path) / "old.json").stat().st_mtime_ns == mtime  # reused


def test_r1_coupling_measures_the_penalty_as_training_computes_it():
    torch.manual_seed(0)
    D = hw.Discriminator(hidden=16, dropout=0.0)
    x = torch.rand(8, hw.IMAGE_DIM)
    coupling = gq.r1_batch_coupling(D, x)
    x_grad = x.clone().requires_grad_(True)
    assert coupling["summed_logits"] == pytest.approx(hw.r1_penalty(D.logits(x_grad), x_grad, gamma=2.0).item())
    assert coupling["difference"] > 0  # through BatchNorm each logit depends on every image
    D.eval()  # with the running statistics each logit depends on its own image only
    own = torch.stack([torch.autograd.grad(D.logits(x_grad[i : i + 1]).sum(), x_grad)[0][i] for i in range(8)])
    assert torch.allclose(torch.autograd.grad(D.logits(x_grad).sum(), x_grad)[0], own, atol=1e-6)


def test_the_seed_table_gives_each_scores_mean_and_spread_over_seeds():
    def record(method, seed, conf, fid):
        return {"method": method, "seed": seed, "at": [10, 20],
                "points": [{"epoch": 10, "confident": conf, "inception_score": 9.0, "fid": fid}]}
    results = [record("new", 0, 0.80, 6.0), record("new", 1, 0.86, 9.0), record("new", 2, 0.83, 7.5),
               record("old", 0, 0.5, 50.0)]  # one seed: no spread to give
    lines = gq.format_seed_table(results).splitlines()
    assert len(lines) == 3 and lines[2].startswith("| new | 3 |")
    assert "0.830 / 9.00 / 7.5 (0.060 / 0.00 / 3.0)" in lines[2] and lines[2].endswith("|  |")  # none at 20


def test_the_figure_draws_each_methods_mean_over_seeds_against_step_cost_minutes(tmp_path):
    def record(method, seed, conf):
        points = [{"epoch": e, "minutes": 99.0, "confident": conf + e / 1000, "inception_score": 9.0, "fid": 5.0}
                  for e in (10, 20)]
        return {"method": method, "seed": seed, "at": [10, 20], "threads": 1, "points": points}
    results = [record("new", 0, 0.80), record("new", 1, 0.90), record("new+batch-1000", 0, 0.85)]
    fig = gq.plot_quality(results, tmp_path / "q.png", epoch_seconds={"new": 3.0, "new+batch-1000": 1.5})
    new, batch_1000, target = fig.axes[0].lines
    assert list(new.get_xdata()) == [0.5, 1.0] and list(batch_1000.get_xdata()) == [0.25, 0.5]  # e × s / 60
    assert list(new.get_ydata()) == pytest.approx([0.86, 0.87]) and new.get_label() == "new (2 seeds)"
    assert list(target.get_ydata()) == [0.89, 0.89] and (tmp_path / "q.png").stat().st_size > 10_000
    recorded = gq.plot_quality(results, tmp_path / "r.png").axes[0].lines[0]
    assert list(recorded.get_xdata()) == [99.0, 99.0]  # without a step cost: the minutes recorded


def test_saved_records_give_the_tables_without_training(tmp_path, capsys):
    def record(method, seed, at):
        points = [{"epoch": e, "minutes": e / 10, "confident": 0.8, "inception_score": 9.0, "fid": 5.0} for e in at]
        return {"method": method, "seed": seed, "at": at, "threads": 1, "points": points,
                "epoch_seconds_median": 3.0}
    paths = []
    for i, r in enumerate([record("new", 0, [60, 80]), record("new", 1, [60, 80]), record("new+x", 0, [60, 90])]):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(r))
    assert gq.main(["--records", *map(str, paths), "--figure", str(tmp_path / "q.png")]) == 0
    out = capsys.readouterr().out
    assert "| method | 60 epochs: conf / IS / FID* | 80 epochs: conf / IS / FID* | 90 epochs" in out  # every epoch
    assert "| new+x | 0.800 / 9.00 / 5.0 |  | 0.800 / 9.00 / 5.0 | 3.00 |" in out
    assert "| new | 2 | 0.800 / 9.00 / 5.0 (0.000 / 0.00 / 0.0)" in out and (tmp_path / "q.png").exists()
