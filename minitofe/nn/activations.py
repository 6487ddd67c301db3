"""The MLP activations timm's ViTs use, by timm's ``act_layer`` name, as forward/backward pairs.

    gelu        x Phi(x) (exact erf form; ``layers.gelu_forward``, torch's default)
    gelu_tanh   0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))    (SigLIP, torch's approximate='tanh')
    quick_gelu  x sigmoid(1.702 x)                                  (OpenAI CLIP)

``act_forward(x, name) -> (y, cache)`` and ``act_backward(dy, cache) -> dx``; the cache names the
activation, so the backward needs nothing else.
"""
import math

from .layers import gelu_backward, gelu_forward
from ..backend import get_xp
from ..config import ACTIVATIONS

_K = math.sqrt(2.0 / math.pi)
_A = 0.044715
_QUICK = 1.702


def gelu_tanh_forward(x):
    xp = get_xp(x)
    t = xp.tanh(_K * (x + _A * x * x * x))
    return 0.5 * x * (1.0 + t), (x, t)


def gelu_tanh_backward(dy, cache):
    """d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) K (1 + 3 A x^2), t the tanh of the forward."""
    x, t = cache
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _K * (1.0 + 3.0 * _A * x * x))


def quick_gelu_forward(x):
    xp = get_xp(x)
    s = 0.5 * (1.0 + xp.tanh(0.5 * _QUICK * x))       # sigmoid(1.702 x), overflow-free
    return x * s, (x, s)


def quick_gelu_backward(dy, cache):
    """d/dx = s + 1.702 x s (1 - s)."""
    x, s = cache
    return dy * (s + _QUICK * x * s * (1.0 - s))


_PAIRS = {"gelu": (gelu_forward, gelu_backward), "gelu_tanh": (gelu_tanh_forward, gelu_tanh_backward),
          "quick_gelu": (quick_gelu_forward, quick_gelu_backward)}
assert set(_PAIRS) == set(ACTIVATIONS)


def act_forward(x, name="gelu"):
    if name not in _PAIRS:
        raise ValueError(f"unknown activation {name!r}; minitofe has {list(ACTIVATIONS)}")
    y, cache = _PAIRS[name][0](x)
    return y, (name, cache)


def act_backward(dy, cache):
    name, inner = cache
    return _PAIRS[name][1](dy, inner)
