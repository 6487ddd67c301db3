"""The sections of ``minitofe bench``: which contenders, how many rounds, and the rows they report.

Every section runs its contenders in processes of their own (``bench.rounds.compare``); a row gives
each contender's median and the ratios that the project's targets are stated in, each as the median of
the per-round ratios with their spread (min, max over the rounds). ``dense_in_process`` is the old
all-in-one-process measurement, kept only as a labelled extra (``--in-process``).
"""
import time

import numpy as np

from . import macs, runtimes
from .contenders import RUNTIMES, batches, build, dense_model, token_case, tofe_plan, torch_timm, train_model
from .rounds import compare, ratio

# Untimed calls that open each turn of the gather / scatter section, and the timed calls of a turn. A call
# takes 0.1-1 ms: 20 timed calls were all in the cold start after the pause between turns (the other
# contenders' data in the caches, the core clocked down), and a turn's median measured that more than the
# operation. 200 calls (a turn of 20-200 ms) measure the steady state the forward sees.
TOKEN_WARMUP = 30
TOKEN_CALLS = 200


def _rounds(B, quick):
    """(rounds, calls a turn, untimed calls opening a turn) for one forward at batch B: more rounds where
    a call is short, and at batch 1 and 8 (0.05-0.6 s a call) one warm-up call a turn, as for the tokens:
    the one timed call of a turn otherwise began cold, after the pause between turns."""
    return (2, 1, 0) if quick else ((15, 1, 1) if B == 1 else ((7, 1, 1) if B <= 8 else (5, 1, 0)))


def _speed(res, key, B, c):
    s = res["seconds"][key][c]
    return {f"{c}_img_s": B / s["median"],
            f"{c}_img_s_spread": [B / s["rounds"]["max"], B / s["rounds"]["min"]]}


def bench_dense(quick, threads=None):
    """DeiT-S forward at batch 1 / 8 / 32: minitofe reference, minitofe fast, and where installed timm
    eager, onnxruntime and ``torch.compile`` (``bench.runtimes``). "skipped" says which of those were left
    out and why; "settings" what the runtimes reported when built (onnxruntime's session, the export)."""
    skipped = runtimes.skipped()
    others = [c for c in ("timm",) + RUNTIMES if c not in skipped]
    contenders = ["reference", "fast"] + others
    plan = [(f"batch{B}", *_rounds(B, quick)) for B in batches("dense", quick)]
    res = compare("dense", contenders, plan, quick, threads)
    rows = []
    for B in batches("dense", quick):
        key, row = f"batch{B}", {"model": dense_model(quick), "batch": B}
        for c in contenders:
            row.update(_speed(res, key, B, c))
        row["fast_vs_reference"] = ratio(res, key, "reference", "fast")     # time over time: a speed ratio
        for c in others:
            row[f"fast_vs_{c}"] = ratio(res, key, c, "fast")
        rows.append(row)
    return {"rows": rows, "threads": res["threads"], "skipped": skipped,
            "settings": {c: res["info"][c] for c in RUNTIMES if c in others}}


def bench_tofe(quick, threads=None):
    """ToFe top-k at 70 / 50 / 35 % of the dense MACs against dense, fast path, batch 1 and 32."""
    plan_macs = tofe_plan(quick)
    contenders = list(plan_macs)
    res = compare("tofe", contenders, [(f"batch{B}", *_rounds(B, quick)) for B in batches("tofe", quick)],
                  quick, threads)
    rows = []
    for B in batches("tofe", quick):
        key = f"batch{B}"
        for c in contenders[1:]:
            macs, ratios = plan_macs[c]
            rows.append({"batch": B, "macs_ratio": round(macs, 3),
                         "keep_ratios": [round(r, 3) for r in ratios],
                         "seconds": res["seconds"][key][c]["median"],
                         "dense_seconds": res["seconds"][key]["dense"]["median"],
                         "speedup": ratio(res, key, "dense", c)})
    return {"rows": rows, "threads": res["threads"]}


def _macs_turns(name, B, quick):
    """(rounds, calls a turn, warm-up calls) of the macs section: the Fashion-MNIST model's forwards take
    milliseconds, so its turns make several calls (after a few untimed ones), as the tokens' do."""
    if quick:
        return 2, 1, 0
    if name == macs.FMNIST:
        return (9, 20, 3) if B == 1 else (7, 5, 1)
    return (11, 1, 1) if B == 1 else (5, 1, 0)


def bench_macs(quick, threads=None):
    """Speed-up over dense against the realised MACs ratio: tofe, evit, dynamicvit at 35 / 50 / 70 % of
    the dense MACs, each on its own inference path with the fast kernels (``bench.macs``), batch 1 and 32,
    on the Fashion-MNIST model and DeiT-S; and each call's time by part (``macs.breakdown``, after the
    rounds)."""
    contenders = macs.contenders()
    keys = [(name, B, f"{name}/batch{B}") for name in macs.models(quick) for B in macs.batches(quick)]
    finish = [{"breakdown": key, "calls": 1 if quick or B > 1 else (10 if name == macs.FMNIST else 2)}
              for name, B, key in keys]
    res = compare("macs", contenders, [(key, *_macs_turns(name, B, quick)) for name, B, key in keys],
                  quick, threads, finish=finish)
    rows = []
    for i, (name, B, key) in enumerate(keys):
        for c in contenders:
            method, budget = macs.parse(c)
            info = res["info"][c][key]
            row = {"model": name, "batch": B, "method": method, "budget": budget,
                   "macs_ratio": round(info["macs_ratio"], 4), "keep_ratios": info["keep_ratios"],
                   "weights": info["weights"], "seconds": res["seconds"][key][c]["median"],
                   "dense_seconds": res["seconds"][key]["dense"]["median"],
                   "breakdown": res["finish"][c][i]["breakdown"]}
            if c != "dense":
                row["speedup"] = ratio(res, key, "dense", c)
                row["ideal"] = 1.0 / row["macs_ratio"]
                row["of_ideal"] = row["speedup"]["median"] * row["macs_ratio"]
            rows.append(row)
    return {"rows": rows, "threads": res["threads"],
            "turns": {key: _macs_turns(name, B, quick) for name, B, key in keys}}


def bench_tokens(quick, threads=None):
    """Gather / scatter of half of the tokens against a plain copy of as many bytes (output / base), and
    ``fast_first``: the fast kernels on the first half of every image's tokens, the rows the copy reads,
    which parts the fast path's ratio into what its loop costs and what the scattered rows cost."""
    from ..kernels import available
    x, idx, _ = token_case(quick)
    # the fast gather / scatter are Numba's: without it the section compares the reference with a copy
    contenders = ["copy", "reference"] + (["fast", "fast_first"] if available() else [])
    turns = (2, 5, 1) if quick else (15, TOKEN_CALLS, TOKEN_WARMUP)
    res = compare("tokens", contenders, [("gather", *turns), ("scatter", *turns)], quick, threads)
    out = {"shape": list(x.shape), "kept": int(idx.shape[1]), "threads": res["threads"]}
    for op in ("gather", "scatter"):
        for c in contenders:
            out[f"{op}_{c}_ms"] = 1e3 * res["seconds"][op][c]["median"]
        for c in contenders[1:]:
            out[f"{op}_{c}_vs_copy"] = ratio(res, op, c, "copy")
    return out


def bench_train(quick, threads=None):
    """One training step (forward, backward, AdamW) of DeiT-Ti at batch 32, against torch."""
    contenders = ["reference", "fast"] + (["torch"] if torch_timm()[0] else [])
    res = compare("train", contenders, [("step", 1 if quick else 5, 1)], quick, threads)
    out = {"model": train_model(), "batch": 4 if quick else 32, "threads": res["threads"]}
    for c in contenders:
        out[f"{c}_s"] = res["seconds"]["step"][c]["median"]
    out["fast_vs_reference"] = ratio(res, "step", "reference", "fast")
    if "torch" in contenders:
        out["fast_vs_torch"] = ratio(res, "step", "torch", "fast")
    return out


def dense_in_process(quick, reps=3):
    """The labelled extra: every dense contender in this one process, interleaved, medians (how the
    bench measured before; it costs timm, whose turn comes while the others' threads still spin)."""
    contenders = ["reference", "fast"] + (["timm"] if torch_timm()[0] else [])
    calls = {c: build("dense", c, quick) for c in contenders}
    for f in (f for c in contenders for f in calls[c].values()):
        f()                                                               # warm-up
    rows = []
    for key in calls[contenders[0]]:
        times = {c: [] for c in contenders}
        for r in range(reps):
            for c in contenders[r % len(contenders):] + contenders[:r % len(contenders)]:
                t0 = time.perf_counter()
                calls[c][key]()
                times[c].append(time.perf_counter() - t0)
        B = int(key[len("batch"):])
        rows.append({"batch": B, **{f"{c}_img_s": B / float(np.median(t)) for c, t in times.items()}})
    return rows
