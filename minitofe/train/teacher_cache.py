"""The dense teacher's outputs for a whole training set, computed once (``TrainConfig.teacher_cache``).

The trainer distils from a frozen teacher and feeds it un-augmented images, so the teacher's outputs for
an image never change during a run: ``teacher_forward`` on every batch repeats the same work each epoch
(about a quarter of a ToFe training step). ``TeacherCache`` runs it once over the training set, in chunks
of the batch size, keeps every output (logits (n, K), the tokens at the end of each stage (n, N, C), the
final normed tokens when present) and hands out the rows of a batch. It costs memory: n * (S + 1) * N * C
numbers, ~4 GB in float32 for 55 000 Fashion-MNIST images on the 50-token backbone.

Runs that share a teacher and a training set (a recipe search, seeds, a study's variants) compute the same
outputs again, a few minutes each. With ``MINITOFE_TEACHER_CACHE_DIR`` set (``TEACHER_CACHE_DIR``),
``teacher_cache`` keeps them there, one folder per key (``cache_key``: the teacher's weights, the images,
the model config, the stages, the chunk, the fast path or not, the arithmetic of this machine and the
source of this minitofe), and a later run with the same key maps them read-only from disk instead: the
same arrays, bit for bit, as computing them again here. Folders are written whole (a temporary folder,
renamed when complete); delete the directory to reclaim the space.
"""
import hashlib
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np

from .. import kernels
from ..backend import get_xp
from ..tofe.training import teacher_forward

TEACHER_CACHE_DIR = "MINITOFE_TEACHER_CACHE_DIR"
_SOURCE = pathlib.Path(__file__).resolve().parents[1]                 # the minitofe package


class TeacherCache:
    """``TeacherCache(teacher_params, images, cfg, stages, chunk, fast)``; ``cache.batch(idx)`` is what
    ``teacher_forward(teacher_params, images[idx], ...)`` returns, row for row."""

    def __init__(self, teacher_params, images, cfg, stages, chunk, fast=False, progress=False):
        from tqdm.auto import tqdm
        self.logits, self.tokens, self.features = None, None, None
        n, ops = len(images), kernels.ops(fast, like=images)     # the choice of implementation, made once
        for lo in tqdm(range(0, n, chunk), desc="teacher", disable=not progress, leave=False):
            out = teacher_forward(teacher_params, images[lo:lo + chunk], cfg, stages, ops=ops)
            if self.logits is None:
                xp = get_xp(out["logits"])
                self.logits = xp.empty((n,) + out["logits"].shape[1:], out["logits"].dtype)
                self.tokens = [xp.empty((n,) + t.shape[1:], t.dtype) for t in out["tokens"]]
                if "features" in out:
                    self.features = xp.empty((n,) + out["features"].shape[1:], out["features"].dtype)
            hi = lo + len(out["logits"])
            self.logits[lo:hi] = out["logits"]
            for mine, t in zip(self.tokens, out["tokens"]):
                mine[lo:hi] = t
            if self.features is not None:
                self.features[lo:hi] = out["features"]

    @classmethod
    def of(cls, logits, tokens, features=None):
        """A cache holding these arrays (``teacher_cache``: mapped from a stored one)."""
        cache = cls.__new__(cls)
        cache.logits, cache.tokens, cache.features = logits, list(tokens), features
        return cache

    def batch(self, idx):
        """The teacher's outputs for the images ``idx`` (an index array), as ``teacher_forward`` gives
        them."""
        idx = np.asarray(idx)
        out = {"logits": self.logits[idx], "tokens": [t[idx] for t in self.tokens]}
        if self.features is not None:
            out["features"] = self.features[idx]
        return out


def _source_digest():
    """sha256 of this minitofe's Python source (every ``.py`` file of the package, by relative path)."""
    h = hashlib.sha256()
    for path in sorted(_SOURCE.rglob("*.py")):
        h.update(str(path.relative_to(_SOURCE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def cache_key(teacher_params, images, cfg, stages, chunk, fast):
    """A digest of everything a ``TeacherCache``'s arrays depend on (see the module docstring)."""
    from dataclasses import asdict
    from ..testing.provenance import arithmetic, blas_libraries
    what = {"cfg": asdict(cfg), "stages": [int(s) for s in stages], "chunk": int(chunk), "fast": bool(fast),
            "arithmetic": dict(arithmetic(), blas=blas_libraries(numpy_only=True)),
            "source": _source_digest()}
    h = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode())
    for name, a in [("images", images)] + sorted(teacher_params.items()):
        a = np.ascontiguousarray(a)
        h.update(f"{name}{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:32]


def teacher_cache(teacher_params, images, cfg, stages, chunk, fast=False, progress=False):
    """A ``TeacherCache``, computed here, or mapped from ``$MINITOFE_TEACHER_CACHE_DIR`` when a run with
    the same key stored it there (and stored there when this one computes it)."""
    root = os.environ.get(TEACHER_CACHE_DIR)
    if not root or not isinstance(images, np.ndarray):                 # on the GPU: computed each run
        return TeacherCache(teacher_params, images, cfg, stages, chunk, fast, progress)
    folder = pathlib.Path(root) / cache_key(teacher_params, images, cfg, stages, chunk, fast)
    if not folder.is_dir():
        cache = TeacherCache(teacher_params, images, cfg, stages, chunk, fast, progress)
        _store(cache, folder)
        return cache
    try:
        names = json.loads((folder / "arrays.json").read_text())
        load = lambda name: np.load(folder / f"{name}.npy", mmap_mode="r")          # noqa: E731
        cache = TeacherCache.of(load("logits"), [load(n) for n in names["tokens"]],
                                load("features") if names["features"] else None)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{folder}: a stored teacher cache that cannot be read ({e}); delete the folder "
                         f"and the next run computes it again") from e
    if len(cache.logits) != len(images):
        raise ValueError(f"{folder}: a stored teacher cache of {len(cache.logits)} images for a training set "
                         f"of {len(images)}; delete the folder and the next run computes it again")
    return cache


def _store(cache, folder):
    """Write ``cache``'s arrays to ``folder`` whole: into a temporary folder beside it, renamed at the end
    (a run that finds the folder there already, written meanwhile by another, keeps that one)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)               # a folder as mkdir makes it (mkdtemp's is private: 0700)
        np.save(tmp / "logits.npy", cache.logits)
        for i, t in enumerate(cache.tokens):
            np.save(tmp / f"tokens{i}.npy", t)
        if cache.features is not None:
            np.save(tmp / "features.npy", cache.features)
        names = {"tokens": [f"tokens{i}" for i in range(len(cache.tokens))],
                 "features": cache.features is not None}
        (tmp / "arrays.json").write_text(json.dumps(names))
        os.rename(tmp, folder)
    except OSError:
        if not folder.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
