"""Image files: an ImageNet-style image folder (one subfolder per class) and lists of files, as one
normalised float32 batch (any format, mode or bit depth Pillow reads; timm's eval resize and centre
crop). Pillow is imported inside the functions; errors name the offending file.
"""
import numbers
import os
import pathlib

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


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
    a smaller image, down to 1x1, is upscaled), centre-crop ``img_size``; return float32 (H, W, C) in
    [0, 1]."""
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
    resamples = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                 "bicubic": Image.Resampling.BICUBIC}
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
    x = np.stack([_load_one_image(p, img_size, crop_pct, "L" if grey else "RGB",
                                  Image.Resampling.BICUBIC)
                  for p in paths])
    x = (x - mean) / std                                                # (n, H, W, C)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
