"""CuPy against NumPy on a machine with a GPU: same outputs, and how long each takes.

Runs, for a random-weight model (default DeiT-S, float32), on NumPy and on CuPy arrays:
dense inference, ToFe top-k and threshold inference, and one ToFe training forward + backward with the
same Gumbel noise. Prints the largest absolute difference of every output (logits, stage outputs,
masks, losses, all gradients) and the median time of each, then exits non-zero if a difference exceeds
the tolerance. No GPU on the project's own machines: there ``tests/test_fake_device.py`` stands in.

    pip install ".[gpu]"        # cupy-cuda12x
    python scripts/gpu_check.py [--model deit_small_patch16_224] [--batch 8] [--dtype float32] [--reps 5]
"""
import argparse
import sys
import time

import numpy as np

import minitofe
from minitofe.backend import to_numpy
from minitofe.config import get_config
from minitofe.tofe.config import ToFeConfig
from minitofe.methods import inference as tofe_inference
from minitofe.methods import train_backward as tofe_train_backward
from minitofe.methods import train_forward as tofe_train_forward
from minitofe.tofe.training import draw_noise, teacher_forward


def timed(fn, reps, sync):
    fn()                                    # warm-up (CuPy compiles its kernels on first use)
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times))


def max_diff(a, b):
    """Largest |a - b| over (nested lists / dicts of) arrays and floats, compared on the host."""
    if isinstance(a, dict):
        return max((max_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)):
        return max((max_diff(x, y) for x, y in zip(a, b)), default=0.0)
    return float(np.max(np.abs(np.asarray(to_numpy(a), np.float64) - np.asarray(to_numpy(b), np.float64))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="deit_small_patch16_224")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--tol", type=float, default=None, help="max |difference| (default 1e-3 f32, 1e-9 f64)")
    args = p.parse_args(argv)
    try:
        import cupy as cp
    except ImportError:
        print("CuPy is not installed (pip install cupy-cuda12x); nothing to compare", file=sys.stderr)
        return 2
    tol = args.tol or (1e-3 if args.dtype == "float32" else 1e-9)
    cfg, dtype = get_config(args.model), np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    model = minitofe.new_model(cfg, ToFeConfig(method="tofe"), rng, dtype)
    images = rng.standard_normal((args.batch, cfg.in_chans, cfg.img_size, cfg.img_size)).astype(dtype)
    labels = rng.integers(0, cfg.num_classes, args.batch)
    noise = draw_noise(rng, cfg, model.tofe, args.batch, dtype)
    stages = model.tofe.resolved_stages(cfg.depth)
    host = dict(params=model.params, images=images, labels=labels, noise=noise)
    dev = {k: ({n: cp.asarray(a) for n, a in v.items()} if isinstance(v, dict) else
               [cp.asarray(a) for a in v] if isinstance(v, list) else cp.asarray(v)) for k, v in host.items()}
    backbone = lambda d: {k: v for k, v in d["params"].items() if not k.startswith("tofe.")}  # noqa: E731

    def cases(d):
        def train():
            teacher = teacher_forward(backbone(d), d["images"], cfg, stages)
            out, cache = tofe_train_forward(d["params"], d["images"], d["labels"], cfg, model.tofe, d["noise"],
                                            teacher)
            dimages, grads = tofe_train_backward(cache)
            return {"logits": out["logits"], "masks": out["masks"], "losses": list(out["losses"].values()),
                    "dimages": dimages, "grads": grads}
        return {
            "dense": lambda: tofe_inference(d["params"], d["images"], cfg, ToFeConfig(method="dense"))[0],
            "tofe topk": lambda: tofe_inference(d["params"], d["images"], cfg, model.tofe)[0],
            "tofe threshold": lambda: tofe_inference(d["params"], d["images"], cfg,
                                                     model.tofe.replace(inference="threshold"))[0],
            "train step": train,
        }

    host_sync, dev_sync = (lambda: None), cp.cuda.Device().synchronize
    print(f"{args.model}, batch {args.batch}, {args.dtype}, GPU {cp.cuda.runtime.getDeviceProperties(0)['name']}")
    print(f"{'case':<16} {'max |diff|':>11} {'numpy ms':>10} {'cupy ms':>10} {'speed-up':>9}")
    worst = 0.0
    for (name, fh), fd in zip(cases(host).items(), cases(dev).values()):
        out_h, t_h = timed(fh, args.reps, host_sync)
        out_d, t_d = timed(fd, args.reps, dev_sync)
        diff = max_diff(out_h, out_d)
        worst = max(worst, diff)
        print(f"{name:<16} {diff:>11.2e} {1e3 * t_h:>10.1f} {1e3 * t_d:>10.1f} {t_h / t_d:>8.1f}x")
    print("OK" if worst <= tol else f"FAILED: largest difference {worst:.2e} > tolerance {tol:.0e}")
    return 0 if worst <= tol else 1


if __name__ == "__main__":
    sys.exit(main())
