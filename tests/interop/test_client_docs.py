"""docs/clients.md's Go and Java snippets are exact excerpts of the programs CI runs.

Every ```go and ```java block must follow a ``<!-- excerpt: PATH -->`` line naming
tests/interop/go/client.go or tests/interop/java/Client.java, and equal a run of
that file's lines (with their common indentation removed), so a snippet cannot
drift from the tested code.
"""

from __future__ import annotations

import re
import textwrap

import pytest

from tests.interop.conftest import ROOT

DOC = ROOT / "docs" / "clients.md"
TESTED = {"go": "tests/interop/go/client.go", "java": "tests/interop/java/Client.java"}
BLOCK = re.compile(r"^(?P<marker>[^\n]*)\n```(?P<lang>go|java)\n(?P<code>.*?)\n```$", re.M | re.S)
MARKER = re.compile(r"<!-- excerpt: (?P<path>\S+) -->")


def blocks() -> list[tuple[str, str, str]]:
    """(language, marker line, code) of every Go and Java block in the doc."""
    return [(m["lang"], m["marker"], m["code"]) for m in BLOCK.finditer(DOC.read_text())]


def is_excerpt(code: str, source: str) -> bool:
    """Whether ``code`` equals some consecutive lines of ``source``, dedented."""
    want = code.splitlines()
    lines = source.splitlines()
    return any(
        textwrap.dedent("\n".join(lines[i : i + len(want)])).splitlines() == want
        for i in range(len(lines) - len(want) + 1)
    )


@pytest.mark.parametrize("lang", sorted(TESTED))
def test_the_doc_shows_several_excerpts_per_language(lang: str) -> None:
    assert sum(1 for found, _, _ in blocks() if found == lang) >= 5


@pytest.mark.parametrize(("lang", "marker", "code"), blocks(), ids=lambda v: v if v in TESTED else None)
def test_every_snippet_is_an_excerpt_of_the_tested_program(lang: str, marker: str, code: str) -> None:
    found = MARKER.fullmatch(marker.strip())
    assert found is not None, f"a ```{lang} block without <!-- excerpt: {TESTED[lang]} --> before it:\n{code}"
    assert found["path"] == TESTED[lang], f"{lang} snippets come from {TESTED[lang]}, not {found['path']}"
    assert is_excerpt(code, (ROOT / TESTED[lang]).read_text()), f"not an excerpt of {TESTED[lang]}:\n{code}"


def test_a_changed_line_is_not_an_excerpt() -> None:
    source = (ROOT / TESTED["go"]).read_text()
    code = next(code for lang, _, code in blocks() if lang == "go")
    assert is_excerpt(code, source)
    assert not is_excerpt(code.replace("Bearer", "Basic"), source)
