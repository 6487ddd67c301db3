"""Answers a student might hand in, for tests/test_exercises.py: for every exercise, one that calls the
package function it should replace, and typical wrong ones, each with a phrase its FAIL must contain.

Each answer is the whole exercise cell; it runs after the notebook's import cell (so ``np``, ``LN_EPS``
and the layer functions are there, as in the notebook).
"""

# exercise -> a cell that calls the package instead of writing the function
CALLS_PACKAGE = {
    "layernorm_grad": """
def layernorm_grad(dy, x, w, eps=LN_EPS):
    _, cache = layernorm_forward(x, w, np.zeros_like(w), eps)
    return layernorm_backward(dy, cache)
""",
    "masked_softmax": """
from minitofe.nn.attention import masked_softmax_forward as msf
def masked_softmax(s, keep):
    return msf(s, keep)[0]
""",
    "masked_softmax_grad": """
import minitofe.nn.attention as att
def masked_softmax_grad(dA, s, keep):
    return att.masked_softmax_backward(dA, att.masked_softmax_forward(s, keep)[1])
""",
    "straight_through_mask": """
from minitofe.tofe import gumbel
def straight_through_mask(logits, noise, tau):
    return gumbel.gumbel_softmax_forward(logits, noise, tau, hard=True)[0]
""",
    "straight_through_grad": """
def straight_through_grad(dm, logits, noise, tau):
    from minitofe.tofe.gumbel import gumbel_softmax_backward, gumbel_softmax_forward
    return gumbel_softmax_backward(dm, gumbel_softmax_forward(logits, noise, tau, hard=False)[1])
""",
    "distill_loss": """
from minitofe.tofe.losses import kd_loss_backward, kd_loss_forward
def distill_loss(student_logits, teacher_logits, T):
    loss, cache = kd_loss_forward(student_logits, teacher_logits, T)
    return loss, kd_loss_backward(1.0, cache)
""",
    "approximator_grad": """
def approximator_grad(dy, x, params, prefix):
    from minitofe.tofe.approximator import approximator_backward, approximator_forward
    return approximator_backward(dy, approximator_forward(x, params, prefix)[1])
""",
    "approx_loss": """
def approx_loss(approx_tokens, teacher_tokens, frozen):
    from minitofe.tofe.losses import approx_loss_backward, approx_loss_forward
    loss, cache = approx_loss_forward(approx_tokens, teacher_tokens, frozen)
    return loss, approx_loss_backward(1.0, cache)
""",
    "selector_logits": """
from minitofe.tofe.selector import selector_forward
def selector_logits(x, params, prefix, num_prefix):
    return selector_forward(x, params, prefix, num_prefix)[0]
""",
    "selector_grad": """
from minitofe.tofe.selector import selector_backward, selector_forward
def selector_grad(dlogits, x, params, prefix, num_prefix):
    return selector_backward(dlogits, selector_forward(x, params, prefix, num_prefix)[1])
""",
    "gather_scatter": """
def gather_kept(x, keep):
    return gather_tokens(x, mask_to_indices(keep))

def scatter_kept(base, rows, keep):
    return scatter_tokens(base, rows, mask_to_indices(keep))
""",
    "stage_forward": """
from minitofe.tofe.approximator import approximator_forward
def stage_forward(x, kept, params, blocks, num_heads, approx):
    B, N, _ = x.shape
    keep = np.concatenate([np.ones((B, N - kept.shape[1]), dtype=bool), kept], axis=1)
    idx = mask_to_indices(keep)
    h = gather_tokens(x, idx)
    for j in range(*blocks):
        h, _ = block_forward(h, params, f"blocks.{j}.", num_heads)
    out = scatter_tokens(x, h, idx)
    out[~keep] = approximator_forward(x[~keep], params, approx)[0]
    return out
""",
    "reused_tokens": """
from minitofe.exercises import reused_by_predict
def reused_tokens(kept):
    return reused_by_predict(kept)
""",
    "stage_macs": """
from minitofe.tofe.macs import approximator_macs, block_macs, selector_macs
def stage_macs(n, N, C, mlp_ratio, num_blocks, r):
    return num_blocks * block_macs(n, C, mlp_ratio) + selector_macs(N, C) + approximator_macs(N - n, C, r)
""",
    "budget_loss": """
from minitofe.tofe.losses import flops_loss_backward, flops_loss_forward
def budget_loss(kept, cfg, stages, target, lam):
    macs, dmacs = tofe_macs(cfg, stages, kept)
    loss, cache = flops_loss_forward(macs / dense_macs(cfg), target, lam)
    return loss, flops_loss_backward(1.0, cache)[:, None] * dmacs / dense_macs(cfg)
""",
    "decide_tokens": """
from minitofe.tofe.scoring import topk_mask as pick
def decide_tokens(keep_prob, mode, ratio, threshold=0.5):
    if mode == "topk":
        return pick(keep_prob, int(round(ratio * keep_prob.shape[1])))
    return keep_prob > threshold
""",
}

# exercise -> [(a typical wrong cell, a phrase its FAIL message must contain)]
WRONG = {
    "layernorm_grad": [("""
def layernorm_grad(dy, x, w, eps=LN_EPS):
    xc = x - x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt((xc ** 2).mean(-1, keepdims=True) + eps)
    g = dy * w
    lead = tuple(range(dy.ndim - 1))
    return rstd * (g - g.mean(-1, keepdims=True)), (dy * xc * rstd).sum(lead), dy.sum(lead)
""", "misses the term - xhat * mean(g * xhat)"), ("""
def layernorm_grad(dy, x, w, eps=LN_EPS):
    xc = x - x.mean(-1, keepdims=True)
    rstd = 1 / (np.sqrt((xc ** 2).mean(-1, keepdims=True)) + eps)
    xhat, g = xc * rstd, dy * w
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    lead = tuple(range(dy.ndim - 1))
    return dx, (dy * xhat).sum(lead), dy.sum(lead)
""", "eps is added outside the square root"), ("""
def layernorm_grad(dy, x, w, eps=LN_EPS):
    xc = x - x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(xc.var(-1, ddof=1, keepdims=True) + eps)
    xhat, g = xc * rstd, dy * w
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    lead = tuple(range(dy.ndim - 1))
    return dx, (dy * xhat).sum(lead), dy.sum(lead)
""", "unbiased"), ("""
def layernorm_grad(dy, x, w, eps=LN_EPS):
    x -= x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps)
    xhat, g = x * rstd, dy * w
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    lead = tuple(range(dy.ndim - 1))
    return dx, (dy * xhat).sum(lead), dy.sum(lead)
""", "changed its input x in place")],
    "masked_softmax": [("""
def masked_softmax(s, keep):
    N = s.shape[-1]
    e = np.exp(s - s.max(-1, keepdims=True))
    A = e / e.sum(-1, keepdims=True)
    return A * (keep[:, None, None, :] * (1 - np.eye(N)) + np.eye(N))
""", "softmax first, mask after, without renormalising"), ("""
def masked_softmax(s, keep):
    e = keep[:, None, None, :] * np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
""", "the diagonal is masked too"), ("""
def masked_softmax(s, keep):
    N = s.shape[-1]
    m = keep[:, None, None, :] * (1 - np.eye(N)) + np.eye(N)
    e = m * np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
""", "the row maximum is taken over every key"), ("""
def masked_softmax(s, keep):
    N = s.shape[-1]
    m = keep[:, None, :, None] * (1 - np.eye(N)) + np.eye(N)
    e = m * np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
""", "query rows")],
    "masked_softmax_grad": [("""
def masked_softmax_grad(dA, s, keep):
    N = s.shape[-1]
    m = keep[:, None, None, :] * (1 - np.eye(N)) + np.eye(N)
    e = np.exp(s - s.max(-1, keepdims=True))
    p = e / (m * e).sum(-1, keepdims=True)
    A = m * p
    g = dA - (A * dA).sum(-1, keepdims=True)
    return A * g, (p * g).sum(axis=(1, 2))
""", "dkeep includes the diagonal"), ("""
def masked_softmax_grad(dA, s, keep):
    N = s.shape[-1]
    m = keep[:, None, None, :] * (1 - np.eye(N)) + np.eye(N)
    e = np.exp(s - s.max(-1, keepdims=True))
    p = e / (m * e).sum(-1, keepdims=True)
    A = m * p
    g = dA - (A * dA).sum(-1, keepdims=True)
    return A * g, ((p * dA).sum(axis=1) * (1 - np.eye(N))).sum(axis=1)
""", "misses the normaliser's term"), ("""
def masked_softmax_grad(dA, s, keep):
    N = s.shape[-1]
    m = keep[:, None, None, :] * (1 - np.eye(N)) + np.eye(N)
    e = np.exp(s - s.max(-1, keepdims=True))
    p = e / (m * e).sum(-1, keepdims=True)
    A = m * p
    g = dA - (A * dA).sum(-1, keepdims=True)
    return A * g, ((p * g).sum(axis=1) * (1 - np.eye(N))).sum(axis=2)
""", "sums over the keys j")],
    "straight_through_mask": [("""
def straight_through_mask(logits, noise, tau):
    z = (logits + noise) / tau
    keep = (z[..., 0] > z[..., 1]).astype(float)
    return np.stack([keep, 1 - keep], axis=-1)
""", "ties go to freeze"), ("""
def straight_through_mask(logits, noise, tau):
    keep = (logits[..., 0] >= logits[..., 1]).astype(float)
    return np.stack([keep, 1 - keep], axis=-1)
""", "the noise is missing"), ("""
def straight_through_mask(logits, noise, tau):
    z = (logits + noise) / tau
    y = np.exp(z - z.max(-1, keepdims=True))
    y = y / y.sum(-1, keepdims=True)
    hard = (np.arange(2) == y.argmax(-1)[..., None]).astype(float)
    return hard + y - y
""", "exactly 0.0 or 1.0")],
    "straight_through_grad": [("""
def straight_through_grad(dm, logits, noise, tau):
    z = (logits + noise) / tau
    y = np.exp(z - z.max(-1, keepdims=True))
    y /= y.sum(-1, keepdims=True)
    return y * (dm - (y * dm).sum(-1, keepdims=True))
""", "off by a factor tau"), ("""
def straight_through_grad(dm, logits, noise, tau):
    return np.zeros_like(logits)
""", "true gradient of the hard one-hot"), ("""
def straight_through_grad(dm, logits, noise, tau):
    z = logits / tau
    y = np.exp(z - z.max(-1, keepdims=True))
    y /= y.sum(-1, keepdims=True)
    return y * (dm - (y * dm).sum(-1, keepdims=True)) / tau
""", "misses the noise")],
    "distill_loss": [("""
def distill_loss(student_logits, teacher_logits, T):
    ls = student_logits / T - np.log(np.exp(student_logits / T).sum(-1, keepdims=True))
    lt = teacher_logits / T - np.log(np.exp(teacher_logits / T).sum(-1, keepdims=True))
    pt = np.exp(lt)
    B = len(student_logits)
    return (pt * (lt - ls)).sum() / B, (np.exp(ls) - pt) / (T * B)
""", "misses the factor T^2"), ("""
def distill_loss(student_logits, teacher_logits, T):
    zs = student_logits / T
    zt = teacher_logits / T
    ls = zs - zs.max(-1, keepdims=True); ls = ls - np.log(np.exp(ls).sum(-1, keepdims=True))
    lt = zt - zt.max(-1, keepdims=True); lt = lt - np.log(np.exp(lt).sum(-1, keepdims=True))
    ps, pt = np.exp(ls), np.exp(lt)
    B = len(zs)
    return T * T * (ps * (ls - lt)).sum() / B, T * (ps - pt) / B
""", "the wrong way round"), ("""
def distill_loss(student_logits, teacher_logits, T):
    def lsm(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
    ls, lt = lsm(student_logits / T), lsm(teacher_logits / T)
    pt = np.exp(lt)
    B = len(ls)
    return T * T * (pt * (lt - ls)).sum() / B, T * T * (np.exp(ls) - pt) / B
""", "off by a factor T"), ("""
def distill_loss(student_logits, teacher_logits, T):
    ps = np.exp(student_logits / T); ps = ps / ps.sum(-1, keepdims=True)
    pt = np.exp(teacher_logits / T); pt = pt / pt.sum(-1, keepdims=True)
    B = len(ps)
    return T * T * (pt * np.log(pt / ps)).sum() / B, T * (ps - pt) / B
""", "with logits near +-2000")],
    "approximator_grad": [("""
def approximator_grad(dy, x, params, prefix):
    p = lambda name: params[prefix + name]
    n, c_ln = layernorm_forward(x, p("norm.weight"), p("norm.bias"))
    h, c_fc1 = linear_forward(n, p("fc1.weight"), p("fc1.bias"))
    a, c_gelu = gelu_forward(h)
    _, c_fc2 = linear_forward(a, p("fc2.weight"), p("fc2.bias"))
    grads = {}
    da, grads[prefix + "fc2.weight"], grads[prefix + "fc2.bias"] = linear_backward(dy, c_fc2)
    dn, grads[prefix + "fc1.weight"], grads[prefix + "fc1.bias"] = linear_backward(gelu_backward(da, c_gelu), c_fc1)
    dx, grads[prefix + "norm.weight"], grads[prefix + "norm.bias"] = layernorm_backward(dn, c_ln)
    return dx, grads
""", "misses the residual"), ("""
def approximator_grad(dy, x, params, prefix):
    p = lambda name: params[prefix + name]
    n, c_ln = layernorm_forward(x, p("norm.weight"), p("norm.bias"))
    h, c_fc1 = linear_forward(n, p("fc1.weight"), p("fc1.bias"))
    a, c_gelu = gelu_forward(h)
    _, c_fc2 = linear_forward(a, p("fc2.weight"), p("fc2.bias"))
    grads = {}
    da, grads[prefix + "fc2.weight"], grads[prefix + "fc2.bias"] = linear_backward(dy, c_fc2)
    dn, grads[prefix + "fc1.weight"], grads[prefix + "fc1.bias"] = linear_backward(da, c_fc1)
    dxm, grads[prefix + "norm.weight"], grads[prefix + "norm.bias"] = layernorm_backward(dn, c_ln)
    return dy + dxm, grads
""", "skips the GELU's backward"), ("""
def approximator_grad(dy, x, params, prefix):
    p = lambda name: params[prefix + name]
    n, c_ln = layernorm_forward(x, p("norm.weight"), p("norm.bias"))
    h, c_fc1 = linear_forward(n, p("fc1.weight"), p("fc1.bias"))
    a, c_gelu = gelu_forward(h)
    _, c_fc2 = linear_forward(a, p("fc2.weight"), p("fc2.bias"))
    grads = {}
    da, grads["fc2.weight"], grads["fc2.bias"] = linear_backward(dy, c_fc2)
    dn, grads["fc1.weight"], grads["fc1.bias"] = linear_backward(gelu_backward(da, c_gelu), c_fc1)
    dxm, grads["norm.weight"], grads["norm.bias"] = layernorm_backward(dn, c_ln)
    return dy + dxm, grads
""", "grads should be a dict with the keys")],
    "approx_loss": [("""
def approx_loss(approx_tokens, teacher_tokens, frozen):
    C = approx_tokens.shape[-1]
    diff = approx_tokens - teacher_tokens
    loss = (frozen * (diff ** 2).sum(-1)).sum() / (C * frozen.size)
    return loss, 2 * frozen[..., None] * diff / (C * frozen.size)
""", "averages over all B * P patches"), ("""
def approx_loss(approx_tokens, teacher_tokens, frozen):
    C = approx_tokens.shape[-1]
    diff = approx_tokens - teacher_tokens
    n = frozen.sum()
    return (frozen * (diff ** 2).sum(-1)).sum() / (C * n), 2 * frozen[..., None] * diff / (C * n)
""", "it should be 0"), ("""
def approx_loss(approx_tokens, teacher_tokens, frozen):
    C = approx_tokens.shape[-1]
    diff = approx_tokens - teacher_tokens
    d = C * max(frozen.sum(), 1)
    return (frozen * (diff ** 2).sum(-1)).sum() / d, frozen[..., None] * diff / d
""", "misses the factor 2")],
    "selector_logits": [("""
def selector_logits(x, params, prefix, num_prefix):
    p = lambda name: params[prefix + name]
    n, _ = layernorm_forward(x, p("norm.weight"), p("norm.bias"))
    u, _ = gelu_forward(linear_forward(n, p("fc1.weight"), p("fc1.bias"))[0])
    g = np.broadcast_to(u.mean(axis=1, keepdims=True), u.shape)
    w, _ = gelu_forward(linear_forward(np.concatenate([u, g], -1), p("fc2.weight"), p("fc2.bias"))[0])
    return linear_forward(w, p("fc3.weight"), p("fc3.bias"))[0]
""", "averages all N tokens"), ("""
def selector_logits(x, params, prefix, num_prefix):
    p = lambda name: params[prefix + name]
    n, _ = layernorm_forward(x, p("norm.weight"), p("norm.bias"))
    u, _ = gelu_forward(linear_forward(n, p("fc1.weight"), p("fc1.bias"))[0])
    g = np.broadcast_to(u[:, num_prefix:].mean(axis=1, keepdims=True), u.shape)
    w, _ = gelu_forward(linear_forward(np.concatenate([g, u], -1), p("fc2.weight"), p("fc2.bias"))[0])
    return linear_forward(w, p("fc3.weight"), p("fc3.bias"))[0]
""", "v = [g, u]"), ("""
def selector_logits(x, params, prefix, num_prefix):
    p = lambda name: params[prefix + name]
    n, _ = layernorm_forward(x, p("norm.weight"), p("norm.bias"))
    u, _ = gelu_forward(linear_forward(n, p("fc1.weight"), p("fc1.bias"))[0])
    g = np.broadcast_to(u[:, num_prefix:].mean(axis=1, keepdims=True), u.shape)
    w, _ = linear_forward(np.concatenate([u, g], -1), p("fc2.weight"), p("fc2.bias"))
    return linear_forward(w, p("fc3.weight"), p("fc3.bias"))[0]
""", "the GELU after fc2 is missing")],
    "gather_scatter": [("""
def gather_kept(x, keep):
    idx = np.argsort(keep, axis=1, kind="stable")[:, ::-1][:, :int(keep[0].sum())]
    return x[np.arange(x.shape[0])[:, None], idx]

def scatter_kept(base, rows, keep):
    base[keep] = rows.reshape(-1, base.shape[-1])
    return base
""", "original order"), ("""
def gather_kept(x, keep):
    return x[keep].reshape(x.shape[0], -1, x.shape[-1])

def scatter_kept(base, rows, keep):
    base[keep] = rows.reshape(-1, base.shape[-1])
    return base
""", "writes into its input base")],
    "reused_tokens": [("""
def reused_tokens(kept):
    return [np.zeros_like(kept[0])] + [k & ~prev for prev, k in zip(kept, kept[1:])]
""", "frozen at the stage just before"), ("""
def reused_tokens(kept):
    ever_kept = np.zeros_like(kept[0])
    out = []
    for k in kept:
        out.append(k & ever_kept)
        ever_kept = ever_kept | k
    return out
""", "not kept at an earlier one")],
    "stage_macs": [("""
def stage_macs(n, N, C, mlp_ratio, num_blocks, r):
    block = (4 + 2 * mlp_ratio) * n * C * C
    selector = N * C * (C // 2) + N * C * (C // 4) + N * (C // 4) * 2
    return num_blocks * block + selector + 2 * (N - n) * C * (C // r)
""", "attention matmuls"), ("""
def stage_macs(n, N, C, mlp_ratio, num_blocks, r):
    block = (4 + 2 * mlp_ratio) * n * C * C + 2 * n * n * C
    selector = n * C * (C // 2) + n * C * (C // 4) + n * (C // 4) * 2
    return num_blocks * block + selector + 2 * (N - n) * C * (C // r)
""", "the selector scores all N tokens"), ("""
def stage_macs(n, N, C, mlp_ratio, num_blocks, r):
    block = (4 + 2 * mlp_ratio) * n * C * C + 2 * n * n * C
    selector = N * C * (C // 2) + N * (C // 2) * (C // 4) + N * (C // 4) * 2
    return num_blocks * block + selector + 2 * (N - n) * C * (C // r)
""", "second layer reads v = [u, g]")],
    "budget_loss": [("""
def budget_loss(kept, cfg, stages, target, lam):
    macs, dmacs = tofe_macs(cfg, stages, kept)
    R = macs / dense_macs(cfg)
    loss = lam * (R.mean() - target) ** 2
    return loss, 2 * lam * (R.mean() - target) * dmacs / dense_macs(cfg)
""", "divide by B"), ("""
def budget_loss(kept, cfg, stages, target, lam):
    macs, dmacs = tofe_macs(cfg, stages, kept)
    R = macs / dense_macs(cfg)
    return lam * ((R - target) ** 2).mean(), (2 * lam * (R - target) / len(R))[:, None] * dmacs / dense_macs(cfg)
""", "squares each image's deviation"), ("""
def budget_loss(kept, cfg, stages, target, lam):
    macs, dmacs = tofe_macs(cfg, stages, kept)
    dev = (macs / dense_macs(cfg)).mean() - target
    return lam * dev ** 2, -2 * lam * dev / len(kept) * dmacs / dense_macs(cfg)
""", "the sign is flipped")],
    "decide_tokens": [("""
def decide_tokens(keep_prob, mode, ratio, threshold=0.5):
    if mode == "threshold":
        return keep_prob >= threshold
    order = np.argsort(-keep_prob, axis=1, kind="stable")[:, :int(round(ratio * keep_prob.shape[1]))]
    keep = np.zeros(keep_prob.shape, dtype=bool)
    np.put_along_axis(keep, order, True, axis=1)
    return keep
""", "the comparison is >="), ("""
def decide_tokens(keep_prob, mode, ratio, threshold=0.5):
    if mode == "threshold":
        return keep_prob > threshold
    K = int(ratio * keep_prob.shape[1])
    order = np.argsort(-keep_prob, axis=1, kind="stable")[:, :K]
    keep = np.zeros(keep_prob.shape, dtype=bool)
    np.put_along_axis(keep, order, True, axis=1)
    return keep
""", "K = int(ratio * P) floors: ratio * P = 29.74"), ("""
def decide_tokens(keep_prob, mode, ratio, threshold=0.5):
    if mode == "threshold":
        return keep_prob > threshold
    K = int(ratio * keep_prob.shape[1] + 0.5)
    order = np.argsort(-keep_prob, axis=1, kind="stable")[:, :K]
    keep = np.zeros(keep_prob.shape, dtype=bool)
    np.put_along_axis(keep, order, True, axis=1)
    return keep
""", "rounds halves up"), ("""
def decide_tokens(keep_prob, mode, ratio, threshold=0.5):
    if mode == "threshold":
        return keep_prob > threshold
    K = int(round(ratio * keep_prob.shape[1]))
    order = np.argsort(keep_prob, axis=1, kind="stable")[:, ::-1][:, :K]
    keep = np.zeros(keep_prob.shape, dtype=bool)
    np.put_along_axis(keep, order, True, axis=1)
    return keep
""", "ties go to the higher index")],
}

_STAGE = """
def stage_forward(x, kept, params, blocks, num_heads, approx):
    B, N, _ = x.shape
    T = N - kept.shape[1]
    keep = np.concatenate([np.ones((B, T), dtype=bool), kept], axis=1)
    idx = mask_to_indices(keep)
    h = gather_tokens(x, idx)
    for j in range(*blocks):
        h, _ = block_forward(h, params, f"blocks.{j}.", num_heads)
    out = scatter_tokens(x, h, idx)
    frozen = x[~keep]
    n, _ = layernorm_forward(frozen, params[approx + "norm.weight"], params[approx + "norm.bias"])
    a, _ = gelu_forward(linear_forward(n, params[approx + "fc1.weight"], params[approx + "fc1.bias"])[0])
    out[~keep] = frozen + linear_forward(a, params[approx + "fc2.weight"], params[approx + "fc2.bias"])[0]
    return out
"""
WRONG["stage_forward"] = [
    (_STAGE.replace("    h = gather_tokens(x, idx)\n", "    h = x\n").replace("out = scatter_tokens(x, h, idx)",
                                                                           "out = np.where(keep[..., None], h, x)"),
     "the blocks ran on every token"),
    (_STAGE.replace("out[~keep] = frozen + linear_forward", "out[~keep] = linear_forward"),
     "the approximator misses its residual"),
    (_STAGE.replace("range(*blocks)", "range(blocks[0], blocks[1] + 1)"), "one block too many"),
    (_STAGE.replace("keep = np.concatenate([np.ones((B, T), dtype=bool), kept], axis=1)",
                    "keep = np.concatenate([np.zeros((B, T), dtype=bool), kept], axis=1)"),
     "the prefix (class) tokens did not go through the blocks"),
]
_SEL_GRAD = """
def selector_grad(dlogits, x, params, prefix, num_prefix):
    p = lambda name: params[prefix + name]
    n, c_ln = layernorm_forward(x, p("norm.weight"), p("norm.bias"))
    h1, c_fc1 = linear_forward(n, p("fc1.weight"), p("fc1.bias"))
    u, c_g1 = gelu_forward(h1)
    g = u[:, num_prefix:].mean(axis=1, keepdims=True)
    h2, c_fc2 = linear_forward(np.concatenate([u, np.broadcast_to(g, u.shape)], -1), p("fc2.weight"), p("fc2.bias"))
    w, c_g2 = gelu_forward(h2)
    _, c_fc3 = linear_forward(w, p("fc3.weight"), p("fc3.bias"))
    grads = {}
    dw, grads[prefix + "fc3.weight"], grads[prefix + "fc3.bias"] = linear_backward(dlogits, c_fc3)
    dv, grads[prefix + "fc2.weight"], grads[prefix + "fc2.bias"] = linear_backward(gelu_backward(dw, c_g2), c_fc2)
    half, P = u.shape[-1], x.shape[1] - num_prefix
    du = dv[..., :half].copy()
    du[:, num_prefix:] += dv[..., half:].sum(axis=1, keepdims=True) / P
    dn, grads[prefix + "fc1.weight"], grads[prefix + "fc1.bias"] = linear_backward(gelu_backward(du, c_g1), c_fc1)
    dx, grads[prefix + "norm.weight"], grads[prefix + "norm.bias"] = layernorm_backward(dn, c_ln)
    return dx, grads
"""
WRONG["selector_grad"] = [
    (_SEL_GRAD.replace("    du[:, num_prefix:] += dv[..., half:].sum(axis=1, keepdims=True) / P\n", ""),
     "misses the global context's gradient"),
    (_SEL_GRAD.replace("du[:, num_prefix:] += dv[..., half:].sum(axis=1, keepdims=True) / P",
                       "du += dv[..., half:].sum(axis=1, keepdims=True) / P"), "reaches the prefix tokens"),
    (_SEL_GRAD.replace("du[:, num_prefix:] += dv[..., half:].sum(axis=1, keepdims=True) / P",
                       "du[:, num_prefix:] += dv[..., half:].sum(axis=1, keepdims=True) / x.shape[1]"),
     "divided by N"),
]

# A wrong axis, for the exercises where it keeps the shape (elsewhere the shape check says it).
WRONG["masked_softmax"].append(("""
def masked_softmax(s, keep):
    allowed = (keep[:, None, None, :] > 0) | np.eye(s.shape[-1], dtype=bool)
    z = np.where(allowed, s, -np.inf)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-2, keepdims=True)
""", "normalised over the query axis"))
WRONG["layernorm_grad"].append(("""
def layernorm_grad(dy, x, w, eps=LN_EPS):
    lead = tuple(range(x.ndim - 1))
    mu = x.mean(lead, keepdims=True)
    rstd = 1 / np.sqrt(((x - mu) ** 2).mean(lead, keepdims=True) + eps)
    xhat, g = (x - mu) * rstd, dy * w
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    return dx, (dy * xhat).sum(lead), dy.sum(lead)
""", "taken over the wrong axis"))
WRONG["straight_through_grad"].append(("""
def straight_through_grad(dm, logits, noise, tau):
    z = (logits + noise) / tau
    y = np.exp(z - z.max(-1, keepdims=True))
    y = y / y.sum(-1, keepdims=True)
    return y * (dm - (y * dm).sum()) / tau
""", "is taken over every axis"))
WRONG["distill_loss"].append(("""
def distill_loss(student_logits, teacher_logits, T):
    def lsm(z):
        z = z - z.max(axis=0, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=0, keepdims=True))
    ls, lt = lsm(student_logits / T), lsm(teacher_logits / T)
    pt = np.exp(lt)
    B = len(ls)
    return T * T * (pt * (lt - ls)).sum() / B, T * (np.exp(ls) - pt) / B
""", "the softmax runs over the images"))
