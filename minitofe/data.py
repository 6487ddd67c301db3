"""Data: Fashion-MNIST from its four official IDX files, an ImageNet-style image folder, mini-batches.

Nothing here downloads anything. Fashion-MNIST is read from a folder holding the four official files
(gzipped or not); by default the folder where the Debian package ``dataset-fashion-mnist`` puts them.
The folder is, in order of precedence: the ``root`` argument, the environment variable
``MINITOFE_FASHION_MNIST``, ``/usr/share/datasets/fashion-mnist``.

Normalisation: ``x = (pixel / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD`` with mean 0.2860 and
std 0.3530, the mean and (population) standard deviation of all 47 040 000 pixels of the 60 000
training images (measured: 0.28604, 0.35302). The backbone shipped in ``weights/`` was trained with
exactly these numbers.

The core needs NumPy and gzip only; Pillow is imported inside ``load_image_folder``.
"""
import gzip
import numbers
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

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


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


def _to_8bit(im):
    """16-bit grey images (Pillow modes "I;16*", and "I", which Pillow < 10 gives 16-bit PNGs) -> "L",
    scaled by 255 / 65535. Pillow's own ``convert("L")`` clips them at 255 instead: nearly all white."""
    from PIL import Image
    if im.mode != "I" and not im.mode.startswith("I;16"):
        return im
    a = np.clip(np.asarray(im, dtype=np.float64), 0, 65535) * (255.0 / 65535.0)
    return Image.fromarray(np.round(a).astype(np.uint8))


def _load_one_image(path, img_size, crop_pct, mode, resample):
    """Open ``path``, convert to ``mode`` (16-bit grey scaled to 8 bits first, alpha dropped, palettes
    expanded), resize its shorter side to ``floor(img_size / crop_pct)`` (as timm's eval transform does;
    a smaller image, down to 1x1, is upscaled), centre-crop ``img_size``; return float32 (H, W, C) in [0, 1]."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im = _to_8bit(im).convert(mode)  # also forces the decode, so a truncated file fails here
    except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
        raise ValueError(f"{path}: unreadable image: {e}") from None
    w, h = im.size
    short = int(img_size / crop_pct)
    size = (short, max(short, round(h * short / w))) if w <= h else (max(short, round(w * short / h)), short)
    im = im.resize(size, resample)
    left, top = int(round((size[0] - img_size) / 2.0)), int(round((size[1] - img_size) / 2.0))
    im = im.crop((left, top, left + img_size, top + img_size))
    x = np.asarray(im, dtype=np.float32) / 255.0
    return x[:, :, None] if x.ndim == 2 else x


def _check_transform(img_size, crop_pct, mean, std, C, mode):
    """Validate the resize / normalisation arguments -> mean, std as float32 (1,) or (C,) arrays."""
    ok_size = isinstance(img_size, (int, np.integer)) and not isinstance(img_size, bool) and img_size > 0
    if not ok_size or not isinstance(crop_pct, numbers.Real) or not 0 < crop_pct <= 1:
        raise ValueError(f"need a positive int img_size and 0 < crop_pct <= 1, "
                         f"got {img_size!r}, {crop_pct!r}")
    mean, std = (np.asarray(v, np.float32).reshape(-1) for v in (mean, std))
    finite = np.isfinite(mean).all() and np.isfinite(std).all()
    if mean.size not in (1, C) or std.size not in (1, C) or np.any(std <= 0) or not finite:
        raise ValueError(f"mean and std need 1 or {C} values (std > 0) for {mode} images, "
                         f"got {mean.tolist()} and {std.tolist()}")
    return mean, std


def load_image_folder(root, img_size, mean, std, grey=False, crop_pct=1.0, interpolation="bicubic"):
    """Load an ImageNet-style folder (``root/<class>/<image>``): one sorted subfolder per class.

    Each image is converted to RGB (or L when ``grey``), its shorter side resized to
    ``floor(img_size / crop_pct)``, centre-cropped to ``img_size`` and normalised per channel with
    ``mean``/``std`` (a number or one value per channel, on the [0, 1] scale).
    Returns ``(images float32 (n, C, img_size, img_size), labels int64 (n,), class_names list)``.
    Needs Pillow. Files whose extension is not in ``IMAGE_EXTENSIONS`` are skipped.
    """
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("load_image_folder needs Pillow: pip install Pillow") from None
    resamples = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
    if interpolation not in resamples:
        raise ValueError(f"interpolation must be one of {sorted(resamples)}, got {interpolation!r}")
    C, mode = (1, "L") if grey else (3, "RGB")
    mean, std = _check_transform(img_size, crop_pct, mean, std, C, mode)
    root = pathlib.Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"{root}: no class subfolders (expected root/<class>/<image files>)")
    images, labels = [], []
    for label, folder in enumerate(class_dirs):
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(f"{folder}: class folder holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        for path in files:
            images.append(_load_one_image(path, img_size, crop_pct, mode, resamples[interpolation]))
            labels.append(label)
    x = (np.stack(images) - mean) / std  # (n, img_size, img_size, C)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32), np.asarray(labels, np.int64), \
        [p.name for p in class_dirs]


def iterate_minibatches(images, labels, batch_size, rng=None, shuffle=True, drop_last=False):
    """Yield ``(images[idx], labels[idx])`` batches covering the data once. With ``shuffle`` the order
    is drawn from ``rng`` (a ``numpy.random.Generator``, required then); the last batch may be
    smaller unless ``drop_last``."""
    if len(images) != len(labels):
        raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) differ in length")
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if shuffle and not isinstance(rng, np.random.Generator):
        raise TypeError(f"shuffle=True needs rng, a numpy.random.Generator; got {type(rng).__name__}")
    order = rng.permutation(len(images)) if shuffle else np.arange(len(images))
    stop = len(images) - len(images) % batch_size if drop_last else len(images)
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield images[idx], labels[idx]


def load_images(paths, img_size, mean, std, grey=False, crop_pct=1.0):
    """Load image files (any format Pillow reads, any mode or bit depth) as one normalised batch:
    float32 (n, C, img_size, img_size), C = 1 when ``grey`` else 3; resized and centre-cropped as in
    ``load_image_folder``. Errors name the offending file."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("loading images needs Pillow: pip install Pillow") from None
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise TypeError(f"paths must be a list of image files, got one {type(paths).__name__} {paths!r}: "
                        f"wrap it in a list")
    paths = [pathlib.Path(p) for p in paths]
    if not paths:
        raise ValueError("no image files given")
    for p in paths:
        if not p.exists():
            raise ValueError(f"{p}: no such file")
        if p.is_dir():
            raise ValueError(f"{p}: is a folder, not an image file")
    C = 1 if grey else 3
    mean, std = _check_transform(img_size, crop_pct, mean, std, C, "L" if grey else "RGB")
    x = np.stack([_load_one_image(p, img_size, crop_pct, "L" if grey else "RGB", Image.BICUBIC)
                  for p in paths])
    x = (x - mean) / std                                                # (n, H, W, C)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
