"""The ONNX file ``minitofe bench``'s onnxruntime contender runs: exported once, kept on disk, reused.

The file lives in ``cache_dir()`` (``$XDG_CACHE_HOME/minitofe/onnx``, by default ``~/.cache/minitofe/onnx``)
under a name that holds everything that decides its contents (``cache_key``: the model, the versions of
the libraries that wrote it, the opset, the export's variant), so a new torch or timm exports anew
instead of running an old graph. Nothing here imports torch or onnx: the exporter and the loader are
handed in, which lets the tests drive the cache with stand-ins.
"""
import os
import re
import secrets
import sys


def cache_dir():
    """``$XDG_CACHE_HOME/minitofe/onnx``, or ``~/.cache/minitofe/onnx`` when it is unset or relative (the
    XDG spec has relative paths ignored)."""
    root = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(root):
        root = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "minitofe", "onnx")


def cache_key(model, versions, opset, variant):
    """The file name of one export: ``model``, the ``versions`` ({library: version}) of what wrote it,
    ``opset`` and ``variant`` (e.g. "dynamic-batch"), with every character a file name may not hold
    replaced by "_"."""
    parts = [model] + [f"{lib}{versions[lib]}" for lib in sorted(versions)] + [f"opset{opset}", variant]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts)) + ".onnx"


def _write_atomically(path, export):
    """``export(tmp)`` writes the file at a temporary path in ``path``'s folder; once it is complete and on
    disk it is renamed to ``path`` (a rename within one folder is atomic), so a run stopped halfway, or
    two runs exporting at once, never leave a partial file under the final name."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    # a name of this run's own, not created beforehand (the file gets the umask's mode, as any other)
    tmp = os.path.join(folder, f".partial-{os.getpid()}-{secrets.token_hex(6)}.onnx")
    try:
        export(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def cached_export(path, export, load):
    """``load(path)`` of the cached export, exporting it first when it is missing or does not load
    -> (what ``load`` returned, whether this call exported).

    ``export(dest)`` writes the file to ``dest``; ``load(path)`` reads it and raises if it is unusable
    (the onnxruntime contender's loader builds the session and checks its logits against the eager
    model's). A cached file that fails to load (truncated, corrupt, another model's) is exported again
    and replaced; a fresh export that fails to load raises: there is nothing left to fall back on."""
    if os.path.exists(path):
        try:
            return load(path), False
        except Exception as e:         # any way the old file fails (the runtime's own error types, a
            # mismatch) means the same thing: export it again
            print(f"minitofe bench: the cached {path} is unusable ({type(e).__name__}: {e}); exporting it "
                  f"again", file=sys.stderr)
    _write_atomically(path, export)
    return load(path), True
