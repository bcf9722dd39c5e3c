"""tools/report.py: the PDF, the script copy and the zip of the assignment's Rules."""
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


def test_report_writes_pdf_script_and_zip_and_refuses_without_figures(tmp_path, cli):
    figures = tmp_path / "figures"
    status, _, err = cli(tools.report.main, "--user", "ab", "--figures-dir", figures, "--out-dir", tmp_path)
    assert status == 2 and "vae.png" in err and "missing" in err and err.count("\n") == 1
    fake_figures(figures, ["vae.png", "gan.png", "gan_curves.png"])
    status, out, _ = cli(tools.report.main, "--user", "ab", "--user", "cd", "--figures-dir", figures,
                         "--out-dir", tmp_path, "--runs-dir", tmp_path / "runs")
    assert status == 0
    pdf, script = tmp_path / "homework7.ab.cd.pdf", tmp_path / "homework7.ab.cd.py"
    assert pdf_page_count(pdf) == 2 + 1  # one page per problem, then the appendix
    assert script.read_bytes() == (hw.Path(hw.__file__)).read_bytes()  # the lean script, nothing else
    with zipfile.ZipFile(tmp_path / "homework7.ab.cd.zip") as archive:
        assert sorted(archive.namelist()) == ["homework7.ab.cd.pdf", "homework7.ab.cd.py"]
        assert archive.read("homework7.ab.cd.pdf") == pdf.read_bytes()
    status, _, err = cli(tools.report.main, "--user", "../x", "--figures-dir", figures, "--out-dir", tmp_path)
    assert status == 2 and "--user" in err


def test_the_pdf_opens_with_the_two_problems_and_their_scores(tmp_path, capsys):
    figures, runs = tmp_path / "figures", tmp_path / "runs"
    fake_figures(figures, ["vae.png", "gan.png"])
    scores = {"coverage": 10, "confident": 0.875, "inception_score": 8.76, "fid": 5.6, "histogram": [1000] * 10}
    drawn_run(runs, figures, "vae")
    drawn_run(runs, figures, "gan", scores=scores)
    text = page_text(tools.report.build_pages(["ab"], figures, runs))
    assert text.index("1 Variational Auto-Encoders") < text.index("2 Generative Adversarial Networks")
    assert "not evaluated" in text and "python -m tools.evaluate vae" in text  # no eval.json for the VAE
    assert "Inception score" in text and "8.76" in text and "0.875" in text  # the GAN's table
    assert ("Trained: p = 32, 200 hidden units, KL weight 0.5; new images also from a mixture of 200 Gaussians; 60 "
            "epochs of Adam (lr 0.0045) in minibatches of 500 on MNIST's 60,000 training images, seed 0."
            ) in " ".join(text.split())  # the lines as wrapped, joined


def test_config_and_scores_of_another_run_than_the_figures_are_left_out(tmp_path, capsys):
    figures, runs = tmp_path / "figures", tmp_path / "runs"
    fake_figures(figures, ["vae.png", "gan.png"])
    scores = {"coverage": 10, "confident": 0.875, "inception_score": 8.76, "fid": 5.6, "histogram": [1000] * 10}
    drawn_run(runs, figures, "vae", scores=scores)
    drawn_run(runs, figures, "gan", scores=scores)
    fake_figures(figures, ["vae.png"])  # drawn again, by another run
    (runs / "gan" / "checkpoint.pt").write_bytes(b"trained on")  # after its figures and its scores
    text = page_text(tools.report.build_pages(["ab"], figures, runs))
    err = capsys.readouterr().err
    assert "Trained:" not in text and "0.875" not in text and text.count("not evaluated") == 2
    assert err.count("was not drawn by the run in") == 2 and "vae.png" in err and "gan.png" in err
    drawn_run(runs, figures, "vae", scores=scores)  # the figure's own run, but its eval.json of an earlier one
    (runs / "vae" / "eval.json").write_text((runs / "vae" / "eval.json").read_text().replace('"checkpoint_sha256": "',
                                                                                            '"checkpoint_sha256": "0'))
    text = page_text(tools.report.build_pages(["ab"], figures, runs))
    assert "Trained: p = 32" in text and "0.875" not in text
    assert "vae/eval.json scored another checkpoint than the one that drew vae.png" in capsys.readouterr().err


def test_a_corrupt_or_hand_edited_eval_json_is_left_out_with_one_line(tmp_path, cli):
    figures, runs = tmp_path / "figures", tmp_path / "runs"
    fake_figures(figures, ["vae.png", "gan.png"])
    for model in ("vae", "gan"):
        drawn_run(runs, figures, model)
    (runs / "vae" / "eval.json").write_text("{not json")
    checkpoint = hw.sha256(runs / "gan" / "checkpoint.pt")  # of the run that drew the figure, but no scores in it
    (runs / "gan" / "eval.json").write_text(json.dumps({"model": "gan", "samples": 3, "checkpoint_sha256": checkpoint}))
    status, _, err = cli(tools.report.main, "--user", "ab", "--figures-dir", figures, "--out-dir", tmp_path,
                         "--runs-dir", runs)
    assert status == 0 and "Traceback" not in err
    assert "vae/eval.json: not JSON (" in err and "gan/eval.json is not an evaluation report" in err


def test_a_run_on_a_file_whose_name_is_not_utf8_is_described_in_words(tmp_path, small_npy, monkeypatch, cli):
    """A Latin-1 name from an old archive: its byte is drawn escaped, and the config reads as a sentence."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / os.fsdecode(b"caf\xe9.npy")
    shutil.copy(small_npy, data)
    assert hw.main(["vae", "--data", str(data), "--epochs", "1", "--mixture-components", "2"]) == 0
    fake_figures(tmp_path / "figures", ["gan.png"])
    drawn_run(tmp_path / "runs", tmp_path / "figures", "gan")
    text = " ".join(page_text(tools.report.build_pages(["ab"], tmp_path / "figures", tmp_path / "runs")).split())
    assert "Trained: p = 32, 200 hidden units, KL weight 0.5; new images also from a mixture of 2 Gaussians" in text
    assert "caf\\xe9.npy, seed 0." in text and "Trained: noise of 100 dimensions" in text
    status, _, err = cli(tools.report.main, "--user", "ab")
    assert status == 0 and err == "" and (tmp_path / "homework7.ab.pdf").exists()
