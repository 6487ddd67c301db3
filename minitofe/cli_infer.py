"""CLI subcommands that use a model: ``demo``, ``predict``, ``viz``, ``eval`` (registered in ``cli.py``).

Weights default to the ones the project ships (found by ``minitofe.io.shipped``: ``MINITOFE_WEIGHTS``, a
checkout's ``weights/``, or the installed data files): the ToFe model when present, else the dense
backbone run with the training-free ``idle`` method.
"""
import argparse
import contextlib
import json
import os
import pathlib
import time

import numpy as np

from .io.shipped import BACKBONE_FILE, BACKBONE_MODEL, TOFE_FILE, find_shipped, weights_dirs

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def sample_images():
    """The bundled Fashion-MNIST test images (one per class): sorted paths."""
    folder = pathlib.Path(__file__).resolve().parent / "samples"
    return sorted(folder.glob("*.png"))


def load_for_inference(weights=None, random_fallback=False, model=None, heads=None):
    """-> (model, source text). ``weights``: a path, or None for the shipped ones (with
    ``random_fallback``, random weights when none are found, said in the source text). ``model`` /
    ``heads``: the preset name or head count a timm file (.safetensors / .pth) needs."""
    import minitofe
    if weights:
        loaded = minitofe.load_model(weights, model=model, num_heads=heads)
        if not loaded.cfg.num_classes:
            raise ValueError(f"{weights}: a backbone without classifier head (num_classes=0); this command "
                             f"classifies images (features in Python: minitofe.nn.vit.vit_forward_features)")
        return loaded, str(weights)
    path = find_shipped(TOFE_FILE) or find_shipped(BACKBONE_FILE)
    if path is None and random_fallback:
        from .config import get_config
        model = minitofe.new_model(get_config(BACKBONE_MODEL), minitofe.ToFeConfig(method="idle"),
                                   np.random.default_rng(0), np.float32)
        return model, "RANDOM weights (no shipped weights found: predictions are meaningless)"
    if path is None:
        raise ValueError(f"no shipped weights found (looked for {TOFE_FILE} and {BACKBONE_FILE} in "
                         f"{', '.join(map(str, weights_dirs()))}); pass --weights FILE")
    model = minitofe.load_model(str(path), model=None if path.suffix == ".npz" else BACKBONE_MODEL)
    if model.tofe.method == "dense":                  # a bare backbone: training-free ToFe-style reuse
        model.tofe = model.tofe.replace(method="idle")
        return model, f"{path} (backbone only: method 'idle', training-free freeze + reuse)"
    return model, str(path)


def normalisation(cfg):
    from .data import FASHION_MNIST_MEAN, FASHION_MNIST_STD
    if cfg.in_chans == 1:
        return FASHION_MNIST_MEAN, FASHION_MNIST_STD
    return IMAGENET_MEAN, IMAGENET_STD


def read_images(paths, model):
    from .data import load_images
    mean, std = normalisation(model.cfg)
    x = load_images(paths, model.cfg.img_size, mean, std, grey=model.cfg.in_chans == 1)
    dtype = next(iter(model.params.values())).dtype
    return x.astype(dtype)


def class_names(cfg):
    if cfg.num_classes == 10 and cfg.in_chans == 1:
        from .data import FASHION_MNIST_CLASSES
        return list(FASHION_MNIST_CLASSES)
    return [str(i) for i in range(cfg.num_classes)]


def budget_ratios(model, method, budget):
    """Keep ratios for ``method`` at ``budget`` x dense MACs (None when no budget is asked for): the
    learned profile scaled, for methods that learn their ratios and have recorded them; the config's
    otherwise (``tofe-uniform``: its fixed equal ratios, scaled equally)."""
    from .tofe.budget import ratios_for_budget
    tcfg = model.tofe.replace(method=method)
    if budget is None or method == "dense":
        return None
    base = model.learned_keep_ratios if (tcfg.learned_ratios and model.learned_keep_ratios) else None
    return ratios_for_budget(model.cfg, tcfg, budget, base)


# Below this many images per call the matmuls are too small to repay waking BLAS threads, and on a busy
# machine the waiting threads of OpenBLAS cost far more than they save (``minitofe demo``, 10 images, 2
# cores, one other busy process: 4.6-32 s with one BLAS thread, 17-426 s with OpenBLAS's default two).
BLAS_THREADS_MIN_IMAGES = 32
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def blas_threads_for(images_per_call):
    """A context in which the BLAS uses one thread when calls are small (fewer than
    ``BLAS_THREADS_MIN_IMAGES`` images), unless the user chose a thread count in the environment."""
    if images_per_call >= BLAS_THREADS_MIN_IMAGES or any(os.environ.get(v) for v in BLAS_ENV):
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=1, user_api="blas")


def run_model(model, images, method=None, budget=None, inference=None, fast=True):
    """Reduced inference with optional budget -> logits, info, seconds, keep ratios used."""
    import minitofe
    method = method or model.tofe.method
    ratios = budget_ratios(model, method, budget)
    with blas_threads_for(len(images)):
        start = time.perf_counter()
        logits, info = minitofe.predict(model, images, method=method, keep_ratios=ratios, inference=inference,
                                        fast=fast)
        seconds = time.perf_counter() - start
    return logits, info, seconds, ratios


def first_images(images, labels, limit):
    """The first ``limit`` images and labels (``--limit`` of ``eval`` and ``train``); None keeps all."""
    if limit is None:
        return images, labels
    if limit <= 0:
        raise ValueError(f"--limit must be a positive number of images, got {limit}")
    return images[:limit], labels[:limit]


def add_weights_args(p):
    from .config import PRESETS
    p.add_argument("--weights", help="weight file (.npz / .safetensors / .pth); default: the shipped ones")
    p.add_argument("--model", metavar="NAME", help="preset a timm file (.safetensors / .pth) is an instance of "
                                                   f"(gives its head count); one of {', '.join(sorted(PRESETS))}")
    p.add_argument("--heads", metavar="N", type=int, help="number of attention heads of a timm file (when no "
                                                          "--model)")


def load_args(args, random_fallback=False):
    return load_for_inference(args.weights, random_fallback, args.model, args.heads)


def add_model_args(p):
    from .tofe.config import METHODS
    add_weights_args(p)
    p.add_argument("--method", choices=METHODS, help="reduction method (default: the weights' own)")
    p.add_argument("--budget", type=float, help="MACs budget as a fraction of dense (e.g. 0.5)")
    p.add_argument("--inference", choices=["topk", "threshold"], help="decision rule (default: topk)")
    add_fast_arg(p)


# Below this many images the CLI's default is the NumPy reference: in a fresh process Numba's import and
# the loading of its cached kernels take ~0.45 s on 2 cores, as long as the reference needs for one
# Fashion-MNIST image end to end; the kernels save ~9 ms per such image at batch 100 (``minitofe eval
# --limit 100``: 2.2 s fast against 2.9 s reference, 0.45 s against 0.9 s for one-image ``predict``).
AUTO_FAST_MIN_IMAGES = 32


def add_fast_arg(p):
    p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                   help="--fast: the Numba kernels (when installed); --no-fast: the pure-NumPy reference; "
                        f"default: the kernels from {AUTO_FAST_MIN_IMAGES} images on, where they repay "
                        "Numba's start-up")


def pick_fast(flag, n_images):
    """The ``--fast`` flag, or when it is not given, whether ``n_images`` are enough for the kernels."""
    return flag if flag is not None else n_images >= AUTO_FAST_MIN_IMAGES


def add_predict(sub):
    p = sub.add_parser("predict", help="classify image files (any format Pillow reads)")
    p.add_argument("images", nargs="+", help="image files")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def conversion_note(paths, cfg):
    """One sentence when any image is not already what the model takes (size, colour), else None: a
    512x600 colour photo given to a 28x28 grey 10-class model is answered, but the user should know."""
    from PIL import Image
    want_mode = "L" if cfg.in_chans == 1 else "RGB"
    odd = []
    for p in paths:
        with Image.open(p) as im:
            if im.size != (cfg.img_size, cfg.img_size) or im.mode != want_mode:
                odd.append(f"{pathlib.Path(p).name} ({im.size[0]}x{im.size[1]} {im.mode})")
    if not odd:
        return None
    kind = "grey" if cfg.in_chans == 1 else "RGB"
    return (f"note: {len(odd)} of {len(paths)} images ({', '.join(odd[:3])}{', ...' if len(odd) > 3 else ''}) "
            f"were resized to {cfg.img_size}x{cfg.img_size} {kind} for this {cfg.num_classes}-class model")


def classify(args, paths):
    """The shared part of ``predict`` and ``viz``: load the weights, read ``paths``, run the model with
    the command's method / budget / inference / fast flags -> (model, source, images, logits, info, seconds,
    class names, kernels: "fast" or "reference")."""
    from .kernels import use_fast
    model, source = load_args(args)
    x = read_images(paths, model)
    fast = use_fast(pick_fast(args.fast, len(x)), x)
    logits, info, seconds, _ = run_model(model, x, args.method, args.budget, args.inference, fast)
    return model, source, x, logits, info, seconds, class_names(model.cfg), "fast" if fast else "reference"


def run_predict(args):
    model, source, _, logits, info, seconds, names, path = classify(args, args.images)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    rows = [{"image": str(path), "class": names[int(k)], "index": int(k), "prob": float(probs[i, k]),
             "macs": float(info["macs"][i]), "macs_ratio": float(info["macs_ratio"][i])}
            for i, (path, k) in enumerate(zip(args.images, logits.argmax(1)))]
    if args.json:
        print(json.dumps({"weights": source, "method": args.method or model.tofe.method, "seconds": seconds,
                          "kernels": path, "note": conversion_note(args.images, model.cfg),
                          "predictions": rows}))
        return 0
    print(f"weights: {source}")
    note = conversion_note(args.images, model.cfg)
    if note:
        print(note)
    for r in rows:
        print(f"{r['image']}: {r['class']} (p={r['prob']:.2f}), {r['macs'] / 1e6:.1f} M MACs "
              f"({100 * r['macs_ratio']:.0f} % of dense)")
    return 0


def add_viz(sub):
    p = sub.add_parser("viz", help="draw kept / frozen / reused patches per stage to a PNG")
    p.add_argument("images", nargs="*", help="image files (default: the bundled samples)")
    add_model_args(p)
    p.add_argument("--out", default="minitofe_tokens.png", help="PNG to write (default: %(default)s)")


def run_viz(args):
    from .viz import save_token_maps
    paths = args.images or sample_images()
    model, source, x, logits, info, _, names, _ = classify(args, paths)
    titles = [f"pred {names[int(k)]}: {pathlib.Path(p).name}" for p, k in zip(paths, logits.argmax(1))]
    save_token_maps(args.out, x, info, model.cfg, titles)
    print(f"wrote {args.out} ({len(paths)} images, method {args.method or model.tofe.method}, weights {source})")
    return 0


def add_demo(sub):
    p = sub.add_parser("demo", help="dense vs ToFe on the bundled sample images, with a picture")
    add_weights_args(p)
    p.add_argument("--out", default="minitofe_demo.png", help="PNG to write (default: %(default)s)")
    p.add_argument("--budget", type=float, default=0.5,
                   help="MACs budget as a fraction of dense, set as in the README's table (default: %(default)s)")
    add_fast_arg(p)


def run_demo(args):
    from .data import FASHION_MNIST_CLASSES
    from .viz import save_token_maps
    model, source = load_args(args, random_fallback=True)
    paths = sample_images()
    x = read_images(paths, model)
    fast = pick_fast(args.fast, len(x))
    run_model(model, x[:1], method="dense", fast=fast)   # warm-up (imports, BLAS threads) before timing
    dense, _, t_dense, _ = run_model(model, x, method="dense", fast=fast)
    logits, info, t_tofe, _ = run_model(model, x, budget=args.budget, fast=fast)
    names = class_names(model.cfg)
    print(f"minitofe demo: weights {source}; method {model.tofe.method}; {len(paths)} bundled images")
    print(f"{'image':34s} {'dense':12s} {model.tofe.method:12s} MACs (M, % of dense)")
    for i, p in enumerate(paths):
        print(f"{p.name:34s} {names[int(dense[i].argmax())]:12s} {names[int(logits[i].argmax())]:12s} "
              f"{info['macs'][i] / 1e6:7.1f} ({100 * info['macs_ratio'][i]:.0f} %)")
    print(f"time for {len(paths)} images: dense {t_dense:.3f} s, {model.tofe.method} {t_tofe:.3f} s")
    titles = [f"pred: {names[int(k)]}" for k in logits.argmax(1)]
    if model.cfg.num_classes == len(FASHION_MNIST_CLASSES):         # the samples are named <class index>_...
        titles = [f"{t} (true: {FASHION_MNIST_CLASSES[int(p.name.split('_')[0])]})" for t, p in zip(titles, paths)]
    save_token_maps(args.out, x, info, model.cfg, titles)
    print(f"wrote {os.path.abspath(args.out)}: kept / frozen / reused patches per stage")
    return 0


def add_eval(sub):
    p = sub.add_parser("eval", help="top-1, MACs, keep ratios and img/s on a data set")
    add_model_args(p)
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an image folder (one "
                                                           "subfolder per class)")
    p.add_argument("--data-root", help="folder of the Fashion-MNIST IDX files (default: $MINITOFE_FASHION_MNIST, "
                                       "else /usr/share/datasets/fashion-mnist)")
    p.add_argument("--split", choices=["test", "val", "train", "train+val"], default="test",
                   help="Fashion-MNIST split (default: %(default)s; 'val' is the 5 000 images carved out of "
                        "the training file for choosing hyper-parameters)")
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    p.add_argument("--batch", type=int, default=100, help="images per call (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object (no progress bar)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_eval(args):
    from .train import evaluate
    model, source = load_args(args)
    if args.data == "fashion-mnist":
        from .data import load_fashion_mnist
        images, labels = load_fashion_mnist(args.split, args.data_root)
    else:
        from .data import load_image_folder
        mean, std = normalisation(model.cfg)
        images, labels, _ = load_image_folder(args.data, model.cfg.img_size, mean, std,
                                              grey=model.cfg.in_chans == 1)
    images, labels = first_images(images, labels, args.limit)
    images = images.astype(next(iter(model.params.values())).dtype)
    method = args.method or model.tofe.method
    ratios = budget_ratios(model, method, args.budget)
    with blas_threads_for(min(args.batch, len(images))):
        res = evaluate(model, images, labels, args.batch, progress=not (args.json or args.no_progress),
                       method=method,
                       keep_ratios=ratios, inference=args.inference, fast=pick_fast(args.fast, len(images)))
    res.update(weights=source, method=method, macs_g=res["macs"] / 1e9,
               split=args.split if args.data == "fashion-mnist" else str(args.data))
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{source} [{method}]: top-1 {100 * res['top1']:.2f} % on {res['n']} images, "
              f"{res['macs_g']:.3f} G MACs ({100 * res['macs_ratio']:.1f} % of dense), keep ratios "
              f"{[round(r, 3) for r in res['keep_ratios']]}, {res['img_per_s']:.1f} img/s")
    return 0
