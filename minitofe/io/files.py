"""Small helpers every weight-file format shares: what a path's extension means, existing files, error
messages that start with the file's path, atomic writes, and the explicit dtype a caller may ask for.
"""
import contextlib
import os
import secrets

import numpy as np

TORCH_EXTS = (".pth", ".pt", ".bin")


def weight_format(path):
    """'npz', 'safetensors' or 'torch', from the file extension."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"a weight file path must be a str or os.PathLike, got {type(path).__name__}")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, not a weight file")
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext in (".npz", ".safetensors"):
        return ext[1:]
    if ext in TORCH_EXTS:
        return "torch"
    raise ValueError(f"{path}: unknown weight file extension {ext!r}; "
                     f"expected .npz, .safetensors, .pth, .pt or .bin")


def existing_file(path):
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, not a weight file")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    return path


@contextlib.contextmanager
def about(path):
    """Prefix the message of a ValueError/TypeError raised inside with the file it concerns."""
    try:
        yield
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    except TypeError as e:
        raise TypeError(f"{path}: {e}") from e


def atomic_write(path, write):
    """Call ``write(binary_file)`` on a temporary file beside ``path``, fsync it, then rename it over
    ``path`` in one step, so a crash never leaves a half-written weight file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{path}: folder {folder} does not exist")
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)   # 0o666: the umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def float_dtype(dtype):
    """None, or one of float32/float64 (the explicit cast a caller asked for)."""
    if dtype is None:
        return None
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def writable_format(path):
    """'npz' or 'safetensors': the formats minitofe writes (torch files are read only)."""
    kind = weight_format(path)
    if kind == "torch":
        raise ValueError(f"{path}: minitofe writes .npz or .safetensors, not {os.path.splitext(path)[1]}")
    return kind
