"""Every pointer in the repository resolves inside it: no notes that users do not have (the team's own
design and style notes, a machine's absolute paths), every ``docs/*.md`` named exists, and every
section of ``docs/method.md`` that code cites is a heading there."""
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
USER_FACING = [p for pattern in ("minitofe/**/*.py", "tests/*.py", "scripts/*.py", "notebooks/*.ipynb",
                                 "notebooks/*.md", "docs/*.md", "weights/README.md", "tests/fixtures/README.md",
                                 "README.md", "setup.cfg")
               for p in REPO.glob(pattern)]
FORBIDDEN = re.compile(r"DESIGN\.md|STYLE\.md|\.\./shared|/work/(?:shared|torchenv|runs|main)|seed-summary")


def _text(path):
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", USER_FACING, ids=lambda p: str(p.relative_to(REPO)))
def test_no_pointer_leaves_the_repository(path):
    if path.name == "test_docs_links.py":
        return
    hits = [m.group(0) for m in FORBIDDEN.finditer(_text(path))]
    assert not hits, f"{path.relative_to(REPO)} points outside the repository: {sorted(set(hits))}"


def test_every_docs_page_named_exists():
    named = {m for p in USER_FACING for m in re.findall(r"docs/([\w-]+\.md)", _text(p))}
    missing = sorted(n for n in named if not (REPO / "docs" / n).is_file())
    assert named and not missing, f"named but not in docs/: {missing}"


def test_every_cited_method_section_is_a_heading():
    headings = [h.strip().lower() for h in re.findall(r"^#+ (.+)$", _text(REPO / "docs" / "method.md"), re.M)]
    cited = {" ".join(m.split()) for p in USER_FACING for m in re.findall(r'docs/method\.md "([^"]+)"', _text(p))}
    unknown = sorted(c for c in cited if not any(h.startswith(c.lower()) for h in headings))
    assert not unknown, f"docs/method.md has no heading starting with {unknown}"
