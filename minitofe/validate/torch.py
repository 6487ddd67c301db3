"""Capture a PyTorch implementation's outputs under a golden bundle's names (docs/validate.md, "From
PyTorch in a few lines"). Needs torch; nothing else in ``minitofe`` imports it.

    from minitofe.validate.torch import capture, load, record
    model = MyToFe(...)                                   # parameters under timm's keys, or give ``keys``
    outputs = capture("golden.safetensors", model, lambda x: my_loss(model, **x), out="theirs.safetensors")

``load(bundle, module)`` copies the bundle's parameters into the module (a named error lists every key or
shape that does not fit) and returns the bundle's inputs as tensors: ``images``, ``labels``, ``noise``
(one (B, P, 2) tensor per stage), ``teacher_tokens``, ``teacher_logits``, ``teacher_features`` (those the
bundle has). ``capture`` then runs ``step(inputs)`` with forward hooks on the modules that ``names``
matches (``TIMM_NAMES`` by default: timm's module paths), keeps whatever the code passes to
``record(name, tensor)``, calls ``backward()`` on what a training ``step`` returns (its ``loss.total``;
for inference its ``logits``) and takes the gradients from ``param.grad`` (``grad.<bundle key>``) and the
images' ``.grad`` (``grad.images``).

Name patterns: ``{i}``, ``{s}`` (any ``{word}``) stand for an integer path component, the same word in
the bundle name takes its value: ``{"layers.{i}.ln_1": "blocks.{i}.norm1"}``. ``keys`` maps the module's
parameter names to the bundle's (timm's) the same way; keys it does not match are taken as they are.
"""
import re

import numpy as np
import torch

from .bundle import Bundle, read_bundle
from .recorder import record, recording

__all__ = ["TIMM_NAMES", "capture", "load", "record"]

TIMM_NAMES = {"pos_drop": "embed", "blocks.{i}": "blocks.{i}.out",
              **{f"blocks.{{i}}.{part}": f"blocks.{{i}}.{part}" for part in ("norm1", "attn", "mlp")}}
_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _pattern(text):
    """'blocks.{i}.norm1' -> a compiled regex with one integer group per {word}."""
    parts = re.split(r"\{(\w+)\}", text)
    return re.compile("".join(re.escape(p) if k % 2 == 0 else rf"(?P<{p}>\d+)" for k, p in enumerate(parts)))


def _renamer(mapping):
    """-> f(name) -> the mapped name (patterns as in the module docstring), or None when none matches."""
    rules = [(_pattern(k), v) for k, v in (mapping or {}).items()]

    def rename(name):
        for rx, target in rules:
            m = rx.fullmatch(name)
            if m:
                return target.format(**m.groupdict())
        return None
    return rename


def _bundle(bundle):
    return bundle if isinstance(bundle, Bundle) else read_bundle(bundle)


def load(bundle, module, keys=None, dtype=None):
    """Copy the bundle's parameters into ``module`` (cast to ``dtype``, default the bundle's) and return its
    inputs as tensors. Raises ValueError listing every parameter the bundle lacks, every bundle parameter
    the module has no place for, and every shape that differs (their key, its bundle key, both shapes)."""
    b = _bundle(bundle)
    dtype = dtype or _DTYPES[str(b.arrays["input.images"].dtype)]
    rename = _renamer(keys)
    state = module.state_dict()
    params = {e.name[len("param."):]: b.arrays[e.name] for e in b.of_role("param")}
    problems, placed = [], {}
    for theirs, t in state.items():
        key = rename(theirs) or theirs
        if key not in params:
            problems.append(f"{theirs!r}: the bundle has no parameter {('param.' + key)!r}")
        elif tuple(t.shape) != params[key].shape:
            problems.append(f"{theirs!r} -> {key!r}: module shape {tuple(t.shape)}, "
                            f"bundle {params[key].shape}")
        placed[key] = theirs
    problems += [f"bundle parameter {('param.' + k)!r} {v.shape}: no module parameter maps to it"
                 for k, v in params.items() if k not in placed]
    if problems:
        raise ValueError(f"{b.path}: the module does not fit the bundle ({len(problems)} problem(s)):\n  "
                         + "\n  ".join(problems))
    module.to(dtype)
    module.load_state_dict({placed[k]: torch.from_numpy(np.array(v)).to(dtype) for k, v in params.items()})
    return _inputs(b, dtype)


def _inputs(b, dtype):
    """The bundle's inputs as tensors: floats in ``dtype``, per-stage tensors in lists."""
    def tensor(a):
        t = torch.from_numpy(np.array(a))
        return t.to(dtype) if t.is_floating_point() else t
    out = {}
    for e in b.of_role("input"):
        name = e.name[len("input."):]
        head, _, stage = name.rpartition(".")
        if stage.isdigit():
            out.setdefault(head, []).append(tensor(b.arrays[e.name]))
        else:
            out[name] = tensor(b.arrays[e.name])
    return out


def _check_names(b, module, names):
    """A pattern of the caller's that names tensors the bundle has must match a module (a typo otherwise)."""
    paths = [p for p, _ in module.named_modules()]
    for pattern, target in names.items():
        wanted = any(_pattern(target).fullmatch(e.name) for e in b.entries)
        if wanted and not any(_pattern(pattern).fullmatch(p) for p in paths):
            raise ValueError(f"capture: no module path of {type(module).__name__} matches {pattern!r} "
                             f"(its paths look like {paths[1:4]})")


def _hooks(module, names):
    """Forward hooks recording the output of every module whose path a pattern of ``names`` matches."""
    rename, handles = _renamer(names), []
    for path, sub in module.named_modules():
        name = rename(path)
        if name is not None:
            handles.append(sub.register_forward_hook(_hook(name, path)))
    return handles


def _hook(name, path):
    def hook(_module, _args, output):
        if not torch.is_tensor(output):
            raise TypeError(f"capture: module {path!r} returned {type(output).__name__}, not a tensor: name "
                            f"what you want with record({name!r}, tensor) in its forward instead")
        record(name, output)
    return hook


def capture(bundle, module, step, names=None, keys=None, out=None, dtype=None):
    """Run ``step(inputs)`` on the bundle's inputs with ``module`` holding its parameters -> {name: array}
    (the bundle's names), written to ``out`` (.safetensors or .npz) if given.

    names: {module path pattern: bundle name} added to ``TIMM_NAMES`` (a pattern of the caller's that
    matches no module is an error). keys: parameter renames (see ``load``). A training bundle's ``step``
    returns the total loss (recorded as ``loss.total`` unless recorded already); an inference bundle's the
    logits (``logits``)."""
    b = _bundle(bundle)
    inputs = load(b, module, keys, dtype)
    train = b.meta["mode"] == "train"
    if train:
        inputs["images"].requires_grad_(True)
        module.zero_grad(set_to_none=True)
    _check_names(b, module, names or {})
    handles = _hooks(module, {**TIMM_NAMES, **(names or {})})
    try:
        with recording(lambda t: t.detach().clone()) as rec, torch.set_grad_enabled(train):
            result = step(inputs)
            last = "loss.total" if train else "logits"
            if last not in rec:
                record(last, result)
    finally:
        for h in handles:
            h.remove()
    if train:
        result.backward()
        rename = _renamer(keys)
        for theirs, p in module.named_parameters():
            if p.grad is not None:
                rec[f"grad.{rename(theirs) or theirs}"] = p.grad.detach().clone()
        rec["grad.images"] = inputs["images"].grad
    outputs = {k: v.detach().cpu().numpy() for k, v in rec.items()}
    if out is not None:
        _write(out, outputs)
    return outputs


def _write(path, outputs):
    path = str(path)
    if path.endswith(".npz"):
        np.savez(path, **outputs)
    elif path.endswith(".safetensors"):
        from safetensors.numpy import save_file
        save_file({k: np.ascontiguousarray(v) for k, v in outputs.items()}, path)
    else:
        raise ValueError(f"{path}: write the outputs to a .safetensors or .npz file")
