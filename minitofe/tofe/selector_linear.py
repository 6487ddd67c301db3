"""The ``linear`` token selector [minitofe]: one linear layer on the normalised tokens, no global context
(docs/method.md, "Selector and approximator kinds"). The smallest learned selector, for studies against
ToFe's MLP.

    logits = LN(x) @ W.T + b                          # (B, N, 2)     [keep, freeze]

``patch_weight`` is accepted and unused (there is no context to restrict). Parameters under ``prefix``
(e.g. ``"tofe.selector.0."``): ``norm``, ``fc`` (C -> 2). MACs: n C 2.
"""
from .ops import resolve
from .part import Part
from ..nn.layers import layernorm_backward, linear_backward


def linear_selector_forward(x, params, prefix, num_prefix, patch_weight=None, ops=None):
    """x: (B, N, C) -> logits (B, N, 2), cache. ``ops``: the namespace LayerNorm and the linear run on."""
    ops = resolve(ops)
    if x.ndim != 3:
        raise ValueError(f"selector: x must be (B, N, C), got shape {tuple(x.shape)}")
    n, c_ln = ops.layernorm_forward(x, params[prefix + "norm.weight"], params[prefix + "norm.bias"])
    logits, c_fc = ops.linear_forward(n, params[prefix + "fc.weight"], params[prefix + "fc.bias"])
    return logits, (prefix, c_ln, c_fc)


def linear_selector_backward(dlogits, cache):
    """dlogits: (B, N, 2) -> dx (B, N, C), grads {full key: array} for norm / fc."""
    prefix, c_ln, c_fc = cache
    grads = {}
    dn, grads[prefix + "fc.weight"], grads[prefix + "fc.bias"] = linear_backward(dlogits, c_fc)
    dx, grads[prefix + "norm.weight"], grads[prefix + "norm.bias"] = layernorm_backward(dn, c_ln)
    return dx, grads


def linear_selector_shapes(prefix, C, r=None):
    return {prefix + "norm.weight": (C,), prefix + "norm.bias": (C,),
            prefix + "fc.weight": (2, C), prefix + "fc.bias": (2,)}


def linear_selector_macs(n, C, r=None):
    """MACs of scoring n tokens: one (n, C) @ (C, 2) matmul."""
    return n * C * 2


PART = Part("linear", linear_selector_shapes, linear_selector_forward, linear_selector_backward,
            linear_selector_macs, lambda n, C, r=None: linear_selector_macs(1, C))
