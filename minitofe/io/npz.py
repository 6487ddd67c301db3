"""minitofe's own ``.npz`` weight files: every parameter under its key (ToFe's ``tofe.*`` keys included),
plus ``__config__`` (JSON of ``ViTConfig.to_dict()``) and ``__meta__`` (a JSON dict: the ToFe config,
learned keep ratios, a converted file's metadata), as 0-d unicode arrays; read with
``allow_pickle=False``. Equal arrays give equal bytes (fixed zip timestamps).
"""
import json
import zipfile
import zlib

import numpy as np

from ..config import ViTConfig
from ..nn.params import check_params
from .files import about, atomic_write, existing_file, float_dtype
from .timm import TOFE_PREFIX

CONFIG_KEY, META_KEY = "__config__", "__meta__"
# What reading a damaged zip raises: zipfile's NotImplementedError too, for a version or compression
# field it does not know (found by tests/test_hardening.py's fuzzing: one flipped byte).
ZIP_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError)


def write_npz_arrays(f, arrays):
    """np.savez's format (a zip of .npy members) into the open file ``f``, with a fixed timestamp: equal
    arrays, equal bytes. Shared with ``minitofe.train.checkpoint``."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(arr), allow_pickle=False)


def save_npz(path, params, cfg, meta=None):
    """Write params (backbone + optional ``tofe.*`` keys), cfg and a JSON-able ``meta`` dict to ``path``."""
    check_params(params, cfg, extra_ok=(TOFE_PREFIX,))
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    try:
        meta_json = json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"meta must hold JSON values only: {e}") from None
    arrays = dict(params)
    arrays[CONFIG_KEY] = np.array(json.dumps(cfg.to_dict(), sort_keys=True))
    arrays[META_KEY] = np.array(meta_json)
    atomic_write(path, lambda f: write_npz_arrays(f, arrays))


def _json_entry(arrays, key):
    arr = arrays.pop(key)
    if arr.ndim != 0 or arr.dtype.kind != "U":
        raise ValueError(f"{key!r} must be a 0-d unicode array holding JSON, got {arr.dtype} {arr.shape}")
    try:
        value = json.loads(str(arr))
    except ValueError as e:
        raise ValueError(f"{key!r} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{key!r} must hold a JSON object, got {type(value).__name__}")
    return value


def read_npz_arrays(path):
    """path -> {name: array} of any .npz (no pickles); a missing, single-array or corrupt file raises
    ValueError naming the path. Shared with ``minitofe.train.checkpoint`` and ``validate.compare``."""
    with open(path, "rb") as fh:          # our own handle: np.load leaks its own when the zip is bad
        try:
            data = np.load(fh, allow_pickle=False)
        except ZIP_ERRORS as e:
            raise ValueError(f"{path}: not a readable .npz file ({e})") from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: holds a single .npy array, not an .npz of named arrays")
        with data:
            try:
                return {k: data[k] for k in data.files}
            except ZIP_ERRORS as e:
                raise ValueError(f"{path}: corrupt .npz file ({type(e).__name__}: {e})") from None


def load_npz(path, dtype=None):
    """-> (params, cfg, meta). ``dtype`` casts every array explicitly; otherwise the stored dtype is kept."""
    path = existing_file(path)
    dtype = float_dtype(dtype)
    arrays = read_npz_arrays(path)
    with about(path):
        if CONFIG_KEY not in arrays:
            raise ValueError(f"no {CONFIG_KEY!r} entry, so not a minitofe weight file "
                             f"(timm weights convert with `minitofe convert SRC DST --model NAME`)")
        cfg = ViTConfig.from_dict(_json_entry(arrays, CONFIG_KEY))
        meta = _json_entry(arrays, META_KEY) if META_KEY in arrays else {}
        params = arrays if dtype is None else {k: v.astype(dtype) for k, v in arrays.items()}
        check_params(params, cfg, extra_ok=(TOFE_PREFIX,))
    return params, cfg, meta
