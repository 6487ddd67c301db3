"""Checks for notebook 02's exercises: the hard Gumbel-Softmax keep/freeze mask and its straight-through
gradient (docs/method.md "Token selector", Decision / Training; ``minitofe.tofe.gumbel``)."""
import numpy as np

from ..tofe.gumbel import gumbel_noise, gumbel_softmax_backward, gumbel_softmax_forward
from .calls import call, exercise
from .verdict import as_array, same, same_as_finite_differences, search

SIZES = {"B": (1, 2), "N": (1, 4), "tau": (0, 2), "seed": (0, 1000)}
TAUS = (0.5, 1.0, 2.0)


def fixed_case():
    """Six tokens' [keep, freeze] logits (as in the notebook), Gumbel noise and tau = 0.7."""
    logits = np.array([[2.0, 0.0], [1.0, 0.0], [0.3, 0.0], [0.0, 0.0], [-1.0, 0.0], [-2.0, 0.0]])
    return logits, gumbel_noise(np.random.default_rng(0), logits.shape), 0.7


def tie_prone_case(case):
    """Small-integer logits and noise in {0, 0.5}, so that keep and freeze often tie exactly."""
    rng = np.random.default_rng(case["seed"])
    shape = (case["B"], case["N"], 2)
    logits = rng.integers(-1, 2, shape).astype(np.float64)
    noise = rng.choice([0.0, 0.5], shape)
    return logits, noise, TAUS[case["tau"]]


def _describe(case):
    logits, noise, tau = tie_prone_case(case)
    return f"logits={logits.tolist()}, noise={noise.tolist()}, tau={tau}"


def _onehot(first):
    return np.stack([first, 1.0 - first], axis=-1)


def _mask_mistakes(logits, noise, tau):
    z = (logits + noise) / tau
    y = np.exp(z - z.max(-1, keepdims=True))
    y /= y.sum(-1, keepdims=True)
    hard = _onehot((z[..., 0] >= z[..., 1]).astype(float))
    return [("ties go to freeze: on a tie np.argmax (the first maximum) keeps, so compare with >= or use "
             "argmax", _onehot((z[..., 0] > z[..., 1]).astype(float))),
            ("the noise is missing: the decision is the argmax of (logits + noise) / tau",
             _onehot((logits[..., 0] >= logits[..., 1]).astype(float))),
            ("m is the soft sample y; the hard decision is its one-hot", y),
            ("m must be exactly 0.0 or 1.0: build the one-hot directly; hard + y - y leaves rounding errors",
             hard + y - y)]


def _mask_agrees(straight_through_mask, logits, noise, tau):
    want, _ = gumbel_softmax_forward(logits, noise, tau, hard=True)
    got = as_array("m", call(straight_through_mask, logits, noise, tau), want)
    z = (logits + noise) / tau

    def explain(idx):
        token = idx[:-1]
        a, b = z[token]
        if abs(float(got[idx]) - float(want[idx])) < 1e-6:
            return (" (m must be exactly 0.0 or 1.0: build the one-hot directly; hard + y - y leaves "
                    "rounding errors)")
        tie = " ties go to keep, column 0" if a == b else ""
        return (f" (token {list(token)}: (logits + noise) / tau = [{a:.4g}, {b:.4g}];"
                f"{tie or ' the larger wins'})")
    same("m", got, want, rtol=0, atol=0, explain=explain, mistakes=_mask_mistakes(logits, noise, tau))


@exercise("straight_through_mask", replaces=(gumbel_softmax_forward,))
def check_straight_through_mask(straight_through_mask):
    """straight_through_mask(logits, noise, tau) -> m, compared with ``gumbel_softmax_forward(hard=True)``."""
    _mask_agrees(straight_through_mask, *fixed_case())
    _mask_agrees(straight_through_mask, np.array([[0.4, 0.4]]), np.zeros((1, 2)), 1.0)   # an exact tie
    tried = search(SIZES, lambda c: _mask_agrees(straight_through_mask, *tie_prone_case(c)), _describe)
    return f"m equals gumbel_softmax_forward(hard=True) exactly, on a fixed case, a tie and {tried}"


def _grad_mistakes(dm, logits, noise, tau, want):
    def soft(z):
        y = np.exp(z - z.max(-1, keepdims=True))
        return y / y.sum(-1, keepdims=True)
    y, y0 = soft((logits + noise) / tau), soft(logits / tau)
    return [("off by a factor tau everywhere: y = softmax((logits + noise) / tau), so the chain rule "
             "divides by tau once", want * tau),
            ("multiplied by tau where the chain rule divides by it", want * tau * tau),
            ("all zero: that is the true gradient of the hard one-hot; straight-through passes the gradient "
             "of the soft y instead", np.zeros_like(want)),
            ("dm passed through unchanged: ToFe's straight-through uses the soft sample's Jacobian",
             np.array(dm, dtype=float)),
            ("the soft y misses the noise: y = softmax((logits + noise) / tau)",
             y0 * (dm - (y0 * dm).sum(-1, keepdims=True)) / tau),
            ("the row term is missing: dlogits = y * (dm - sum(y * dm)) / tau", y * dm / tau),
            ("sum(y * dm) is taken over every axis; it is each token's sum over its two classes (axis -1)",
             y * (dm - (y * dm).sum()) / tau)]


def _grad_agrees(straight_through_grad, logits, noise, tau, dm, finite_differences):
    y_soft, cache = gumbel_softmax_forward(logits, noise, tau, hard=False)
    want = gumbel_softmax_backward(dm, cache)
    got = as_array("dlogits", call(straight_through_grad, dm, logits, noise, tau), want)
    same("dlogits", got, want, mistakes=_grad_mistakes(dm, logits, noise, tau, want))
    if finite_differences:
        loss = lambda: float((gumbel_softmax_forward(logits, noise, tau, hard=False)[0] * dm).sum())
        same_as_finite_differences("dlogits", got, loss, logits)


def _grad_case(case):
    logits, noise, tau = tie_prone_case(case)
    return logits, noise, tau, np.random.default_rng(case["seed"] + 1).standard_normal(logits.shape)


@exercise("straight_through_grad", replaces=(gumbel_softmax_backward,))
def check_straight_through_grad(straight_through_grad):
    """straight_through_grad(dm, logits, noise, tau) -> dlogits, against finite differences of the soft
    output and ``gumbel_softmax_backward``."""
    logits, noise, tau = fixed_case()
    dm = np.random.default_rng(1).standard_normal(logits.shape)
    _grad_agrees(straight_through_grad, logits, noise, tau, dm, True)
    tried = search(SIZES, lambda c: _grad_agrees(straight_through_grad, *_grad_case(c), False), _describe)
    return (f"dlogits equals finite differences of the soft output on a fixed case and "
            f"gumbel_softmax_backward on {tried}")
