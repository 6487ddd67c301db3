"""The ``minitofe`` command line: ``convert`` and ``demo``, exit codes, and error messages without
tracebacks (``main([...])`` in-process, plus ``python -m minitofe`` in a subprocess)."""
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy as stnp

from minitofe.cli import main
from minitofe.config import ViTConfig
from minitofe.io import weights as W
from minitofe.io.timm import to_timm_state_dict
from minitofe.nn.params import init_params

CFG = ViTConfig(img_size=8, patch_size=2, in_chans=3, num_classes=5, embed_dim=12, depth=2, num_heads=3)
STATED = ("--heads", 3, "--img-size", 8, "--global-pool", "token")       # what a timm file does not record


@pytest.fixture
def timm_file(tmp_path):
    params = init_params(CFG, np.random.default_rng(0), np.float32)
    path = tmp_path / "model.safetensors"
    stnp.save_file(to_timm_state_dict(params, CFG), str(path), metadata={"format": "pt"})
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_convert_round_trip(tmp_path, timm_file, capsys):
    code, out, _ = run(capsys, "convert", timm_file, tmp_path / "w.npz", *STATED)
    assert code == 0 and "w.npz" in out and "N=17 tokens" in out and "32 arrays (32 backbone + 0 ToFe)" in out
    code, _, _ = run(capsys, "convert", tmp_path / "w.npz", tmp_path / "back.safetensors")
    assert code == 0
    back, theirs = stnp.load_file(str(tmp_path / "back.safetensors")), stnp.load_file(str(timm_file))
    assert back.keys() == theirs.keys() and all(np.array_equal(back[k], theirs[k]) for k in theirs)


def test_convert_dtype_is_explicit(tmp_path, timm_file, capsys):
    code, out, _ = run(capsys, "convert", timm_file, tmp_path / "w.npz", *STATED, "--dtype", "float64")
    assert code == 0 and "float64" in out
    assert W.load_npz(tmp_path / "w.npz")[0]["head.weight"].dtype == np.float64


def test_convert_overwrite_rules(tmp_path, timm_file, capsys):
    dst = tmp_path / "w.npz"
    assert run(capsys, "convert", timm_file, dst, *STATED)[0] == 0
    code, _, err = run(capsys, "convert", timm_file, dst, *STATED)
    assert code == 2 and err.startswith("minitofe: error:") and "--force" in err
    assert run(capsys, "convert", timm_file, dst, *STATED, "--force")[0] == 0
    before = timm_file.read_bytes()
    code, _, err = run(capsys, "convert", timm_file, timm_file, *STATED, "--force")
    assert code == 2 and "refusing to write over the source" in err
    assert timm_file.read_bytes() == before


@pytest.mark.parametrize("argv, message", [
    (["{src}", "{tmp}/w.npz"], "--heads N"),
    (["{src}", "{tmp}/w.npz", "--model", "deit_tiny_patch16_224"], "embed_dim: preset 192, weights 12"),
    (["{src}", "{tmp}/w.npz", "--heads", "5", "--img-size", "8", "--global-pool", "token"],
     "not divisible by num_heads 5"),
    (["{src}", "{tmp}/w.npz", "--heads", "3"], "--img-size"),
    (["{src}", "{tmp}/w.npz", "--heads", "3", "--img-size", "8"], "--global-pool"),
    (["{src}", "{tmp}/w.npz", "--heads", "3", "--img-size", "4x12", "--global-pool", "token"],
     "pos_embed has 17 positions, but img_size (4, 12)"),
    (["{src}", "{tmp}/w.h5", "--heads", "3"], "w.h5: unknown weight file extension"),
    (["{src}", "{tmp}/w.pth", "--heads", "3"], "w.pth: minitofe writes .npz or .safetensors"),
    (["{tmp}/missing.safetensors", "{tmp}/w.npz"], "missing.safetensors: no such file"),
    (["{src}", "{tmp}/no/such/dir/w.npz", *(str(a) for a in STATED)], "does not exist"),
])
def test_convert_errors(tmp_path, timm_file, capsys, argv, message):
    argv = [a.format(src=timm_file, tmp=tmp_path) for a in argv]
    code, out, err = run(capsys, "convert", *argv)
    assert code == 2 and err.startswith("minitofe: error:") and message in err
    assert not (tmp_path / "w.npz").exists()


def test_convert_corrupt_source(tmp_path, timm_file, capsys):
    timm_file.write_bytes(timm_file.read_bytes()[:100])
    code, _, err = run(capsys, "convert", timm_file, tmp_path / "w.npz", "--heads", 3)
    assert code == 2 and "model.safetensors: not a readable safetensors file" in err


def test_torch_missing_is_a_runtime_failure(tmp_path, capsys, monkeypatch):
    (tmp_path / "model.pth").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "torch", None)
    code, _, err = run(capsys, "convert", tmp_path / "model.pth", tmp_path / "w.npz", "--heads", 3)
    assert code == 1 and 'pip install "minitofe[torch]"' in err


def test_os_error_is_a_runtime_failure(tmp_path, timm_file, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    from minitofe.io import npz
    monkeypatch.setattr(npz, "atomic_write", full)
    code, _, err = run(capsys, "convert", timm_file, tmp_path / "w.npz", *STATED)
    assert code == 1 and "No space left on device" in err


def test_usage_errors(capsys):
    assert run(capsys, "convert")[0] == 2                                      # argparse: missing SRC
    code, _, err = run(capsys, "convert", "a.npz", "b.npz", "--img-size", "8x")
    assert code == 2 and "--img-size: expected S or HxW, got '8x'" in err
    code, _, err = run(capsys, "convert", "a.npz", "b.npz", "--model", "nope")
    assert code == 2 and "unknown model 'nope'" in err and "vit_fmnist_patch2_28" in err
    assert run(capsys, "frobnicate")[0] == 2
    code, _, err = run(capsys)
    assert code == 2 and all(c in err for c in ("convert", "demo", "predict", "viz", "eval", "train"))
    assert run(capsys, "--help")[0] == 0


def test_python_dash_m_demo(tmp_path):
    out = tmp_path / "demo.png"
    done = subprocess.run([sys.executable, "-m", "minitofe", "demo", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "10 bundled images" in done.stdout and out.is_file()


def test_every_option_of_every_subcommand_has_help_and_shows_its_default():
    """A user reading ``minitofe COMMAND --help`` sees what each option does and, where it has a default
    other than off / unset, what the default is."""
    import argparse
    from minitofe.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, parser in sub.choices.items():
        shown = {a.dest for a in parser._actions if a.help != argparse.SUPPRESS}
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag, text = (action.option_strings or [action.dest])[0], action.help or ""
            if text == argparse.SUPPRESS and action.dest in shown:
                continue                     # a hidden old name of a shown option (train --target)
            if not text or text == argparse.SUPPRESS:
                missing.append(f"{name} {flag}: no help")
            elif action.default not in (None, False) and "default" not in text.lower():
                missing.append(f"{name} {flag}: default {action.default!r} not shown")
    assert len(sub.choices) >= 9 and not missing, missing


@pytest.mark.parametrize("name", ["demo", "predict", "viz", "eval", "bench"])
def test_model_commands_and_bench_describe_what_they_do_read_and_print(name):
    """``minitofe COMMAND --help`` says what the command does, what it reads by default and what it prints
    (argparse shows a parser's ``description``, never its ``help``, there)."""
    import argparse
    from minitofe.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = " ".join((sub.choices[name].description or "").split())
    assert len(text) > 200 and "Prints" in text, text
    assert "default" in text or name == "bench"
    if name == "bench":
        assert "6 minutes on 2 cores" in text and "--quick" in text and "--sections" in text
