"""The fused frozen token: ToFe's option ``fuse_frozen`` (docs/method.md, "Fused frozen token (option)").

At each stage the frozen patches are summarised by one extra token, their weighted mean,

    q_j = max(keep_prob_j, tiny)                          (B, P) the selector's keep probability
    w_j = (1 - m_j) q_j / sum_k (1 - m_k) q_k             (B, P) w = 0 when nothing is frozen (no 0/0)
    f   = sum_j w_j x_j                                   (B, 1, C)

with ``m`` the stage's keep mask (the straight-through decision in training, 0/1 in inference). ``f``
joins the kept tokens as query and key for the stage's blocks, placed after them, and is dropped at the
stage's end (each stage fuses afresh). ``tiny`` is the dtype's smallest normal number: a selector so sure
that every frozen keep probability underflows to 0 still gives a mean (uniform), never a zero token.

Training (``append_fused_forward``) runs the stage's masked blocks on the N tokens and ``f`` as token N,
whose key mask is 1 when the image froze a patch (m < 0.5: a constant of the decision, like L_approx's
frozen set) and 0 otherwise (a stage where no image of the batch froze a patch leaves the token out: it
would be masked out everywhere, and keep-all training stays bit-identical to dense); the backward sends
the gradient of ``f`` to the patches, to the mask ``m`` and, through ``keep_prob``, to the selector's
logits. Inference (``with_fused_token``) appends ``f`` as token N where the image froze a patch, so the
stage gathers it with the kept tokens.
"""
from ..backend import get_xp
from ..nn.layers import softmax_backward, softmax_forward


def fuse_forward(patches, m_patch, keep_prob):
    """patches: (B, P, C), m_patch: (B, P) keep mask, keep_prob: (B, P) -> f (B, 1, C), cache."""
    xp = get_xp(patches)
    tiny = xp.finfo(patches.dtype).tiny
    q = xp.maximum(keep_prob, tiny)                                     # (B, P) > 0
    u = (1.0 - m_patch) * q                                             # (B, P) 0 on kept patches
    total = u.sum(axis=1, keepdims=True)                                # (B, 1)
    safe = xp.where(total > 0, total, 1.0)                              # nothing frozen: u = 0, w = 0
    w = u / safe                                                        # (B, P)
    f = (w[..., None] * patches).sum(axis=1, keepdims=True)             # (B, 1, C)
    return f, (patches, m_patch, keep_prob, q, w, total > 0, safe)


def fuse_backward(df, cache):
    """df: (B, 1, C) -> dpatches (B, P, C), dm_patch (B, P), dkeep_prob (B, P).

    With g_j = <x_j, df> and u_j = (1 - m_j) q_j: df/du_j = (g_j - sum_k w_k g_k) / sum_k u_k, so
    dm_j = -q_j (g_j - gbar) / U and dq_j = (1 - m_j) (g_j - gbar) / U; 0 where nothing is frozen (U = 0,
    where f is defined as 0 and is masked out of the blocks) and, through the floor, where keep_prob <= tiny.
    """
    patches, m_patch, keep_prob, q, w, some, safe = cache
    xp = get_xp(df)
    g = (patches * df).sum(axis=-1)                                     # (B, P)
    du = xp.where(some, (g - (w * g).sum(axis=1, keepdims=True)) / safe, 0.0)      # (B, P)
    tiny = xp.finfo(patches.dtype).tiny
    return w[..., None] * df, -q * du, (1.0 - m_patch) * du * (keep_prob > tiny)


def append_fused_forward(x, m, sel_logits, T):
    """Training: x (B, N, C), m (B, N) the stage's mask, sel_logits (B, N, 2) -> x_in (B, N + 1, C),
    m_in (B, N + 1), cache. Token N is f; its key mask is 1 where the image froze a patch."""
    xp = get_xp(x)
    p, _ = softmax_forward(sel_logits[:, T:])                           # (B, P, 2), [keep, freeze]
    f, c_fuse = fuse_forward(x[:, T:], m[:, T:], p[..., 0])
    froze = (m[:, T:] < 0.5).any(axis=1).astype(m.dtype)                # (B,) constant
    x_in = xp.concatenate([x, f], axis=1)
    m_in = xp.concatenate([m, froze[:, None]], axis=1)
    return x_in, m_in, (c_fuse, p, T)


def append_fused_backward(dx_in, dm_in, cache):
    """dx_in: (B, N + 1, C), dm_in: (B, N + 1) -> dx (B, N, C), dm (B, N), dsel_logits (B, N, 2). The
    fused token's own key-mask gradient is dropped (its mask is a constant of the decision)."""
    c_fuse, p, T = cache
    xp = get_xp(dx_in)
    N = dx_in.shape[1] - 1
    dpatches, dm_patch, dkeep_prob = fuse_backward(dx_in[:, N:], c_fuse)
    dx, dm = dx_in[:, :N].copy(), dm_in[:, :N].copy()
    dx[:, T:] += dpatches
    dm[:, T:] += dm_patch
    dp = xp.zeros_like(p)
    dp[..., 0] = dkeep_prob
    dsel_logits = xp.zeros((p.shape[0], N, 2), dtype=p.dtype)
    dsel_logits[:, T:] = softmax_backward(dp, p)
    return dx, dm, dsel_logits


def with_fused_token(x, token_mask, frozen, keep_prob, T):
    """Inference: x (B, N, C), token_mask (B, N) the tokens the stage's blocks run on, frozen (B, P) bool,
    keep_prob (B, P) -> x_in (B, N + 1, C), token_mask_in (B, N + 1): f as token N, run where the image
    froze a patch (one fused token per image, none for an image that froze nothing)."""
    xp = get_xp(x)
    if keep_prob is None or tuple(keep_prob.shape) != tuple(frozen.shape):
        raise ValueError(f"fuse_frozen: the stage needs the selector's keep_prob of shape "
                         f"{tuple(frozen.shape)} to weight its frozen tokens, got "
                         f"{None if keep_prob is None else tuple(keep_prob.shape)}")
    f, _ = fuse_forward(x[:, T:], (~frozen).astype(x.dtype), keep_prob)
    return (xp.concatenate([x, f], axis=1),
            xp.concatenate([token_mask, frozen.any(axis=1)[:, None]], axis=1))
