"""The ``train`` subcommand: fine-tune ToFe (or a baseline, or the dense backbone) on Fashion-MNIST or an
image folder with minitofe's own trainer (``minitofe.train``). Flags, or a JSON config file whose keys
are the flag names (flags given on the command line win)."""
import argparse
import json
import os

import numpy as np

from .train_options import DEFAULTS, options, record_options


def add_train(sub):
    from ..methods import names
    from ..tofe.config import LAST_STAGE
    from ..tofe.parts import APPROXIMATORS, SELECTORS
    p = sub.add_parser("train", help="train ToFe / a baseline / the backbone (resumable)",
                       description="Fine-tune ToFe or a baseline from a backbone with minitofe's own "
                                   "trainer. An --init file with trained ToFe modules is continued from "
                                   "(--fresh-modules: new ones); the teacher is the --init file's backbone "
                                   "unless --teacher names another. Options: defaults < --config file < "
                                   "flags; --resume reads the run's own options from --out, so "
                                   "`minitofe train --out DIR --resume` continues it.")

    def opt(flag, text, **kw):
        p.add_argument(flag, help=f"{text} (default: {DEFAULTS[flag[2:].replace('-', '_')]})", **kw)
    p.add_argument("--config", help="JSON file of options (keys = the flag names, with underscores)")
    opt("--init", "initial weights (backbone .safetensors / .npz, or a ToFe model .npz whose trained modules "
                  "are continued); its backbone is the frozen teacher unless --teacher is given")
    opt("--teacher", "weights whose backbone is the frozen dense teacher, e.g. the dense backbone a ToFe "
                     "--init file was fine-tuned from; None: the --init file's backbone")
    opt("--fresh-modules", "new ToFe modules even when the --init file has trained ones that fit",
        action=argparse.BooleanOptionalAction)
    opt("--model", "preset a timm-layout --init file must match (.npz files carry their config)")
    opt("--method", "what to train", choices=names())
    opt("--budget", "MACs budget as a fraction of dense, e.g. 0.5 as in the README's tables: the target "
                    "gamma of the budget loss", type=float)
    p.add_argument("--target", dest="budget", type=float, help=argparse.SUPPRESS)   # --budget's old name
    opt("--keep-ratios", "fixed keep ratios, one per stage (tofe-uniform)", type=float, nargs="+")
    opt("--steps", "training steps", type=int)
    opt("--batch", "images per step", type=int)
    opt("--lr", "peak learning rate of the ToFe modules (AdamW, warm-up then cosine)", type=float)
    opt("--backbone-lr-scale", "backbone learning rate = lr x this; 0 freezes the backbone", type=float)
    opt("--alpha", "weight of the distillation loss", type=float)
    opt("--beta", "weight of the approximation loss", type=float)
    opt("--lam", "weight lambda of the MACs-budget loss", type=float)
    opt("--label-smoothing", "label smoothing of the cross-entropy", type=float)
    opt("--stages", "the block where each ToFe stage starts (None: 3, 6, 9 for 12 blocks, i.e. depth k / 4)",
        type=int, nargs="+")
    opt("--approx-reduction", "r: the approximator's bottleneck is C / r wide", type=int)
    opt("--selector", "ToFe's token selector kind (docs/method.md, \"Selector and approximator kinds\")",
        choices=list(SELECTORS))
    opt("--approximator", "ToFe's approximator kind", choices=list(APPROXIMATORS))
    opt("--last-stage", "the last stage's frozen tokens: 'approximate' them, or 'drop' its approximator (no "
                        "parameters, MACs or approximation loss there: its output reaches no logit)",
        choices=list(LAST_STAGE))
    opt("--fuse-frozen", "fuse each stage's frozen tokens into one extra token that joins the kept ones in "
                         "the stage's blocks (EViT's fusion on ToFe; docs/method.md, \"Fused frozen "
                         "token\"); tofe, tofe-identity, tofe-uniform", action=argparse.BooleanOptionalAction)
    opt("--tau", "Gumbel-Softmax temperature (at the start, when --tau-end is given)", type=float)
    opt("--tau-end", "anneal the temperature to this by the last step (cosine); None: constant", type=float)
    opt("--limit", "use the first N training images only", type=int)
    opt("--data", "'fashion-mnist' (its 55 000-image train split, evaluated on the 5 000-image val split), "
                  "or an image folder: DIR/train and DIR/val (one subfolder per class; val optional), or DIR")
    opt("--data-root", "folder of the Fashion-MNIST IDX files (None: $MINITOFE_FASHION_MNIST, else "
                       "/usr/share/datasets/fashion-mnist)")
    opt("--out", "output folder: options.json, checkpoint.npz, log.jsonl, final.npz")
    opt("--seed", "seed of the batch order, the Gumbel noise and the ToFe modules' init", type=int)
    opt("--dtype", "float32 or float64", choices=["float32", "float64"])
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--stop-at", type=int,
                   help="checkpoint and stop after this many steps; continue with --resume")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    opt("--fast", "Numba kernels for the blocks when Numba is installed; --no-fast: the pure-NumPy reference",
        action=argparse.BooleanOptionalAction)
    opt("--teacher-cache", "compute the dense teacher once for the whole training set and keep it in memory "
                           "(ToFe steps ~20 %% faster, results bit-identical here; ~4 GB for 55 000 "
                           "Fashion-MNIST images); with MINITOFE_TEACHER_CACHE_DIR set, stored there and "
                           "mapped read-only by later runs of the same teacher, data and code",
        action=argparse.BooleanOptionalAction)
    opt("--eval-every", "evaluate on the evaluation split every N steps", type=int)
    opt("--eval-images", "how many evaluation images each evaluation uses", type=int)
    opt("--checkpoint-every", "write the checkpoint every N steps", type=int)
    opt("--warmup-steps", "linear learning-rate warm-up steps", type=int)


def load_data(o, cfg):
    """-> (train images, labels), (eval images, labels) or None: Fashion-MNIST's train/val splits (see
    ``minitofe.data.load_fashion_mnist``; the test set is left for final tables), or an image folder's
    ``train``/``val`` subfolders (the folder itself is the training set when it has no ``train``),
    normalised as ``minitofe predict`` normalises single images."""
    import pathlib
    from ..data import load_fashion_mnist, load_image_folder, normalisation
    if o["data"] == "fashion-mnist":
        val = load_fashion_mnist("val", o["data_root"])
        return load_fashion_mnist("train", o["data_root"]), (val if len(val[1]) else None)  # tiny files: none
    root = pathlib.Path(o["data"])
    if not root.is_dir():
        raise ValueError(f"--data {root}: not a folder (give 'fashion-mnist' or an image folder)")
    mean, std = normalisation(cfg)

    def load(folder):
        x, y, classes = load_image_folder(folder, cfg.img_size, mean, std, grey=cfg.in_chans == 1)
        if len(classes) > cfg.num_classes:
            raise ValueError(f"{folder}: {len(classes)} class folders but the model has {cfg.num_classes} "
                             f"classes")
        return x, y
    train_dir = root / "train" if (root / "train").is_dir() else root
    val_dir = root / "val"
    return load(train_dir), (load(val_dir) if val_dir.is_dir() else None)


def run_train(args):
    import minitofe
    from .common import first_images, plural, ratios_text
    from .train_start import start_modules, start_teacher
    from ..train import TrainConfig, train
    o = options(args)
    if not o["init"]:
        raise ValueError("--init WEIGHTS is required: the backbone to fine-tune (and the teacher)")
    timm_file = not str(o["init"]).endswith(".npz")     # .npz carries its own config
    base = minitofe.load_model(o["init"], model=o["model"] if timm_file else None)
    from ..train import checkpoint_path
    if not args.resume and os.path.exists(checkpoint_path(o["out"])):
        raise ValueError(f"{checkpoint_path(o['out'])} exists: pass --resume to continue it, or choose "
                         f"another --out; nothing was overwritten")
    record_options(o, args.resume)
    resuming = args.resume and os.path.exists(checkpoint_path(o["out"]))     # its params replace these
    dtype = np.dtype(o["dtype"])
    params = {k: v.astype(dtype) for k, v in base.params.items() if not k.startswith("tofe.")}
    tkw = dict(method=o["method"], target_ratio=o["budget"], alpha=o["alpha"], beta=o["beta"], lam=o["lam"],
               label_smoothing=o["label_smoothing"], approx_reduction=o["approx_reduction"], tau=o["tau"],
               tau_end=o["tau_end"], selector=o["selector"], approximator=o["approximator"],
               last_stage=o["last_stage"], fuse_frozen=o["fuse_frozen"])
    if o["keep_ratios"]:
        tkw["keep_ratios"] = tuple(o["keep_ratios"])
    if o["stages"]:
        tkw["stages"] = tuple(o["stages"])
        if not o["keep_ratios"] and len(o["stages"]) != len(minitofe.ToFeConfig().keep_ratios):
            raise ValueError(f"--stages {' '.join(map(str, o['stages']))} makes {len(o['stages'])} stages: "
                             f"give as many --keep-ratios (the default has "
                             f"{len(minitofe.ToFeConfig().keep_ratios)})")
    tcfg = minitofe.ToFeConfig(**tkw)
    if tcfg.fuse_frozen and not tcfg.fuses_frozen:
        from ..methods import entries
        fusing = [m.name for m in entries() if m.learned_selector and m.reuses]
        raise ValueError(f"--fuse-frozen fuses the tokens a learned selector freezes and can reuse "
                         f"({', '.join(fusing)}); method {tcfg.method!r} does not freeze tokens that way")
    teacher, teacher_line = start_teacher(base, o, dtype)    # train() keeps its own read-only copy of it
    modules, ratios, modules_line = start_modules(base, tcfg, dict(o, fresh_modules=o["fresh_modules"] or
                                                                   resuming), dtype)
    params.update(modules)
    model = minitofe.Model(params, base.cfg, tcfg, ratios)
    for line in (modules_line if not resuming else None, teacher_line if tcfg.needs_teacher else None):
        if line:
            print(line)
    (images, labels), eval_data = load_data(o, base.cfg)
    images, labels = first_images(images, labels, o["limit"])
    cfg = TrainConfig(steps=o["steps"], batch_size=o["batch"], lr=o["lr"],
                      backbone_lr_scale=o["backbone_lr_scale"], seed=o["seed"], out_dir=o["out"],
                      fast=o["fast"],
                      teacher_cache=o["teacher_cache"],
                      eval_every=o["eval_every"], eval_images=o["eval_images"],
                      checkpoint_every=o["checkpoint_every"], warmup_steps=o["warmup_steps"])
    if eval_data is not None:
        eval_data = (eval_data[0].astype(dtype), eval_data[1])
    train(model, teacher, (images.astype(dtype), labels), eval_data, cfg,
          resume=args.resume, progress=not args.no_progress, stop_at=args.stop_at)
    if args.stop_at is not None and args.stop_at < cfg.steps:
        print(f"stopped at step {args.stop_at} of {cfg.steps}; checkpoint in {o['out']}: continue with "
              f"`minitofe train --out {o['out']} --resume`")
        return 0
    ratios = model.learned_keep_ratios
    print(f"trained {tcfg.method}: " + (f"learned keep ratios {ratios_text(ratios)}; " if ratios else "")
          + f"files in {o['out']}")
    last = last_eval(o["out"])
    if last is not None:
        res = last["eval"]
        print(f"evaluation after step {last['step'] + 1}: top-1 {100 * res['top1']:.2f} % on "
              f"{plural(res['n'], 'image')} at {100 * res['macs_ratio']:.1f} % of the dense MACs")
    return 0


def last_eval(out):
    """The last ``eval`` record of the run's log.jsonl, or None."""
    import pathlib
    path = pathlib.Path(out) / "log.jsonl"
    if not path.exists():
        return None
    evals = [json.loads(line) for line in path.read_text().splitlines() if '"eval"' in line]
    return evals[-1] if evals else None
