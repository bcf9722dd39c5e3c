"""tools/report.py: the PDF, the script copy and the zip of the assignment's Rules."""
import json
import re
import zipfile

import torch

import homework7 as hw
import tools.report


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
    report = {"model": "gan", "n_samples": 10000, "classifier_accuracy": 0.9931, "real": scores,
              "samples": {"moving average of G": scores}}
    (runs / "gan").mkdir(parents=True)
    (runs / "gan" / "eval.json").write_text(json.dumps(report))
    text = page_text(tools.report.build_pages(["ab"], figures, runs))
    assert text.index("1 Variational Auto-Encoders") < text.index("2 Generative Adversarial Networks")
    assert "not evaluated" in text and "python -m tools.evaluate vae" in text  # no eval.json for the VAE
    assert "Inception score" in text and "8.76" in text and "0.875" in text  # the GAN's table


def test_a_corrupt_or_hand_edited_eval_json_is_left_out_with_one_line(tmp_path, cli):
    figures, runs = tmp_path / "figures", tmp_path / "runs"
    fake_figures(figures, ["vae.png", "gan.png"])
    for model, content in (("vae", "{not json"), ("gan", json.dumps({"model": "gan", "samples": 3}))):
        (runs / model).mkdir(parents=True)
        (runs / model / "eval.json").write_text(content)
    status, _, err = cli(tools.report.main, "--user", "ab", "--figures-dir", figures, "--out-dir", tmp_path,
                         "--runs-dir", runs)
    assert status == 0 and "Traceback" not in err
    assert "vae/eval.json is not a JSON object" in err and "gan/eval.json is not an evaluation report" in err
