"""The ToFe training losses besides cross-entropy, as forward/backward pairs (docs/method.md, "Losses").

    L_kd     = T^2 * mean_b KL(softmax(z_teacher / T) || softmax(z_student / T))
    L_approx = sum_bj w_bj ||a_bj - t_bj||^2 / C / max(sum_bj w_bj, 1)
               (the mean over frozen patch tokens; w = 1 - hard mask; t = the dense teacher's tokens)
    L_flops  = lam * (mean_b R_b - gamma)^2            (per_image: lam * mean_b (R_b - gamma)^2)

The teacher logits, the teacher tokens ``t`` and the frozen weights ``w`` are constants (stop-gradient).
In particular the mask gets NO gradient from ``L_approx`` [ours]: it is trained by the classification,
distillation and FLOPs terms; ``L_approx`` only trains the approximator (and, through its input, the
earlier blocks). The cross-entropy itself is ``minitofe.nn.layers.cross_entropy_forward``.
"""
import math
import numbers

from ..backend import get_xp
from ..nn.layers import log_softmax


def _check_same(a, b, what, names):
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{what}: {names[0]} shape {tuple(a.shape)} != {names[1]} shape {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"{what}: {names[0]} dtype {a.dtype} != {names[1]} dtype {b.dtype}")


# ---------------------------------------------------------------- knowledge distillation
def kd_loss_forward(student_logits, teacher_logits, temperature):
    """student_logits, teacher_logits: (B, K); temperature T > 0 -> scalar loss, cache."""
    xp = get_xp(student_logits)
    if student_logits.ndim != 2 or student_logits.shape[0] == 0:
        raise ValueError(f"kd_loss: logits must be (B, K) with B > 0, got {tuple(student_logits.shape)}")
    _check_same(student_logits, teacher_logits, "kd_loss", ("student_logits", "teacher_logits"))
    if not isinstance(temperature, numbers.Real) or not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"kd_loss: temperature must be a finite number > 0, got {temperature!r}")
    T = float(temperature)
    log_ps = log_softmax(student_logits / T)                            # (B, K)
    log_pt = log_softmax(teacher_logits / T)
    pt = xp.exp(log_pt)
    B = student_logits.shape[0]
    loss = T * T * (pt * (log_pt - log_ps)).sum() / B
    return loss, (xp.exp(log_ps), pt, T)


def kd_loss_backward(dloss, cache):
    """-> dstudent_logits (B, K) = dloss * T * (p_student - p_teacher) / B."""
    ps, pt, T = cache
    return (dloss * T / ps.shape[0]) * (ps - pt)


# ---------------------------------------------------------------- approximation (frozen tokens)
def approx_loss_forward(approx_tokens, teacher_tokens, frozen_weight):
    """approx_tokens, teacher_tokens: (B, P, C); frozen_weight: (B, P), 1 where the token is frozen.

    Returns the scalar loss (0 when nothing is frozen) and the cache."""
    xp = get_xp(approx_tokens)
    if approx_tokens.ndim != 3:
        raise ValueError(f"approx_loss: approx_tokens must be (B, P, C), got {tuple(approx_tokens.shape)}")
    _check_same(approx_tokens, teacher_tokens, "approx_loss", ("approx_tokens", "teacher_tokens"))
    if tuple(frozen_weight.shape) != tuple(approx_tokens.shape[:2]):
        raise ValueError(f"approx_loss: frozen_weight must be (B, P) = {tuple(approx_tokens.shape[:2])}, "
                         f"got {tuple(frozen_weight.shape)}")
    C = approx_tokens.shape[-1]
    diff = approx_tokens - teacher_tokens                               # (B, P, C)
    sq = (diff * diff).sum(axis=-1)                                     # (B, P)
    denom = C * max(float(frozen_weight.sum()), 1.0)
    loss = (frozen_weight * sq).sum() / denom
    return xp.asarray(loss, dtype=approx_tokens.dtype), (diff, frozen_weight, denom)


def approx_loss_backward(dloss, cache):
    """-> dapprox_tokens (B, P, C) = dloss * 2 w diff / (C max(sum w, 1)); teacher and w get none."""
    diff, w, denom = cache
    return (2.0 * dloss / denom) * w[..., None] * diff


# ---------------------------------------------------------------- compute budget
def flops_loss_forward(ratio, target, lam, per_image=False):
    """ratio: (B,) MACs(m) / MACs_dense per image; target gamma; lam >= 0 -> scalar loss, cache."""
    if ratio.ndim != 1 or ratio.shape[0] == 0:
        raise ValueError(f"flops_loss: ratio must be (B,) with B > 0, got shape {tuple(ratio.shape)}")
    for name, v in (("target", target), ("lam", lam)):
        if not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"flops_loss: {name} must be a finite number, got {v!r}")
    if lam < 0:
        raise ValueError(f"flops_loss: lam must be >= 0, got {lam}")
    if per_image:
        dev = ratio - target                                            # (B,)
        loss = lam * (dev * dev).mean()
    else:
        dev = ratio.mean() - target                                     # scalar
        loss = lam * dev * dev
    return loss, (dev, ratio.shape[0], float(lam), bool(per_image))


def flops_loss_backward(dloss, cache):
    """-> dratio (B,): 2 lam (R_b - gamma) / B (per_image) or 2 lam (mean R - gamma) / B for every b."""
    dev, B, lam, per_image = cache
    xp = get_xp(dev)
    if per_image:
        return (2.0 * lam * dloss / B) * dev
    return xp.full((B,), 2.0 * lam * dloss / B, dtype=dev.dtype) * dev
