"""The timed sections of ``minitofe bench`` (dense, ToFe, tokens, train) and the timer they share:
interleaved repetitions, medians (see ``minitofe.bench``)."""
import time

import numpy as np

from .. import kernels
from ..config import get_config
from ..nn.layers import cross_entropy_backward, cross_entropy_forward
from ..nn.params import init_params
from ..nn.vit import vit_backward, vit_forward
from ..train.optim import adamw_init, adamw_step
from ..tofe import tokens
from ..tofe.config import ToFeConfig
from ..tofe.inference import tofe_inference
from ..tofe.macs import dense_macs, tofe_macs
from ..tofe.params import init_tofe_params

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
        ops = kernels.ops(True, like=x)                 # the Numba twins (None without Numba: the reference)
        fns = {"reference": lambda: tofe_inference(params, x, cfg, dense),
               "fast": lambda: tofe_inference(params, x, cfg, dense, ops=ops)}
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
        ops = kernels.ops(True, like=x)
        fns = {"dense": lambda: tofe_inference(params, x, cfg, dense, ops=ops)}
        plan = {}
        for target in (0.70, 0.50, 0.35):
            macs, ratios = keep_ratios_for(cfg, stages, target)
            plan[f"tofe{round(100 * target)}"] = (macs, ratios)
            fns[f"tofe{round(100 * target)}"] = (
                lambda r=ratios: tofe_inference(params, x, cfg, tcfg, keep_ratios=r, ops=ops))
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

        def step(params=params, state=state, ops=kernels.ops(fast, like=x)):
            logits, cache = vit_forward(params, x, cfg, ops=ops)
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
