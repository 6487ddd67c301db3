"""ToFe's pluggable parts, found by name: the token selector kinds and the approximator kinds, each in
its own file (``part.Part``); ``ToFeConfig.selector`` / ``ToFeConfig.approximator`` pick one. A new kind
is a new file and one line here (docs/method.md, "Selector and approximator kinds").
"""
from . import approximator, approximator_deep, selector, selector_attention, selector_linear

SELECTORS = {
    "mlp": selector.PART,                        # ToFe's 3-layer MLP with global context (the paper's)
    "linear": selector_linear.PART,              # [minitofe] one linear layer on LN(x)
    "attention": selector_attention.PART,        # [minitofe] one attention head over the tokens
}
APPROXIMATORS = {
    "mlp": approximator.PART,                    # one bottleneck MLP with a residual (the paper's)
    "deep": approximator_deep.PART,              # [minitofe] two bottleneck layers, each with its residual
}


def selector_of(tcfg):
    """The selector kind ``tcfg.selector`` names."""
    return SELECTORS[tcfg.selector]


def approximator_of(tcfg):
    """The approximator kind ``tcfg.approximator`` names."""
    return APPROXIMATORS[tcfg.approximator]
