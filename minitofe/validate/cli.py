"""The ``golden`` and ``compare`` subcommands (registered in ``minitofe/cli/__init__.py``).

    minitofe golden OUT.safetensors [--weights FILE [--teacher FILE] | --preset NAME|CONFIG.json --seed S]
                    [--method M] [--mode train|topk|threshold] [--images FILE... | --fmnist I... |
                    --random B] [--image-seed S] [--labels L...] [--noise-seed S] [--dtype D] [--force]
    minitofe compare BUNDLE THEIRS [--json] [--tol float64|float32] [--brief] [--any-version]

``compare`` exits 0 when every tensor given is within tolerance, 1 when one diverges, 2 on bad input.
"""
import json
import os

MAX_RANDOM_BATCH = 64


def add_golden(sub):
    from ..config import PRESETS
    from ..methods import names
    from .golden import MODES
    p = sub.add_parser("golden", help="write a golden bundle: inputs, parameters, every intermediate and "
                                      "gradient of one minitofe step, in one .safetensors file",
                       description="Run minitofe once (a training step, or topk / threshold inference) and "
                                   "write everything another implementation needs to check itself against "
                                   "it into OUT (a .safetensors file); see docs/validate.md.")
    p.add_argument("out", help="the bundle to write (.safetensors)")
    src = p.add_argument_group("model (default: the shipped ToFe weights)")
    src.add_argument("--weights", help="weight file (.npz / .safetensors / .pth)")
    src.add_argument("--preset", metavar="NAME|JSON",
                     help=f"a fresh model: one of {', '.join(sorted(PRESETS))}, "
                          "or a .json file of ViTConfig fields")
    src.add_argument("--seed", type=int, default=0, help="initialises a preset, or the ToFe modules a weight "
                                                         "file lacks (default 0)")
    src.add_argument("--teacher", metavar="FILE", help="the dense teacher's weights (default: the model's "
                                                       "own backbone; a preset: its initial one)")
    src.add_argument("--model", metavar="NAME", help="preset a timm file is an instance of")
    src.add_argument("--heads", metavar="N", type=int,
                     help="attention heads of a timm file (when no --model)")
    p.add_argument("--method", choices=names(), help="ToFe method (default: the weights' own, else tofe)")
    p.add_argument("--mode", choices=MODES, default="train", help="train (default), topk or threshold")
    img = p.add_argument_group("images (default: --random 2)").add_mutually_exclusive_group()
    img.add_argument("--images", nargs="+", metavar="FILE", help="image files")
    img.add_argument("--fmnist", nargs="+", type=int, metavar="I", help="Fashion-MNIST test-set indices")
    img.add_argument("--random", type=int, metavar="B", help="B images of standard normal pixels")
    p.add_argument("--image-seed", type=int, default=1, help="seed of random images and labels (default 1)")
    p.add_argument("--labels", nargs="+", type=int, metavar="L", help="one class label per image")
    p.add_argument("--noise-seed", type=int, default=2, help="seed of the Gumbel noise (default 2)")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64", help="default float64")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")


def _preset(value):
    if value is None or not value.endswith(".json"):
        return value
    from ..config import ViTConfig
    try:
        with open(value) as f:
            return ViTConfig.from_dict(json.load(f))
    except OSError as e:
        raise ValueError(f"{value}: cannot read the config ({e.strerror})") from None
    except (json.JSONDecodeError, AttributeError, TypeError) as e:
        raise ValueError(f"{value}: not a JSON object of ViTConfig fields ({e})") from None


def _default_weights(args):
    if args.weights is None and args.preset is None:
        from ..io.shipped import TOFE_FILE, find_shipped, weights_dirs
        path = find_shipped(TOFE_FILE)
        if path is None:
            raise ValueError(f"no shipped weights ({TOFE_FILE} in {', '.join(map(str, weights_dirs()))}): "
                             f"pass --weights FILE or --preset NAME")
        return str(path)
    return args.weights


def _command(args):
    """The command that makes this bundle again, every option spelled out."""
    words = ["minitofe", "golden", args.out]
    for key, value in vars(args).items():
        if key in ("command", "out", "force") or value is None or value is False:
            continue
        values = value if isinstance(value, list) else [] if value is True else [value]
        words += [f"--{key.replace('_', '-')}"] + [str(v) for v in values]
    return " ".join(words)


def run_golden(args):
    from .golden import golden_images, golden_model, make_golden
    if args.random is not None and not 1 <= args.random <= MAX_RANDOM_BATCH:
        raise ValueError(f"--random must be a batch size in [1, {MAX_RANDOM_BATCH}], got {args.random}")
    if os.path.exists(args.out) and not args.force:           # before any work
        raise ValueError(f"{args.out}: exists already (pass --force to replace it)")
    model, teacher, source = golden_model(_default_weights(args), _preset(args.preset), args.seed,
                                          args.method, args.dtype, args.model, args.heads, args.teacher)
    random = 2 if args.images is None and args.fmnist is None and args.random is None else args.random
    images, labels, isrc = golden_images(model, args.images, args.fmnist, random, args.image_seed,
                                         args.labels)
    source = dict(source, **isrc, command=_command(args))
    path = make_golden(args.out, model, images, labels, args.mode, args.noise_seed, teacher, source,
                       args.force)
    from .bundle import read_bundle
    b = read_bundle(path)
    counts = {r: len(b.of_role(r)) for r in ("input", "param", "forward", "backward")}
    print(f"wrote {path}: {sum(counts.values())} tensors ({counts['input']} inputs, "
          f"{counts['param']} parameters, {counts['forward']} forward, {counts['backward']} gradients), "
          f"{os.path.getsize(path) / 1e6:.1f} MB")
    print(f"  mode {args.mode}, method {model.tofe.method}, {len(images)} image(s), {args.dtype}; check an "
          f"implementation with: minitofe compare {path} THEIRS.safetensors")
    return 0


def add_compare(sub):
    from .compare import TOLERANCES
    p = sub.add_parser("compare", help="compare another implementation's outputs with a golden bundle and "
                                       "name the first tensor that diverges",
                       description="THEIRS (.safetensors or .npz) holds tensors under the bundle's names, "
                                   "any subset. Exit code 0: all within tolerance, 1: a tensor diverges, 2: "
                                   "bad input (among it outputs of another configuration).")
    p.add_argument("bundle", help="golden bundle written by `minitofe golden`")
    p.add_argument("theirs", help="the other implementation's outputs (.safetensors / .npz)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table (schema "
                                                        "minitofe-compare/1, docs/validate.md)")
    p.add_argument("--tol", choices=list(TOLERANCES), help="tolerance class of the verdict (default: float32 "
                                                           "if their floats or the bundle are float32)")
    p.add_argument("--brief", action="store_true",
                   help="a pass: a summary (the worst error per role); a failure: the first divergence "
                        "and the rows around it")
    p.add_argument("--any-version", action="store_true",
                   help="accept a bundle made by another minitofe version")


def run_compare(args):
    from .compare import compare
    from .report import format_report
    report = compare(args.bundle, args.theirs, tol=args.tol, any_version=args.any_version)
    print(json.dumps(report, indent=1) if args.json else format_report(report, brief=args.brief))
    return 0 if report["passed"] else 1
