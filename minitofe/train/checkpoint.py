"""Training checkpoints: parameters, AdamW moments, step and configs in one ``.npz``, written atomically.

A checkpoint is written to a temporary file beside its destination, fsync'd, then renamed over it, so a
crash or a kill during a save leaves the previous checkpoint intact. Loading checks that the checkpoint
belongs to the run being resumed (same backbone config, ToFe config and training config apart from the
number of steps), and names the first difference otherwise. Read with ``allow_pickle=False``.
"""
import json
import os
from dataclasses import asdict

import numpy as np

from ..io.files import atomic_write
from ..io.npz import read_npz_arrays, write_npz_arrays

META_KEY = "__checkpoint__"


def save_checkpoint(path, params, opt_state, meta):
    """params: {key: array}; opt_state: AdamW state {"step", "m", "v"}; meta: JSON-able dict (configs,
    learned keep ratios, metrics)."""
    arrays = {f"param/{k}": v for k, v in params.items()}
    arrays.update({f"adam_m/{k}": v for k, v in opt_state["m"].items()})
    arrays.update({f"adam_v/{k}": v for k, v in opt_state["v"].items()})
    meta = dict(meta, opt_step=int(opt_state["step"]))
    arrays[META_KEY] = np.array(json.dumps(meta, sort_keys=True))
    atomic_write(path, lambda f: write_npz_arrays(f, arrays))


def load_checkpoint(path):
    """-> params, opt_state, meta."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such checkpoint file")
    arrays = read_npz_arrays(path)
    if META_KEY not in arrays:
        raise ValueError(f"{path}: not a minitofe training checkpoint (no {META_KEY!r} entry)")
    meta = json.loads(str(arrays.pop(META_KEY)))
    params, m, v = {}, {}, {}
    for key, arr in arrays.items():
        group, _, name = key.partition("/")
        {"param": params, "adam_m": m, "adam_v": v}.get(group, {})[name] = arr
    if set(m) != set(v) or not set(m) <= set(params):
        raise ValueError(f"{path}: optimizer moments do not match the parameters")
    return params, {"step": int(meta["opt_step"]), "m": m, "v": v}, meta


def check_same_run(path, meta, expected):
    """Raise ``ValueError`` naming the first field where the checkpoint ``meta`` differs from
    ``expected`` (dict of config dicts: 'model', 'tofe', 'train')."""
    for section, want in expected.items():
        have = meta.get(section)
        if have is None:
            raise ValueError(f"{path}: checkpoint has no {section!r} config; it is from another kind of run")
        for key in sorted(set(want) | set(have)):
            if key in ("steps", "epochs", "out_dir", "eval_every", "checkpoint_every", "log_every"):
                continue                                  # may change between a run and its resume
            if have.get(key) != want.get(key):
                raise ValueError(f"{path}: cannot resume: {section}.{key} is {have.get(key)!r} in the "
                                 f"checkpoint but {want.get(key)!r} now (another config)")


def as_now(path, meta, model):
    """The checkpoint's configs read the way a config of today reads them: a field it does not hold (one
    added since, e.g. the selector kind) gets its default, the behaviour of the code that wrote it, so that
    a run started by an older minitofe resumes; a field today's configs do not know is refused, naming it."""
    from .config import TrainConfig
    meta = dict(meta)
    readers = {"model": type(model.cfg).from_dict, "tofe": type(model.tofe).from_dict,
               "train": lambda d: asdict(TrainConfig(**d))}
    for section, read in readers.items():
        if isinstance(meta.get(section), dict):
            try:
                cfg = read(meta[section])
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}: cannot resume: its {section!r} config does not read: "
                                 f"{e}") from None
            meta[section] = cfg if isinstance(cfg, dict) else cfg.to_dict()
    return meta
