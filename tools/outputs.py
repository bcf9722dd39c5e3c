"""The files the tools write where a user names them (tools.sample --out, tools.evaluate --classifier,
tools.gan_quality --figure, tools.report's files): each replaces only a regular file of the kind written there,
never a symbolic link, a FIFO, a directory, or a file of another kind (a model, a README); and the tools' one
reader of JSON."""
import json
from pathlib import Path

from homework7 import UsageError, atomic_write, first_line, reading

# (name, first bytes) of each kind of file
CHECKPOINT_FILE = ("PyTorch", b"PK\x03\x04")  # torch.save writes a zip archive
NPY_FILE = ("NumPy .npy", b"\x93NUMPY")
PDF_FILE = ("PDF", b"%PDF-")
PNG_FILE = ("PNG", b"\x89PNG\r\n\x1a\n")
ZIP_FILE = ("zip", b"PK\x03\x04")


def check_replaceable(path, kind):
    """Refuses to write over anything at path but a regular file that begins as the kind does."""
    path, (name, magic) = Path(path), kind
    if path.is_symlink():
        raise UsageError(f"{path} is a symbolic link; not replaced (write to another path)")
    if path.exists():
        if not path.is_file():
            raise UsageError(f"{path} exists and is not a regular file; not replaced (write to another path)")
        with open(path, "rb") as f:
            if not f.read(16).startswith(magic):
                raise UsageError(f"{path} exists and is not a {name} file; not replaced (write to another path)")


def write_output(path, write, kind):
    """atomic_write(path, write), where check_replaceable allows it."""
    check_replaceable(path, kind)
    atomic_write(path, write)


def read_json(path):
    """The JSON value in the file at path, or one line where it is not JSON (not UTF-8, not parsed, or nested
    deeper than the parser can follow)."""
    with reading(path) as f:
        text = f.read()
    try:
        return json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UsageError(f"{path}: not JSON ({first_line(e)})") from None
