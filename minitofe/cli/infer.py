"""CLI subcommands that use a model: ``demo``, ``predict``, ``viz``, ``eval`` (registered in
``cli/__init__.py``); what they share (weights, images, budgets, flags) is in ``cli/common.py``."""
import json
import os
import pathlib

import numpy as np

from .common import (add_fast_arg, add_model_args, add_weights_args, backbone_text, blas_threads_for,
                     budget_note, budget_ratios, first_images, load_args, pick_fast, plural, run_model)
from ..data.inputs import class_names, normalisation, read_images, sample_images


def add_predict(sub):
    p = sub.add_parser("predict", help="classify image files (any format Pillow reads)",
                       description="Classify image files (any format Pillow reads; each is resized and "
                                   "converted to what the model takes, said in a note) with ToFe or another "
                                   "--method. Weights: --weights FILE, default the shipped fine-tuned ToFe "
                                   "model. Prints one line per image: class, probability, MACs and their "
                                   "share of the dense model's; --json: one JSON object.")
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
    which = listed if len(paths) == 1 else f"{len(odd)} of {len(paths)} images ({listed})"
    return (f"note: {which} {'was' if len(odd) == 1 else 'were'} resized to "
            f"{cfg.img_size}x{cfg.img_size} {kind} for this {cfg.num_classes}-class model")


def classify(args, paths):
    """The shared part of ``predict`` and ``viz``: load the weights, read ``paths``, run the model with
    the command's method / budget / inference / fast flags -> (model, source, images, logits, info, seconds,
    class names, kernels: "fast" or "reference", the note when the budget was not met, the backbone run)."""
    from ..kernels import use_fast
    model, source, name = load_args(args)
    x = read_images(paths, model)
    fast = use_fast(pick_fast(args.fast, len(x)), x)
    method = args.method or model.tofe.method
    logits, info, seconds, _ = run_model(model, x, method, args.budget, args.inference, fast)
    note = budget_note(args.budget, float(np.mean(info["macs_ratio"])), method, args.inference)
    return (model, source, x, logits, info, seconds, class_names(model.cfg), "fast" if fast else "reference",
            note, backbone_text(model, name, method))


def run_predict(args):
    model, source, _, logits, info, seconds, names, path, budget, backbone = classify(args, args.images)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    rows = [{"image": str(path), "class": names[int(k)], "index": int(k), "prob": float(probs[i, k]),
             "macs": float(info["macs"][i]), "macs_ratio": float(info["macs_ratio"][i])}
            for i, (path, k) in enumerate(zip(args.images, logits.argmax(1)))]
    notes = [n for n in (conversion_note(args.images, model.cfg), budget) if n]
    if args.json:
        print(json.dumps({"weights": source, "method": args.method or model.tofe.method, "backbone": backbone,
                          "budget": args.budget, "seconds": seconds, "kernels": path,
                          "note": "; ".join(notes) or None, "predictions": rows}))
        return 0
    print(f"weights: {source}")
    if (args.method or model.tofe.method) == "dense":
        print(f"dense run: {backbone}")
    for note in notes:
        print(note)
    for r in rows:
        print(f"{r['image']}: {r['class']} (p={r['prob']:.2f}), {r['macs'] / 1e6:.1f} M MACs "
              f"({100 * r['macs_ratio']:.0f} % of dense)")
    return 0


def add_viz(sub):
    p = sub.add_parser("viz", help="draw kept / frozen / reused patches per stage to a PNG",
                       description="Run the model on image files (default: the 10 bundled Fashion-MNIST "
                                   "samples) and draw, per image and stage, which patches were kept, frozen "
                                   "and reused, to a PNG (--out). Weights: --weights FILE, default the "
                                   "shipped fine-tuned ToFe model. Prints the file written.")
    p.add_argument("images", nargs="*", help="image files (default: the bundled samples)")
    add_model_args(p)
    p.add_argument("--out", default="minitofe_tokens.png", help="PNG to write (default: %(default)s)")


def run_viz(args):
    from ..viz import save_token_maps
    paths = args.images or sample_images()
    model, source, x, logits, info, _, names, _, note, _ = classify(args, paths)
    titles = [f"pred {names[int(k)]}: {pathlib.Path(p).name}" for p, k in zip(paths, logits.argmax(1))]
    save_token_maps(args.out, x, info, model.cfg, titles)
    print(f"wrote {args.out} ({plural(len(paths), 'image')}, method {args.method or model.tofe.method}, "
          f"weights {source})")
    if note:
        print(note)
    return 0


def add_demo(sub):
    p = sub.add_parser("demo", help="dense vs ToFe on the bundled sample images, with a picture",
                       description="Classify the 10 bundled Fashion-MNIST sample images with the dense "
                                   "backbone and with ToFe at --budget, and draw the kept / frozen / reused "
                                   "patches to a PNG (--out). Weights: --weights FILE, default the shipped "
                                   "fine-tuned ToFe model (random weights, said so, when none are found). "
                                   "Prints a table of both predictions and the MACs per image, and the "
                                   "time of each run.")
    add_weights_args(p)
    p.add_argument("--out", default="minitofe_demo.png", help="PNG to write (default: %(default)s)")
    p.add_argument("--budget", type=float, default=0.5,
                   help="MACs budget as a fraction of dense, set as in the README's table "
                        "(default: %(default)s)")
    add_fast_arg(p)


def run_demo(args):
    from ..data import FASHION_MNIST_CLASSES
    from ..viz import save_token_maps
    model, source, name = load_args(args, random_fallback=True)
    paths = sample_images()
    x = read_images(paths, model)
    fast = pick_fast(args.fast, len(x))
    run_model(model, x[:1], method="dense", fast=fast)   # warm-up (imports, BLAS threads) before timing
    dense, _, t_dense, _ = run_model(model, x, method="dense", fast=fast)
    logits, info, t_tofe, _ = run_model(model, x, budget=args.budget, fast=fast)
    names = class_names(model.cfg)
    print(f"minitofe demo: weights {source}; method {model.tofe.method}; "
          f"{plural(len(paths), 'bundled image')}")
    print(f"dense: {backbone_text(model, name, 'dense')}")
    print(f"{'image':34s} {'dense':12s} {model.tofe.method:12s} MACs (M, % of dense)")
    for i, p in enumerate(paths):
        print(f"{p.name:34s} {names[int(dense[i].argmax())]:12s} {names[int(logits[i].argmax())]:12s} "
              f"{info['macs'][i] / 1e6:7.1f} ({100 * info['macs_ratio'][i]:.0f} %)")
    note = budget_note(args.budget, float(np.mean(info["macs_ratio"])), model.tofe.method)
    if note:
        print(note)
    print(f"time for {plural(len(paths), 'image')}: dense {t_dense:.3f} s, "
          f"{model.tofe.method} {t_tofe:.3f} s")
    titles = [f"pred: {names[int(k)]}" for k in logits.argmax(1)]
    if model.cfg.num_classes == len(FASHION_MNIST_CLASSES):         # the samples are named <class index>_...
        true = [FASHION_MNIST_CLASSES[int(p.name.split("_")[0])] for p in paths]
        titles = [f"{t} (true: {c})" for t, c in zip(titles, true)]
    save_token_maps(args.out, x, info, model.cfg, titles)
    print(f"wrote {os.path.abspath(args.out)}: kept / frozen / reused patches per stage")
    return 0


def add_eval(sub):
    p = sub.add_parser("eval", help="top-1, MACs, keep ratios and img/s on a data set",
                       description="Evaluate on a data set: the Fashion-MNIST test split by default "
                                   "(--split, --data-root), or an image folder (--data DIR, one subfolder "
                                   "per class). Weights: --weights FILE, default the shipped fine-tuned ToFe "
                                   "model. Prints one line: top-1, MACs per image and their share of the "
                                   "dense model's, the keep ratios used, images per second (for --method "
                                   "dense also which backbone ran); --json: one JSON object.")
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
    model, source, name = load_args(args)
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
    note = budget_note(args.budget, res["macs_ratio"], method, args.inference)
    res.update(weights=source, method=method, backbone=backbone_text(model, name, method), budget=args.budget,
               note=note, macs_g=res["macs"] / 1e9,
               split=args.split if args.data == "fashion-mnist" else str(args.data))
    fused = model.tofe.replace(method=method).fuses_frozen
    if fused:
        res["fuse_frozen"] = True                  # the method runs with the fused frozen token
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{source} [{method}{', fused frozen token' if fused else ''}]: top-1 {100 * res['top1']:.2f} % "
          f"on {plural(res['n'], 'image')}, "
          f"{res['macs_g']:.3f} G MACs ({100 * res['macs_ratio']:.1f} % of dense), keep ratios "
          f"{[round(r, 3) for r in res['keep_ratios']]}, {res['img_per_s']:.1f} img/s")
    if method == "dense":
        print(f"dense run: {res['backbone']}")
    if note:
        print(note)
    return 0
