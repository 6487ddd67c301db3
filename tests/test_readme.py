"""The README's commands and the Python examples of the pages it sends a newcomer to run as written."""
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# pages whose ```python blocks are self-contained examples (docs/validate.md's read a bundle you made)
EXAMPLE_PAGES = [README, REPO / "docs" / "layout.md"]
BLOCKS = [(page, code) for page in EXAMPLE_PAGES
          for code in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)]


@pytest.mark.parametrize("page, code", BLOCKS,
                         ids=[f"{p.relative_to(REPO).as_posix()}:{i}" for i, (p, _) in enumerate(BLOCKS)])
def test_example_runs(page, code):
    exec(compile(code, str(page), "exec"), {})


def test_there_are_examples_to_run():
    assert len(BLOCKS) >= 3


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_second():
    bash = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    assert len(bash) == 2
    ci = (README.parent / ".ci" / "run").read_text()
    assert bash[1].strip() in ci


def test_the_readme_says_where_its_commands_run_from():
    """``pip install ".[test]"`` fails outside the clone (``Directory '.[test]' is not installable``)."""
    text = README.read_text()
    before_first_command = text[:text.index("```bash")]
    assert "clone" in before_first_command and "cd" in before_first_command
    assert "from the clone's top folder" in text


def test_the_readme_fits_two_screens_of_a_newcomer():
    """What ToFe is, the picture, try it, the results, where to go next: the rest lives in docs/."""
    text = README.read_text()
    assert len(text.splitlines()) <= 140, len(text.splitlines())
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings == ["What ToFe does", "Try it", "Results", "Where to go next"]
