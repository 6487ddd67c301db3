"""The ``convert`` subcommand: weight files between timm's layout (``.safetensors`` / ``.pth``) and
minitofe's ``.npz`` / ``.safetensors``, checked key by key (docs/timm-conversion.md)."""
import argparse

from ..config import ACTIVATIONS, PRESETS


def describe(cfg):
    """One line: sizes and token counts of a config (P patches + T prefix tokens = N tokens)."""
    h, w = cfg.img_hw
    head = f"{cfg.num_classes} classes" if cfg.num_classes else "no classifier (pooled features)"
    return (f"{h}x{w}x{cfg.in_chans} images, {cfg.patch_size}x{cfg.patch_size} "
            f"patches -> P={cfg.num_patches} + T={cfg.num_prefix_tokens} = N={cfg.num_tokens} tokens, "
            f"C={cfg.embed_dim}, depth {cfg.depth}, H={cfg.num_heads} heads, {head}")


def count_params(params):
    return sum(int(v.size) for v in params.values())


def add_convert(sub):
    p = sub.add_parser("convert", help="convert weights: timm .safetensors/.pth <-> minitofe .npz",
                       description="Read SRC (.npz, .safetensors, .pth/.pt/.bin) and write DST (.npz or "
                                   "timm-layout .safetensors). Shapes and key names are checked. A timm "
                                   "file does not record its heads, image size, pooling or block maths: "
                                   "name its architecture (--model) or state them (--heads, --img-size, "
                                   "--global-pool; see docs/timm-conversion.md).")
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
    p.add_argument("--backbone-only", action="store_true",
                   help="leave out the ToFe modules and their settings (a .safetensors timm loads strictly)")
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
