"""One ToFe stage in training, as four forward/backward pairs read in the paper's order (docs/method.md,
"Token selector", "Keep path", "Freeze path"):

    select:  m = [1 (prefix), hard_gumbel(selector(x))[..., keep]]     (B, N)   (drop methods: * m_prev)
    keep:    h = Blocks(x), every block with attention key mask m        (B, N, C)
    freeze:  a = A(x) (``tofe``) or x (``tofe-identity``, ``tofe-cumulative``, the last stage under
             ``last_stage="drop"``)
    mix:     x_out = m * h + (1 - m) * a

All N tokens run through the blocks; the key mask makes kept queries attend only kept keys, so a frozen
token never influences a kept one (with ``fuse_frozen``, only through their fused token N, which joins
the keep path and is dropped after it: ``fuse.py``). The stage backward runs the pairs in reverse: mix,
keep, freeze, select. ``m`` is the hard straight-through decision (``hard=False``: the soft sample,
smooth for finite differences); the mask gets gradient from the mix, from every masked block and from
the budget loss (and, with the fused token, from its weights).
"""
from typing import Callable, NamedTuple

from .fuse import append_fused_backward, append_fused_forward
from .gumbel import gumbel_softmax_backward, gumbel_softmax_forward
from .losses import approx_loss_backward, approx_loss_forward
from .parts import approximator_of, selector_of
from ..backend import get_xp


class SelectCache(NamedTuple):
    sel_backward: Callable  # the selector kind's backward (``parts.SELECTORS``)
    c_sel: tuple          # the selector's cache
    c_gumbel: tuple       # the Gumbel-Softmax's cache
    keep_value: object    # (B, P) this stage's own decision y[..., 0] (drop methods; else None)
    m_prev: object        # (B, P) the previous stage's decision (drop methods; else None)
    num_prefix: int       # T


class FreezeCache(NamedTuple):
    approx_backward: Callable  # the approximator kind's backward (``parts.APPROXIMATORS``); None: identity
    c_approx: tuple       # the approximator's cache; None for the identity
    c_loss: tuple         # the L_approx cache; None without that term (beta = 0 or identity)
    weight: float         # beta, the weight of L_approx in the total loss
    num_prefix: int       # T


class StageCache(NamedTuple):
    h: object             # (B, N, C) the keep path's output, Blocks(x)
    a: object             # (B, N, C) the freeze path's output, A(x) or x
    m: object             # (B, N) the decision, prefix tokens 1
    c_select: SelectCache
    c_blocks: list        # one block cache per block of the stage, in forward order
    c_freeze: FreezeCache
    c_fuse: tuple = None  # the fused token's cache (``fuse.append_fused_forward``); None without it


def select_forward(x, m_prev, params, s, T, noise, tau, hard, drop, selector):
    """x: (B, N, C), m_prev: (B, P) -> selector logits (B, N, 2), m_patch (B, P), cache. ``drop``
    (``tofe-cumulative``): the decision is multiplied by the previous one (a dropped token never returns)
    and the selector's global context averages only the tokens still alive. ``selector``: its kind."""
    alive = (m_prev > 0.5).astype(m_prev.dtype) if drop else None                 # constant weights
    sel_logits, c_sel = selector.forward(x, params, f"tofe.selector.{s}.", T, alive)  # (B, N, 2)
    y, c_g = gumbel_softmax_forward(sel_logits[:, T:], noise, tau, hard=hard)       # (B, P, 2)
    m_patch = y[..., 0] * m_prev if drop else y[..., 0]                            # (B, P)
    cache = SelectCache(selector.backward, c_sel, c_g, y[..., 0] if drop else None, m_prev if drop else None,
                        T)
    return sel_logits, m_patch, cache


def select_backward(dm_patch, cache, dsel_logits=None):
    """dm_patch: (B, P) -> dx (B, N, C), grads, dm_prev (B, P) (0.0 unless drop). ``dsel_logits``:
    (B, N, 2) a gradient the logits receive besides the decision's (the fused token's weights)."""
    xp, T = get_xp(dm_patch), cache.num_prefix
    dm_prev = 0.0
    if cache.m_prev is not None:                       # m_patch = keep_value * m_prev
        dm_prev = dm_patch * cache.keep_value
        dm_patch = dm_patch * cache.m_prev
    dy = xp.zeros(dm_patch.shape + (2,), dtype=dm_patch.dtype)                     # (B, P, 2)
    dy[..., 0] = dm_patch
    B, P = dm_patch.shape
    dsel = xp.zeros((B, T + P, 2), dtype=dm_patch.dtype)                           # (B, N, 2)
    dsel[:, T:] = gumbel_softmax_backward(dy, cache.c_gumbel)
    if dsel_logits is not None:
        dsel = dsel + dsel_logits
    dx, grads = cache.sel_backward(dsel, cache.c_sel)
    return dx, grads, dm_prev


def keep_path_forward(x, m, params, blocks, num_heads, block_fwd):
    """The stage's blocks lo .. hi-1 (``blocks``) on all N tokens with key mask m (B, N) -> h, caches."""
    h, c_blocks = x, []
    for j in range(*blocks):
        h, c = block_fwd(h, params, f"blocks.{j}.", num_heads, key_mask=m)
        c_blocks.append(c)
    return h, c_blocks


def keep_path_backward(dh, dm, c_blocks, block_bwd):
    """-> dx (B, N, C), grads, dm (B, N): ``dm`` plus every block's key-mask gradient, in that order."""
    grads = {}
    for c in reversed(c_blocks):
        dh, g, dkey_mask = block_bwd(dh, c)
        grads.update(g)
        dm = dm + dkey_mask
    return dh, grads, dm


def freeze_path_forward(x, m_patch, params, s, tcfg, approximate, teacher_tokens, T):
    """-> a (B, N, C), the stage's L_approx term (None without it), cache. L_approx compares A(x) with
    the teacher's stage output on the frozen patches (m < 0.5, a constant: no gradient to the mask).
    ``approximate``: the stage has an approximator (``ToFeConfig.approximated_stages``); else its frozen
    tokens are carried unchanged, with no L_approx term."""
    if not approximate:
        return x, None, FreezeCache(None, None, None, tcfg.beta, T)
    approximator = approximator_of(tcfg)
    a, c_a = approximator.forward(x, params, f"tofe.approx.{s}.")
    term = c_loss = None
    if tcfg.beta > 0:
        frozen_w = (m_patch < 0.5).astype(m_patch.dtype)                            # (B, P)
        term, c_loss = approx_loss_forward(a[:, T:], teacher_tokens[:, T:], frozen_w)
    return a, term, FreezeCache(approximator.backward, c_a, c_loss, tcfg.beta, T)


def freeze_path_backward(da, cache):
    """da: (B, N, C) from the mix -> dx (B, N, C), grads (adds beta * dL_approx on the patches)."""
    if cache.c_loss is not None:
        da[:, cache.num_prefix:] += cache.weight * approx_loss_backward(1.0, cache.c_loss)
    if cache.c_approx is None:
        return da, {}
    return cache.approx_backward(da, cache.c_approx)


def mix_forward(h, a, m):
    """x_out = m * h + (1 - m) * a, per token; h, a: (B, N, C), m: (B, N)."""
    mm = m[..., None]
    return mm * h + (1.0 - mm) * a


def mix_backward(dx, h, a, m):
    """-> dh, da (B, N, C), dm (B, N)."""
    mm = m[..., None]
    return mm * dx, (1.0 - mm) * dx, ((h - a) * dx).sum(axis=-1)


def stage_train_forward(x, m_prev, params, cfg, tcfg, s, blocks, noise, tau, hard, teacher_tokens,
                        block_fwd):
    """Stage s on x (B, N, C) with blocks = (lo, hi) and its Gumbel noise (B, P, 2) -> x_out (B, N, C),
    m (B, N), selector logits (B, N, 2), the L_approx term (or None), cache."""
    T = cfg.num_prefix_tokens
    sel_logits, m_patch, c_select = select_forward(x, m_prev, params, s, T, noise, tau, hard,
                                                   not tcfg.reuses_tokens, selector_of(tcfg))
    xp = get_xp(x)
    m = xp.concatenate([xp.ones((x.shape[0], T), dtype=x.dtype), m_patch], axis=1)     # (B, N)
    x_in, m_in, c_fuse = x, m, None
    # the frozen patches' fused token as token N; when no image froze a patch it would be masked out of
    # every image's attention and carry no gradient: left out, so that keep-all stays exactly dense
    if tcfg.fuses_frozen and bool((m_patch < 0.5).any()):
        x_in, m_in, c_fuse = append_fused_forward(x, m, sel_logits, T)               # (B, N + 1, ...)
    h, c_blocks = keep_path_forward(x_in, m_in, params, blocks, cfg.num_heads, block_fwd)
    h = h[:, :x.shape[1]]                                   # the fused token is dropped at the stage's end
    approximate = tcfg.approximated_stages(cfg.depth)[s]
    a, term, c_freeze = freeze_path_forward(x, m_patch, params, s, tcfg, approximate, teacher_tokens, T)
    return mix_forward(h, a, m), m, sel_logits, term, StageCache(h, a, m, c_select, c_blocks, c_freeze,
                                                                 c_fuse)


def stage_train_backward(dx_out, dm_budget, dm_next, cache, block_bwd):
    """dx_out: (B, N, C); dm_budget: (B,) the budget loss's gradient per kept patch; dm_next: (B, P) the
    next stage's gradient into this decision (drop methods; else 0.0) -> dx, grads, dm_prev."""
    dh, da, dm = mix_backward(dx_out, cache.h, cache.a, cache.m)
    dsel_logits = None
    if cache.c_fuse is not None:                            # the fused token: no gradient from outside
        xp = get_xp(dh)
        dh = xp.concatenate([dh, xp.zeros_like(dh[:, :1])], axis=1)                 # (B, N + 1, C)
        dm = xp.concatenate([dm, xp.zeros_like(dm[:, :1])], axis=1)                 # (B, N + 1)
    dh, grads, dm = keep_path_backward(dh, dm, cache.c_blocks, block_bwd)
    if cache.c_fuse is not None:
        dh, dm, dsel_logits = append_fused_backward(dh, dm, cache.c_fuse)
    da, g = freeze_path_backward(da, cache.c_freeze)
    grads.update(g)
    dm_patch = dm[:, cache.c_select.num_prefix:] + dm_budget[:, None] + dm_next            # (B, P)
    dxs, g, dm_prev = select_backward(dm_patch, cache.c_select, dsel_logits)
    grads.update(g)
    return dh + da + dxs, grads, dm_prev
