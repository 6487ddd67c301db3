"""Where the weights that minitofe ships are found.

A checkout has them in its ``weights/`` folder. An installed minitofe has the default files only (see
``[options.data_files]`` in ``setup.cfg``), installed as data files under ``share/minitofe/weights`` of
whichever scheme pip used: the environment's prefix (a venv, a system install) or the user base
(``pip install --user``). ``MINITOFE_WEIGHTS=DIR`` is looked at first, then the files installed with the
minitofe that is running (its distribution's record of files), so that a ``--user`` install over an
interpreter whose prefix holds an older minitofe's weights runs on its own.
"""
import os
import pathlib
import site
import sys
import sysconfig

ENV = "MINITOFE_WEIGHTS"
DATA_SUBDIR = ("share", "minitofe", "weights")
# The default backbone (its timm-layout twin: the same name with .safetensors), its preset, and the
# default ToFe model fine-tuned from it at 50 % of its MACs, when shipped (weights/README.md).
BACKBONE_FILE = "vit_fmnist_patch4_28.npz"
BACKBONE_MODEL = "vit_fmnist_patch4_28"
TOFE_FILE = "tofe_fmnist_patch4_50.npz"


def installed_with_running_package():
    """The weights folder that pip installed together with the running ``minitofe`` package, or None (an
    editable install, a checkout on ``sys.path``, or a distribution that is not the one running)."""
    from importlib import metadata
    try:
        dist = metadata.distribution("minitofe")
    except metadata.PackageNotFoundError:
        return None
    files = dist.files or []
    here = pathlib.Path(__file__).resolve().parents[1] / "__init__.py"
    if not any(f.as_posix() == "minitofe/__init__.py" and pathlib.Path(dist.locate_file(f)).resolve() == here
               for f in files):
        return None
    for f in files:
        if tuple(f.parts[-4:-1]) == DATA_SUBDIR:
            return pathlib.Path(dist.locate_file(f)).resolve().parent
    return None


def weights_dirs():
    """The folders searched, in order: $MINITOFE_WEIGHTS, the checkout's ``weights/``, the folder installed
    with the running package, then ``share/minitofe/weights`` under every install scheme's data path
    (prefix, venv, user base)."""
    dirs = []
    if os.environ.get(ENV):
        dirs.append(pathlib.Path(os.environ[ENV]))
    dirs.append(pathlib.Path(__file__).resolve().parents[2] / "weights")
    own = installed_with_running_package()
    if own is not None:
        dirs.append(own)
    bases = [sys.prefix, sysconfig.get_path("data")]
    for scheme in ("posix_user", "nt_user", "osx_framework_user"):
        if scheme in sysconfig.get_scheme_names():
            bases.append(sysconfig.get_path("data", scheme))
    bases.append(site.getuserbase())
    for base in bases:
        d = pathlib.Path(base, *DATA_SUBDIR)
        if d not in dirs:
            dirs.append(d)
    return dirs


def find_shipped(name):
    """The first ``name`` in ``weights_dirs()``, or None."""
    for d in weights_dirs():
        if (d / name).is_file():
            return d / name
    return None
