"""The ToFe training forward and its hand-written backward (docs/method.md, "Keep path" / "Freeze
path", training, and "Losses").

All N tokens run through every block; an attention key mask makes kept queries attend only kept keys,
and each stage mixes per token

    x_out = m * Blocks(x) + (1 - m) * A(x)          m: (B, N), prefix tokens 1, patches from Gumbel

with ``m`` the hard straight-through Gumbel decision of the stage's selector (``hard=False`` uses the
soft relaxation instead: smooth, so the whole forward can be checked by finite differences). The loss is

    L = L_cls + alpha L_kd + beta L_approx + L_flops

where L_approx is summed over stages (each a mean over that stage's frozen patches, those with m < 0.5:
the decision is a constant for this term, so it sends no gradient into the mask) [ours], and is not
used with the identity approximator (it would have no parameters to train and would only pull the stage
*input* toward the teacher's stage *output*) [ours]. ``tofe-cumulative`` multiplies each stage's decision
by the previous one (a dropped token never returns) and carries dropped tokens unchanged (they are masked
out of all later attention). ``tofe-uniform`` replaces the MACs budget by a per-stage keep-ratio penalty
``lam * sum_i (mean keep_i - rho_i)^2`` toward the fixed equal ratios. The authors' ``evit`` and
``dynamicvit`` are handed to their own modules (``evit_model``, ``dynamicvit``).
"""
import numpy as np

from .approximator import approximator_backward, approximator_forward
from .dynamicvit import DynamicViTCache, dynamicvit_train_backward, dynamicvit_train_forward
from .evit_model import EvitCache, evit_train_backward, evit_train_forward
from .gumbel import gumbel_noise, gumbel_softmax_backward, gumbel_softmax_forward
from .losses import (approx_loss_backward, approx_loss_forward, flops_loss_backward, flops_loss_forward,
                     kd_loss_backward, kd_loss_forward)
from .macs import dense_macs, tofe_macs
from .params import check_tofe_params
from .scoring import stage_ranges
from .selector import selector_backward, selector_forward
from .inference import run_blocks
from ..backend import get_xp, to_numpy
from ..kernels import choose, use_fast
from ..nn.block import block_backward, block_forward
from ..nn.embed import embed_forward, head_backward, head_forward
from ..nn.layers import cross_entropy_backward, cross_entropy_forward, layernorm_forward
from ..nn.params import check_params
from ..nn.vit import check_images, dense_blocks_embed_backward


def teacher_forward(teacher_params, images, cfg, stages, fast=False):
    """The dense teacher: logits (B, K), its tokens at the end of every stage, list of (B, N, C), and
    (class-token heads) ``features`` (B, N, C), the final tokens after ``norm`` (DynamicViT distils them).
    ``fast=True`` runs the blocks on the Numba kernels (see ``minitofe.kernels``)."""
    check_images(images, cfg, check_params(teacher_params, cfg, extra_ok=("tofe.",)))
    run = choose(fast, run_blocks, like=images)
    x, _ = embed_forward(images, teacher_params, cfg)
    x = run(x, teacher_params, cfg, 0, stages[0])
    tokens = []
    for lo, hi in stage_ranges(cfg, stages):
        x = run(x, teacher_params, cfg, lo, hi)
        tokens.append(x)
    logits, _ = head_forward(x, teacher_params, cfg)
    out = {"logits": logits, "tokens": tokens}
    if "norm.weight" in teacher_params:
        out["features"] = layernorm_forward(x, teacher_params["norm.weight"], teacher_params["norm.bias"])[0]
    return out


def draw_noise(rng, cfg, tcfg, B, dtype):
    """Gumbel noise for one training forward: a list of S arrays (B, P, 2)."""
    S = len(tcfg.resolved_stages(cfg.depth))
    return [gumbel_noise(rng, (B, cfg.num_patches, 2), dtype) for _ in range(S)]


def _check_train_inputs(params, images, labels, cfg, tcfg, noise, teacher):
    if not tcfg.learned_selector:
        raise ValueError(f"method {tcfg.method!r} has no learned selector and is not trained "
                         f"(training-free); use tofe_inference")
    if not cfg.num_classes:
        raise ValueError("the backbone has no classifier head (num_classes=0): there are no logits to train")
    dtype = check_params(params, cfg, extra_ok=("tofe.",))
    check_images(images, cfg, dtype)
    check_tofe_params(params, cfg, tcfg)
    S = len(tcfg.resolved_stages(cfg.depth))
    want = (images.shape[0], cfg.num_patches, 2)
    if not isinstance(noise, (list, tuple)) or len(noise) != S:
        raise ValueError(f"noise must be a list of {S} arrays of shape {want} (one per stage)")
    for s, g in enumerate(noise):
        if not hasattr(g, "shape") or not hasattr(g, "dtype"):
            raise TypeError(f"noise[{s}] must be an array of shape {want}, got {type(g).__name__}")
        if tuple(g.shape) != want or g.dtype != dtype:
            raise ValueError(f"noise[{s}] must be {np.dtype(dtype)} of shape {want}, got {g.dtype} {tuple(g.shape)}")
        if not bool(get_xp(g).isfinite(g).all()):
            raise ValueError(f"noise[{s}] contains NaN or inf values")
    if teacher is not None:
        _check_teacher(teacher, images.shape[0], cfg, S)
    if teacher is None and (tcfg.alpha > 0 or (tcfg.beta > 0 and tcfg.uses_approximator)):
        raise ValueError("alpha > 0 or beta > 0 need the dense teacher's outputs: pass "
                         "teacher=teacher_forward(teacher_params, images, cfg, stages), or set alpha=beta=0")


def _check_teacher(teacher, B, cfg, S):
    """teacher: the dict of ``teacher_forward`` for this batch: logits (B, K), S token arrays (B, N, C)."""
    if not isinstance(teacher, dict) or not {"logits", "tokens"} <= set(teacher):
        got = f"a dict with keys {sorted(teacher)}" if isinstance(teacher, dict) else type(teacher).__name__
        raise TypeError(f"teacher must be the dict teacher_forward returns ('logits', 'tokens'), got {got}")
    want = (B, cfg.num_classes)
    if tuple(getattr(teacher["logits"], "shape", ())) != want:
        raise ValueError(f"teacher['logits'] must have shape {want}, got "
                         f"{tuple(getattr(teacher['logits'], 'shape', ()))} (another batch or model?)")
    tok = (B, cfg.num_tokens, cfg.embed_dim)
    shapes = [tuple(getattr(t, "shape", ())) for t in teacher["tokens"]]
    if len(shapes) != S or any(s != tok for s in shapes):
        raise ValueError(f"teacher['tokens'] must be {S} arrays of shape {tok} (one per stage), got {shapes}")


def tofe_train_forward(params, images, labels, cfg, tcfg, noise, teacher=None, tau=None, hard=True,
                       fast=False):
    """One training forward with the given Gumbel noise (list of S arrays (B, P, 2), see ``draw_noise``).

    Returns ``out`` with ``loss`` (total), ``losses`` {cls, kd, approx, flops, total}, ``logits``,
    ``selector_logits`` / ``masks`` / ``stage_outputs`` (one per stage: (B, N, 2), (B, N), (B, N, C)),
    ``kept`` / ``frozen`` / ``reused`` (one bool (B, P) NumPy array per stage, as in ``tofe_inference``),
    ``keep_ratios`` (S,) batch-mean fraction of patches kept, ``macs`` and ``macs_ratio`` (B,); and the
    cache for ``tofe_train_backward``.

    ``fast=True`` runs the blocks on the Numba kernels of ``minitofe.kernels`` (equal to the reference up
    to float rounding; the reference when Numba is absent or the arrays are on a GPU); the backward then
    uses the matching fast block backward. ``evit`` (keep rate ``budget.evit_keep_rate``, no noise) and
    ``dynamicvit`` run ``evit_model.evit_train_forward`` and ``dynamicvit.dynamicvit_train_forward``.
    """
    if tcfg.method == "evit":
        return evit_train_forward(params, images, labels, cfg, tcfg, fast=fast)
    if tcfg.method == "dynamicvit":
        return dynamicvit_train_forward(params, images, labels, cfg, tcfg, noise, teacher, tau, hard, fast)
    _check_train_inputs(params, images, labels, cfg, tcfg, noise, teacher)
    xp = get_xp(images)
    fast = use_fast(fast, images)
    block_fwd = choose(fast, block_forward)
    tau = tcfg.tau if tau is None else tau
    stages = tcfg.resolved_stages(cfg.depth)
    B, T, P, H = images.shape[0], cfg.num_prefix_tokens, cfg.num_patches, cfg.num_heads
    drop = not tcfg.reuses_tokens
    ones_prefix = xp.ones((B, T), dtype=images.dtype)
    out = {"selector_logits": [], "masks": [], "stage_outputs": [], "kept": [], "frozen": [], "reused": []}
    ever_frozen = xp.zeros((B, P), dtype=bool)
    x, c_embed = embed_forward(images, params, cfg)
    c_pre = []
    for i in range(stages[0]):
        x, c = block_fwd(x, params, f"blocks.{i}.", H)
        c_pre.append(c)
    m_prev = xp.ones((B, P), dtype=images.dtype)
    c_stages, approx_terms = [], []
    for s, (lo, hi) in enumerate(stage_ranges(cfg, stages)):
        alive = (m_prev > 0.5).astype(m_prev.dtype) if drop else None                 # constant weights
        sel_logits, c_sel = selector_forward(x, params, f"tofe.selector.{s}.", T, alive)  # (B, N, 2)
        y, c_g = gumbel_softmax_forward(sel_logits[:, T:], noise[s], tau, hard=hard)
        m_patch = y[..., 0] * m_prev if drop else y[..., 0]                          # (B, P)
        m = xp.concatenate([ones_prefix, m_patch], axis=1)                            # (B, N)
        h, c_blocks = x, []
        for j in range(lo, hi):
            h, c = block_fwd(h, params, f"blocks.{j}.", H, key_mask=m)
            c_blocks.append(c)
        c_a = c_al = None
        if tcfg.uses_approximator:
            a, c_a = approximator_forward(x, params, f"tofe.approx.{s}.")
            if tcfg.beta > 0:
                frozen_w = (m_patch < 0.5).astype(m_patch.dtype)   # the frozen decisions, a constant
                term, c_al = approx_loss_forward(a[:, T:], teacher["tokens"][s][:, T:], frozen_w)
                approx_terms.append(term)
        else:
            a = x
        mm = m[..., None]
        x_new = mm * h + (1.0 - mm) * a
        c_stages.append((x, h, a, m, y[..., 0], m_prev, c_sel, c_g, c_blocks, c_a, c_al))
        out["selector_logits"].append(sel_logits)
        out["masks"].append(m)
        out["stage_outputs"].append(x_new)
        kept_now = m_patch > 0.5
        frozen_now = ~kept_now if not drop else xp.zeros_like(kept_now)   # drop methods never freeze
        out["kept"].append(to_numpy(kept_now))
        out["frozen"].append(to_numpy(frozen_now))
        out["reused"].append(to_numpy(kept_now & ever_frozen))
        ever_frozen |= frozen_now
        m_prev, x = m_patch, x_new
    logits, c_head = head_forward(x, params, cfg)
    out["logits"] = logits
    l_cls, c_ce = cross_entropy_forward(logits, labels, tcfg.label_smoothing)
    l_kd, c_kd = (kd_loss_forward(logits, teacher["logits"], tcfg.kd_temperature)
                  if teacher is not None and tcfg.alpha > 0 else (0.0, None))
    l_approx = float(sum(approx_terms)) if approx_terms else 0.0
    # compute budget: kept counts n_s = T + sum(m) are differentiable through the straight-through mask
    kept = xp.stack([mk.sum(axis=1) for mk in out["masks"]], axis=1)                  # (B, S), incl. T
    macs, dmacs = tofe_macs(cfg, stages, kept, selector=True, approximator=tcfg.uses_approximator,
                            approx_reduction=tcfg.approx_reduction, drop=drop)
    dense = dense_macs(cfg)
    keep_frac = (kept - T) / P                                                         # (B, S)
    if tcfg.method == "tofe-uniform":
        c_fl = []
        l_flops = 0.0
        for s in range(len(stages)):
            term, c = flops_loss_forward(keep_frac[:, s], tcfg.keep_ratios[s], tcfg.lam)
            l_flops += float(term)
            c_fl.append(c)
    else:
        l_flops, c_fl = flops_loss_forward(macs / dense, tcfg.target_ratio, tcfg.lam, tcfg.per_image_budget)
        l_flops = float(l_flops)
    total = float(l_cls) + tcfg.alpha * float(l_kd) + tcfg.beta * l_approx + l_flops
    out["losses"] = {"cls": float(l_cls), "kd": float(l_kd), "approx": l_approx, "flops": l_flops, "total": total}
    out["loss"] = total
    out.update(macs=macs, macs_ratio=macs / dense, keep_ratios=keep_frac.mean(axis=0))
    cache = (cfg, tcfg, stages, drop, c_embed, c_pre, c_stages, c_head, c_ce, c_kd, c_fl, dmacs / dense, fast)
    return out, cache


def tofe_train_backward(cache):
    """Gradient of the total loss -> dimages (B, Cin, Hh, W), grads {key: array} (keys of params)."""
    if isinstance(cache, (EvitCache, DynamicViTCache)):
        return (evit_train_backward if isinstance(cache, EvitCache) else dynamicvit_train_backward)(cache)
    if not isinstance(cache, tuple) or len(cache) != 13:
        what = f"a tuple of {len(cache)}" if isinstance(cache, tuple) else type(cache).__name__
        raise TypeError(f"cache must be the cache tofe_train_forward returned (a tuple of 13), got {what}")
    cfg, tcfg, stages, drop, c_embed, c_pre, c_stages, c_head, c_ce, c_kd, c_fl, dratio_dkept, fast = cache
    block_bwd = choose(fast, block_backward)
    T, S = cfg.num_prefix_tokens, len(stages)
    dlogits = cross_entropy_backward(1.0, c_ce)
    if c_kd is not None:
        dlogits = dlogits + tcfg.alpha * kd_loss_backward(1.0, c_kd)
    if tcfg.method == "tofe-uniform":                       # d/dkept of lam (mean keep_frac_s - rho_s)^2
        dkept = [flops_loss_backward(1.0, c) / cfg.num_patches for c in c_fl]
    else:
        dratio = flops_loss_backward(1.0, c_fl)                                       # (B,)
        dkept = [dratio * dratio_dkept[:, s] for s in range(S)]
    dx, grads = head_backward(dlogits, c_head)
    dm_carry = 0.0                                  # dynamicvit: gradient into m_patch from the next stage
    for s in reversed(range(S)):
        x_in, h, a, m, hard, m_prev, c_sel, c_g, c_blocks, c_a, c_al = c_stages[s]
        mm = m[..., None]
        dh = mm * dx
        da = (1.0 - mm) * dx
        dm = ((h - a) * dx).sum(axis=-1)                                              # (B, N)
        for c in reversed(c_blocks):
            dh, g, dkm = block_bwd(dh, c)
            grads.update(g)
            dm = dm + dkm
        if c_al is not None:
            da[:, T:] += tcfg.beta * approx_loss_backward(1.0, c_al)
        if c_a is not None:
            da, g = approximator_backward(da, c_a)
            grads.update(g)
        dm_patch = dm[:, T:] + dkept[s][:, None] + dm_carry                          # (B, P)
        if drop:
            dm_carry = dm_patch * hard
            dm_patch = dm_patch * m_prev
        dy = get_xp(dx).zeros(dm_patch.shape + (2,), dtype=dx.dtype)
        dy[..., 0] = dm_patch
        dsel = get_xp(dx).zeros(dx.shape[:2] + (2,), dtype=dx.dtype)                 # (B, N, 2)
        dsel[:, T:] = gumbel_softmax_backward(dy, c_g)
        dxs, g = selector_backward(dsel, c_sel)
        grads.update(g)
        dx = dh + da + dxs
    return dense_blocks_embed_backward(dx, c_pre, c_embed, grads, fast), grads
