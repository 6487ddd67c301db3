"""The ``startup`` section of ``minitofe bench``: ``minitofe predict`` of one image in a fresh process,
wall time and peak memory, measured through a small launcher."""
import json as _json
import os
import subprocess
import sys
import tempfile

import numpy as np

from ..config import get_config
from ..tofe.config import ToFeConfig

# Runs the command given as its arguments and prints [wall seconds, peak RSS MiB, exit code]. A launcher,
# because on Linux a child's ru_maxrss starts from the RSS of the process it was forked from (exec keeps
# the old high-water mark), and the benchmark process itself holds gigabytes by then: forked from this
# small launcher instead, the command's peak is its own.
_LAUNCHER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = proc.stderr.read()
_, status, usage = os.wait4(proc.pid, 0)
wall = time.perf_counter() - t0
sys.stderr.write(err.decode(errors="replace")[-500:])
print(json.dumps([wall, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)]))
"""


def run_fresh(cmd, env=None):
    """Run ``cmd`` in a fresh process (environment ``env``, default this one's) -> (wall seconds, peak
    RSS of that process in MiB)."""
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], capture_output=True, text=True, env=env)
    try:
        wall, peak, code = _json.loads(done.stdout)
    except ValueError:
        code = done.returncode or 1
    if done.returncode != 0 or code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr[-500:]}")
    return wall, peak                                     # ru_maxrss is in KiB on Linux


def bench_startup(quick, reps, threads=None):
    """``minitofe predict IMAGE --json`` on one bundled sample in a fresh process, after a first run that
    fills the caches (Numba's compiled kernels, the OS file cache): wall time and peak memory. Uses the
    shipped weights when present, else a random ``vit_fmnist_patch2_28`` ToFe model saved to a temp file."""
    from ..data import sample_images
    from ..io.shipped import TOFE_FILE, find_shipped
    from ..model import new_model, save_model
    from .rounds import worker_env
    image = str(sample_images()[0])
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = find_shipped(TOFE_FILE)
        if weights is None:
            weights = os.path.join(tmp, "model.npz")
            save_model(weights, new_model(get_config("vit_fmnist_patch2_28"), ToFeConfig(method="tofe"),
                                          np.random.default_rng(0), np.float32))
        out["weights"] = os.path.basename(str(weights))
        for mode in ("default", "fast", "no-fast"):
            cmd = [sys.executable, "-m", "minitofe", "predict", image, "--weights", str(weights), "--json"]
            cmd += [] if mode == "default" else [f"--{mode}"]
            runs = [run_fresh(cmd, worker_env(threads))      # this package, the bench's thread counts
                    for _ in range(1 + max(1, reps // 2))]       # the first run fills the caches
            out[mode.replace("-", "_")] = {"wall_s": float(np.median([r[0] for r in runs[1:]])),
                                           "peak_rss_mib": float(np.max([r[1] for r in runs[1:]]))}
    return out
