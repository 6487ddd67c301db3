"""The ``minitofe`` command line: one small ``add_<name>`` (its arguments) and ``run_<name>`` (what it
does) per subcommand, registered in ``COMMANDS``.

    minitofe demo [--weights FILE] [--out PNG]
    minitofe predict IMAGE... [--weights FILE] [--method M] [--budget B] [--json]
    minitofe viz [IMAGE...] [--out PNG] [--method M] [--budget B]
    minitofe eval [--weights FILE] [--data fashion-mnist|DIR] [--method M] [--budget B] [--json]
    minitofe train --init WEIGHTS [--method M] [--target G] [--steps N] ... [--resume]
    minitofe convert SRC DST [--model NAME] [--heads N --img-size S --global-pool P] [--backbone-only] ...
    minitofe bench [--json] [--quick] [--threads N] [--sections A,B] [--in-process]
    minitofe golden OUT.safetensors [--weights FILE | --preset NAME --seed S] [--mode M] [--images ...]
    minitofe compare BUNDLE THEIRS [--json] [--tol float64|float32]
    minitofe exercises list | grade SUBMISSIONS/ [--out grades.csv] [--timeout S]

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
from .convert import add_convert, run_convert
from .exercises import add_exercises, run_exercises
from .infer import add_demo, add_eval, add_predict, add_viz, run_demo, run_eval, run_predict, run_viz
from .train import add_train, run_train
from ..validate.cli import add_compare, add_golden, run_compare, run_golden


def add_bench(sub):
    from ..bench import DESCRIPTION, add_arguments
    p = sub.add_parser("bench", help="speed: reference vs fast vs timm, ToFe vs dense, gather/scatter, "
                                     "training step, start-up (each contender in a process of its own, "
                                     "interleaved rounds, medians and ratios)", description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(bench_error=p.error)


def run_bench(args):
    from ..bench import run_from_args
    return run_from_args(args, args.bench_error)


COMMANDS = {"demo": (add_demo, run_demo), "predict": (add_predict, run_predict), "viz": (add_viz, run_viz),
            "eval": (add_eval, run_eval), "train": (add_train, run_train),
            "convert": (add_convert, run_convert), "bench": (add_bench, run_bench),
            "golden": (add_golden, run_golden), "compare": (add_compare, run_compare),
            "exercises": (add_exercises, run_exercises)}


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
