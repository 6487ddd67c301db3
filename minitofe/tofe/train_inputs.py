"""What one ToFe training step is fed, and its checks (docs/method.md, "Losses"): the dense teacher's
outputs (``teacher_forward``), the pre-drawn Gumbel noise (``draw_noise``; randomness is passed in,
docs/contributing.md §8) and the validation of both against the model, before any maths runs.
"""
import numpy as np

from .gumbel import gumbel_noise
from .ops import resolve
from .params import check_tofe_params
from .scoring import stage_ranges
from ..backend import get_xp
from ..nn.embed import check_images, embed_forward, head_forward
from ..nn.layers import layernorm_forward
from ..nn.params import check_params


def teacher_forward(teacher_params, images, cfg, stages, ops=None):
    """The dense teacher: logits (B, K), its tokens at the end of every stage, list of (B, N, C), and
    (class-token heads) ``features`` (B, N, C), the final tokens after ``norm`` (DynamicViT distils them).
    ``ops``: the functions the blocks run on (None: the reference, ``ops.REFERENCE``)."""
    check_images(images, cfg, check_params(teacher_params, cfg, extra_ok=("tofe.",)))
    run = resolve(ops).run_blocks
    x, _ = embed_forward(images, teacher_params, cfg)
    x = run(x, teacher_params, cfg, 0, stages[0])
    tokens = []
    for lo, hi in stage_ranges(cfg, stages):
        x = run(x, teacher_params, cfg, lo, hi)
        tokens.append(x)
    logits, _ = head_forward(x, teacher_params, cfg)
    out = {"logits": logits, "tokens": tokens}
    if "norm.weight" in teacher_params:
        out["features"] = layernorm_forward(x, teacher_params["norm.weight"], teacher_params["norm.bias"])[0]
    return out


def draw_noise(rng, cfg, tcfg, B, dtype):
    """Gumbel noise for one training forward: a list of S arrays (B, P, 2)."""
    S = len(tcfg.resolved_stages(cfg.depth))
    return [gumbel_noise(rng, (B, cfg.num_patches, 2), dtype) for _ in range(S)]


def check_train_inputs(params, images, labels, cfg, tcfg, noise, teacher):
    if not tcfg.learned_selector:
        raise ValueError(f"method {tcfg.method!r} has no learned selector and is not trained "
                         f"(training-free); use tofe_inference")
    if not cfg.num_classes:
        raise ValueError("the backbone has no classifier head (num_classes=0): there are no logits to train")
    dtype = check_params(params, cfg, extra_ok=("tofe.",))
    check_images(images, cfg, dtype)
    check_tofe_params(params, cfg, tcfg)
    S = len(tcfg.resolved_stages(cfg.depth))
    want = (images.shape[0], cfg.num_patches, 2)
    if not isinstance(noise, (list, tuple)) or len(noise) != S:
        raise ValueError(f"noise must be a list of {S} arrays of shape {want} (one per stage)")
    for s, g in enumerate(noise):
        if not hasattr(g, "shape") or not hasattr(g, "dtype"):
            raise TypeError(f"noise[{s}] must be an array of shape {want}, got {type(g).__name__}")
        if tuple(g.shape) != want or g.dtype != dtype:
            raise ValueError(f"noise[{s}] must be {np.dtype(dtype)} of shape {want}, "
                             f"got {g.dtype} {tuple(g.shape)}")
        if not bool(get_xp(g).isfinite(g).all()):
            raise ValueError(f"noise[{s}] contains NaN or inf values")
    if teacher is not None:
        check_teacher(teacher, images.shape[0], cfg, S)
    if teacher is None and (tcfg.alpha > 0 or (tcfg.beta > 0 and tcfg.uses_approximator)):
        raise ValueError("alpha > 0 or beta > 0 need the dense teacher's outputs: pass "
                         "teacher=teacher_forward(teacher_params, images, cfg, stages), or set alpha=beta=0")


def check_teacher(teacher, B, cfg, S):
    """teacher: the dict of ``teacher_forward`` for this batch: logits (B, K), S token arrays (B, N, C)."""
    if not isinstance(teacher, dict) or not {"logits", "tokens"} <= set(teacher):
        got = f"a dict with keys {sorted(teacher)}" if isinstance(teacher, dict) else type(teacher).__name__
        raise TypeError(f"teacher must be the dict teacher_forward returns ('logits', 'tokens'), got {got}")
    want = (B, cfg.num_classes)
    if tuple(getattr(teacher["logits"], "shape", ())) != want:
        raise ValueError(f"teacher['logits'] must have shape {want}, got "
                         f"{tuple(getattr(teacher['logits'], 'shape', ()))} (another batch or model?)")
    tok = (B, cfg.num_tokens, cfg.embed_dim)
    shapes = [tuple(getattr(t, "shape", ())) for t in teacher["tokens"]]
    if len(shapes) != S or any(s != tok for s in shapes):
        raise ValueError(f"teacher['tokens'] must be {S} arrays of shape {tok} (one per stage), got {shapes}")
