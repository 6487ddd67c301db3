"""Weight files: minitofe's own ``.npz`` (``io.npz``), timm's ``.safetensors``, torch ``state_dict``
files, and ``convert`` between them (``minitofe convert SRC DST``).

- ``.safetensors`` (timm layout): the backbone under timm's keys, shapes and dtypes, so timm's
  ``load_state_dict`` takes the file. minitofe writes its config into the metadata (``minitofe.config``,
  the full ``ViTConfig`` as JSON, and ``minitofe.num_heads``) and its meta dict (``minitofe.meta``: ToFe
  config, learned keep ratios, ...), so it reads its own files back exactly, with nothing to state. A
  ToFe model's ``tofe.*`` arrays are written too (timm then needs ``strict=False``), unless
  ``backbone_only``, which writes the timm backbone alone and drops the ToFe entries of the meta.
- A ``.safetensors`` from timm has no such metadata: its config comes from a statement (a preset, a timm
  architecture name, a ``ViTConfig``, or ``num_heads`` + ``img_size`` + ``global_pool``; see
  ``io.timm_config``), checked against what the keys prove.
- ``.pth`` / ``.pt`` / ``.bin`` (read only): a torch state dict, possibly wrapped as ``{'state_dict': ...}``
  or ``{'model': ...}``; needs torch (imported only here, ``weights_only=True``).

Every error is a ``ValueError`` or ``TypeError`` whose message starts with the file's path. Files are
written atomically (temporary file in the same folder, fsync, ``os.replace``).
"""
import json
import os

from ..config import ViTConfig
from ..nn.params import check_params  # noqa: F401  (re-exported)
from .files import (TORCH_EXTS, about, atomic_write, existing_file, float_dtype, weight_format,  # noqa: F401
                    writable_format)
from .npz import CONFIG_KEY, META_KEY, load_npz, save_npz  # noqa: F401
from .timm import TOFE_PREFIX, from_timm_state_dict, to_timm_state_dict  # noqa: F401
from .timm_config import infer_config, legacy_minitofe_config, match_preset
from .timm_model import from_timm_model  # noqa: F401

TIMM_METADATA = {"format": "pt"}
HEADS_KEY = "minitofe.num_heads"      # safetensors metadata written by minitofe (timm ignores it)
CONFIG_META, MINITOFE_META = "minitofe.config", "minitofe.meta"
TOFE_META = ("tofe", "learned_keep_ratios")      # meta entries about the ToFe modules
TORCH_HINT = 'reading .pth/.pt/.bin files needs torch: pip install "minitofe[torch]"'


def _json_object(path, key, text):
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{path}: metadata {key!r} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: metadata {key!r} must hold a JSON object, got {type(value).__name__}")
    return value


def _check_statement(path, cfg, model, num_heads, stated):
    """A file that states its own config: whatever the caller states too must agree with it."""
    with about(path):
        match_preset(cfg, model, num_heads)
        for name, value in stated.items():
            if value is not None and getattr(cfg.replace(**{name: value}), name) != getattr(cfg, name):
                raise ValueError(f"the file's config has {name}={getattr(cfg, name)!r}, asked for {value!r}")


def _timm_params(path, state, cfg, model, num_heads, dtype, stated):
    if cfg is not None and (model is not None or num_heads is not None
                            or any(v is not None for v in stated.values())):
        raise TypeError("pass either cfg or model/num_heads/img_size/..., not both")
    with about(path):
        cfg = infer_config(state, model, num_heads, **stated) if cfg is None else cfg
        return from_timm_state_dict(state, cfg, float_dtype(dtype)), cfg


def load_safetensors(path, cfg=None, model=None, num_heads=None, dtype=None, **stated):
    """``.safetensors`` -> (params, cfg, meta). A file minitofe wrote carries its config and meta; for a
    timm file, ``cfg`` or the statement (``model``, or ``num_heads`` with ``img_size`` and
    ``global_pool``, see ``io.timm_config.infer_config``) gives the config, and meta is the file's own
    metadata (timm writes ``{'format': 'pt'}``)."""
    from safetensors import SafetensorError, safe_open
    path = existing_file(path)
    try:
        with safe_open(path, framework="np") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    except TypeError as e:                                   # e.g. bfloat16: NumPy has no such dtype
        raise TypeError(f"{path}: cannot read a tensor with NumPy ({e})") from None
    meta = {k: v for k, v in metadata.items() if not k.startswith("minitofe.")}
    if MINITOFE_META in metadata:
        meta = _json_object(path, MINITOFE_META, metadata[MINITOFE_META])
    if CONFIG_META in metadata and cfg is None:                          # a file minitofe wrote
        with about(path):
            cfg = ViTConfig.from_dict(_json_object(path, CONFIG_META, metadata[CONFIG_META]))
        _check_statement(path, cfg, model, num_heads, stated)
        model = num_heads = None
        stated = {}
    elif HEADS_KEY in metadata and cfg is None and model is None and not any(stated.values()):
        heads = _heads_from_metadata(path, metadata[HEADS_KEY])          # minitofe before configs were stored
        if num_heads is not None and num_heads != heads:
            raise ValueError(f"{path}: the file's config has num_heads={heads}, asked for {num_heads}")
        with about(path):
            cfg, num_heads = legacy_minitofe_config(state, heads), None
    params, cfg = _timm_params(path, state, cfg, model, num_heads, dtype, stated)
    return params, cfg, meta


def _heads_from_metadata(path, value):
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{path}: metadata {HEADS_KEY!r} is {value!r}, not an integer") from None


def _backbone(params, meta):
    return ({k: v for k, v in params.items() if not k.startswith(TOFE_PREFIX)},
            {k: v for k, v in (meta or {}).items() if k not in TOFE_META})


def save_safetensors(path, params, cfg, metadata=None, meta=None, backbone_only=False):
    """Write the backbone in timm's layout, then any ``tofe.*`` arrays (none with ``backbone_only``).
    The metadata is timm's ``{'format': 'pt'}``, the str entries of ``metadata`` / ``meta`` (a
    converted file's own), and minitofe's config and meta. Returns the keys written."""
    from safetensors.numpy import save
    if backbone_only:
        params, meta = _backbone(params, meta)
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise TypeError(f"safetensors metadata must be a dict of str -> str, got {metadata!r}")
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    out = dict(TIMM_METADATA, **(metadata or {}))
    out.update({str(k): v for k, v in (meta or {}).items()
                if isinstance(v, str) and not k.startswith("minitofe.")})
    try:
        if meta:
            out[MINITOFE_META] = json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"meta must hold JSON values only: {e}") from None
    out[CONFIG_META] = json.dumps(cfg.to_dict(), sort_keys=True)
    out[HEADS_KEY] = str(cfg.num_heads)
    tensors = to_timm_state_dict(params, cfg)
    tensors.update({k: v for k, v in params.items() if k.startswith(TOFE_PREFIX)})
    data = save(tensors, metadata=out)
    atomic_write(path, lambda f: f.write(data))
    return list(tensors)


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


def load_torch(path, cfg=None, model=None, num_heads=None, dtype=None, **stated):
    """torch ``state_dict`` file (timm layout) -> (params, cfg, {}); loaded with ``weights_only=True``;
    the config comes from ``cfg`` or the statement, as for a timm ``.safetensors``."""
    path = existing_file(path)
    torch = _import_torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # torch reports bad files as RuntimeError, UnpicklingError, EOFError, ...
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    with about(path):
        state = _unwrap_checkpoint(obj)
    params, cfg = _timm_params(path, state, cfg, model, num_heads, dtype, stated)
    return params, cfg, {}


def load_weights(path, model=None, num_heads=None, dtype=None, **stated):
    """Dispatch on the extension -> (params, cfg, meta). A file minitofe wrote (``.npz``, or
    ``.safetensors`` with its config) states its config, and ``model`` / ``num_heads`` / ``stated``, if
    given, must agree with it; for timm files they are the statement (``io.timm_config``)."""
    kind = weight_format(path)
    if kind == "safetensors":
        return load_safetensors(path, model=model, num_heads=num_heads, dtype=dtype, **stated)
    if kind == "torch":
        return load_torch(path, model=model, num_heads=num_heads, dtype=dtype, **stated)
    params, cfg, meta = load_npz(path, dtype=dtype)
    _check_statement(path, cfg, model, num_heads, stated)
    return params, cfg, meta


def save_weights(path, params, cfg, meta=None, backbone_only=False):
    """Write ``.npz`` or ``.safetensors`` (timm layout, meta in its metadata) -> the keys written.
    ``backbone_only`` leaves out the ``tofe.*`` arrays and the ToFe entries of ``meta``."""
    if backbone_only:
        params, meta = _backbone(params, meta)
    if writable_format(path) == "npz":
        save_npz(path, params, cfg, meta)
        return list(params)
    return save_safetensors(path, params, cfg, meta=meta)


def convert(src, dst, model=None, num_heads=None, dtype=None, overwrite=False, backbone_only=False, **stated):
    """Read ``src`` (any format), write ``dst`` (.npz or .safetensors) -> (params written, cfg, meta).

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
    params, cfg, meta = load_weights(src, model=model, num_heads=num_heads, dtype=dtype, **stated)
    if backbone_only:
        params, meta = _backbone(params, meta)
    written = save_weights(dst, params, cfg, meta)
    return {k: params[k] for k in written}, cfg, meta
