"""CLI subcommands that use a model: ``demo``, ``predict``, ``viz``, ``eval`` (registered in
``cli/__init__.py``); what they share (weights, images, budgets, flags) is in ``cli/common.py``."""
import json
import os
import pathlib

import numpy as np

from .common import (add_fast_arg, add_model_args, add_weights_args, blas_threads_for, budget_ratios,
                     first_images, load_args, pick_fast, run_model)
from ..data.inputs import class_names, normalisation, read_images, sample_images


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
    listed = ", ".join(odd[:3]) + (", ..." if len(odd) > 3 else "")
    return (f"note: {len(odd)} of {len(paths)} images ({listed}) "
            f"were resized to {cfg.img_size}x{cfg.img_size} {kind} for this {cfg.num_classes}-class model")


def classify(args, paths):
    """The shared part of ``predict`` and ``viz``: load the weights, read ``paths``, run the model with
    the command's method / budget / inference / fast flags -> (model, source, images, logits, info, seconds,
    class names, kernels: "fast" or "reference")."""
    from ..kernels import use_fast
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
    from ..viz import save_token_maps
    paths = args.images or sample_images()
    model, source, x, logits, info, _, names, _ = classify(args, paths)
    titles = [f"pred {names[int(k)]}: {pathlib.Path(p).name}" for p, k in zip(paths, logits.argmax(1))]
    save_token_maps(args.out, x, info, model.cfg, titles)
    print(f"wrote {args.out} ({len(paths)} images, method {args.method or model.tofe.method}, "
          f"weights {source})")
    return 0


def add_demo(sub):
    p = sub.add_parser("demo", help="dense vs ToFe on the bundled sample images, with a picture")
    add_weights_args(p)
    p.add_argument("--out", default="minitofe_demo.png", help="PNG to write (default: %(default)s)")
    p.add_argument("--budget", type=float, default=0.5,
                   help="MACs budget as a fraction of dense, set as in the README's table "
                        "(default: %(default)s)")
    add_fast_arg(p)


def run_demo(args):
    from ..data import FASHION_MNIST_CLASSES
    from ..viz import save_token_maps
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
        true = [FASHION_MNIST_CLASSES[int(p.name.split("_")[0])] for p in paths]
        titles = [f"{t} (true: {c})" for t, c in zip(titles, true)]
    save_token_maps(args.out, x, info, model.cfg, titles)
    print(f"wrote {os.path.abspath(args.out)}: kept / frozen / reused patches per stage")
    return 0


def add_eval(sub):
    p = sub.add_parser("eval", help="top-1, MACs, keep ratios and img/s on a data set")
    add_model_args(p)
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an image folder (one "
                                                           "subfolder per class; default: %(default)s)")
    p.add_argument("--data-root", help="folder of the Fashion-MNIST IDX files (default: "
                                       "$MINITOFE_FASHION_MNIST, else /usr/share/datasets/fashion-mnist)")
    p.add_argument("--split", choices=["test", "val", "train", "train+val"], default="test",
                   help="Fashion-MNIST split (default: %(default)s; 'val' is the 5 000 images carved out of "
                        "the training file for choosing hyper-parameters)")
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    p.add_argument("--batch", type=int, default=100, help="images per call (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object (no progress bar)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_eval(args):
    from ..train import evaluate
    model, source = load_args(args)
    if args.data == "fashion-mnist":
        from ..data import load_fashion_mnist
        images, labels = load_fashion_mnist(args.split, args.data_root)
    else:
        from ..data import load_image_folder
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
