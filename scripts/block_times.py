"""How long one transformer block takes on the fast path as a function of its token rows, inside a ToFe
forward: where ToFe's speed-up at batch 1 falls short of its MACs ratio.

    python scripts/block_times.py [--model deit_small_patch16_224] [--budget 0.5] [--threads 2] [--runs 30]

Times every block call of ToFe's fast inference (batch 1, random weights, float32, the weights frozen as the
CLI loads them) and of the dense model's, interleaved, and prints per block and row count the median
milliseconds, then the line ``ms = fixed + per_row * rows`` fitted to them. A block's MACs grow with its
rows (all but attention's, linearly); its time has a part that does not: the weights it reads whatever the
rows (DeiT-S: 7 MB a block), the BLAS's threads meeting at every product, Python. That fixed part is what
a stage of few kept rows cannot shrink.
"""
import argparse
import collections
import json
import time

import numpy as np

import minitofe.kernels.block as fast_block
from minitofe import kernels
from minitofe.bench.contenders import keep_ratios_for
from minitofe.config import get_config
from minitofe.kernels.packed import freeze
from minitofe.methods import inference, init_params as method_params
from minitofe.nn.params import init_params
from minitofe.tofe.config import ToFeConfig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="deit_small_patch16_224")
    p.add_argument("--budget", type=float, default=0.5, help="ToFe's MACs target (the bench's keep ratios)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_limits
    threadpool_limits(args.threads, user_api="blas")
    cfg = get_config(args.model)
    x = np.random.default_rng(0).standard_normal((1, cfg.in_chans, cfg.img_size, cfg.img_size), np.float32)
    params = init_params(cfg, np.random.default_rng(0), np.float32)
    tofe = ToFeConfig(method="tofe")
    params.update(method_params(cfg, tofe, np.random.default_rng(1), np.float32))
    freeze(params)
    macs_ratio, ratios = keep_ratios_for(cfg, tofe.resolved_stages(cfg.depth), args.budget)
    ops, dense = kernels.ops(True, like=x), ToFeConfig(method="dense")
    times, timing, block = collections.defaultdict(list), [False], fast_block._block_inplace

    def timed(rows, *rest):
        t0 = time.perf_counter()
        block(rows, *rest)
        if timing[0]:
            times[(int(rest[1].split(".")[1]), rows.shape[0])].append(time.perf_counter() - t0)

    def forward(tcfg, keep):
        with kernels.thread_scope(True, like=x):
            return inference(params, x, cfg, tcfg, keep_ratios=keep, ops=ops)

    fast_block._block_inplace = timed
    try:
        for _ in range(5):
            forward(tofe, ratios), forward(dense, None)
        timing[0], whole = True, {"tofe": [], "dense": []}
        for _ in range(args.runs):
            for name, tcfg, keep in (("tofe", tofe, ratios), ("dense", dense, None)):
                t0 = time.perf_counter()
                forward(tcfg, keep)
                whole[name].append(time.perf_counter() - t0)
    finally:
        fast_block._block_inplace = block
    ms = {key: 1e3 * float(np.median(v)) for key, v in sorted(times.items())}
    rows, per_call = np.array([r for _, r in ms]), np.array(list(ms.values()))
    per_row, fixed = np.polyfit(rows, per_call, 1)
    result = {"model": args.model, "budget": args.budget, "macs_ratio": macs_ratio,
              "keep_ratios": list(ratios), "threads": args.threads, "batch": 1, "dtype": "float32",
              "runs": args.runs,
              "forward_ms": {k: 1e3 * float(np.median(v)) for k, v in whole.items()},
              "blocks": [{"block": b, "rows": r, "ms": t} for (b, r), t in ms.items()],
              "fit": {"fixed_ms": float(fixed), "per_row_ms": float(per_row)}}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    f = result["forward_ms"]
    print(f"{args.model}, batch 1, float32, {args.threads} BLAS threads, {args.runs} interleaved runs: "
          f"ToFe at {100 * macs_ratio:.1f} % MACs {f['tofe']:.1f} ms, dense {f['dense']:.1f} ms "
          f"({f['dense'] / f['tofe']:.2f}x)\n\n| block | rows | ms (median) |\n|---|---|---|")
    for (b, r), t in ms.items():
        print(f"| {b} | {r} | {t:.2f} |")
    print(f"\nfit: ms = {fixed:.2f} + {per_row * 1e3:.1f} us x rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
