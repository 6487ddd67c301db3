"""The ``minitofe`` command line: one small ``add_<name>`` (its arguments) and ``run_<name>`` (what it
does) per subcommand, registered in ``COMMANDS``.

    minitofe demo [--weights FILE] [--out PNG]
    minitofe predict IMAGE... [--weights FILE] [--method M] [--budget B] [--json]
    minitofe viz [IMAGE...] [--out PNG] [--method M] [--budget B]
    minitofe eval [--weights FILE] [--data fashion-mnist|DIR] [--method M] [--budget B] [--json]
    minitofe train --init WEIGHTS [--method M] [--target G] [--steps N] ... [--resume]
    minitofe convert SRC DST [--model NAME] [--heads N --img-size S --global-pool P] [--backbone-only] ...
    minitofe bench [--json] [--quick]
    minitofe golden OUT.safetensors [--weights FILE | --preset NAME --seed S] [--mode M] [--images ...]
    minitofe compare BUNDLE THEIRS [--json] [--tol float64|float32]

Inference commands run on the Numba kernels when Numba is installed and they get at least
``cli.common.AUTO_FAST_MIN_IMAGES`` images, ``train`` always; ``--fast`` / ``--no-fast`` force either
path. The commands that read weights take ``--model NAME`` / ``--heads N`` for timm files.

Exit codes: 0 success, 2 bad input or usage (ValueError/TypeError, argparse), 1 a failure at run time
(OSError, a missing optional dependency). Errors print ``minitofe: error: <message>`` on stderr, never a
traceback.
"""
import argparse
import sys

from .. import __version__
from .infer import add_demo, add_eval, add_predict, add_viz, run_demo, run_eval, run_predict, run_viz
from .train import add_train, run_train
from ..config import ACTIVATIONS, PRESETS
from ..validate.cli import add_compare, add_golden, run_compare, run_golden


def describe(cfg):
    """One line: sizes and token counts of a config (P patches + T prefix tokens = N tokens)."""
    h, w = cfg.img_hw
    head = f"{cfg.num_classes} classes" if cfg.num_classes else "no classifier (pooled features)"
    return (f"{h}x{w}x{cfg.in_chans} images, {cfg.patch_size}x{cfg.patch_size} "
            f"patches -> P={cfg.num_patches} + T={cfg.num_prefix_tokens} = N={cfg.num_tokens} tokens, "
            f"C={cfg.embed_dim}, depth {cfg.depth}, H={cfg.num_heads} heads, {head}")


def count_params(params):
    return sum(int(v.size) for v in params.values())


# ---- convert ----

def add_convert(sub):
    p = sub.add_parser("convert", help="convert weights: timm .safetensors/.pth <-> minitofe .npz",
                       description="Read SRC (.npz, .safetensors, .pth/.pt/.bin) and write DST (.npz or "
                                   "timm-layout .safetensors). Shapes and key names are checked. A timm file "
                                   "does not record its heads, image size, pooling or block maths: name its "
                                   "architecture (--model) or state them (--heads, --img-size, --global-pool; "
                                   "see docs/timm-conversion.md).")
    p.add_argument("src", help="weight file to read")
    p.add_argument("dst", help="file to write (.npz or .safetensors)")
    p.add_argument("--model", metavar="NAME", help="the architecture of a timm file: a minitofe preset "
                                                     f"({', '.join(sorted(PRESETS))}) or a timm model name "
                                                     "(needs timm)")
    p.add_argument("--heads", metavar="N", type=int, help="number of attention heads (when no --model)")
    p.add_argument("--img-size", metavar="S", type=image_size, help="image size, S or HxW (when no --model)")
    p.add_argument("--global-pool", choices=["token", "avg"], help="timm's global_pool (when no --model)")
    p.add_argument("--norm-eps", type=float, help="LayerNorm eps, when not timm's 1e-6 (CLIP: 1e-5)")
    p.add_argument("--act", choices=list(ACTIVATIONS), help="MLP activation, when not exact GELU")
    p.add_argument("--pool-include-prefix", action="store_true", default=None,
                   help="avg pooling over the prefix tokens too (timm's pool_include_prefix)")
    p.add_argument("--backbone-only", action="store_true", help="leave out the ToFe modules and their "
                                                                "settings (a .safetensors timm loads strictly)")
    p.add_argument("--dtype", choices=["float32", "float64"], help="cast every array (default: keep)")
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists (never SRC)")


def image_size(text):
    """'224' -> 224, '256x64' -> (256, 64)."""
    try:
        sizes = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        sizes = ()
    if len(sizes) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected S or HxW, got {text!r}")
    return sizes[0] if len(sizes) == 1 else sizes


def run_convert(args):
    from ..io.timm_model import check_architecture
    from ..io.weights import convert
    if args.model is not None:
        check_architecture(args.model)           # an unknown name fails first, listing the presets
    params, cfg, _ = convert(args.src, args.dst, model=args.model, num_heads=args.heads, dtype=args.dtype,
                             overwrite=args.force, backbone_only=args.backbone_only, img_size=args.img_size,
                             global_pool=args.global_pool, norm_eps=args.norm_eps, act_layer=args.act,
                             pool_include_prefix=args.pool_include_prefix)
    dtype = next(iter(params.values())).dtype
    tofe = sum(k.startswith("tofe.") for k in params)
    print(f"wrote {args.dst}: {len(params)} arrays ({len(params) - tofe} backbone + {tofe} ToFe), "
          f"{count_params(params):,} parameters ({dtype})")
    print(f"  {describe(cfg)}")
    if args.backbone_only:
        print("  backbone only: the ToFe modules and their settings were left out")
    elif tofe and args.dst.endswith(".safetensors"):
        print("  timm loads the backbone with load_state_dict(..., strict=False) (it has no tofe.* modules), "
              "or convert again with --backbone-only")
    return 0


def add_bench(sub):
    p = sub.add_parser("bench", help="speed: reference vs fast vs timm, ToFe vs dense, gather/scatter, "
                                     "training step, start-up (one process, interleaved medians)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the benchmark")


def run_bench(args):
    from ..bench import run_bench as bench
    bench(json=args.json, quick=args.quick)
    return 0


COMMANDS = {"demo": (add_demo, run_demo), "predict": (add_predict, run_predict), "viz": (add_viz, run_viz),
            "eval": (add_eval, run_eval), "train": (add_train, run_train),
            "convert": (add_convert, run_convert), "bench": (add_bench, run_bench),
            "golden": (add_golden, run_golden), "compare": (add_compare, run_compare)}


def build_parser():
    parser = argparse.ArgumentParser(prog="minitofe", description="ToFe token freezing on a NumPy ViT.")
    parser.add_argument("--version", action="version", version=f"minitofe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add, run in COMMANDS.values():
        add(sub)
    return parser


def error(message, code):
    print(f"minitofe: error: {message}", file=sys.stderr)
    return code


def main(argv=None):
    """Entry point of the ``minitofe`` command (and ``python -m minitofe``) -> exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:                      # argparse has printed usage / help already
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return COMMANDS[args.command][1](args)
    except (ValueError, TypeError) as e:
        return error(e, 2)
    except (OSError, ImportError) as e:
        return error(e, 1)
