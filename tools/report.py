"""The submission of the assignment's Rules: homework7.NAME.pdf, homework7.NAME.py and a zip of both.

Usage:
  python -m tools.report --user NAME [--user NAME2]

The PDF holds only what this user's runs drew: the assignment's two figures, each under its problem's heading,
with the run's config and the scores of tools.evaluate (where it has scored that run's checkpoint), then an
appendix with the runs' other figures and the VAE's latent space (tools.latent), drawn from its checkpoint. Each
figure must be as its run's figures.json records it. The .py is a
copy of homework7.py, which runs on its own.
"""
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import matplotlib.image
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

import homework7 as hw
from homework7 import Parser, UsageError, atomic_write, output_dirs, run_cli, sha256
from tools.outputs import PDF_FILE, PNG_FILE, ZIP_FILE, check_replaceable, read_json
from tools.evaluate import score_notes, score_rows
from tools.latent import draw_latent

PAGE_W, PAGE_H = 8.27, 11.69  # A4, inches
MARGIN = 0.75  # inches on every side
TEXT_W = PAGE_W - 2 * MARGIN

# (problem heading, model): the assignment's problems, each with its figure <model>.png
PROBLEMS = [("1 Variational Auto-Encoders", "vae"), ("2 Generative Adversarial Networks", "gan")]
VAE_ROWS = ("Figure 1. Top row: 16 existing MNIST images x, as labelled: test images, or, for a run on fewer "
            "training images than test images, those it trained on. Second row: their reconstructions "
            "P_θ(Q_φ(x)), the decoder's mean for the encoder's mean. Third row: 16 new images, a Gaussian noise "
            "vector z ~ N(0, I) passed through the decoder alone.")
MIXTURE_ROW = (" {row}: 16 new images with z drawn instead from a mixture of {k} Gaussians fitted to the "
               "encodings μ(x) of the training images after training.")
GAN_CAPTION = ("Figure 2. 64 new images G(z) from the trained generator, one for each of a fixed set of Gaussian "
               "noise vectors z, G in eval mode.")
APPENDIX = {  # each figure a run drew beside its <model>.png, by its name, with its caption
    "vae_curves.png": "VAE: −ELBO, reconstruction and KL terms per epoch, train and test, nats per image.",
    "vae_interpolation.png": "VAE: decoded points on straight lines between the encodings μ of two test images.",
    "vae_manifold.png": "VAE with p = 2: the decoder over a grid of Gaussian quantiles of z (Kingma & Welling, "
                        "Fig. 4).",
    "gan_curves.png": "GAN: D and G losses and mean D(x), D(G(z)) per epoch.",
}


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


def drawn_figures(model, run_dir):
    """(config or None, the SHA-256 of the checkpoint, the path of <model>.png, {name: path} of the other figures)
    of the run in run_dir, as its figures.json records them: the figures it drew, each still as it drew it; one
    line where the run has not drawn <model>.png, or it or the checkpoint has changed since."""
    drawn, checkpoint = read_object(run_dir / "figures.json") or {}, run_dir / "checkpoint.pt"
    figures = {}
    for path, digest in (drawn.get("figures") or {}).items():
        if Path(path).is_file() and sha256(path) == digest:
            figures[Path(path).name] = Path(path)
        else:
            print(f"tools.report: {path} is not as the run in {run_dir} drew it; left out of the PDF", file=sys.stderr)
    if f"{model}.png" not in figures or not checkpoint.exists() or drawn.get("checkpoint.pt") != sha256(checkpoint):
        raise UsageError(f"{run_dir}: no {model}.png drawn by this run's checkpoint; run python homework7.py {model} "
                         f"first (or pass --{model}-run)")
    main = figures.pop(f"{model}.png")
    return read_object(run_dir / "config.json"), drawn["checkpoint.pt"], main, figures


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


def scores_table(page, report, path):
    """The evaluation's table and notes, where there is one that can be read."""
    try:
        rows = [[label, f"{s['coverage']}/10", f"{s['confident']:.3f}", f"{s['inception_score']:.2f}",
                 f"{s['fid']:.1f}"] for label, s in score_rows(report)]
        notes = score_notes(report)
    except (KeyError, TypeError, ValueError, AttributeError):
        if report is not None:
            print(f"tools.report: {path} is not an evaluation report; left out of the PDF", file=sys.stderr)
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
        mixture = f"; new images also from a mixture of {c['mixture_components']}" if config["mixture_components"] else ""
        model = f"p = {c['latent_dim']}, {c['hidden']} hidden units, KL weight {c['kl_weight']}{mixture}"
    else:
        model = (f"noise of {c['noise_dim']} dimensions, {c['hidden']} hidden units, the {c['generator_loss']} "
                 f"loss of G, R1 γ = {c['r1']}, a moving average of G of decay {c['ema']}")
    return (f"{model}; {c['epochs']} epochs of Adam (lr {c['lr']}) in minibatches of {c['batch_size']} on {data}, "
            f"seed {c['seed']}")


def figure_caption(model, config):
    """The caption of a run's <model>.png: its rows as the run's config.json says they are (three, or four with the
    mixture), then the run in words; without a config.json that can be read, a fourth row where there is one."""
    if model == "gan":
        caption = GAN_CAPTION
    elif config and "mixture_components" in config:
        k = config["mixture_components"]
        caption = VAE_ROWS + (MIXTURE_ROW.format(row="Fourth row", k=k) if k else "")
    else:
        caption = VAE_ROWS + MIXTURE_ROW.format(row="A fourth row, where there is one", k="some")
    try:
        return caption + (f"\nTrained: {described(config)}." if config else "")
    except KeyError:  # a config.json of another version
        return caption


def build_pages(users, runs):
    """The PDF's pages: the two problems with their figures and scores, then the appendix; runs: the run
    directory of each model."""
    drawn = {model: drawn_figures(model, Path(runs[model])) for _, model in PROBLEMS}  # all checked first
    with tempfile.TemporaryDirectory() as latent_dir:
        drawn["vae"][3].update({path.name: path for path in draw_latent(Path(runs["vae"]) / "checkpoint.pt",
                                                                         latent_dir)})
        images = {path: read_figure(path) for _, _, main, others in drawn.values()
                  for path in [main, *others.values()]}
    pages = []
    for i, (heading, model) in enumerate(PROBLEMS):
        config, checkpoint, main, _ = drawn[model]
        page = Page()
        if i == 0:
            page.text(f"Homework 7 — {', '.join(users)}", size=16, weight="bold", gap=0.05)
            page.text("CS/DS 541 Deep Neural Networks. A VAE and a GAN on MNIST, both fully connected, "
                      f"trained by {script_name(users)}.", size=10, gap=0.3)
        page.text(heading, size=14, weight="bold", gap=0.15)
        page.image(images[main])
        page.text(figure_caption(model, config), size=9, gap=0.3)
        eval_path = Path(runs[model]) / "eval.json"
        report = read_object(eval_path)
        if report and report.get("checkpoint_sha256") != checkpoint:
            print(f"tools.report: {eval_path} scored another checkpoint than the one that drew {model}.png; left "
                  "out of the PDF", file=sys.stderr)
            report = None
        scores_table(page, report, eval_path)
        pages.append(page)
    page = Page()
    page.text("Appendix: training curves and other figures", size=14, weight="bold", gap=0.2)
    for name, path in [item for _, _, _, others in drawn.values() for item in others.items()]:
        image = images[path]
        if page.image_height(image) + 0.6 > page.room() and page.top < PAGE_H - MARGIN - 0.6:
            pages.append(page)
            page = Page()
        page.image(image)
        page.text(f"{name}: {APPENDIX.get(name, '')}", size=9, gap=0.35)
    pages.append(page)
    return [page.fig for page in pages]


def script_name(users):
    return "homework7." + ".".join(users) + ".py"


def report(users, out_dir, runs):
    """The PDF, the script copy and the zip holding both, as the assignment's Rules name them."""
    if not 1 <= len(users) <= 3 or not all(u and u.replace("-", "").replace("_", "").isalnum() for u in users):
        raise UsageError("--user: give 1 to 3 user names of letters, digits, '-' or '_'")
    out_dir = Path(out_dir)
    source = Path(hw.__file__).read_bytes()
    script_file = ("homework7.py", source[:16])  # an earlier copy of the script begins as it does
    script = out_dir / script_name(users)
    pdf, archive = script.with_suffix(".pdf"), script.with_suffix(".zip")
    for path, kind in ((pdf, PDF_FILE), (script, script_file), (archive, ZIP_FILE)):  # all checked before any write
        check_replaceable(path, kind)
    pages = build_pages(users, runs)
    with output_dirs(("--out-dir", out_dir)):
        atomic_write(pdf, lambda f: write_pdf(f, pages))
        atomic_write(script, lambda f: f.write(source))
        atomic_write(archive, lambda f: write_zip(f, [pdf, script]))
    print(f"wrote {pdf} ({len(pages)} pages), {script} and {archive}")
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
    for model in ("vae", "gan"):
        parser.add_argument(f"--{model}-run", default=f"runs/{model}", metavar="DIR",
                            help=f"the run whose figures and scores the PDF shows for the {model.upper()}: its run "
                                 f"directory, as homework7.py printed it (default: runs/{model})")
    return parser


def main(argv=None):
    return run_cli(build_parser(), argv, lambda args, stop: report(args.user, args.out_dir,
                                                                    {"vae": args.vae_run, "gan": args.gan_run}))


if __name__ == "__main__":
    sys.exit(main())
