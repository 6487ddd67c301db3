"""Weight files: minitofe's own ``.npz``, timm's ``model.safetensors``, torch ``state_dict`` files, and
``convert`` between them (``minitofe convert SRC DST``).

- ``.npz`` (minitofe): every parameter under its key (ToFe's ``tofe.*`` keys included), plus
  ``__config__`` (JSON of ``ViTConfig.to_dict()``) and ``__meta__`` (JSON dict), as 0-d unicode arrays;
  read with ``allow_pickle=False``.
- ``.safetensors`` (timm layout): exactly the keys, shapes and dtypes of a timm ``VisionTransformer``
  state dict, so timm's ``load_state_dict`` takes the file unchanged; the file's metadata (timm writes
  ``{'format': 'pt'}``) is kept through a conversion, so timm -> minitofe -> timm gives the same bytes.
- ``.pth`` / ``.pt`` / ``.bin`` (read only): a torch state dict, possibly wrapped as
  ``{'state_dict': ...}`` or ``{'model': ...}``; needs torch (imported only here, ``weights_only=True``).

Every error is a ``ValueError`` or ``TypeError`` whose message starts with the file's path. Files are
written atomically (temporary file in the same folder, fsync, ``os.replace``). The layout change between
timm and minitofe lives in ``minitofe.io.timm``.
"""
import contextlib
import json
import os
import secrets
import zipfile
import zlib

import numpy as np

from ..config import ViTConfig
from ..nn.params import check_params
from .timm import (TOFE_PREFIX, from_timm_model, from_timm_state_dict, infer_config,  # noqa: F401
                   match_preset, to_timm_state_dict)

CONFIG_KEY, META_KEY = "__config__", "__meta__"
TIMM_METADATA = {"format": "pt"}
HEADS_KEY = "minitofe.num_heads"      # safetensors metadata written by minitofe (timm ignores it)
TORCH_EXTS = (".pth", ".pt", ".bin")
TORCH_HINT = 'reading .pth/.pt/.bin files needs torch: pip install "minitofe[torch]"'


# ---- small helpers: paths, error messages, atomic writes, dtypes ----

def weight_format(path):
    """'npz', 'safetensors' or 'torch', from the file extension."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"a weight file path must be a str or os.PathLike, got {type(path).__name__}")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, not a weight file")
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext in (".npz", ".safetensors"):
        return ext[1:]
    if ext in TORCH_EXTS:
        return "torch"
    raise ValueError(f"{path}: unknown weight file extension {ext!r}; "
                     f"expected .npz, .safetensors, .pth, .pt or .bin")


def existing_file(path):
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, not a weight file")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    return path


@contextlib.contextmanager
def about(path):
    """Prefix the message of a ValueError/TypeError raised inside with the file it concerns."""
    try:
        yield
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    except TypeError as e:
        raise TypeError(f"{path}: {e}") from e


def atomic_write(path, write):
    """Call ``write(binary_file)`` on a temporary file beside ``path``, fsync it, then rename it over
    ``path`` in one step, so a crash never leaves a half-written weight file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{path}: folder {folder} does not exist")
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)   # 0o666: the umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def float_dtype(dtype):
    """None, or one of float32/float64 (the explicit cast a caller asked for)."""
    if dtype is None:
        return None
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


# ---- minitofe's .npz ----

def _write_npz(f, arrays):
    """np.savez's format (a zip of .npy members), with a fixed timestamp: equal arrays, equal bytes."""
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
    atomic_write(path, lambda f: _write_npz(f, arrays))


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


def _read_npz(path):
    with open(path, "rb") as fh:          # our own handle: np.load leaks its own when the zip is bad
        try:
            data = np.load(fh, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: not a readable .npz file ({e})") from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: holds a single .npy array, not a minitofe .npz weight file")
        with data:
            try:
                return {k: data[k] for k in data.files}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise ValueError(f"{path}: corrupt .npz file ({type(e).__name__}: {e})") from None


def load_npz(path, dtype=None):
    """-> (params, cfg, meta). ``dtype`` casts every array explicitly; otherwise the stored dtype is kept."""
    path = existing_file(path)
    dtype = float_dtype(dtype)
    arrays = _read_npz(path)
    with about(path):
        if CONFIG_KEY not in arrays:
            raise ValueError(f"no {CONFIG_KEY!r} entry, so not a minitofe weight file "
                             f"(timm weights convert with `minitofe convert SRC DST --model NAME`)")
        cfg = ViTConfig.from_dict(_json_entry(arrays, CONFIG_KEY))
        meta = _json_entry(arrays, META_KEY) if META_KEY in arrays else {}
        params = arrays if dtype is None else {k: v.astype(dtype) for k, v in arrays.items()}
        check_params(params, cfg, extra_ok=(TOFE_PREFIX,))
    return params, cfg, meta


# ---- timm's safetensors and torch state-dict files ----

def _timm_params(path, state, cfg, model, num_heads, dtype):
    if cfg is not None and (model is not None or num_heads is not None):
        raise TypeError("pass either cfg or model/num_heads, not both")
    with about(path):
        cfg = infer_config(state, model, num_heads) if cfg is None else cfg
        return from_timm_state_dict(state, cfg, float_dtype(dtype)), cfg


def load_safetensors(path, cfg=None, model=None, num_heads=None, dtype=None):
    """timm-layout ``.safetensors`` -> (params, cfg, metadata); ``metadata`` is the file's own (None
    if it has none). Without ``cfg``, the config is inferred (``infer_config``) with ``model``/``num_heads``."""
    from safetensors import SafetensorError, safe_open
    path = existing_file(path)
    try:
        with safe_open(path, framework="np") as f:
            metadata = f.metadata()
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    except TypeError as e:                                   # e.g. bfloat16: NumPy has no such dtype
        raise TypeError(f"{path}: cannot read a tensor with NumPy ({e})") from None
    if cfg is None and model is None and num_heads is None and metadata and HEADS_KEY in metadata:
        num_heads = _heads_from_metadata(path, metadata[HEADS_KEY])      # a file minitofe wrote
    params, cfg = _timm_params(path, state, cfg, model, num_heads, dtype)
    return params, cfg, metadata


def _heads_from_metadata(path, value):
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{path}: metadata {HEADS_KEY!r} is {value!r}, not an integer") from None


def save_safetensors(path, params, cfg, metadata=None):
    """Write the backbone in timm's layout (``tofe.*`` keys left out); ``metadata`` defaults to timm's
    ``{'format': 'pt'}`` plus the head count (the one size the shapes do not tell), so minitofe reads
    its own files back without ``--model``; given metadata (a converted timm file's) is kept as is."""
    from safetensors.numpy import save
    metadata = dict(TIMM_METADATA, **{HEADS_KEY: str(cfg.num_heads)}) if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise TypeError(f"safetensors metadata must be a dict of str -> str, got {metadata!r}")
    data = save(to_timm_state_dict(params, cfg), metadata=metadata)
    atomic_write(path, lambda f: f.write(data))


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ImportError(TORCH_HINT) from None
    return torch


def _unwrap_checkpoint(obj):
    """timm's train checkpoints hold the weights under 'state_dict', DeiT's under 'model'."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key]
    if not isinstance(obj, dict):
        raise TypeError(f"expected a state dict (or {{'state_dict': ...}} / {{'model': ...}}), "
                        f"got {type(obj).__name__}")
    return obj


def load_torch(path, cfg=None, model=None, num_heads=None, dtype=None):
    """torch ``state_dict`` file (timm layout) -> (params, cfg, {}); loaded with ``weights_only=True``."""
    path = existing_file(path)
    torch = _import_torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # torch reports bad files as RuntimeError, UnpicklingError, EOFError, ...
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    with about(path):
        state = _unwrap_checkpoint(obj)
    params, cfg = _timm_params(path, state, cfg, model, num_heads, dtype)
    return params, cfg, {}


# ---- any format ----

def load_weights(path, model=None, num_heads=None, dtype=None):
    """Dispatch on the extension -> (params, cfg, meta). For ``.npz`` the stored config is used and
    ``model``/``num_heads``, if given, must agree with it; for timm files they name the heads."""
    kind = weight_format(path)
    if kind == "safetensors":
        params, cfg, metadata = load_safetensors(path, model=model, num_heads=num_heads, dtype=dtype)
        return params, cfg, dict(metadata or {})
    if kind == "torch":
        return load_torch(path, model=model, num_heads=num_heads, dtype=dtype)
    params, cfg, meta = load_npz(path, dtype=dtype)
    if model is not None or num_heads is not None:
        fields = {k: v for k, v in cfg.to_dict().items() if k != "num_heads"}
        with about(path):
            if num_heads is not None and num_heads != cfg.num_heads:
                raise ValueError(f"the file's config has num_heads={cfg.num_heads}, asked for {num_heads}")
            if model is not None:
                match_preset(fields, model, cfg.num_heads)
    return params, cfg, meta


def safetensors_metadata(meta):
    """A meta dict -> safetensors metadata (str -> str): empty -> timm's default, non-str values JSON."""
    if not meta:
        return None
    return {str(k): v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in meta.items()}


def writable_format(path):
    """'npz' or 'safetensors': the formats minitofe writes (torch files are read only)."""
    kind = weight_format(path)
    if kind == "torch":
        raise ValueError(f"{path}: minitofe writes .npz or .safetensors, not {os.path.splitext(path)[1]}")
    return kind


def save_weights(path, params, cfg, meta=None):
    """Write ``.npz`` (everything) or ``.safetensors`` (timm layout; meta becomes its metadata)."""
    if writable_format(path) == "npz":
        return save_npz(path, params, cfg, meta)
    return save_safetensors(path, params, cfg, safetensors_metadata(meta))


def convert(src, dst, model=None, num_heads=None, dtype=None, overwrite=False):
    """Read ``src`` (any format), write ``dst`` (.npz or .safetensors) -> (params, cfg, meta).

    Refuses to write over ``src`` itself, and over an existing ``dst`` unless ``overwrite``."""
    src, dst = os.fspath(src), os.fspath(dst)
    weight_format(src)
    writable_format(dst)
    existing_file(src)
    if os.path.exists(dst):
        if os.path.samefile(src, dst):
            raise ValueError(f"{dst}: refusing to write over the source file {src}")
        if not overwrite:
            raise ValueError(f"{dst}: exists already (use --force to overwrite it)")
    params, cfg, meta = load_weights(src, model=model, num_heads=num_heads, dtype=dtype)
    save_weights(dst, params, cfg, meta)
    return params, cfg, meta
