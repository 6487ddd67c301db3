"""timm's state-dict layout <-> minitofe's parameter dict.

Owns the one documented layout change between timm and minitofe: timm stores the patch embedding as a
convolution weight ``(C, Cin, p, p)``; minitofe holds it as the equivalent Linear weight
``(C, Cin * p * p)`` (a C-order reshape, so ``to_timm_state_dict`` undoes it exactly). Every other key is
taken unchanged: same name, shape and dtype. Nothing is cast unless a ``dtype`` is asked for, and
nothing is broadcast or renamed; ``check_params`` reports missing, unexpected and mis-shaped keys by name.

ToFe's ``tofe.*`` keys (selectors, approximators) are minitofe's own: they pass through unchanged after
the backbone keys, and ``to_timm_state_dict`` leaves them out. Which config a state dict is an instance
of is ``timm_config``'s business; a live timm model is read by ``timm_model``.

This module never imports torch or timm: torch tensors are read through ``.detach().cpu().numpy()``.
"""
import numpy as np

from ..nn.params import check_params, param_shapes

PATCH_KEY = "patch_embed.proj.weight"
TOFE_PREFIX = "tofe."          # ToFe selector/approximator keys: minitofe-only, never exported to timm


def timm_patch_shape(cfg):
    """timm's patch-embedding conv weight shape ``(C, Cin, p, p)``."""
    return (cfg.embed_dim, cfg.in_chans, cfg.patch_size, cfg.patch_size)


def to_numpy(key, value, dtype=None):
    """One state-dict value -> a C-contiguous NumPy array that owns its memory. Accepts NumPy arrays and
    torch-like tensors (duck-typed ``.detach().cpu().numpy()``). Casts only when ``dtype`` is given."""
    if not isinstance(key, str):
        raise TypeError(f"state dict keys must be strings, got {key!r} ({type(key).__name__})")
    if hasattr(value, "detach") and not isinstance(value, np.ndarray):
        try:
            value = value.detach().cpu().numpy()
        except (TypeError, RuntimeError) as e:          # e.g. bfloat16, which NumPy has no type for
            raise TypeError(f"{key}: cannot convert tensor of dtype {getattr(value, 'dtype', '?')} "
                            f"to NumPy ({e}); convert it to float32 first") from None
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{key}: expected an array or tensor, got {type(value).__name__}")
    if dtype is not None:
        return value.astype(dtype, order="C", copy=True)
    return np.array(value, order="C", copy=True)


def from_timm_state_dict(state_dict, cfg, dtype=None):
    """{timm key: array or tensor} -> minitofe params {key: array}, validated against ``cfg``.

    The only change is the patch-embedding conv weight (C, Cin, p, p) -> (C, Cin * p * p). Arrays are
    copied (contiguous, own memory), in ``param_shapes`` order (then any ``tofe.*`` keys); the dtype is
    kept unless ``dtype`` asks for an explicit cast."""
    if not hasattr(state_dict, "items"):
        raise TypeError(f"state_dict must be a mapping of key -> array, got {type(state_dict).__name__}")
    params = {k: to_numpy(k, v, dtype) for k, v in state_dict.items()}
    if PATCH_KEY in params:
        w, want = params[PATCH_KEY], timm_patch_shape(cfg)
        if w.shape != want:
            raise ValueError(f"{PATCH_KEY}: expected timm's conv shape {want}, got {w.shape}")
        params[PATCH_KEY] = w.reshape(w.shape[0], -1)      # C-order: (Cin, p, p) flattened row-major
    check_params(params, cfg, extra_ok=(TOFE_PREFIX,))
    tofe = [k for k in params if k.startswith(TOFE_PREFIX)]
    return {k: params[k] for k in list(param_shapes(cfg)) + tofe}    # timm's order, whatever the file's


def to_timm_state_dict(params, cfg):
    """minitofe params -> {timm key: array} in timm's key order, conv weight back to (C, Cin, p, p).

    ``tofe.*`` keys are left out (timm has no such modules). The arrays may share memory with params."""
    check_params(params, cfg, extra_ok=(TOFE_PREFIX,))
    out = {k: np.ascontiguousarray(params[k]) for k in param_shapes(cfg)}
    out[PATCH_KEY] = out[PATCH_KEY].reshape(timm_patch_shape(cfg))
    return out
