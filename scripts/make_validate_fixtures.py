"""Write the saved outputs of the small PyTorch implementation (``minitofe.validate.torch_ref``) on the
example golden bundle: ``tests/fixtures/validate/torch_<variant>.safetensors`` for the correct
implementation (``ok``) and each seeded bug. They let the default test run and notebook 07 show the
comparison without torch; ``tests/test_validate_torch.py`` checks them against a live run.

    python scripts/make_validate_fixtures.py          # needs torch (pip install torch)
"""
import pathlib
import tempfile

from safetensors.torch import save_file

from minitofe.validate import example_golden
from minitofe.validate.torch_ref import BUGS, run

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "validate"


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = example_golden(pathlib.Path(tmp) / "golden.safetensors")
        for bug in (None,) + tuple(BUGS):
            path = OUT / f"torch_{bug or 'ok'}.safetensors"
            save_file(run(bundle, bug=bug), str(path), metadata={"bug": bug or "none"})
            print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
