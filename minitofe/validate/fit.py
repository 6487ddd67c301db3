"""Whether another implementation's outputs fit a golden bundle's configuration (docs/validate.md,
"Comparing"): outputs of another configuration are bad input, refused naming what differs, not reported
as a divergence.

A tensor whose shape the configuration alone fixes (inputs, parameters, gradients, the embedding, the
blocks before the first stage, the logits) must have the bundle's shape; a tensor after a stage start with
another shape (other tokens kept) is a divergence, for ``compare`` to report.
"""
import numpy as np


def problem(ref, got):
    """Why ``got`` cannot be compared with ``ref`` (None when it can)."""
    if got.dtype.kind not in "biuf":
        return f"dtype {got.dtype} is not a number type (expected {ref.dtype})"
    if got.shape != ref.shape and (got.size != ref.size or np.squeeze(got).shape != np.squeeze(ref).shape):
        return f"shape {tuple(got.shape)} != golden {tuple(ref.shape)}"
    return None


def _fixed_by_config(entry, first_stage):
    """The tensor's shape follows from the configuration alone (not from any decision)."""
    if entry.role in ("input", "param", "backward") or entry.name in ("embed", "logits"):
        return True
    parts = entry.name.split(".")
    return parts[0] == "blocks" and parts[1].isdigit() and int(parts[1]) < first_stage


def _sizes(bundle):
    """{size: 'X = size what'} for the sizes the bundle's configuration sets."""
    cfg, b = bundle.meta["config"], len(bundle.arrays["input.images"])
    named = [(b, "B", "images"), (cfg["num_tokens"], "N", "tokens"), (cfg["num_patches"], "P", "patches"),
             (cfg["embed_dim"], "C", "channels"), (cfg["num_classes"], "K", "classes")]
    out = {}
    for size, letter, what in named:
        out.setdefault(size, f"{letter} = {size} {what}")
    return out


def check_configuration(bundle, theirs, path=None):
    """Refuse outputs of another configuration (ValueError naming every tensor that does not fit)."""
    stages = bundle.meta["tofe"]["stages"]
    first = stages[0] if stages else bundle.meta["config"]["depth"]
    sizes, bad = _sizes(bundle), []
    for e in bundle.entries:
        if e.name in theirs and _fixed_by_config(e, first):
            ref, got = bundle.arrays[e.name], np.asarray(theirs[e.name])
            if problem(ref, got) and got.dtype.kind in "biuf":
                axes = ", ".join(sizes.get(d, str(d)) for d in ref.shape)
                bad.append(f"{e.name} is {tuple(got.shape)}, the bundle's {tuple(ref.shape)} "
                           f"({axes or 'a scalar'})")
    if bad:
        raise ValueError(f"{path or 'outputs'}: made with another configuration than the bundle "
                         f"({len(bad)} tensor(s) whose shape the configuration fixes differ): "
                         + "; ".join(bad[:4]) + (" ..." if len(bad) > 4 else "")
                         + "; run your implementation on the bundle's inputs and parameters, or make a "
                           "bundle "
                           "of your configuration")
