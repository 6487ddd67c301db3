"""What the CLI's model commands share: finding and loading weights, keep ratios for a MACs budget,
running the model with the BLAS threads sized for the call, and the common flags (images as a model
takes them: ``minitofe.data.inputs``).

Weights default to the ones the project ships (found by ``minitofe.io.shipped``: ``MINITOFE_WEIGHTS``, a
checkout's ``weights/``, or the installed data files; ``minitofe.load_shipped(method=None)``): the ToFe
model when present, else the dense backbone run with the training-free ``idle`` method.
"""
import argparse
import contextlib
import os
import time


def load_for_inference(weights=None, random_fallback=False, model=None, heads=None):
    """-> (model, source text, the weights' name: the path given, the shipped file's name, or None for
    random weights). ``weights``: a path, or None for the shipped ones (with ``random_fallback``, random
    weights when none are found, said in the source text). ``model`` / ``heads``: the preset name or head
    count a timm file (.safetensors / .pth) needs."""
    import minitofe
    from ..kernels.packed import freeze
    if weights:
        loaded = minitofe.load_model(weights, model=model, num_heads=heads)
        if not loaded.cfg.num_classes:
            raise ValueError(f"{weights}: a backbone without classifier head (num_classes=0); this command "
                             f"classifies images (features in Python: minitofe.nn.vit.vit_forward_features)")
        freeze(loaded.params)          # inference only: the fast path may keep its weights transposed
        return loaded, str(weights), str(weights)
    try:
        loaded, source = minitofe.load_shipped(method=None, random_fallback=random_fallback)
    except ValueError as e:
        raise ValueError(f"{e}; pass --weights FILE") from None
    freeze(loaded.params)
    return loaded, source, shipped_name()


def shipped_name():
    """The name of the file ``load_shipped(method=None)`` loads (the ToFe model when shipped, else the
    backbone), or None when there is neither."""
    from ..io.shipped import BACKBONE_FILE, TOFE_FILE, find_shipped
    path = find_shipped(TOFE_FILE) or find_shipped(BACKBONE_FILE)
    return path.name if path is not None else None


def backbone_text(model, name, method):
    """Which backbone a run of ``method`` uses: a ToFe model's own (fine-tuned) backbone, for the dense
    method with its modules off, is not the dense backbone file it was fine-tuned from."""
    name = name or "random weights"
    if not any(k.startswith("tofe.") for k in model.params):
        return f"{name} (a dense backbone)"
    tuned = "fine-tuned " if model.learned_keep_ratios is not None else ""
    off = f" (its {model.tofe.method} modules off)" if method == "dense" else ""
    return f"the {tuned}backbone of {name}{off}"


def budget_ratios(model, method, budget):
    """Keep ratios for ``method`` at ``budget`` x dense MACs (None when no budget is asked for): the
    learned profile scaled, for methods that learn their ratios and have recorded them; the config's
    otherwise (``tofe-uniform``: its fixed equal ratios, scaled equally). A budget outside (0, 1], or
    below the cheapest setting of the method on this model, is refused."""
    from ..methods import ratios_for_budget
    if budget is None:
        return None
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"--budget {budget}: the budget must be a fraction of the dense MACs in (0, 1] "
                         f"(1: as many MACs as the dense model), got {budget}")
    if method == "dense":
        return None
    tcfg = model.tofe.replace(method=method)
    base = model.learned_keep_ratios if (tcfg.learned_ratios and model.learned_keep_ratios) else None
    try:
        return ratios_for_budget(model.cfg, tcfg, budget, base)
    except ValueError as e:          # below the floor: the blocks before the first stage run dense, and
        first = tcfg.resolved_stages(model.cfg.depth)[0]       # the method's own modules cost MACs too
        raise ValueError(f"--budget {budget}: {e}; that floor is the {plural(first, 'dense block')} before "
                         f"the first stage, the {method} selection's own MACs and one token kept per "
                         f"stage") from None


def budget_note(budget, realised, method, inference=None):
    """A note when the realised MACs (a fraction of dense, averaged over the images) are more than one
    point off the asked ``budget``, saying why; None when no budget was asked or it was met."""
    if budget is None or abs(realised - budget) <= 0.01:
        return None
    if method == "dense":
        why = "the dense method keeps every token; --budget applies to the reduction methods"
    elif inference == "threshold":
        why = ("threshold inference keeps a count of tokens per image; the budget sets the keep ratios of "
               "topk, which meets it")
    else:
        why = "the keep ratios move in whole tokens per stage"
    return (f"note: asked for a budget of {100 * budget:.1f} % of the dense MACs, realised "
            f"{100 * realised:.1f} % ({why})")


def plural(n, word):
    """'1 image', '2 images', '0 images' (English nouns that take an s)."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def ratios_text(ratios):
    """Keep ratios for a person to read, 3 decimals: '(0.607, 0.330, 0.133)'."""
    return "(" + ", ".join(f"{r:.3f}" for r in ratios) + ")"


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
    from ..config import PRESETS
    p.add_argument("--weights", help="weight file (.npz / .safetensors / .pth); default: the shipped ones")
    p.add_argument("--model", metavar="NAME",
                   help="preset a timm file (.safetensors / .pth) is an instance of (gives its head count); "
                        f"one of {', '.join(sorted(PRESETS))}")
    p.add_argument("--heads", metavar="N", type=int, help="number of attention heads of a timm file (when no "
                                                          "--model)")


def load_args(args, random_fallback=False):
    """``load_for_inference`` with the command's --weights / --model / --heads -> (model, source, name)."""
    return load_for_inference(args.weights, random_fallback, args.model, args.heads)


def add_model_args(p):
    from ..methods import names
    add_weights_args(p)
    p.add_argument("--method", choices=names(), help="reduction method (default: the weights' own)")
    p.add_argument("--budget", type=float, help="MACs budget as a fraction of dense, e.g. 0.5 as in the "
                   "README's tables (default: none: the model's own keep ratios; for a fine-tuned model "
                   "those it learned, whose MACs can land a little off its training target)")
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
