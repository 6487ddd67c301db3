"""``make_golden``: one self-describing ``.safetensors`` bundle of a minitofe run (``minitofe golden``).

    model, teacher, src = golden_model(preset="vit_fmnist_patch2_28", seed=0)   # or weights="file.npz"
    images, labels, isrc = golden_images(model, random=2, seed=1)      # or files=[...], fmnist=[...]
    make_golden("golden.safetensors", model, images, labels, mode="train", noise_seed=2, teacher=teacher,
                source={**src, **isrc})

A training bundle holds the inputs (images, labels, Gumbel noise per stage, the dense teacher's
outputs), every parameter, the intermediates in execution order and every gradient; an inference bundle
(``mode="topk"`` / ``"threshold"``) the kept indices per stage and the realised MACs. The format is in
``bundle.py``, the conventions written into it in ``conventions.py``; docs/validate.md has both.
"""
import numpy as np

from .bundle import write_bundle
from .conventions import conventions, macs_terms, resolved_config, resolved_tofe
from .trace import Record, param_order, trace_infer, trace_train
from .trace_baselines import trace_dynamicvit, trace_evit
from ..config import ViTConfig
from ..io.timm import PATCH_KEY, timm_patch_shape
from ..model import Model, add_tofe, draw_noise, load_model, new_model, teacher_forward
from ..methods import get as method_of
from ..tofe.config import ToFeConfig
from ..tofe.inference import resolve_keep_ratios

MODES = ("train", "topk", "threshold")
OWN_TRACES = {"evit": trace_evit, "dynamicvit": trace_dynamicvit}   # the authors' methods trace themselves
NUDGE_STD = 0.02     # N(0, NUDGE_STD^2) added to a preset's backbone: the student is not its teacher
FRESH_STD = 0.5      # fresh ToFe modules: N(0, FRESH_STD^2) on vectors, N(0, 1 / fan_in) on weight matrices
FRESH = f"N(0, 1/fan_in) on weight matrices, N(0, {FRESH_STD}^2) on vectors"


def nudge(model, rng, std=NUDGE_STD, only="tofe."):
    """Add N(0, std^2) noise to the parameters whose key starts with ``only`` (None: all); ``std=None``:
    N(0, 1 / fan_in) to a weight matrix (its outputs then vary by about one unit, at any width, without
    saturating a softmax into ties) and N(0, FRESH_STD^2) to a vector. A fresh approximator (fc2 = 0) is
    exactly the identity, a fresh selector or predictor scores every token alike, and a fresh student
    equals its teacher: a bundle of any would check nothing of some gradients, decisions and of the
    distillation loss."""
    for k, v in model.params.items():
        if only is None or k.startswith(only):
            s = std if std is not None else v.shape[-1] ** -0.5 if v.ndim >= 2 else FRESH_STD
            model.params[k] = v + rng.normal(0.0, s, v.shape).astype(v.dtype)
    return model


def golden_model(weights=None, preset=None, seed=0, method=None, dtype="float64", model_name=None, heads=None,
                 teacher=None):
    """-> (Model, teacher params, source dict).

    ``weights``: a weight file (``model_name`` / ``heads`` for timm files): ToFe modules the file lacks
    for ``method`` (default: the file's, ``tofe`` for a bare backbone) are made fresh from ``seed`` and
    nudged (``nudge``); the teacher is ``teacher`` (a weight file: the dense backbone the model was
    fine-tuned from) or the file's own backbone. ``preset``: a preset name or ViTConfig initialised from
    ``seed``; the teacher is that initial backbone, the student all of it nudged."""
    from ..config import get_config
    if (weights is None) == (preset is None):
        raise ValueError("give exactly one model source: weights=FILE or preset=NAME (with a seed)")
    rng = np.random.default_rng(seed)
    if preset is not None:
        cfg = get_config(preset) if isinstance(preset, str) else preset
        if not isinstance(cfg, ViTConfig):
            raise TypeError(f"preset must be a preset name or a ViTConfig, got {type(preset).__name__}")
        if teacher is not None:
            raise ValueError("a preset's teacher is its own initial backbone: give teacher= with weights= "
                             "only")
        model = new_model(cfg, ToFeConfig(method=method or "tofe"), rng, np.dtype(dtype))
        t_params = {k: v.copy() for k, v in model.backbone_params().items()}
        name = preset if isinstance(preset, str) else cfg.to_dict()
        nudge(model, rng, only=None)
        return nudge(model, rng, None), t_params, {
            "model": f"preset {name}, seed {seed}, every parameter nudged by N(0, {NUDGE_STD}^2), the ToFe "
                     f"modules (tofe.*) then by {FRESH}",
            "teacher": "the preset's initial backbone (before the nudge)"}
    model = load_model(weights, model=model_name, num_heads=heads, dtype=dtype)
    source = {"model": f"weights {weights}", "teacher": f"the backbone of {teacher or weights}"}
    t_params = (load_model(teacher, model=model_name, num_heads=heads, dtype=dtype).backbone_params()
                if teacher is not None else {k: v.copy() for k, v in model.backbone_params().items()})
    own = model.tofe.method
    method = method or (own if own != "dense" else "tofe")
    if method == own:
        return model, t_params, dict(source, tofe_modules="from the file")
    add_tofe(model, model.tofe.replace(method=method), rng)
    return nudge(model, rng, None), t_params, dict(
        source, tofe_modules=f"fresh for method {method!r} (seed {seed}), nudged by {FRESH}")


def example_golden(path, method="tofe", mode="train", overwrite=False):
    """The small bundles of notebook 07, the tests and ``scripts/make_validate_fixtures.py``: a 4-block
    ViT of width 8 on two random 8x8 grey images, stages at blocks 1, 2, 3, float64."""
    cfg = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=4, num_heads=2)
    model, teacher, source = golden_model(preset=cfg, seed=0, method=method)
    images, labels, isrc = golden_images(model, random=2, seed=1)
    return make_golden(path, model, images, labels, mode, teacher=teacher, source={**source, **isrc},
                       overwrite=overwrite)


def golden_images(model, files=None, fmnist=None, random=None, seed=1, labels=None, fmnist_root=None):
    """-> (images (B, Cin, H, W) in the model's dtype, labels int64 (B,), source dict). Exactly one of
    ``files`` (image paths), ``fmnist`` (Fashion-MNIST test-set indices, their true labels) or
    ``random`` (a batch size: standard normal pixels from ``seed``). ``labels`` default to the true
    ones (Fashion-MNIST, read from ``fmnist_root`` or the default folder) or to integers drawn from
    ``seed``."""
    if sum(v is not None for v in (files, fmnist, random)) != 1:
        raise ValueError("give exactly one image source: files, fmnist (indices) or random (a batch size)")
    cfg, dtype = model.cfg, next(iter(model.params.values())).dtype
    rng = np.random.default_rng(seed)
    images, true, what = _pick_images(model, files, fmnist, random, rng, seed, fmnist_root)
    images = np.ascontiguousarray(images, dtype=dtype)
    B = len(images)
    if labels is not None:
        labels, lwhat = _labels(labels, B, cfg.num_classes), "given"
    elif true is not None:
        labels, lwhat = true, "the true Fashion-MNIST labels"
    else:
        labels, lwhat = rng.integers(0, cfg.num_classes, B), f"random integers, seed {seed}"
    return images, labels.astype(np.int64), {"images": what, "labels": lwhat}


def _pick_images(model, files, fmnist, random, rng, seed, fmnist_root):
    """-> (images, true labels or None, description) from one of the three sources."""
    cfg = model.cfg
    if files is not None:
        from ..data import read_images
        return read_images(list(files), model), None, f"files {[str(f) for f in files]}"
    if fmnist is not None:
        from ..data import load_fashion_mnist
        images, labels = load_fashion_mnist("test", fmnist_root)
        idx = np.asarray(list(fmnist))
        if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu":
            raise ValueError(f"fmnist must be a non-empty list of test-set indices, got {list(fmnist)!r}")
        if idx.min() < 0 or idx.max() >= len(images):
            raise ValueError(f"Fashion-MNIST test indices must lie in [0, {len(images)}), got {idx.tolist()}")
        return images[idx], labels[idx], f"Fashion-MNIST test images {idx.tolist()}"
    if isinstance(random, bool) or not isinstance(random, (int, np.integer)) or random < 1:
        raise ValueError(f"random must be a batch size >= 1, got {random!r}")
    shape = (int(random), cfg.in_chans, cfg.img_size, cfg.img_size)
    return rng.standard_normal(shape), None, f"random normal (B={random}) seed {seed}"


def _labels(labels, B, K):
    y = np.asarray(labels)
    if y.shape != (B,) or y.dtype.kind not in "iu" or (B and (y.min() < 0 or y.max() >= K)):
        raise ValueError(f"labels must be {B} integers in [0, {K}) (one per image), got {y.tolist()}")
    return y


def _inputs(rec, model, images, labels, noise=(), teacher=None):
    rec.add("input.images", images, "images (B, in_chans, H, W), normalised", role="input")
    rec.add("input.labels", labels, "class labels (B,)", role="input", kind="int")
    for s, g in enumerate(noise):
        rec.add(f"input.noise.{s}", g, f"Gumbel noise of stage {s} (B, P, 2)", role="input")
    dvit = method_of(model.tofe.method).teacher_features
    for s, t in enumerate(teacher["tokens"] if teacher and not dvit else ()):
        rec.add(f"input.teacher_tokens.{s}", t, f"dense teacher's tokens at the end of stage {s}",
                role="input")
    if teacher:
        rec.add("input.teacher_logits", teacher["logits"], "dense teacher's logits", role="input")
    if teacher and dvit:
        rec.add("input.teacher_features", teacher["features"], "dense teacher's final tokens after its norm",
                role="input")
    for k in param_order(model):
        rec.add(f"param.{k}", model.params[k], f"parameter {k}", role="param")


def _timm_layout(rec, cfg):
    """The patch embedding and its gradient in timm's conv shape (C, Cin, p, p), as timm's state dict."""
    for name in (f"param.{PATCH_KEY}", f"grad.{PATCH_KEY}"):
        if name in rec.arrays:
            rec.arrays[name] = rec.arrays[name].reshape(timm_patch_shape(cfg))


def make_golden(path, model, images, labels, mode="train", noise_seed=2, teacher=None, source=None,
                overwrite=False):
    """Run ``model`` (minitofe.Model) on ``images`` / ``labels`` and write the bundle to ``path``
    (``.safetensors``). ``mode``: train (needs a learned selector; noise drawn from ``noise_seed``;
    ``teacher``: the dense teacher's params, default the model's own backbone), topk or threshold.
    ``source``: a dict saying how model and inputs were made (stored as metadata)."""
    if not isinstance(model, Model):
        raise TypeError(f"model must be a minitofe.Model, got {type(model).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    cfg, tcfg = model.cfg, model.tofe
    if mode == "train" and not tcfg.trainable:
        raise ValueError(f"method {tcfg.method!r} is training-free, so no training bundle; use mode 'topk' "
                         f"or 'threshold', or a trained method (tofe, tofe-identity, tofe-uniform, "
                         f"tofe-cumulative, evit, dynamicvit)")
    method = method_of(tcfg.method)
    if mode == "threshold" and method.topk_only:
        raise ValueError(f"method {tcfg.method!r} decides by top-K only (the authors' rule): use mode 'topk'")
    if (tcfg.selector, tcfg.approximator) != ("mlp", "mlp"):
        raise ValueError(f"golden bundles trace ToFe's mlp selector and approximator, not selector "
                         f"{tcfg.selector!r} / approximator {tcfg.approximator!r}")
    if tcfg.last_stage != "approximate":
        raise ValueError(f"golden bundles trace an approximator at every stage, not last_stage="
                         f"{tcfg.last_stage!r}")
    if tcfg.fuses_frozen:
        raise ValueError("golden bundles trace ToFe without the fused frozen token; this model has "
                         "fuse_frozen=True")
    dtype = images.dtype if hasattr(images, "dtype") else None
    rec = Record()
    if mode == "train":
        noise = draw_noise(np.random.default_rng(noise_seed), cfg, tcfg, len(images), dtype)
        if not method.noise:                            # EViT draws nothing, and reads no teacher either
            noise = []
        teacher = (teacher_forward(model.backbone_params() if teacher is None else teacher, images, cfg,
                                   tcfg.resolved_stages(cfg.depth)) if method.noise else None)
        _inputs(rec, model, images, labels, noise, teacher)
        _trace_train(rec, model, images, labels, noise, teacher)
        source = dict(source or {}, noise=f"minitofe.draw_noise(numpy.random.default_rng({noise_seed}), ...)"
                      if noise else "none (EViT draws no noise)")
    else:
        model = _fixed_ratios(model, mode)
        _inputs(rec, model, images, labels)
        _trace_infer(rec, model, images, labels, mode)
    _timm_layout(rec, cfg)
    tcfg = model.tofe.replace(inference=mode) if mode != "train" else model.tofe
    meta = {"mode": mode, "config": resolved_config(cfg), "tofe": resolved_tofe(cfg, tcfg),
            "macs": macs_terms(cfg), "source": source or {},
            "conventions": conventions(cfg, tcfg, mode, str(dtype))}
    return write_bundle(path, rec.entries, rec.arrays, meta, overwrite)


def _trace_train(rec, model, images, labels, noise, teacher):
    own = OWN_TRACES.get(model.tofe.method)
    if own is not None:
        return own(rec, model, images, labels, "train", noise, teacher)
    return trace_train(rec, model, images, labels, noise, teacher)


def _trace_infer(rec, model, images, labels, mode):
    own = OWN_TRACES.get(model.tofe.method)
    if own is not None:
        return own(rec, model, images, labels, mode)
    return trace_infer(rec, model, images, mode)


def _fixed_ratios(model, mode):
    """A copy whose config carries the keep ratios inference will use (learned ones included), so the
    bundle's metadata states them."""
    tcfg = model.tofe
    if tcfg.method == "dense" or method_of(tcfg.method).topk_only or mode == "threshold":
        return model
    learned = model.learned_keep_ratios if tcfg.learned_ratios else None
    ratios = resolve_keep_ratios(tcfg, None, learned)
    return Model(model.params, model.cfg, tcfg.replace(keep_ratios=ratios), None)

