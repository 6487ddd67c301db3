"""``minitofe bench``: speed of the reference and fast paths, against timm / torch when installed.

Each contender runs in a process of its own, and the processes take turns in interleaved rounds
(``bench.rounds``): medians, the spread over the rounds, and the ratios the targets are stated in
(median of the per-round ratios, with their spread). Random weights, float32, images of N(0, 1) noise.
Sections:

    dense      DeiT-S forward, batch 1 / 8 / 32: minitofe reference, minitofe fast, timm eager, onnxruntime,
               torch.compile (the last three when installed: ``bench.runtimes``)
    tofe       ToFe top-k at 70 / 50 / 35 % of the dense MACs (``macs.tofe_macs``) against dense, fast path
    tokens     gather and scatter of 50 % of DeiT-S's tokens (batch 32) against a plain copy of as many bytes;
               also the fast kernels on the copy's own rows (what the loop costs, apart from the pattern)
    train      one training step (forward, backward, AdamW) of DeiT-Ti at batch 32, against torch
    profile    NumPy's sgemm GFLOP/s, the fast forward's time by kind of operation (``bench.profile``), and
               onnxruntime's in the same kinds when it is installed (``bench.runtime_profile``)
    startup    ``minitofe predict`` of one image in a fresh process: wall time, peak memory
    macs       (asked for by name only) do MACs become seconds: tofe, evit, dynamicvit at 35 / 50 / 70 %
               of the dense MACs, each on its own inference path, against dense; Fashion-MNIST and DeiT-S

``run_bench(json=False, quick=False, threads=None, sections=None, in_process=False) -> dict``
(``sections`` None: every section but ``macs``); ``quick`` shrinks every size (a smoke test); ``threads``
sets every thread count of the contenders' processes (NumPy's BLAS, Numba, OpenMP, torch, onnxruntime's
intra-op pool); ``in_process`` adds the old one-process dense figures, labelled.
From the shell ``python -m minitofe.bench [--json] [--quick] [--threads N] [--sections a,b]
[--in-process]``, or ``minitofe bench`` with the same options.
"""
import argparse
import importlib
import json as _json
import os
import platform
import sys
import time

import numpy as np

from .. import kernels
from .contenders import torch_timm
from .rounds import profile_in_worker
from .sections import bench_dense, bench_macs, bench_tofe, bench_tokens, bench_train, dense_in_process
from .startup import bench_startup, run_fresh  # noqa: F401 (run_fresh: minitofe.bench.run_fresh)
from .tables import format_tables

DEFAULT_SECTIONS = ("dense", "tofe", "tokens", "train", "profile", "startup")
SECTIONS = DEFAULT_SECTIONS + ("macs",)         # macs (~6 min more) runs when asked for by name
DESCRIPTION = (
    "Time minitofe's NumPy reference against its Numba fast path and, when installed, timm / torch (the "
    "dense forward also against onnxruntime and torch.compile): the dense forward, ToFe against dense at "
    "equal MACs, token gather / scatter, a training step, a profile of the fast forward, and the start-up "
    "of `minitofe predict`. Each contender runs in a process of its own, "
    "in interleaved rounds, on random weights and N(0, 1) images. Prints tables of medians, spreads and "
    "ratios, with the machine they were measured on (--json: one JSON object). A full run takes about 6 "
    "minutes on 2 cores; --quick (tiny sizes, a smoke test) or --sections (a subset) make it shorter. "
    "--sections macs (only when asked for) times tofe, evit and dynamicvit against dense at 35 / 50 / 70 % "
    "of its MACs: the speed-up each budget buys.")


def machine(threads=None):
    """What the figures were measured on: CPU, cores, load, versions, dtype, thread counts asked for."""
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), cpu)
    torch, timm = torch_timm()
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "dtype": "float32", "fast_kernels": kernels.available(), "threads": threads,
            "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT"),   # as the workers start
            "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "torch": torch.__version__ if torch else None, "timm": timm.__version__ if timm else None}
    if kernels.available():
        import numba
        info["numba"] = numba.__version__
    info["onnxruntime"] = _version("onnxruntime")
    info.update({lib: v for lib in ("onnx", "onnxscript") if (v := _version(lib))})     # when present
    return info


def _version(module):
    """``module.__version__``, or None when it does not import."""
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return None


def run_bench(json=False, quick=False, threads=None, sections=None, in_process=False):
    """Run the sections (all by default); returns (and unless ``json`` prints as tables) the results."""
    from tqdm.auto import tqdm
    sections = list(DEFAULT_SECTIONS if sections is None else sections)
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown bench section(s) {unknown}; known: {', '.join(SECTIONS)}")
    t0 = time.perf_counter()
    res = {"machine": machine(threads)}
    runs = {"dense": bench_dense, "tofe": bench_tofe, "tokens": bench_tokens, "train": bench_train,
            "profile": profile_in_worker, "macs": bench_macs,
            "startup": lambda q, t: bench_startup(q, 2 if q else 5, t)}
    with tqdm(sections, desc="bench", unit="section", file=sys.stderr) as bar:   # stdout stays clean
        for name in bar:
            bar.set_postfix_str(name)
            res[name] = runs[name](quick, threads)
    if in_process:
        res["dense_in_process"] = dense_in_process(quick)
    res["machine"]["load_average_after"] = res["machine"]["load_average"] and \
        [round(v, 2) for v in os.getloadavg()]
    res["bench_seconds"] = time.perf_counter() - t0
    print(_json.dumps(res) if json else format_tables(res))
    return res


def add_arguments(p):
    """The bench's options, on ``p`` (``python -m minitofe.bench`` and ``minitofe bench`` share them)."""
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test")
    p.add_argument("--threads", type=int, metavar="N",
                   help="thread count of every contender (BLAS, Numba, OpenMP, torch, onnxruntime's intra-op "
                        "pool); default: as set up")
    p.add_argument("--sections", metavar="A,B",
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default: all but macs)")
    p.add_argument("--in-process", action="store_true",
                   help="also time the dense contenders all in this one process (the old method), labelled")


def run_from_args(args, error):
    """Run the bench for parsed ``add_arguments`` options; ``error(message)`` refuses bad ones."""
    if args.threads is not None and args.threads < 1:
        error(f"--threads must be a positive number, got {args.threads}")
    run_bench(json=args.json, quick=args.quick, threads=args.threads, in_process=args.in_process,
              sections=args.sections.split(",") if args.sections else None)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minitofe.bench", description=DESCRIPTION)
    add_arguments(p)
    return run_from_args(p.parse_args(argv), p.error)
