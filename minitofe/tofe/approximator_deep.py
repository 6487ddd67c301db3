"""The ``deep`` approximator [minitofe]: two bottleneck layers, each ToFe's MLP approximator with its own
residual (docs/method.md, "Selector and approximator kinds").

    y1 = A_0(x) = x  + MLP_0(LN_0(x))        MLP: C -> C/r -> C, GELU between
    y  = A_1(y1) = y1 + MLP_1(LN_1(y1))

Parameters under ``prefix`` + ``0.`` and ``1.`` (e.g. ``tofe.approx.2.1.fc2.weight``), each as
``approximator.py``'s; both ``fc2`` start at zero, so a fresh deep approximator is the identity too.
MACs: twice the MLP approximator's.
"""
from .approximator import approximator_backward, approximator_forward, approximator_shapes
from .macs import approximator_macs
from .part import Part

LAYERS = ("0.", "1.")


def deep_approximator_forward(x, params, prefix, ops=None):
    """x: (..., C) -> y (..., C), cache: the two layers' caches in forward order."""
    caches = []
    for layer in LAYERS:
        x, c = approximator_forward(x, params, prefix + layer, ops)
        caches.append(c)
    return x, caches


def deep_approximator_backward(dy, cache):
    """dy: (..., C) -> dx (..., C), grads {full key: array} of both layers (run in reverse)."""
    grads = {}
    for c in reversed(cache):
        dy, g = approximator_backward(dy, c)
        grads.update(g)
    return dy, grads


def deep_approximator_shapes(prefix, C, r):
    shapes = {}
    for layer in LAYERS:
        shapes.update(approximator_shapes(prefix + layer, C, r))
    return shapes


def deep_approximator_macs(n, C, r):
    return len(LAYERS) * approximator_macs(n, C, r)


PART = Part("deep", deep_approximator_shapes, deep_approximator_forward, deep_approximator_backward,
            deep_approximator_macs, lambda n, C, r: deep_approximator_macs(1, C, r))
