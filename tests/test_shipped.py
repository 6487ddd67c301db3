"""Shipped weights are found wherever pip put them: a checkout, a venv or prefix, the user base."""
import pathlib
import site
import sysconfig

from minitofe.io import shipped


def _put(base, name="w.npz"):
    d = pathlib.Path(base, *shipped.DATA_SUBDIR)
    d.mkdir(parents=True)
    (d / name).write_bytes(b"x")
    return d / name


def test_the_user_base_of_pip_install_user_is_searched(tmp_path, monkeypatch):
    monkeypatch.delenv(shipped.ENV, raising=False)
    monkeypatch.setattr(site, "getuserbase", lambda: str(tmp_path / "userbase"))
    real = sysconfig.get_path
    monkeypatch.setattr(sysconfig, "get_path", lambda name, scheme=None: str(tmp_path / "userbase")
                        if scheme and scheme.endswith("_user") else real(name) if scheme is None
                        else real(name, scheme))
    path = _put(tmp_path / "userbase")
    assert shipped.find_shipped("w.npz") == path


def test_the_environment_variable_comes_first_and_missing_files_give_none(tmp_path, monkeypatch):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "vit_fmnist_patch4_28.npz").write_bytes(b"x")
    monkeypatch.setenv(shipped.ENV, str(d))
    assert shipped.weights_dirs()[0] == d
    assert shipped.find_shipped("vit_fmnist_patch4_28.npz") == d / "vit_fmnist_patch4_28.npz"
    assert shipped.find_shipped("no-such-file.npz") is None


def test_the_wheel_ships_exactly_the_files_the_commands_use_by_default():
    import configparser
    repo = pathlib.Path(__file__).resolve().parents[1]
    cfg = configparser.ConfigParser()
    cfg.read(repo / "setup.cfg")
    listed = [f.strip() for f in cfg["options.data_files"]["share/minitofe/weights"].split(",")]
    tofe_shipped = (repo / "weights" / shipped.TOFE_FILE).is_file()
    defaults = [shipped.BACKBONE_FILE] + ([shipped.TOFE_FILE] if tofe_shipped else [])
    assert sorted(listed) == sorted(f"weights/{name}" for name in defaults)
    assert all((repo / f).is_file() for f in listed)


def test_load_shipped_takes_files_by_name_and_says_what_it_loaded(tmp_path, monkeypatch):
    import numpy as np
    import minitofe
    from minitofe.config import ViTConfig
    cfg = ViTConfig(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=8, depth=4, num_heads=2)
    monkeypatch.setattr(shipped, "weights_dirs", lambda: [tmp_path])
    model, text = minitofe.load_shipped(method="tofe")
    assert "RANDOM" in text and model.tofe.method == "tofe"
    with __import__("pytest").raises(ValueError, match="no shipped weights"):
        minitofe.load_shipped(random_fallback=False)
    backbone = minitofe.new_model(cfg, minitofe.ToFeConfig(method="dense"), np.random.default_rng(0),
                                  np.float32)
    minitofe.save_model(tmp_path / shipped.BACKBONE_FILE, backbone)
    # an ablation saved under another name is never picked up instead of the shipped ToFe model
    minitofe.save_model(tmp_path / "tofe-identity_other.npz", minitofe.add_tofe(
        minitofe.load_model(tmp_path / shipped.BACKBONE_FILE), minitofe.ToFeConfig(method="tofe-identity")))
    model, text = minitofe.load_shipped(method="tofe")
    assert "FRESH tofe modules" in text and model.tofe.method == "tofe"
    model, text = minitofe.load_shipped(method=None)                # the CLI's default: training-free idle
    assert "backbone only: method 'idle'" in text and model.tofe.method == "idle"
    trained = minitofe.add_tofe(minitofe.load_model(tmp_path / shipped.BACKBONE_FILE), minitofe.ToFeConfig())
    trained.learned_keep_ratios = (0.5, 0.3, 0.2)
    minitofe.save_model(tmp_path / shipped.TOFE_FILE, trained)
    model, text = minitofe.load_shipped(method="tofe")
    assert text.startswith("fine-tuned tofe") and model.learned_keep_ratios == (0.5, 0.3, 0.2)
    assert minitofe.load_shipped(method=None)[0].tofe.method == "tofe"          # as shipped


def _fake_distribution(monkeypatch, package_dir, site_dir):
    """``importlib.metadata.distribution('minitofe')`` as pip records a wheel install in ``site_dir``:
    the package (found at ``package_dir``) and the weights under ``share/minitofe/weights`` of that scheme."""
    from importlib import metadata

    class Dist:
        files = [metadata.PackagePath("minitofe/__init__.py"),
                 metadata.PackagePath("../../share/minitofe/weights/" + shipped.TOFE_FILE)]

        def locate_file(self, f):
            return (package_dir.parent if f.as_posix().startswith("minitofe/") else site_dir) / f
    monkeypatch.setattr(metadata, "distribution", lambda name: Dist())


def test_the_weights_installed_with_the_running_package_come_before_an_older_prefixs(tmp_path, monkeypatch):
    """A ``--user`` install over an interpreter whose prefix holds an older minitofe's weights: the files
    pip installed with the package that is running are searched before the prefix's."""
    import sys
    monkeypatch.delenv(shipped.ENV, raising=False)
    old = _put(tmp_path / "prefix", shipped.TOFE_FILE)
    new = _put(tmp_path / "user", shipped.TOFE_FILE)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    running = pathlib.Path(shipped.__file__).resolve().parents[1]
    _fake_distribution(monkeypatch, running, tmp_path / "user" / "lib" / "site-packages")
    dirs = shipped.weights_dirs()
    assert shipped.installed_with_running_package() == new.parent
    assert dirs.index(new.parent) < dirs.index(old.parent)
    # a distribution whose package is not the one running (another copy earlier on sys.path) is not trusted
    _fake_distribution(monkeypatch, tmp_path / "elsewhere" / "minitofe", tmp_path / "user" / "lib" / "x")
    assert shipped.installed_with_running_package() is None
