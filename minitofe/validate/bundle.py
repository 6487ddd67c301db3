"""The golden bundle: one ``.safetensors`` file that describes itself (docs/validate.md).

Tensors are stored under their names (``input.images``, ``param.blocks.0.attn.qkv.weight``,
``blocks.0.attn``, ``stage.1.mask``, ``loss.kd``, ``grad.head.weight`` ...); the file's string metadata
says the rest, each value a JSON text:

    format            "minitofe-golden/2"
    minitofe_version  the version that wrote it
    mode              "train", "topk" or "threshold"
    config, tofe      ViTConfig / ToFeConfig as dicts, every value resolved (no nulls: the stages, the
                      baselines' keep rate and rho, the keep ratios inference uses ...)
    macs              the dense MACs (the denominator of macs_ratio) and each of its terms
    source            how the model, images, labels and noise were made (enough to make it again)
    conventions       {topic: sentence}: noise layout, mask values, loss reductions, MACs, dtype ...
    index             the tensors in execution order: [name, role, kind, rows, shape, dtype, what]

``role`` is input / param / forward / backward; ``kind`` is float (compared to a tolerance), mask
(0/1, compared exactly) or int (indices and counts, exactly); ``rows`` names the rows compared
(``"stage.0.mask==1"``: only the tokens kept at stage 0), or ``"all"``. No value anywhere in the
metadata is null. Parameters and their gradients have timm's state-dict shapes (the patch embedding's
conv weight ``(C, Cin, p, p)``). Nothing here needs minitofe to be read:
``safetensors.safe_open(path, "np").metadata()`` gives the same dicts.
"""
import json
import os
from dataclasses import dataclass

import numpy as np

from .. import __version__
from ..io.weights import about, atomic_write, existing_file

FORMAT = "minitofe-golden/2"
ROLES = ("input", "param", "forward", "backward")
KINDS = ("float", "mask", "int")
META_KEYS = ("format", "minitofe_version", "mode", "config", "tofe", "macs", "source", "conventions", "index")


@dataclass(frozen=True)
class Entry:
    """One tensor of a bundle: its name, role, kind, the rows compared (None: all) and a few words."""
    name: str
    role: str
    what: str
    kind: str = "float"
    rows: str = "all"


def write_bundle(path, entries, arrays, meta, overwrite=False):
    """Write ``arrays`` {name: array} in the order of ``entries`` (list of Entry) with ``meta`` (dict of
    JSON values for the keys of META_KEYS other than format, version and index) to ``path``."""
    from safetensors.numpy import save
    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        raise ValueError(f"{path}: a golden bundle is a .safetensors file; name it *.safetensors")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory")
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"{path}: exists already (pass --force / overwrite=True to replace it)")
    _no_nulls(meta, "metadata")
    names = [e.name for e in entries]
    if sorted(names) != sorted(arrays) or len(set(names)) != len(names):
        raise ValueError(f"bundle entries and arrays differ: {sorted(set(names) ^ set(arrays))}")
    index = [[e.name, e.role, e.kind, e.rows, list(arrays[e.name].shape), str(arrays[e.name].dtype), e.what]
             for e in entries]
    metadata = {"format": FORMAT, "minitofe_version": __version__, "index": json.dumps(index)}
    metadata.update({k: json.dumps(v) for k, v in meta.items()})
    data = save({k: np.asarray(v, order="C") for k, v in arrays.items()}, metadata=metadata)
    atomic_write(path, lambda f: f.write(data))
    return path


def _no_nulls(value, where):
    """A bundle states every value: a None anywhere in its metadata is a bug of the writer."""
    if value is None:
        raise ValueError(f"golden bundle: {where} is null; write the resolved value")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        _no_nulls(v, f"{where}[{k!r}]")


@dataclass
class Bundle:
    path: str
    meta: dict          # the metadata, JSON values decoded
    entries: list       # Entry, in execution order
    arrays: dict        # {name: array}

    def of_role(self, *roles):
        return [e for e in self.entries if e.role in roles]


def _decode_meta(path, raw):
    if not raw or raw.get("format") != FORMAT:
        got = raw.get("format") if raw else None
        raise ValueError(f"{path}: not a minitofe golden bundle (metadata format {got!r}, expected "
                         f"{FORMAT!r}); make one with `minitofe golden`")
    missing = [k for k in META_KEYS if k not in raw]
    if missing:
        raise ValueError(f"{path}: golden bundle metadata lacks {missing}")
    meta = {"format": raw["format"], "minitofe_version": raw["minitofe_version"]}
    for k in META_KEYS[2:]:
        try:
            meta[k] = json.loads(raw[k])
        except ValueError as e:
            raise ValueError(f"{path}: metadata {k!r} is not valid JSON ({e})") from None
    return meta


def _check_version(path, meta, any_version):
    if meta["minitofe_version"] != __version__ and not any_version:
        raise ValueError(f"{path}: made by minitofe {meta['minitofe_version']}, this is minitofe "
                         f"{__version__}; conventions may differ: make the bundle again with this version "
                         f"(its 'source' metadata says how), or pass --any-version to compare anyway")


def _entries(index):
    entries = []
    for row in index:
        name, role, kind, rows, shape, dtype, what = row
        if role not in ROLES or kind not in KINDS:
            raise ValueError(f"index entry {name!r}: role {role!r} / kind {kind!r} unknown")
        entries.append((Entry(name, role, what, kind, rows), tuple(shape), dtype))
    return entries


def _check_arrays(entries, arrays):
    """Every indexed name present with its recorded shape and dtype, float tensors finite."""
    missing = [e.name for e, _, _ in entries if e.name not in arrays]
    if missing:
        raise ValueError(f"bundle lacks {len(missing)} tensor(s) its index lists: {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''} (a truncated or edited file?)")
    for e, shape, dtype in entries:
        a = arrays[e.name]
        if a.shape != shape or str(a.dtype) != dtype:
            raise ValueError(f"tensor {e.name!r} is {a.dtype} {a.shape}, its index says {dtype} {shape}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
            raise ValueError(f"tensor {e.name!r} holds NaN or inf (first at index {list(bad)})")


def read_bundle(path, any_version=False):
    """-> Bundle. Refuses, naming the problem, a file that is not a golden bundle, one made by another
    minitofe version (unless ``any_version``), and one whose tensors disagree with its index."""
    from safetensors import SafetensorError, safe_open
    path = existing_file(path)
    try:
        with safe_open(path, framework="np") as f:
            raw = f.metadata()
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, EOFError, TypeError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    meta = _decode_meta(path, raw)
    _check_version(path, meta, any_version)
    with about(path):
        try:
            entries = _entries(meta["index"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"metadata 'index' is malformed ({e})") from None
        _check_arrays(entries, arrays)
    return Bundle(path, meta, [e for e, _, _ in entries], arrays)
