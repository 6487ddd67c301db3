"""``minitofe bench``: speed of the reference and fast paths, against timm / torch when installed.

Everything is measured in one process, interleaved (each repetition runs every contender once, in a
rotating order, so that a slow period of a shared machine hits all of them) and reported as medians;
random weights, float32, images of N(0, 1) noise. Sections:

    dense      DeiT-S forward, batch 1 / 8 / 32: minitofe reference, minitofe fast, timm
    tofe       ToFe top-k at 70 / 50 / 35 % of the dense MACs (``macs.tofe_macs``) against dense, fast path
    tokens     gather and scatter of 50 % of DeiT-S's tokens (batch 32) against a plain copy of as many bytes
    train      one training step (forward, backward, AdamW) of DeiT-Ti at batch 32, against torch
    startup    ``minitofe predict`` of one image in a fresh process: wall time, peak memory

``run_bench(json=False, quick=False) -> dict``; ``quick`` shrinks every size (a smoke test). From the shell
``python -m minitofe.bench [--json] [--quick]`` (or ``minitofe bench``).
"""
import argparse
import json as _json
import os
import platform
import sys
import time

import numpy as np

from .. import kernels
from .sections import _torch, bench_dense, bench_tofe, bench_tokens, bench_train
from .startup import bench_startup, run_fresh  # noqa: F401 (run_fresh: minitofe.bench.run_fresh)
from .tables import format_tables


def machine():
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), cpu)
    torch, _ = _torch()
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "dtype": "float32", "fast_kernels": kernels.available(),
            "torch": torch.__version__ if torch else None, "torch_threads": torch.get_num_threads() if torch else None}
    if kernels.fast_kernels():                # first: it configures Numba's threads before they start
        import numba
        info.update(numba=numba.__version__, numba_threads=numba.get_num_threads())
    return info


def run_bench(json=False, quick=False):
    """Run every section; returns (and unless ``json`` prints as tables) the results."""
    from tqdm.auto import tqdm
    reps = 2 if quick else 5
    t0 = time.perf_counter()
    res = {"machine": machine()}
    sections = {"dense": bench_dense, "tofe": bench_tofe, "tokens": bench_tokens, "train": bench_train,
                "startup": bench_startup}
    with tqdm(sections.items(), desc="bench", unit="section", file=sys.stderr) as bar:  # stdout stays clean
        for name, run in bar:
            bar.set_postfix_str(name)
            res[name] = run(quick, reps)
    res["bench_seconds"] = time.perf_counter() - t0
    print(_json.dumps(res) if json else format_tables(res))
    return res


def main(argv=None):
    p = argparse.ArgumentParser(prog="minitofe bench", description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test")
    args = p.parse_args(argv)
    run_bench(json=args.json, quick=args.quick)
    return 0
