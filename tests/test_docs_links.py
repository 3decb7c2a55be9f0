"""Every relative link in README.md and docs/*.md resolves: the file exists, and an ``#anchor`` (in the same
page or another one) is the GitHub slug of one of the target page's headings.

Links are ``[text](target)`` and ``![alt](target)`` and reference definitions ``[label]: target``, outside
fenced code blocks, inline code and HTML comments; targets with a scheme (``https:``, ``mailto:``) are not
checked. A heading's slug is GitHub's: the heading's text without its Markdown (code ticks, emphasis, link
targets), lowercased, every character that is not a letter, a digit, ``_``, ``-`` or a space dropped, spaces
turned into hyphens; a repeated heading gets ``-1``, ``-2``, ... An ``<a id="...">`` or ``name="..."`` in a
page is an anchor too.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

from tests.conftest import REPO

FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
HTML_ANCHOR = re.compile(r"<a\s[^>]*\b(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """The text outside fenced code blocks (their lines become empty: line numbers stay)."""
    lines, fence = [], None
    for line in text.split("\n"):
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)
            lines.append("")
        elif fence is not None:
            if line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
                fence = None
            lines.append("")
        else:
            lines.append(line)
    return "\n".join(lines)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading's text.

    >>> slug("Retraining: the trainer, the gate, the registry")
    'retraining-the-trainer-the-gate-the-registry'
    >>> slug("The Python client: `undertow.client`")
    'the-python-client-undertowclient'
    >>> slug("`POST /predict`")
    'post-predict'
    """
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose(COMMENT.sub("", text)).split("\n"):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    found.update(HTML_ANCHOR.findall(text))
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every link of ``path`` outside code and comments."""
    text = COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), path.read_text(encoding="utf-8"))
    text = CODE_SPAN.sub(lambda m: "x" * len(m.group(0).split("\n")[0]) + "\n" * m.group(0).count("\n"), prose(text))
    found = sorted((match.start(), match.group(1)) for pattern in (LINK, REFERENCE) for match in pattern.finditer(text))
    return [(text.count("\n", 0, start) + 1, target) for start, target in found]


def broken_links(files: list[Path]) -> list[str]:
    """One line per link that does not resolve: ``file:line: target: why``."""
    broken, cache = [], {}
    for page in files:
        for line, target in links(page):
            if SCHEME.match(target) or target.startswith("//"):
                continue
            path_part, _, anchor = target.partition("#")
            where = f"{page.relative_to(REPO) if page.is_relative_to(REPO) else page}:{line}: {target}"
            destination = (page.parent / unquote(path_part)).resolve() if path_part else page
            if not destination.exists():
                broken.append(f"{where}: no such file")
                continue
            if not anchor:
                continue
            if destination.is_dir() or destination.suffix.lower() != ".md":
                broken.append(f"{where}: an anchor into a file that is not Markdown")
                continue
            if destination not in cache:
                cache[destination] = anchors(destination)
            if unquote(anchor).lower() not in cache[destination]:
                broken.append(f"{where}: no heading with this anchor in {destination.name}")
    return broken


def test_every_relative_link_and_anchor_in_the_readme_and_docs_resolves():
    files = pages()
    assert len(files) > 5, files  # the README and the docs pages were found
    assert sum(len(links(page)) for page in files) > 50
    broken = broken_links(files)
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_in_the_index_and_the_index_in_the_readme():
    index = {target.partition("#")[0] for _, target in links(REPO / "docs" / "README.md")}
    missing = [p.name for p in sorted((REPO / "docs").glob("*.md")) if p.name != "README.md" and p.name not in index]
    assert not missing, f"docs pages not listed in docs/README.md: {missing}"
    assert "docs/README.md" in {target for _, target in links(REPO / "README.md")}


def test_the_checker_finds_a_missing_file_a_missing_anchor_and_accepts_the_good_ones(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Same\n\n## Same\n\n```\n# not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# A page: with `code`\n\n"
        "[ok](other.md) [ok](other.md#same-1) [ok](#a-page-with-code) [ok](https://example.org/x)\n"
        "[gone](missing.md) [bad](other.md#not-a-heading) [bad](#nowhere) [bad](other.md#same-2)\n"
        "`[in code](missing-too.md)`\n<!-- [commented](missing-three.md) -->\n"
        "```\n[fenced](missing-four.md)\n```\n[ref]: also-missing.md\n"
    )
    broken = broken_links([page])
    assert [line.split(": ", 1)[1] for line in broken] == [
        "missing.md: no such file",
        "other.md#not-a-heading: no heading with this anchor in other.md",
        "#nowhere: no heading with this anchor in page.md",
        "other.md#same-2: no heading with this anchor in other.md",
        "also-missing.md: no such file",
    ], broken
