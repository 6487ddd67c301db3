"""Drop the kernels' Numba caches when any of the kernels' sources changed.

Numba keys a cached function on its own source file only (its modification time and size). A kernel
that calls code of another file (``mathf``'s float32 ``exp`` and ``erf`` are compiled into every kernel
that uses them; ``jit`` functions called across files are linked in) would load from the cache
unchanged after that other file was edited: the old machine code, silently. So a digest of every
source of this package is kept beside the caches, and when it differs the package's cache files
(``*.nbi`` index, ``*.nbc`` code) are deleted: the next call compiles again. Only the caches in the
package's own ``__pycache__`` are handled: where that folder cannot be written (a read-only install),
Numba keeps its caches elsewhere, and the sources there are not edited.
"""
import hashlib
import pathlib

STAMP = "minitofe-kernels.sha256"


def drop_stale_caches(package_dir=None):
    """Delete ``package_dir/__pycache__/*.nbi, *.nbc`` unless they were written by the current sources
    (``package_dir``: this package). Returns the number of files deleted."""
    here = pathlib.Path(package_dir or pathlib.Path(__file__).parent)
    digest = hashlib.sha256()
    for path in sorted(here.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    cache, want = here / "__pycache__", digest.hexdigest()
    try:
        if (cache / STAMP).read_text() == want:
            return 0
    except OSError:
        pass
    dropped = 0
    try:
        for path in [*cache.glob("*.nbi"), *cache.glob("*.nbc")]:
            path.unlink(missing_ok=True)
            dropped += 1
        cache.mkdir(exist_ok=True)
        (cache / STAMP).write_text(want)
    except OSError:                       # not writable: Numba caches elsewhere (see the docstring)
        pass
    return dropped
