"""Checks for notebook 03's selector exercises: its forward with the global-context step and its backward
(docs/method.md "Token selector"; ``minitofe.tofe.selector``).

The global context ``g`` is where the plausible wrong answers live: averaged over every token instead of
the patches, concatenated on the wrong side, taken before the GELU; and in the backward, its gradient
dropped, spread to the prefix tokens, or not summed over the tokens that received ``g``. The cases have
one or two prefix tokens, so that "patches only" and "every token" differ.
"""
import numpy as np

from ..nn.layers import gelu_backward, gelu_forward, layernorm_backward, layernorm_forward, linear_backward, \
    linear_forward
from ..tofe.params import selector_shapes
from ..tofe.selector import selector_backward, selector_forward
from .check_tokens import random_params
from .calls import call, exercise
from .verdict import Wrong, parts, same, same_as_finite_differences, search

SELECTOR = "tofe.selector.0."


def _case(case):
    rng = np.random.default_rng(case["seed"])
    C = 4 * case["c4"]
    x = rng.standard_normal((case["B"], case["T"] + case["P"], C))
    return x, random_params(selector_shapes(SELECTOR, C), rng), case["T"]


def _describe(c):
    return f"B={c['B']}, num_prefix={c['T']}, P={c['P']}, C={4 * c['c4']}"


def _logits(x, params, T, mean_from=None, order=("u", "g"), gelu2=True, context="u"):
    """The selector's forward, with one of its steps done the plausible wrong way when asked."""
    p = lambda name: params[SELECTOR + name]
    n, _ = layernorm_forward(x, p("norm.weight"), p("norm.bias"))
    u, _ = gelu_forward(linear_forward(n, p("fc1.weight"), p("fc1.bias"))[0])
    source = {"u": u, "n": linear_forward(n, p("fc1.weight"), p("fc1.bias"))[0]}[context]
    first = T if mean_from is None else mean_from
    g = np.broadcast_to(source[:, first:].mean(axis=1, keepdims=True), u.shape)
    v = np.concatenate([u, g] if order == ("u", "g") else [g, u], axis=-1)
    h2 = linear_forward(v, p("fc2.weight"), p("fc2.bias"))[0]
    w = gelu_forward(h2)[0] if gelu2 else h2
    return linear_forward(w, p("fc3.weight"), p("fc3.bias"))[0]


def _selector_agrees(selector_logits, x, params, T):
    want, _ = selector_forward(x, params, SELECTOR, T)
    got = call(selector_logits, x, params, SELECTOR, T)
    mistakes = [(f"the global context g averages all N tokens; it should average the P patch tokens only "
                 f"(the first num_prefix = {T} tokens are the class/distillation tokens)",
                 lambda: _logits(x, params, T, mean_from=0)),
                ("v = [g, u]: the token's own u comes first, then g",
                 lambda: _logits(x, params, T, order=("g", "u"))),
                ("the GELU after fc2 is missing: w = GELU(v W2^T + b2)",
                 lambda: _logits(x, params, T, gelu2=False)),
                ("g averages fc1's output before the GELU; it averages u = GELU(...)",
                 lambda: _logits(x, params, T, context="n"))]
    same("logits", got, want, mistakes=mistakes)


@exercise("selector_logits", replaces=(selector_forward, "minitofe.tofe.scoring.stage_scores"))
def check_selector_logits(selector_logits):
    """selector_logits(x, params, prefix, num_prefix) -> logits (B, N, 2), against ``selector_forward``."""
    _selector_agrees(selector_logits, *_case({"B": 2, "T": 1, "P": 4, "c4": 2, "seed": 0}))
    sizes = {"B": (1, 2), "T": (0, 2), "P": (1, 5), "c4": (1, 3), "seed": (0, 1000)}
    tried = search(sizes, lambda c: _selector_agrees(selector_logits, *_case(c)), _describe)
    return f"logits equal selector_forward on a fixed case and on {tried}"


def _dx_mistakes(x, params, T, dlogits):
    """dx of the selector with the global context's gradient handled the plausible wrong ways."""
    p = lambda name: params[SELECTOR + name]
    n, c_ln = layernorm_forward(x, p("norm.weight"), p("norm.bias"))
    h1, c_fc1 = linear_forward(n, p("fc1.weight"), p("fc1.bias"))
    u, c_g1 = gelu_forward(h1)
    _, cache = selector_forward(x, params, SELECTOR, T)
    *_, c_fc2, c_g2, c_fc3 = cache
    dv = linear_backward(gelu_backward(linear_backward(dlogits, c_fc3)[0], c_g2), c_fc2)[0]
    half, P, N = u.shape[-1], x.shape[1] - T, x.shape[1]

    def dx_with(dglobal):
        du = dv[..., :half] + dglobal
        return layernorm_backward(linear_backward(gelu_backward(du, c_g1), c_fc1)[0], c_ln)[0]
    summed = dv[..., half:].sum(axis=1, keepdims=True)                   # (B, 1, C/2)
    patches = np.zeros_like(u)
    patches[:, T:] = 1.0
    return [("dx misses the global context's gradient: g feeds every token's v, so dg (summed over the N "
             "tokens) flows back to every patch token's u, divided by P", lambda: dx_with(0.0)),
            ("the global context's gradient reaches the prefix tokens too: they are not in the mean",
             lambda: dx_with(summed / P)),
            ("the global context's gradient is divided by N; g is the mean of the P patch tokens",
             lambda: dx_with(patches * summed / N)),
            ("dg is not summed over the N tokens that received g: each token's own share is only part of it",
             lambda: dx_with(patches * dv[..., half:] / P))]


def _grad_agrees(selector_grad, x, params, T, dlogits, finite_differences):
    _, cache = selector_forward(x, params, SELECTOR, T)
    dx_want, grads_want = selector_backward(dlogits, cache)
    dx, grads = parts(call(selector_grad, dlogits, x, params, SELECTOR, T), ("dx", "grads"))
    if not isinstance(grads, dict) or set(grads) != set(grads_want):
        have = sorted(grads) if isinstance(grads, dict) else type(grads).__name__
        raise Wrong(f"grads should be a dict with the keys {sorted(grads_want)}, got {have}")
    same("dx", dx, dx_want, mistakes=_dx_mistakes(x, params, T, dlogits))
    for key in sorted(grads_want):
        same(f"grads['{key}']", grads[key], grads_want[key])
    if finite_differences:
        loss = lambda: float((selector_forward(x, params, SELECTOR, T)[0] * dlogits).sum())
        same_as_finite_differences("dx", dx, loss, x)
        for key in sorted(grads_want):
            same_as_finite_differences(f"grads['{key}']", grads[key], loss, params[key])


def _grad_case(case):
    x, params, T = _case(case)
    return x, params, T, np.random.default_rng(case["seed"] + 7).standard_normal(x.shape[:2] + (2,))


@exercise("selector_grad", replaces=(selector_backward,))
def check_selector_grad(selector_grad):
    """selector_grad(dlogits, x, params, prefix, num_prefix) -> (dx, grads), against finite differences
    and ``selector_backward``."""
    _grad_agrees(selector_grad, *_grad_case({"B": 2, "T": 1, "P": 3, "c4": 2, "seed": 0}), True)
    sizes = {"B": (1, 2), "T": (0, 2), "P": (1, 4), "c4": (1, 2), "seed": (0, 1000)}
    tried = search(sizes, lambda c: _grad_agrees(selector_grad, *_grad_case(c), False), _describe,
                   examples=30)
    return (f"dx and every grads entry equal finite differences on a fixed case and selector_backward on "
            f"{tried}")
