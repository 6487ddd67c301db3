"""The options of a ``minitofe train`` run: their defaults, old names, and how a run's own options
(``options.json`` in ``--out``), a ``--config`` file and the flags given now combine; the files a run
starts from are recorded by their sha256 so that ``--resume`` continues the same run."""
import json
import os

from ..io.shipped import BACKBONE_MODEL


# Every option's default. argparse's own defaults stay None so that a --config file and the options a
# resumed run started with (--resume) can sit between these and the flags given now.
DEFAULTS = dict(model=BACKBONE_MODEL, method="tofe", budget=0.5, keep_ratios=None, steps=1000, batch=32,
                lr=1e-3, backbone_lr_scale=0.1, alpha=0.5, beta=1.0, lam=2.0, label_smoothing=0.1, limit=None,
                approx_reduction=4, selector="mlp", approximator="mlp", last_stage="approximate",
                fuse_frozen=False, tau=1.0, tau_end=None, stages=None,
                data="fashion-mnist", data_root=None, out="runs/tofe", seed=0, dtype="float32", init=None,
                teacher=None, fresh_modules=False, fast=True, teacher_cache=False, eval_every=200,
                eval_images=1000, checkpoint_every=100, warmup_steps=50)
# Old names of options, still read from the command line, --config files and a run's options.json.
ALIASES = {"target": "budget"}


OPTIONS_FILE = "options.json"       # in --out: the run's options, so --resume needs only --out


def options(args):
    """Defaults < the run's saved options (``--resume``) < config file < command-line flags."""
    opts = dict(DEFAULTS)
    if args.resume:
        opts.update(saved_options(args.out or DEFAULTS["out"]))
    if args.config:
        try:
            with open(args.config) as f:
                from_file = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{args.config}: cannot read the config file ({e})") from None
        unknown = sorted(set(from_file) - set(DEFAULTS) - set(ALIASES))
        if unknown:
            raise ValueError(f"{args.config}: unknown option(s) {unknown}; known: {sorted(DEFAULTS)}")
        opts.update(new_names(from_file))
    for key in DEFAULTS:
        if getattr(args, key, None) is not None:
            opts[key] = getattr(args, key)
    return opts


def saved_options(out):
    """The options a run in ``out`` started with (written by ``run_train``); {} for runs that predate it.
    Runs saved before ``fresh_modules`` existed re-initialised every module: they resume as they began."""
    import pathlib
    path = pathlib.Path(out) / OPTIONS_FILE
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the run's options cannot be read") from None
    saved = new_names(saved)
    saved.setdefault("fresh_modules", True)
    return {k: v for k, v in saved.items() if k in DEFAULTS}


def new_names(options):
    """``options`` with old option names (``ALIASES``) under their new ones."""
    return {ALIASES.get(k, k): v for k, v in options.items()}


def file_digest(path):
    import hashlib
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_options(o, resume):
    """A new run writes its options and the sha256 of its --init (and --teacher) file into --out; a resumed
    run checks that they are still the files the run started from."""
    import pathlib
    from ..io.weights import atomic_write
    path = pathlib.Path(o["out"]) / OPTIONS_FILE
    digests = {key: file_digest(o[key]) for key in ("init", "teacher") if o[key]}
    if resume and path.is_file():
        recorded = json.loads(path.read_text())
        for key, digest in digests.items():
            saved = recorded.get(f"{key}_sha256")
            what = "the teacher" if key == "teacher" or not o["teacher"] else "the starting weights"
            if saved not in (None, digest):
                raise ValueError(f"{o[key]}: this --{key} file is not the one the run in {o['out']} started "
                                 f"from (sha256 {digest[:12]}... vs {saved[:12]}...): {what} would differ")
    elif not resume:
        pathlib.Path(o["out"]).mkdir(parents=True, exist_ok=True)
        saved = dict(o)
        for key, digest in digests.items():                              # --resume from any folder
            saved.update({key: os.path.abspath(o[key]), f"{key}_sha256": digest})
        if o["data"] != "fashion-mnist":
            saved["data"] = os.path.abspath(o["data"])
        if o["data_root"]:
            saved["data_root"] = os.path.abspath(o["data_root"])
        text = json.dumps(saved, indent=1, sort_keys=True)
        atomic_write(str(path), lambda f: f.write(text.encode()))
