"""The README's Python examples run as written."""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code):
    exec(compile(code, str(README), "exec"), {})


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_second():
    bash = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    assert len(bash) == 2
    ci = (README.parent / ".ci" / "run").read_text()
    assert bash[1].strip() in ci
