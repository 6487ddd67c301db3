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
import subprocess
import sys
import tempfile
import time

import numpy as np

from . import kernels
from .config import get_config
from .nn.layers import cross_entropy_backward, cross_entropy_forward
from .nn.params import init_params
from .nn.vit import vit_backward, vit_forward
from .optim import adamw_init, adamw_step
from .tofe import tokens
from .tofe.config import ToFeConfig
from .tofe.inference import tofe_inference
from .tofe.macs import dense_macs, tofe_macs
from .tofe.params import init_tofe_params

PAPER_RATIOS = (0.49, 0.25, 0.14)           # ToFe's learned keep ratios; scaled to reach a MACs target


def timed(fns, reps):
    """{name: f} -> {name: median seconds}: one warm-up call each, then ``reps`` interleaved rounds."""
    names = list(fns)
    for f in fns.values():
        f()
    times = {n: [] for n in names}
    for r in range(reps):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    return {n: float(np.median(t)) for n, t in times.items()}


def _torch():
    try:
        import timm
        import torch
    except ImportError:
        return None, None
    return torch, timm


def keep_ratios_for(cfg, stages, target):
    """Keep ratios proportional to ToFe's learned ones whose realised MACs are ``target`` of dense."""
    T, P = cfg.num_prefix_tokens, cfg.num_patches

    def ratio(s):
        rho = np.clip(s * np.array(PAPER_RATIOS), 1.0 / P, 1.0)
        kept = T + np.round(rho * P)
        return float(tofe_macs(cfg, stages, kept)[0] / dense_macs(cfg)), tuple(float(r) for r in rho)
    lo, hi = 0.0, 1.0 / min(PAPER_RATIOS)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ratio(mid)[0] < target else (lo, mid)
    return ratio(hi)


def bench_dense(quick, reps):
    torch, timm = _torch()
    name = "deit_tiny_patch16_224" if quick else "deit_small_patch16_224"
    cfg = get_config(name)
    params = init_params(cfg, np.random.default_rng(0), np.float32)
    dense = ToFeConfig(method="dense")
    model = timm.create_model(name, pretrained=False).eval() if torch else None
    rows = []
    for B in ((1, 2) if quick else (1, 8, 32)):
        x = np.random.default_rng(B).standard_normal((B, 3, 224, 224)).astype(np.float32)
        fns = {"reference": lambda: tofe_inference(params, x, cfg, dense),
               "fast": lambda: tofe_inference(params, x, cfg, dense, fast=True)}
        if torch:
            xt = torch.from_numpy(x)
            fns["timm"] = lambda: torch.inference_mode()(model)(xt)
        t = timed(fns, reps if B < 32 else max(2, reps - 2))
        rows.append({"model": name, "batch": B, **{f"{k}_img_s": B / v for k, v in t.items()}})
    return rows


def bench_tofe(quick, reps):
    cfg = get_config("deit_tiny_patch16_224" if quick else "deit_small_patch16_224")
    tcfg = ToFeConfig(method="tofe")
    stages = tcfg.resolved_stages(cfg.depth)
    rng = np.random.default_rng(0)
    params = init_params(cfg, rng, np.float32)
    params.update(init_tofe_params(cfg, tcfg, rng, np.float32))
    dense = ToFeConfig(method="dense")
    rows = []
    for B in ((1, 2) if quick else (1, 32)):
        x = rng.standard_normal((B, 3, 224, 224)).astype(np.float32)
        fns = {"dense": lambda: tofe_inference(params, x, cfg, dense, fast=True)}
        plan = {}
        for target in (0.70, 0.50, 0.35):
            macs, ratios = keep_ratios_for(cfg, stages, target)
            plan[f"tofe{round(100 * target)}"] = (macs, ratios)
            fns[f"tofe{round(100 * target)}"] = (
                lambda r=ratios: tofe_inference(params, x, cfg, tcfg, keep_ratios=r, fast=True))
        t = timed(fns, reps)
        for k, (macs, ratios) in plan.items():
            rows.append({"batch": B, "macs_ratio": round(macs, 3), "keep_ratios": [round(r, 3) for r in ratios],
                         "seconds": t[k], "dense_seconds": t["dense"], "speedup": t["dense"] / t[k]})
    return rows


def bench_tokens(quick, reps):
    B, N, C = (4, 197, 192) if quick else (32, 197, 384)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, N, C)).astype(np.float32)
    K = 1 + (N - 1) // 2
    idx = np.sort(np.stack([np.concatenate([[0], 1 + rng.permutation(N - 1)[:K - 1]]) for _ in range(B)]), 1)
    rows = x[:, :K].copy()
    fast = kernels.fast_kernels()
    fns = {"copy_gathered": lambda: x[:, :K].copy(), "copy_base": lambda: x.copy(),
           "gather_reference": lambda: tokens.gather_tokens(x, idx),
           "scatter_reference": lambda: tokens.scatter_tokens(x, rows, idx)}
    if fast:
        fns.update(gather_fast=lambda: fast.gather_tokens(x, idx), scatter_fast=lambda: fast.scatter_tokens(x, rows, idx))
    t = timed(fns, 40 * reps)                      # each call is under a millisecond: many rounds
    out = {"shape": [B, N, C], "kept": K, **{f"{k}_ms": 1e3 * v for k, v in t.items()}}
    for op, base in (("gather", "copy_gathered"), ("scatter", "copy_base")):
        for impl in ("reference", "fast"):
            if f"{op}_{impl}" in t:
                out[f"{op}_{impl}_vs_copy"] = t[f"{op}_{impl}"] / t[base]
    return out


def bench_train(quick, reps):
    torch, timm = _torch()
    name = "deit_tiny_patch16_224"
    cfg = get_config(name)
    B = 4 if quick else 32
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, 3, 224, 224)).astype(np.float32)
    y = rng.integers(0, cfg.num_classes, B)
    fns = {}
    for fast in (False, True):
        params = init_params(cfg, rng, np.float32)
        state = adamw_init(params)

        def step(params=params, state=state, fast=fast):
            logits, cache = vit_forward(params, x, cfg, fast=fast)
            _, c_ce = cross_entropy_forward(logits, y)
            _, grads = vit_backward(cross_entropy_backward(1.0, c_ce), cache)
            adamw_step(params, grads, state, lr=1e-4)
        fns["fast" if fast else "reference"] = step
    if torch:
        model = timm.create_model(name, pretrained=False).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def torch_step():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt), yt).backward()
            opt.step()
        fns["torch"] = torch_step
    t = timed(fns, max(2, reps - 2))
    return {"model": name, "batch": B, **{f"{k}_s": v for k, v in t.items()}}


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


def run_fresh(cmd):
    """Run ``cmd`` in a fresh process -> (wall seconds, peak RSS of that process in MiB)."""
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], capture_output=True, text=True)
    try:
        wall, peak, code = _json.loads(done.stdout)
    except ValueError:
        code = done.returncode or 1
    if done.returncode != 0 or code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr[-500:]}")
    return wall, peak                                     # ru_maxrss is in KiB on Linux


def bench_startup(quick, reps):
    """``minitofe predict IMAGE --json`` on one bundled sample in a fresh process, after a first run that
    fills the caches (Numba's compiled kernels, the OS file cache): wall time and peak memory. Uses the
    shipped weights when present, else a random ``vit_fmnist_patch2_28`` ToFe model saved to a temp file."""
    from .cli_infer import find_shipped, sample_images, TOFE_FILE
    from .model import new_model, save_model
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
            runs = [run_fresh(cmd) for _ in range(1 + max(1, reps // 2))]   # the first run fills caches
            out[mode.replace("-", "_")] = {"wall_s": float(np.median([r[0] for r in runs[1:]])),
                                           "peak_rss_mib": float(np.max([r[1] for r in runs[1:]]))}
    return out


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


def _num(v, fmt="{:.3g}"):
    return "-" if v is None else fmt.format(v)


def format_tables(res):
    """The human-readable report of ``run_bench``'s dict."""
    m = res["machine"]
    lines = [f"{m['cpu']}, {m['cores']} cores, numpy {m['numpy']}, numba {m.get('numba', '-')} "
             f"({m.get('numba_threads', '-')} threads), torch {m['torch'] or '-'} ({m['torch_threads'] or '-'} "
             f"threads), {m['dtype']}", "",
             f"dense forward, images/s          {'batch':>5} {'reference':>10} {'fast':>8} {'timm':>8} {'fast/timm':>10}"]
    for r in res["dense"]:
        t = r.get("timm_img_s")
        lines.append(f"  {r['model']:<30} {r['batch']:>5} {_num(r['reference_img_s']):>10} "
                     f"{_num(r['fast_img_s']):>8} {_num(t):>8} {_num(t and r['fast_img_s'] / t):>10}")
    lines += ["", f"ToFe top-k, fast path      {'batch':>5} {'MACs':>6} {'keep ratios':>20} {'ms':>9} "
              f"{'dense ms':>9} {'speed-up':>9}"]
    for r in res["tofe"]:
        lines.append(f"  {'':<24} {r['batch']:>5} {r['macs_ratio']:>6.0%} {str(r['keep_ratios']):>20} "
                     f"{1e3 * r['seconds']:>9.1f} {1e3 * r['dense_seconds']:>9.1f} {r['speedup']:>8.2f}x")
    t = res["tokens"]
    lines += ["", f"gather / scatter of {t['kept']} of {t['shape'][1]} tokens, (B, N, C) = {tuple(t['shape'])}: "
              f"time / plain copy of the output"]
    for op in ("gather", "scatter"):
        lines.append(f"  {op:<8} reference {_num(t.get(f'{op}_reference_vs_copy'), '{:.2f}x')}   "
                     f"fast {_num(t.get(f'{op}_fast_vs_copy'), '{:.2f}x')}")
    tr = res["train"]
    tt = tr.get("torch_s")
    lines += ["", f"training step (forward + backward + AdamW), {tr['model']}, batch {tr['batch']}: "
              f"reference {tr['reference_s']:.2f} s, fast {tr['fast_s']:.2f} s, torch {_num(tt, '{:.2f} s')}"
              f" -> fast speed / torch speed {_num(tt and tt / tr['fast_s'], '{:.2f}x')}"]
    su = res["startup"]
    lines += ["", f"fresh process: minitofe predict IMAGE --json ({su['weights']}), after a first run:"]
    for mode in ("default", "fast", "no_fast"):
        r = su[mode]
        flag = "(no flag)" if mode == "default" else f"--{mode.replace('_', '-')}"
        lines.append(f"  {flag:<10} wall {r['wall_s']:.2f} s, peak memory {r['peak_rss_mib']:.0f} MiB")
    lines += ["", f"(bench took {res['bench_seconds']:.0f} s)"]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="minitofe bench", description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test")
    args = p.parse_args(argv)
    run_bench(json=args.json, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
