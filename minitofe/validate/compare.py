"""``compare``: another implementation's outputs against a golden bundle, tensor by tensor in execution
order, naming the FIRST one that diverges (``minitofe compare BUNDLE THEIRS``).

Their file (``.safetensors`` or ``.npz``) uses the bundle's names, holds any subset, in any order. Per
tensor (restricted to the rows its index entry names, e.g. the kept tokens of a stage):

    float tensors   max_abs = max |theirs - golden|,  rel = max_abs / max |golden|  (1 when that is 0)
                    pass in a tolerance class when rel <= TOLERANCES[class]
    masks           the decision theirs > 0.5 must equal the golden's (a flip fails in every class); the
                    values themselves are then compared as floats (a straight-through 0.99999994 is a
                    float32-class error); the report lists the flipped tokens by image and stage
    int tensors     exactly equal (kept_idx per image as sets of patches)

The verdict is given in one class: ``tol`` (``"float64"`` / ``"float32"``), by default float32 when any
float tensor they give, or the bundle itself, is float32, else float64.

Outputs of another configuration are bad input, not a divergence (``fit.check_configuration``): a tensor
whose shape the configuration fixes (inputs, parameters, gradients, the embedding, the blocks before the
first stage, the logits) with another shape is refused (ValueError, exit 2) naming the tensor, both
shapes and the bundle's sizes. The
report (``--json``) follows ``SCHEMA``; docs/validate.md, "The JSON report", lists every key.
"""
import os
import re

import numpy as np

from .bundle import ROLES, Bundle, read_bundle
from .fit import check_configuration, problem as _problem
from ..io.npz import read_npz_arrays
from ..io.weights import existing_file

TOLERANCES = {"float64": 1e-9, "float32": 1e-4}
SCHEMA = "minitofe-compare/1"
REPORT_KEYS = ("schema", "bundle", "theirs", "mode", "method", "minitofe_version", "prefix_tokens",
               "tolerances", "class", "passed", "compared", "failed", "first_divergence", "last_match",
               "worst", "tensors", "not_given", "unknown")
ROW_KEYS = ("name", "role", "kind", "what", "shape", "rows", "dtype", "max_abs", "rel", "worst", "golden",
            "theirs", "pass_float64", "pass_float32", "error", "note", "status", "flips", "index_diffs")


def read_outputs(path):
    """-> {name: array} from a ``.safetensors`` or ``.npz`` file; errors name the file."""
    path = existing_file(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".safetensors":
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(path, framework="np") as f:
                out = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError, EOFError) as e:
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
        except TypeError as e:                   # bfloat16 and the like: NumPy has no such dtype
            raise TypeError(f"{path}: a tensor NumPy cannot read ({e}); save float32 or float64") from None
    elif ext == ".npz":
        out = read_npz_arrays(path)
    else:
        raise ValueError(f"{path}: outputs to compare must be a .safetensors or .npz file, got {ext!r}")
    if not out:
        raise ValueError(f"{path}: holds no tensors")
    return out


def _rows(spec, bundle):
    """'stage.0.mask==1' -> bool (B, N) of the rows compared, or None for all."""
    if spec in (None, "all"):
        return None
    m = re.fullmatch(r"(.+)==([01])", spec)
    if not m or m.group(1) not in bundle.arrays:
        raise ValueError(f"{bundle.path}: unknown rows rule {spec!r}")
    return bundle.arrays[m.group(1)] == float(m.group(2))


def _float_row(row, ref, got, sel):
    bad = ~np.isfinite(got)
    diff = np.abs(got - ref)
    if sel is not None:
        keep = sel.reshape(sel.shape + (1,) * (ref.ndim - sel.ndim))
        bad, diff = bad & keep, np.where(keep, diff, 0.0)
        ref_used = np.abs(np.where(keep, ref, 0.0))
    else:
        ref_used = np.abs(ref)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        row.update(max_abs=None, rel=None, worst=list(where), golden=float(ref[where]),
                   theirs=float(got[where]), note=f"{int(bad.sum())} NaN/inf value(s)")
        return row
    scale = float(ref_used.max()) if ref_used.size else 0.0
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.size else ()
    max_abs = float(diff.max()) if diff.size else 0.0
    row.update(max_abs=max_abs, rel=max_abs / (scale if scale > 0 else 1.0),
               worst=[int(i) for i in worst], golden=float(ref[worst]) if diff.size else None,
               theirs=float(got[worst]) if diff.size else None)
    return row


def _mask_row(row, name, ref, got, T):
    flips = np.argwhere((got > 0.5) != (ref > 0.5))
    stage = int(name.split(".")[1]) if name.startswith("stage.") else None
    row["flips"] = [{"stage": stage, "image": int(b), "token": int(n), "patch": int(n) - T,
                     "golden": "keep" if ref[b, n] > 0.5 else "freeze",
                     "theirs": "keep" if got[b, n] > 0.5 else "freeze"} for b, n in flips]
    return row


def _kept_idx_row(row, ref, got):
    if got.ndim != 2 or len(got) != len(ref):
        row["error"] = f"shape {tuple(got.shape)}: expected ({len(ref)}, K) kept patch indices per image"
        return row
    diffs = []
    for b, (r, g) in enumerate(zip(ref, got)):
        r, g = set(r[r >= 0].tolist()), set(g[g >= 0].tolist())
        if r != g:
            diffs.append({"image": b, "only_golden": sorted(r - g), "only_theirs": sorted(g - r)})
    row.update(index_diffs=diffs, max_abs=float(len(diffs)), rel=float(len(diffs)))
    return row


def _int_row(row, ref, got):
    diff = np.argwhere(got != ref)
    row.update(max_abs=float(np.abs(got.astype(np.int64) - ref).max()) if ref.size else 0.0)
    row["rel"] = row["max_abs"]
    if len(diff):
        where = tuple(int(i) for i in diff[0])
        row.update(worst=list(where), golden=int(ref[where]), theirs=int(got[where]))
    return row


def _prefix_tokens(bundle):
    cfg = bundle.meta["config"]
    return int(cfg["class_token"]) + int(cfg.get("reg_tokens", 0)) + int(cfg["distilled"])


def compare_tensor(entry, ref, got, bundle):
    """One row of the report: the entry's name, what, shape, errors and pass per tolerance class."""
    row = {"name": entry.name, "role": entry.role, "kind": entry.kind, "what": entry.what,
           "shape": list(ref.shape), "rows": entry.rows, "dtype": str(got.dtype)}
    T = _prefix_tokens(bundle)
    if entry.name.endswith("kept_idx") and got.dtype.kind in "iu":
        row = _kept_idx_row(row, ref, got)
        return _classify(row, exact=True)
    problem = _problem(ref, got)
    if problem:
        row["error"] = problem
        return _classify(row, exact=True)
    got = got.reshape(ref.shape)
    if entry.kind == "int":
        return _classify(_int_row(row, ref, got), exact=True)
    got = got.astype(np.float64)
    sel = _rows(entry.rows, bundle)
    if sel is not None and not sel.any():
        row.update(status="no rows", pass_float64=True, pass_float32=True, note="no rows to compare")
        return row
    row = _float_row(row, ref.astype(np.float64), got, sel)
    if entry.kind == "mask":
        row = _mask_row(row, entry.name, ref, got, T)
    return _classify(row)


def _classify(row, exact=False):
    ok_exact = not row.get("error") and not row.get("flips") and not row.get("index_diffs")
    rel = row.get("rel")
    for c, tol in TOLERANCES.items():
        within = rel is not None and (rel == 0 if exact else rel <= tol)
        row[f"pass_{c}"] = bool(ok_exact and within)
    return row


def _given_dtype(bundle, theirs):
    floats = [v.dtype for k, v in theirs.items() if k in bundle.arrays and v.dtype.kind == "f"]
    if any(d.itemsize < 8 for d in floats) or bundle.arrays["input.images"].dtype.itemsize < 8:
        return "float32"
    return "float64"


def compare(bundle, theirs, tol=None, any_version=False):
    """``bundle``: a Bundle or a path; ``theirs``: {name: array} or a path. -> report dict with
    ``passed``, ``first_divergence`` (a row or None), ``tensors`` (rows in execution order), and the
    names not given / not known."""
    theirs_path = None
    if not isinstance(bundle, Bundle):
        bundle = read_bundle(bundle, any_version=any_version)
    if not isinstance(theirs, dict):
        theirs_path, theirs = os.fspath(theirs), read_outputs(theirs)
    if tol is not None and tol not in TOLERANCES:
        raise ValueError(f"tol must be one of {list(TOLERANCES)}, got {tol!r}")
    known = {e.name for e in bundle.entries}
    unknown = sorted(k for k in theirs if k not in known)
    if len(unknown) == len(theirs):
        raise ValueError(f"{theirs_path or 'outputs'}: none of its {len(theirs)} names is in the bundle "
                         f"(e.g. {unknown[:3]}); expected names like {[e.name for e in bundle.entries[-3:]]} "
                         f"— docs/validate.md lists them")
    check_configuration(bundle, theirs, theirs_path)
    cls = tol or _given_dtype(bundle, theirs)
    rows = [compare_tensor(e, bundle.arrays[e.name], np.asarray(theirs[e.name]), bundle)
            for e in bundle.entries if e.name in theirs]
    failed = [r for r in rows if not r[f"pass_{cls}"]]
    first = failed[0] if failed else None
    before = rows[:rows.index(first)] if first else rows
    worst = {r: max(((x["rel"], x["name"]) for x in rows if x["role"] == r and x.get("rel") is not None),
                    default=None) for r in ROLES}
    worst = {r: {"rel": w[0], "name": w[1]} for r, w in worst.items() if w is not None}
    return {"schema": SCHEMA, "bundle": bundle.path, "theirs": theirs_path, "mode": bundle.meta["mode"],
            "method": bundle.meta["tofe"]["method"], "minitofe_version": bundle.meta["minitofe_version"],
            "prefix_tokens": _prefix_tokens(bundle), "tolerances": dict(TOLERANCES), "class": cls,
            "passed": not failed, "compared": len(rows),
            "failed": len(failed), "first_divergence": first,
            "last_match": before[-1]["name"] if before else None,
            "worst": worst, "tensors": rows,
            "not_given": [e.name for e in bundle.entries if e.name not in theirs and e.role in
                          ("forward", "backward")], "unknown": unknown}
