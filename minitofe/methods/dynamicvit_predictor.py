"""DynamicViT's token predictor, one per stage (method ``dynamicvit``; docs/method.md, "Baselines").

It scores the patch tokens only (prefix tokens are always kept) with a local and a global half:

    u      = GELU(LN(x) @ W0.T + b0)                               # (B, P, C)   in_conv
    g      = sum_j policy_j u_j[C/2:] / sum_j policy_j             # (B, 1, C - C/2)  global half
    v      = concat(u[..., :C/2], broadcast(g))                    # (B, P, C)
    logp   = log_softmax(MLP(v))    MLP: C -> C/2 -> C/4 -> 2, GELU between   # (B, P, 2) [keep, drop]

``policy`` (B, P) is the current decision (1 kept, 0 dropped; in training the straight-through Gumbel
decision of the previous stage, so it is *differentiable*: the predictor's backward returns
``dpolicy``). An image whose policy sums to 0 gets g = 0. Parameters live under ``prefix`` (e.g.
``"tofe.predictor.0."``) with the authors' layer names: ``in_conv.0`` (LayerNorm, eps 1e-5 as the
authors' ``nn.LayerNorm(embed_dim)``, not the ViT's 1e-6), ``in_conv.1``, ``out_conv.0``, ``out_conv.2``,
``out_conv.4`` (Linears). docs/baselines.md lists every convention next to the authors' code.
"""
from ..backend import get_xp
from ..nn.layers import (gelu_backward, gelu_forward, layernorm_backward, layernorm_forward,
                         linear_backward, linear_forward, log_softmax)

OUT_LAYERS = ("out_conv.0", "out_conv.2", "out_conv.4")
PREDICTOR_LN_EPS = 1e-5   # the authors' PredictorLG uses torch's default LayerNorm eps, unlike the ViT (1e-6)


def predictor_shapes(prefix, C):
    """``{key: shape}`` of one predictor under ``prefix`` (e.g. ``"tofe.predictor.0."``)."""
    if C % 4:
        raise ValueError(f"the DynamicViT predictor needs embed_dim divisible by 4 (C -> C/2 -> C/4), "
                         f"got {C}")
    shapes = {prefix + "in_conv.0.weight": (C,), prefix + "in_conv.0.bias": (C,)}
    for name, (n_out, n_in) in (("in_conv.1", (C, C)), ("out_conv.0", (C // 2, C)),
                                ("out_conv.2", (C // 4, C // 2)), ("out_conv.4", (2, C // 4))):
        shapes.update({prefix + name + ".weight": (n_out, n_in), prefix + name + ".bias": (n_out,)})
    return shapes


def dynamicvit_param_shapes(cfg, tcfg):
    """The predictors of every stage: ``tofe.predictor.{i}.*`` (the layer names of the authors'
    ``score_predictor.{i}``, so their checkpoints map by that prefix alone)."""
    shapes = {}
    for i in range(len(tcfg.resolved_stages(cfg.depth))):
        shapes.update(predictor_shapes(f"tofe.predictor.{i}.", cfg.embed_dim))
    return shapes


def patches_to_keep(ratio, P, alive):
    """Patches a stage keeps in inference: int(ratio * P) (the authors' floor, the product rounded to 9
    decimals first: 0.35 * 180 is 62.99999999999999 in floats, 63 here, 62 in the authors' code), at least
    1 [ours: at 35 % the authors' code keeps int(49 rho^3) = 0 at stage 3] and at most the ``alive`` ones
    (docs/baselines.md, "Keep counts")."""
    return max(1, min(int(alive), int(round(ratio * P, 9))))


def predictor_forward(x, params, prefix, policy):
    """x: (B, P, C) patch tokens; policy: (B, P) decision weights -> log-probabilities (B, P, 2), cache."""
    xp = get_xp(x)
    if x.ndim != 3 or tuple(policy.shape) != tuple(x.shape[:2]):
        raise ValueError(f"predictor: need x (B, P, C) and policy (B, P), got {tuple(x.shape)} and "
                         f"{tuple(policy.shape)}")
    n, c_ln = layernorm_forward(x, params[prefix + "in_conv.0.weight"], params[prefix + "in_conv.0.bias"],
                                PREDICTOR_LN_EPS)
    h, c_in = linear_forward(n, params[prefix + "in_conv.1.weight"], params[prefix + "in_conv.1.bias"])
    u, c_gu = gelu_forward(h)                                           # (B, P, C)
    half = u.shape[-1] // 2
    total = policy.sum(axis=1, keepdims=True)[..., None]                # (B, 1, 1)
    total = xp.where(total > 0, total, 1.0)
    g = (u[..., half:] * policy[..., None]).sum(axis=1, keepdims=True) / total   # (B, 1, C - half)
    v = xp.concatenate([u[..., :half], xp.broadcast_to(g, u[..., half:].shape)], axis=-1)
    c_out = []
    for i, name in enumerate(OUT_LAYERS):
        v, c_lin = linear_forward(v, params[prefix + name + ".weight"], params[prefix + name + ".bias"])
        c_act = None
        if i < len(OUT_LAYERS) - 1:
            v, c_act = gelu_forward(v)
        c_out.append((name, c_lin, c_act))
    logp = log_softmax(v)                                               # (B, P, 2)
    return logp, (prefix, half, u, g, policy, total, logp, c_ln, c_in, c_gu, c_out)


def predictor_backward(dlogp, cache):
    """dlogp: (B, P, 2) -> dx (B, P, C), grads {full key: array}, dpolicy (B, P).

    log-softmax: dz = dlogp - softmax * sum(dlogp). The global half g = sum_j p_j u_j / sum_j p_j gives
    du_j += p_j dg / sum p and dp_j = <u_j - g, dg> / sum p."""
    prefix, half, u, g, policy, total, logp, c_ln, c_in, c_gu, c_out = cache
    xp = get_xp(dlogp)
    grads = {}
    dv = dlogp - xp.exp(logp) * dlogp.sum(axis=-1, keepdims=True)
    for name, c_lin, c_act in reversed(c_out):
        if c_act is not None:
            dv = gelu_backward(dv, c_act)
        dv, grads[prefix + name + ".weight"], grads[prefix + name + ".bias"] = linear_backward(dv, c_lin)
    dg = dv[..., half:].sum(axis=1, keepdims=True) / total              # (B, 1, C - half)
    du = xp.concatenate([dv[..., :half], policy[..., None] * dg], axis=-1)
    dpolicy = ((u[..., half:] - g) * dg).sum(axis=-1)                   # (B, P)
    dh = gelu_backward(du, c_gu)
    dn, grads[prefix + "in_conv.1.weight"], grads[prefix + "in_conv.1.bias"] = linear_backward(dh, c_in)
    dx, grads[prefix + "in_conv.0.weight"], grads[prefix + "in_conv.0.bias"] = layernorm_backward(dn, c_ln)
    return dx, grads, dpolicy
