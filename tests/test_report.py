"""tools/report.py: the PDF, the script copy and the zip of the assignment's Rules."""
import dataclasses
import json
import os
import re
import shutil
import zipfile

import torch

import homework7 as hw
import tools.report
from conftest import drawn_run


def pdf_page_count(path):
    """Pages of a PDF, read back from its page tree (matplotlib writes it uncompressed)."""
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    pages = len(re.findall(rb"/Type /Page\b(?!s)", data))
    assert re.search(rb"/Type /Pages .*?/Count (\d+)", data, re.S).group(1) == str(pages).encode()
    return pages


def page_text(pages):
    """All text drawn on the pages, in order: the page's own text, then its tables' cells."""
    text = []
    for page in pages:
        text += [t.get_text() for t in page.texts]
        text += [cell.get_text().get_text() for ax in page.axes for table in ax.tables
                 for cell in table.get_celld().values()]
    return "\n".join(text)


def fake_figures(figures, names):
    images = torch.rand(16, hw.IMAGE_DIM)
    figures.mkdir(parents=True, exist_ok=True)
    for name in names:
        hw.plot_grid(images, figures / name, name)


def report_of(runs, *flags):
    """tools.report's arguments for the runs under runs (as drawn_run leaves them) and its output beside them."""
    return ["--user", "ab", "--vae-run", runs / "vae", "--gan-run", runs / "gan", "--out-dir", runs.parent, *flags]


def test_report_writes_pdf_script_and_zip_of_the_users_own_runs_only(tmp_path, cli):
    figures, runs = tmp_path / "figures", tmp_path / "runs"
    fake_figures(figures, ["vae.png", "gan.png", "gan_curves.png"])
    for model in ("vae", "gan"):
        drawn_run(runs, figures, model)
    fake_figures(figures, ["vae_sweep.png"])  # a figure of another tool, drawn by none of the two runs
    status, out, _ = cli(tools.report.main, *report_of(runs, "--user", "cd"))
    assert status == 0
    pdf, script = tmp_path / "homework7.ab.cd.pdf", tmp_path / "homework7.ab.cd.py"
    assert pdf_page_count(pdf) == 2 + 2  # one page per problem, then the appendix: gan_curves, vae_interpolation
    assert script.read_bytes() == (hw.Path(hw.__file__)).read_bytes()  # the lean script, nothing else
    with zipfile.ZipFile(tmp_path / "homework7.ab.cd.zip") as archive:
        assert sorted(archive.namelist()) == ["homework7.ab.cd.pdf", "homework7.ab.cd.py"]
        assert archive.read("homework7.ab.cd.pdf") == pdf.read_bytes()
    text = page_text(tools.report.build_pages(["ab"], {"vae": runs / "vae", "gan": runs / "gan"}))
    assert "gan_curves.png" in text and "vae_interpolation.png" in text and "vae_sweep" not in text


def test_the_pdf_names_the_script_handed_in_and_describes_the_rows_that_are_there(tmp_path, capsys):
    figures, runs = tmp_path / "figures", tmp_path / "runs"
    fake_figures(figures, ["vae.png", "gan.png"])
    scores = {"coverage": 10, "confident": 0.875, "inception_score": 8.76, "fid": 5.6, "histogram": [1000] * 10}
    drawn_run(runs, figures, "vae")
    drawn_run(runs, figures, "gan", scores=scores)
    text = " ".join(page_text(tools.report.build_pages(["ab"], {"vae": runs / "vae", "gan": runs / "gan"})).split())
    assert text.index("1 Variational Auto-Encoders") < text.index("2 Generative Adversarial Networks")
    assert "trained by homework7.ab.py." in text and "homework7.py" not in text
    assert "not evaluated" not in text and "Scores of the samples" in text  # the GAN's scores; none for the VAE
    assert "Inception score" in text and "8.76" in text and "0.875" in text
    assert "Fourth row: 16 new images with z drawn instead from a mixture of 200 Gaussians" in text
    assert ("Trained: p = 32, 200 hidden units, KL weight 0.5; new images also from a mixture of 200; 60 "
            "epochs of Adam (lr 0.0045) in minibatches of 500 on MNIST's 60,000 training images, seed 0.") in text
    config = {"model": "vae", **dataclasses.asdict(hw.VAEConfig(mixture_components=0).for_training_set(60000))}
    drawn_run(runs, figures, "vae", config=config)  # --mixture-components 0: the assignment's three rows
    text = " ".join(page_text(tools.report.build_pages(["ab"], {"vae": runs / "vae", "gan": runs / "gan"})).split())
    assert "Third row" in text and "Fourth row" not in text and "mixture" not in text


def test_figures_drawn_again_or_scores_of_another_checkpoint_are_refused_or_left_out(tmp_path, capsys, cli):
    figures, runs = tmp_path / "figures", tmp_path / "runs"
    fake_figures(figures, ["vae.png", "gan.png"])
    scores = {"coverage": 10, "confident": 0.875, "inception_score": 8.76, "fid": 5.6, "histogram": [1000] * 10}
    drawn_run(runs, figures, "vae", scores=scores)
    drawn_run(runs, figures, "gan", scores=scores)
    fake_figures(figures, ["vae.png"])  # drawn again, by another run
    status, _, err = cli(tools.report.main, *report_of(runs))
    assert status == 2 and "runs/vae: no vae.png drawn by this run's checkpoint" in err
    drawn_run(runs, figures, "vae", scores=scores)
    (runs / "gan" / "checkpoint.pt").write_bytes(b"trained on")  # after its figures and its scores
    status, _, err = cli(tools.report.main, *report_of(runs))
    assert status == 2 and "runs/gan: no gan.png drawn by this run's checkpoint" in err
    drawn_run(runs, figures, "gan", scores=scores)
    (runs / "vae" / "eval.json").write_text((runs / "vae" / "eval.json").read_text().replace('"checkpoint_sha256": "',
                                                                                            '"checkpoint_sha256": "0'))
    text = page_text(tools.report.build_pages(["ab"], {"vae": runs / "vae", "gan": runs / "gan"}))
    assert "Trained: p = 32" in text and text.count("0.875") == 2  # the GAN table's two rows; not the VAE's
    assert "vae/eval.json scored another checkpoint than the one that drew vae.png" in capsys.readouterr().err


def test_a_corrupt_or_hand_edited_eval_json_is_left_out_with_one_line(tmp_path, cli):
    figures, runs = tmp_path / "figures", tmp_path / "runs"
    fake_figures(figures, ["vae.png", "gan.png"])
    for model in ("vae", "gan"):
        drawn_run(runs, figures, model)
    (runs / "vae" / "eval.json").write_text("{not json")
    checkpoint = hw.sha256(runs / "gan" / "checkpoint.pt")  # of the run that drew the figure, but no scores in it
    (runs / "gan" / "eval.json").write_text(json.dumps({"model": "gan", "samples": 3, "checkpoint_sha256": checkpoint}))
    status, _, err = cli(tools.report.main, *report_of(runs))
    assert status == 0 and "Traceback" not in err
    assert "vae/eval.json: not JSON (" in err and "gan/eval.json is not an evaluation report" in err


def test_a_run_on_a_file_whose_name_is_not_utf8_is_described_in_words(tmp_path, small_npy, monkeypatch, cli):
    """A Latin-1 name from an old archive: its byte is drawn escaped, and the config reads as a sentence."""
    monkeypatch.chdir(tmp_path)
    data = os.fsdecode(b"caf\xe9.npy")
    shutil.copy(small_npy, tmp_path / data)
    assert hw.main(["vae", "--data", data, "--epochs", "1", "--mixture-components", "2"]) == 0
    fake_figures(tmp_path / "figures", ["gan.png"])
    drawn_run(tmp_path / "runs", tmp_path / "figures", "gan")
    runs = {"vae": "runs/vae_data=caf-.npy", "gan": "runs/gan"}
    text = " ".join(page_text(tools.report.build_pages(["ab"], runs)).split())
    assert "Trained: p = 32, 200 hidden units, KL weight 0.5; new images also from a mixture of 2;" in text
    assert "caf\\xe9.npy, seed 0." in text and "Trained: noise of 100 dimensions" in text
    status, _, err = cli(tools.report.main, "--user", "ab", "--vae-run", runs["vae"])
    assert status == 0 and err == "" and (tmp_path / "homework7.ab.pdf").exists()
