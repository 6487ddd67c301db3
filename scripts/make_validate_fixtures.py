"""Write the saved outputs of the small PyTorch implementations on the example golden bundles, so that the
default test run and notebook 07 compare real other implementations without torch:

    tests/fixtures/validate/torch_<variant>.safetensors          minitofe.validate.torch_ref (tofe training)
    tests/fixtures/validate/<method>_<mode>_<variant>.safetensors  minitofe.validate.torch_baselines
                                                                  (evit / dynamicvit, train / topk)
    tests/fixtures/validate/timm_<variant>.safetensors           the ToFe on timm's blocks of
                                                                  tests/test_validate_timm.py (needs timm)

``variant`` is ``ok`` or a seeded bug. Every file is made by ``minitofe.validate.torch.capture``, so the
default run checks what capture writes. ``tests/test_validate_torch.py`` / ``test_validate_timm.py``
check the files against a live run.

    python scripts/make_validate_fixtures.py          # needs torch (and timm for the timm_* files)
"""
import importlib.util
import pathlib
import tempfile

from minitofe.validate import example_golden
from minitofe.validate import torch_baselines, torch_ref

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "validate"
BASELINE_CASES = {("evit", "train"): ("cls_head0", "fuse_renormalised"), ("evit", "topk"): (),
                  ("dynamicvit", "train"): ("predictor_eps", "global_unweighted"),
                  ("dynamicvit", "topk"): ("predictor_eps",)}


def _write(path, make):
    make(str(path))
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size / 1e3:.0f} kB)")


def _timm_module():
    spec = importlib.util.spec_from_file_location("test_validate_timm", ROOT / "tests" / "test_validate_timm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if module.VisionTransformer is None:
        raise ImportError("timm is not installed")
    return module


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tofe = example_golden(pathlib.Path(tmp) / "tofe.safetensors")
        for bug in (None,) + tuple(torch_ref.BUGS):
            _write(OUT / f"torch_{bug or 'ok'}.safetensors", lambda p, b=bug: torch_ref.run(tofe, b, out=p))
        for (method, mode), bugs in BASELINE_CASES.items():
            bundle = example_golden(pathlib.Path(tmp) / f"{method}_{mode}.safetensors", method, mode)
            for bug in (None,) + bugs:
                _write(OUT / f"{method}_{mode}_{bug or 'ok'}.safetensors",
                       lambda p, b=bug: torch_baselines.run(bundle, b, out=p))
        try:
            timm_tofe = _timm_module()
        except ImportError as e:
            print(f"skipped the timm_* files: {e}")
            return
        for bug in (None,) + tuple(timm_tofe.BUGS):
            _write(OUT / f"timm_{bug or 'ok'}.safetensors", lambda p, b=bug: timm_tofe.adapter(tofe, p, b))


if __name__ == "__main__":
    main()
