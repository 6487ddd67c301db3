"""Fashion-MNIST from its four official IDX files, and the validation split [ours].

Nothing here downloads anything. Fashion-MNIST is read from a folder holding the four official files
(gzipped or not); by default the folder where the Debian package ``dataset-fashion-mnist`` puts them.
The folder is, in order of precedence: the ``root`` argument, the environment variable
``MINITOFE_FASHION_MNIST``, ``/usr/share/datasets/fashion-mnist``.

Normalisation: ``x = (pixel / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD`` with mean 0.2860 and
std 0.3530, the mean and (population) standard deviation of all 47 040 000 pixels of the 60 000
training images (measured: 0.28604, 0.35302). The backbone shipped in ``weights/`` was trained with
exactly these numbers. NumPy and gzip only.
"""
import gzip
import os
import pathlib

import numpy as np


FASHION_MNIST_ENV = "MINITOFE_FASHION_MNIST"
FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

# IDX type byte -> big-endian dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}




def read_idx(path):
    """Read one IDX file (plain or gzipped) into an array of its own shape and dtype (native order).

    Header: two zero bytes, a type byte, the number of dimensions ``d``, then ``d`` big-endian uint32
    sizes; the data follow. Every problem raises ``ValueError`` naming the file.
    """
    path = pathlib.Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such IDX file") from None
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a cut gzip stream is EOFError
        raise ValueError(f"{path}: cannot read/decompress: {e}") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path}: bad IDX magic number 0x{raw[:4].hex()} "
                         f"(expected 0x0000TTDD, TT a type in {sorted(_IDX_DTYPES)}, DD >= 1 dims)")
    ndim, header = raw[3], 4 + 4 * raw[3]
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header} for {ndim} dims)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise ValueError(f"{path}: {what}: {len(raw)} bytes, the header's shape {shape} needs {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def fashion_mnist_root(root=None):
    """The folder to read Fashion-MNIST from: ``root``, else $MINITOFE_FASHION_MNIST, else the default."""
    return pathlib.Path(root or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT_ROOT)


def _find_idx(folder, stem):
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise ValueError(
        f"Fashion-MNIST file {stem}[.gz] not found in {folder}. To get the four official files:\n"
        f"  - as root:      apt-get update && apt-get install -y dataset-fashion-mnist\n"
        f"                  (puts them in {FASHION_MNIST_DEFAULT_ROOT});\n"
        f"  - without root: apt-get download dataset-fashion-mnist && "
        f"dpkg-deb -x dataset-fashion-mnist_*.deb DIR\n"
        f"                  then use DIR{FASHION_MNIST_DEFAULT_ROOT};\n"
        f"  - or any folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        f"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each optionally .gz).\n"
        f"Pass the folder as root=DIR (on the command line: --data-root DIR) or set {FASHION_MNIST_ENV}=DIR.")


# The validation split [ours]: one image in twelve of each class (500 of each class's 6 000, 5 000 in
# all) drawn from the official training images by ``np.random.default_rng(VAL_SEED)`` (see
# ``fashion_mnist_val_indices``). Every choice (recipe, steps, learning rate, loss weights, when to
# stop) is made on it; the test set is touched only for final tables.
VAL_FRACTION = 1 / 12
VAL_SEED = 20261130
SPLITS = ("train", "val", "train+val", "test")


def fashion_mnist_val_indices(labels):
    """Indices (sorted) of the validation split inside the official training file, whose labels are
    ``labels`` (n,): ``round(VAL_FRACTION * n_c)`` of the ``n_c`` images of each class, chosen by a
    generator seeded with ``VAL_SEED`` (500 per class on the official file)."""
    rng = np.random.default_rng(VAL_SEED)
    picks = []
    for c in range(len(FASHION_MNIST_CLASSES)):
        members = np.flatnonzero(labels == c)
        picks.append(rng.choice(members, round(VAL_FRACTION * len(members)), replace=False))
    return np.sort(np.concatenate(picks))


def load_fashion_mnist(split="train", root=None):
    """Return ``(images, labels)``: float32 ``(n, 1, 28, 28)`` normalised as in the module docstring,
    int64 ``(n,)`` in 0..9 (names in ``FASHION_MNIST_CLASSES``).

    ``split``: "train" (55 000: the official training file less the validation split), "val" (5 000,
    see ``fashion_mnist_val_indices``), "train+val" (the official 60 000) or "test" (the official
    10 000)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    images, labels = _load_fashion_mnist_file("test" if split == "test" else "train", root)
    if split in ("train", "val"):
        val = np.zeros(len(labels), dtype=bool)
        val[fashion_mnist_val_indices(labels)] = True
        keep = val if split == "val" else ~val
        images, labels = images[keep], labels[keep]
    return images, labels


def _load_fashion_mnist_file(which, root):
    """One official pair of IDX files ("train" or "test"), checked and normalised."""
    folder = fashion_mnist_root(root)
    img_path, lbl_path = (_find_idx(folder, stem) for stem in _FASHION_MNIST_FILES[which])
    pixels, labels = read_idx(img_path), read_idx(lbl_path)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[1:] != (28, 28):
        raise ValueError(f"{img_path}: expected uint8 images (n, 28, 28), got {pixels.dtype} {pixels.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{lbl_path}: expected uint8 labels (n,), got {labels.dtype} {labels.shape}")
    if len(labels) != len(pixels):
        raise ValueError(f"{lbl_path}: {len(labels)} labels but {img_path} has {len(pixels)} images")
    if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
        bad = int(np.flatnonzero(labels >= len(FASHION_MNIST_CLASSES))[0])
        raise ValueError(f"{lbl_path}: label {labels[bad]} at index {bad} is out of range 0..9")
    mean, std = np.float32(FASHION_MNIST_MEAN), np.float32(FASHION_MNIST_STD)
    images = (pixels.astype(np.float32) / 255.0 - mean) / std
    return images[:, None], labels.astype(np.int64)  # (n, 1, 28, 28), (n,)
