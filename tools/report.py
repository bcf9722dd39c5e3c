"""The submission of the assignment's Rules: homework7.NAME.pdf, homework7.NAME.py and a zip of both.

Usage:
  python -m tools.report --user NAME [--user NAME2]

The PDF opens with the assignment's two figures, each under its problem's heading, then the scores of
tools.evaluate as tables (where it has been run), then an appendix with the training curves and the other
figures. The .py is a copy of homework7.py, which runs on its own.
"""
import sys
import textwrap
import zipfile
from pathlib import Path

import matplotlib.image
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

import homework7 as hw
from homework7 import Parser, RunConfig, UsageError, atomic_write, output_dirs, run_cli, sha256
from tools.outputs import PDF_FILE, PNG_FILE, ZIP_FILE, check_replaceable, read_json
from tools.evaluate import score_notes, score_rows

PAGE_W, PAGE_H = 8.27, 11.69  # A4, inches
MARGIN = 0.75  # inches on every side
TEXT_W = PAGE_W - 2 * MARGIN

# (problem heading, model, its figure, caption): the figures the assignment asks for
PROBLEMS = [
    ("1 Variational Auto-Encoders", "vae", "vae.png",
     "Figure 1. Top row: 16 existing MNIST images x (the test set). Second row: their reconstructions "
     "P_θ(Q_φ(x)), the decoder's mean for the encoder's mean. Third row: 16 new images, a Gaussian noise "
     "vector z ~ N(0, I) passed through the decoder alone. Fourth row: 16 new images with z drawn instead from a "
     "Gaussian mixture fitted to the encodings μ(x) of the training images after training."),
    ("2 Generative Adversarial Networks", "gan", "gan.png",
     "Figure 2. 64 new images G(z) from the trained generator, one for each of a fixed set of Gaussian noise "
     "vectors z, G in eval mode."),
]
APPENDIX = [  # (figure, caption), each shown where it exists
    ("vae_curves.png", "VAE: −ELBO, reconstruction and KL terms per epoch, train and test, nats per image."),
    ("vae_interpolation.png", "VAE: decoded points on straight lines between the encodings μ of two test digits."),
    ("vae_manifold.png", "VAE with p = 2: the decoder over a grid of Gaussian quantiles of z (Kingma & Welling, Fig. 4)."),
    ("vae_sweep.png", "VAE trained with different weights of the KL term: reconstructions, and new images "
                      "from z ~ N(0, I) and from the fitted mixture."),
    ("gan_curves.png", "GAN: D and G losses and mean D(x), D(G(z)) per epoch."),
    ("gan_progress.png", "GAN: G(z) for the same z at several epochs of training."),
]


class Page:
    """One A4 page, filled from the top: headings, wrapped text, images at the full text width, tables."""

    def __init__(self):
        self.fig = Figure(figsize=(PAGE_W, PAGE_H), dpi=100)
        self.top = PAGE_H - MARGIN  # inches from the bottom edge where the next block starts

    def room(self):
        return self.top - MARGIN

    def axes(self, height, width=TEXT_W):
        ax = self.fig.add_axes((MARGIN / PAGE_W, (self.top - height) / PAGE_H, width / PAGE_W, height / PAGE_H))
        ax.set_axis_off()
        return ax

    def text(self, text, size=10, weight="normal", gap=0.1, width=100, family="sans-serif"):
        lines = "\n".join(textwrap.fill(paragraph, width) for paragraph in text.split("\n"))
        self.fig.text(MARGIN / PAGE_W, self.top / PAGE_H, lines, fontsize=size, weight=weight, va="top",
                      family=family, parse_math=False)  # drawn as written: text from files may hold a $
        self.top -= (lines.count("\n") + 1) * size * 1.3 / 72 + gap

    def image_height(self, image):
        height, width = image.shape[:2]
        return TEXT_W * height / width

    def image(self, image, gap=0.12):
        """The image at the full text width (narrower only where the page has no room for its height)."""
        height = min(self.image_height(image), self.room())
        self.axes(height, width=height * image.shape[1] / image.shape[0]).imshow(image)
        self.top -= height + gap

    def table(self, header, rows, gap=0.15):
        height = 0.24 * (len(rows) + 1)
        widths = [0.28] + [0.72 / (len(header) - 1)] * (len(header) - 1)  # the labels get a wide first column
        table = self.axes(height).table(cellText=rows, colLabels=header, bbox=(0, 0, 1, 1), cellLoc="right",
                                        colLoc="right", colWidths=widths)
        table.auto_set_font_size(False)
        table.set_fontsize(9)
        for (row, col), cell in table.get_celld().items():
            cell.set_linewidth(0.5)
            cell.get_text().set_parse_math(False)
            if col == 0:
                cell.set_text_props(ha="left")
                cell._loc = "left"
            if row == 0:
                cell.set_text_props(weight="bold")
        self.top -= height + gap


def read_object(path):
    """A run's config.json, eval.json or figures.json (a JSON object), or None (with one line saying why) where
    it is missing or not one."""
    if not path.exists():
        return None
    try:
        obj = read_json(path)
    except UsageError as e:  # it names the file
        print(f"tools.report: {e}; left out of the PDF", file=sys.stderr)
        return None
    if not isinstance(obj, dict):
        print(f"tools.report: {path} is not a JSON object ({str(obj)[:60]}); left out of the PDF", file=sys.stderr)
        return None
    return obj


def the_run_that_drew(figure, run_dir):
    """(config, the SHA-256 of its checkpoint) of the run in run_dir where it drew the figure, as its
    figures.json records (the figure's and the checkpoint's SHA-256), or (None, None), with one line saying why,
    where it did not."""
    drawn = read_object(run_dir / "figures.json")
    checkpoint = run_dir / "checkpoint.pt"
    if drawn and drawn.get(figure.name) == sha256(figure) and checkpoint.exists() and \
            drawn.get("checkpoint.pt") == sha256(checkpoint):
        return read_object(run_dir / "config.json"), drawn["checkpoint.pt"]
    print(f"tools.report: {figure} was not drawn by the run in {run_dir}; its config and scores are left out of "
          "the PDF", file=sys.stderr)
    return None, None


def read_figure(path):
    """A figure that homework7.py wrote, as an image array; one line where it is not a PNG that can be read."""
    with open(path, "rb") as f:
        png = f.read(len(PNG_FILE[1])) == PNG_FILE[1]
    try:
        if png:
            return matplotlib.image.imread(path)
    except (OSError, ValueError, SyntaxError):  # Pillow's words for a damaged PNG
        pass
    raise UsageError(f"{path}: not a readable PNG figure; run homework7.py again to write it")


def scores_table(page, model, report, path):
    """The evaluation's table and notes, or a line saying it has not been run (or cannot be read)."""
    try:
        rows = [[label, f"{s['coverage']}/10", f"{s['confident']:.3f}", f"{s['inception_score']:.2f}",
                 f"{s['fid']:.1f}"] for label, s in score_rows(report)]
        notes = score_notes(report)
    except (KeyError, TypeError, ValueError, AttributeError):
        if report is not None:
            print(f"tools.report: {path} is not an evaluation report; left out of the PDF", file=sys.stderr)
        page.text(f"Scores: not evaluated (python -m tools.evaluate {model} writes {path}).", size=9)
        return
    page.text("Scores of the samples", size=11, weight="bold")
    page.table(["", "classes covered", "confident share", "Inception score", "FID*"], rows)
    page.text("\n".join(notes), size=8, width=120)


def described(config):
    """What was trained, in words, from a run's config.json; a path that is not UTF-8 with its bytes escaped."""
    c = {k: str(v).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") for k, v in config.items()}
    data = f"the images of {c['data']}" if config.get("data") else "MNIST's 60,000 training images"
    data = f"the first {c['n_train']} of {data}" if config.get("n_train") else data
    if config.get("model") == "vae":
        model = (f"p = {c['latent_dim']}, {c['hidden']} hidden units, KL weight {c['kl_weight']}; "
                 f"new images also from a mixture of {c['mixture_components']} Gaussians")
    else:
        model = (f"noise of {c['noise_dim']} dimensions, {c['hidden']} hidden units, the {c['generator_loss']} "
                 f"loss of G, R1 γ = {c['r1']}, a moving average of G of decay {c['ema']}")
    return (f"{model}; {c['epochs']} epochs of Adam (lr {c['lr']}) in minibatches of {c['batch_size']} on {data}, "
            f"seed {c['seed']}")


def build_pages(users, figures_dir, runs_dir):
    """The PDF's pages: the two problems with their figures and scores, then the appendix."""
    names = [name for _, _, name, _ in PROBLEMS] + [name for name, _ in APPENDIX if (figures_dir / name).exists()]
    images = {name: read_figure(figures_dir / name) for name in names}  # each checked before anything is said
    pages = []
    for i, (heading, model, name, caption) in enumerate(PROBLEMS):
        page = Page()
        if i == 0:
            page.text(f"Homework 7 — {', '.join(users)}", size=16, weight="bold", gap=0.05)
            page.text("CS/DS 541 Deep Neural Networks. A VAE and a GAN on MNIST, both fully connected, "
                      "trained by homework7.py.", size=10, gap=0.3)
        page.text(heading, size=14, weight="bold", gap=0.15)
        page.image(images[name])
        config, checkpoint = the_run_that_drew(figures_dir / name, runs_dir / model)
        try:
            trained = f"\nTrained: {described(config)}." if config else ""
        except KeyError:  # a config.json of another version
            trained = ""
        page.text(caption + trained, size=9, gap=0.3)
        eval_path = runs_dir / model / "eval.json"
        report = read_object(eval_path) if checkpoint else None
        if report and report.get("checkpoint_sha256") != checkpoint:
            print(f"tools.report: {eval_path} scored another checkpoint than the one that drew {name}; left out "
                  "of the PDF", file=sys.stderr)
            report = None
        scores_table(page, model, report, eval_path)
        pages.append(page)
    page = Page()
    page.text("Appendix: training curves and other figures", size=14, weight="bold", gap=0.2)
    for name, caption in APPENDIX:
        if name not in images:
            continue
        image = images[name]
        if page.image_height(image) + 0.6 > page.room() and page.top < PAGE_H - MARGIN - 0.6:
            pages.append(page)
            page = Page()
        page.image(image)
        page.text(f"{name}: {caption}", size=9, gap=0.35)
    pages.append(page)
    return [page.fig for page in pages]


def report(users, out_dir, figures_dir, runs_dir):
    """The PDF, the script copy and the zip holding both, as the assignment's Rules name them."""
    if not 1 <= len(users) <= 3 or not all(u and u.replace("-", "").replace("_", "").isalnum() for u in users):
        raise UsageError("--user: give 1 to 3 user names of letters, digits, '-' or '_'")
    figures_dir, out_dir, runs_dir = Path(figures_dir), Path(out_dir), Path(runs_dir)
    missing = [str(figures_dir / name) for _, _, name, _ in PROBLEMS if not (figures_dir / name).exists()]
    if missing:
        raise UsageError(f"{', '.join(missing)} missing: run python homework7.py vae and "
                         f"python homework7.py gan first")
    stem = "homework7." + ".".join(users)
    source = Path(hw.__file__).read_bytes()
    script_file = ("homework7.py", source[:16])  # an earlier copy of the script begins as it does
    pdf, script, archive = out_dir / f"{stem}.pdf", out_dir / f"{stem}.py", out_dir / f"{stem}.zip"
    for path, kind in ((pdf, PDF_FILE), (script, script_file), (archive, ZIP_FILE)):  # all checked before any write
        check_replaceable(path, kind)
    pages = build_pages(users, figures_dir, runs_dir)
    with output_dirs(("--out-dir", out_dir)):
        atomic_write(pdf, lambda f: write_pdf(f, pages))
        atomic_write(script, lambda f: f.write(source))
        atomic_write(archive, lambda f: write_zip(f, [pdf, script]))
    print(f"wrote {pdf} ({len(pages)} pages), {script} and {out_dir / f'{stem}.zip'}")
    return 0


def write_pdf(file, pages):
    with PdfPages(file) as pdf:
        for page in pages:
            pdf.savefig(page)


def write_zip(file, paths):
    with zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in paths:
            archive.write(path, arcname=path.name)


def build_parser():
    parser = Parser(prog="python -m tools.report", description=__doc__)
    parser.add_argument("--user", action="append", required=True, metavar="NAME",
                        help="WPI user name; repeat it for each team member (up to 3)")
    parser.add_argument("--out-dir", default=".", help="where the three files go (default: .)")
    parser.add_argument("--figures-dir", default=RunConfig.figures_dir,
                        help=f"where the figures are (default: {RunConfig.figures_dir})")
    parser.add_argument("--runs-dir", default="runs",
                        help="where the runs' config.json and eval.json are (default: runs)")
    return parser


def main(argv=None):
    return run_cli(build_parser(), argv,
                   lambda args, stop: report(args.user, args.out_dir, args.figures_dir, args.runs_dir))


if __name__ == "__main__":
    sys.exit(main())
