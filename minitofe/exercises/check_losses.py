"""Checks for the two training losses a student writes, forward and gradient together (docs/method.md
"Losses"; ``minitofe.tofe.losses``):

- ``distill_loss`` (notebook 02): ``L_kd = T^2 mean_b KL(softmax(z_t / T) || softmax(z_s / T))`` and its
  gradient in the student's logits, at temperatures other than 1 (where T^2 and 1/T are visible) and at
  logits near 1000 (where a softmax without its shift overflows);
- ``approx_loss`` (notebook 03): ``L_approx``, the mean over the frozen patches of ``|A(x) - t|^2 / C``,
  and its gradient in the approximator's output, with nothing frozen (the loss is 0, not 0/0) and with
  the frozen weights of only some tokens set.
"""
import numpy as np

from ..tofe.losses import approx_loss_backward, approx_loss_forward, kd_loss_backward, kd_loss_forward
from .calls import call, exercise
from .verdict import Wrong, fmt, parts, same, same_as_finite_differences, search


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _kd(zs, zt, T, teacher_T=None, direction="teacher"):
    """L_kd and its gradient computed as asked (a wrong temperature or KL direction for the mistakes)."""
    log_ps, log_pt = _log_softmax(zs / T), _log_softmax(zt / (teacher_T or T))
    ps, pt = np.exp(log_ps), np.exp(log_pt)
    B = zs.shape[0]
    if direction == "teacher":
        return T * T * (pt * (log_pt - log_ps)).sum() / B, T * (ps - pt) / B
    kl = (ps * (log_ps - log_pt)).sum(axis=-1)                                  # KL(ps || pt) per row
    dz = ps * ((log_ps - log_pt) - kl[:, None]) / T                             # its gradient in zs
    return T * T * kl.sum() / B, T * T * dz / B


def _kd_mistakes(zs, zt, T):
    """{output: [(cause, answer)]} for the plausible wrong distillation losses."""
    loss, grad = _kd(zs, zt, T)
    B, K = zs.shape
    rev, only = _kd(zs, zt, T, direction="student"), _kd(zs, zt, T, teacher_T=1.0)
    batch = _kd(zs.T, zt.T, T)                              # softmax over the images instead of the classes
    return {"loss": [("the loss misses the factor T^2 (it keeps the gradients' size the same at every "
                      "temperature)", loss / T ** 2),
                     ("the KL is taken the wrong way round: KL(p_teacher || p_student) weighs the log ratio "
                      "by the teacher's probabilities", rev[0]),
                     ("the teacher's logits are not divided by T: both distributions are softened",
                      only[0]),
                     ("the loss sums over the batch; it is the mean over the B images", loss * B),
                     ("the loss is a mean over all B * K entries; it sums over the K classes and averages "
                      "over the B images", loss / K),
                     ("the softmax runs over the images (axis 0); it runs over each image's classes "
                      "(axis -1)", batch[0] * zs.shape[1] / B)],
            "dstudent": [("off by a factor T: the chain rule through z / T divides T^2 by T once, "
                          "dL/dz = T (p_student - p_teacher) / B", grad * T),
                         ("the gradient misses the factor T (T^2 from the loss, 1/T from z / T)", grad / T),
                         ("the gradient is p_teacher - p_student: the sign is flipped", -grad),
                         ("the gradient sums over the batch; divide by B", grad * B),
                         ("the gradient of a KL taken the wrong way round", rev[1]),
                         ("the gradient with the teacher's logits not divided by T", only[1])]}


def _kd_agrees(distill_loss, zs, zt, T, finite_differences):
    loss_want, cache = kd_loss_forward(zs, zt, T)
    grad_want = kd_loss_backward(1.0, cache)
    loss, grad = parts(call(distill_loss, zs, zt, T), ("loss", "dstudent"))
    mistakes = _kd_mistakes(zs, zt, T)
    same("loss", loss, np.asarray(loss_want), rtol=1e-7, atol=1e-12, mistakes=mistakes["loss"],
         explain=lambda _: f" (T = {fmt(T)})")
    same("dstudent", grad, grad_want, rtol=1e-6, atol=1e-12, mistakes=mistakes["dstudent"],
         explain=lambda _: f" (T = {fmt(T)})")
    if finite_differences:
        same_as_finite_differences("dstudent", grad, lambda: float(kd_loss_forward(zs, zt, T)[0]), zs)


def _kd_case(case):
    rng = np.random.default_rng(case["seed"])
    B, K = case["B"], case["K"]
    return rng.standard_normal((B, K)) * 3, rng.standard_normal((B, K)) * 3, (0.5, 1.0, 2.0, 4.0)[case["T"]]


@exercise("distill_loss", replaces=(kd_loss_forward, kd_loss_backward))
def check_distill_loss(distill_loss):
    """distill_loss(student_logits, teacher_logits, T) -> (loss, dstudent), against ``kd_loss_forward`` /
    ``kd_loss_backward`` and finite differences."""
    rng = np.random.default_rng(0)
    zs, zt = rng.standard_normal((3, 5)) * 2, rng.standard_normal((3, 5)) * 2
    _kd_agrees(distill_loss, zs, zt, 4.0, True)
    try:                                          # logits / T near 1000: exp overflows without the shift
        _kd_agrees(distill_loss, zs + 2000.0, zt - 2000.0, 2.0, False)
    except Wrong as wrong:
        raise Wrong(f"with logits near +-2000 at T = 2 (softmax is shift-invariant; np.exp(1000) = inf, so "
                    f"subtract each row's maximum): {wrong}") from None
    sizes = {"B": (1, 3), "K": (2, 6), "T": (0, 3), "seed": (0, 1000)}
    tried = search(sizes, lambda c: _kd_agrees(distill_loss, *_kd_case(c), False),
                   lambda c: "B={B}, K={K}, seed={seed}".format(**c), examples=30)
    return (f"loss and dstudent equal kd_loss_forward / kd_loss_backward at T = 4, with logits near 2000, "
            f"and on {tried} at T in 0.5, 1, 2, 4")


def _approx_mistakes(a, t, frozen):
    C = a.shape[-1]
    diff = a - t
    sq = (diff ** 2).sum(-1)
    count = max(float(frozen.sum()), 1.0)
    loss = (frozen * sq).sum() / (C * count)
    grad = 2 * frozen[..., None] * diff / (C * count)
    kept = 1.0 - frozen
    kept_count = max(float(kept.sum()), 1.0)
    return {"loss": [("the loss averages over all B * P patches; L_approx is the mean over the frozen ones",
                      (frozen * sq).sum() / (C * frozen.size)),
                     ("the loss is not divided by C (|A(x) - t|^2 / C per token)", loss * C),
                     ("the loss sums over the kept tokens: frozen = 1 marks the tokens the approximator "
                      "replaced", (kept * sq).sum() / (C * kept_count)),
                     ("the loss is a mean over every entry (B * P * C), frozen or not", (diff ** 2).mean())],
            "dapprox": [("the gradient misses the factor 2 of the square", grad / 2),
                        ("the gradient's sign is flipped: d|a - t|^2 / da = 2 (a - t)", -grad),
                        ("the gradient reaches the kept tokens too: only the frozen ones are in the loss",
                         2 * diff / (C * count)),
                        ("the gradient is not divided by C", grad * C)]}


def _approx_agrees(approx_loss, a, t, frozen, finite_differences):
    loss_want, cache = approx_loss_forward(a, t, frozen)
    grad_want = approx_loss_backward(1.0, cache)
    loss, grad = parts(call(approx_loss, a, t, frozen), ("loss", "dapprox"))
    mistakes = _approx_mistakes(a, t, frozen)
    if not frozen.any() and (loss is None or not np.isfinite(np.asarray(loss, dtype=float)).all()):
        raise Wrong(f"with no token frozen the loss is {loss}; it should be 0 (divide by max(number "
                    f"frozen, 1))")
    same("loss", loss, np.asarray(loss_want), rtol=1e-9, atol=1e-12, mistakes=mistakes["loss"])
    same("dapprox", grad, grad_want, rtol=1e-9, atol=1e-12, mistakes=mistakes["dapprox"])
    if finite_differences:
        same_as_finite_differences("dapprox", grad, lambda: float(approx_loss_forward(a, t, frozen)[0]), a)


def _approx_case(case):
    rng = np.random.default_rng(case["seed"])
    shape = (case["B"], case["P"], 4 * case["c4"])
    frozen = (rng.random(shape[:2]) < 0.5).astype(np.float64)
    return rng.standard_normal(shape), rng.standard_normal(shape), frozen


@exercise("approx_loss", replaces=(approx_loss_forward, approx_loss_backward))
def check_approx_loss(approx_loss):
    """approx_loss(approx_tokens, teacher_tokens, frozen) -> (loss, dapprox), against
    ``approx_loss_forward`` / ``approx_loss_backward`` and finite differences."""
    a, t, _ = _approx_case({"B": 2, "P": 4, "c4": 2, "seed": 0})
    frozen = np.array([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    _approx_agrees(approx_loss, a, t, frozen, True)
    _approx_agrees(approx_loss, a, t, np.zeros_like(frozen), False)              # nothing frozen
    sizes = {"B": (1, 3), "P": (1, 5), "c4": (1, 3), "seed": (0, 1000)}
    tried = search(sizes, lambda c: _approx_agrees(approx_loss, *_approx_case(c), False),
                   lambda c: "B={B}, P={P}, C={C}, frozen={f}".format(
                       B=c["B"], P=c["P"], C=4 * c["c4"], f=_approx_case(c)[2].astype(int).tolist()),
                   examples=30)
    return (f"loss and dapprox equal approx_loss_forward / approx_loss_backward on a fixed case, with "
            f"nothing frozen, and on {tried}")

