"""The README and docs/ link to files and headings that exist, and every page of docs/ can be
reached from the README.

Links are read as GitHub renders them: ``[text](path#anchor)`` outside code, a path relative to
the page, an anchor the GitHub slug of a heading of the page it points at.
"""

from __future__ import annotations

import re
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

LINK = re.compile(r"\]\(([^()\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`]*`")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def pages(root: Path) -> list[Path]:
    """``README.md`` and ``docs/*.md`` under ``root``."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """The lines of a Markdown text outside fenced code blocks."""
    lines, in_fence = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = heading.replace("`", "").strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page (a repeated heading gets ``-1``, ``-2``, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    """The link targets of a page, outside code, that stay in the repository (no URL scheme)."""
    targets = []
    for line in prose_lines(page.read_text(encoding="utf-8")):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):
                targets.append(target)
    return targets


def broken_links(root: Path) -> list[str]:
    """``page: target (why)`` for each link of the pages under ``root`` that does not resolve."""
    broken = []
    for page in pages(root):
        for target in links(page):
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            name = f"{page.relative_to(root).as_posix()}: {target}"
            if not resolved.is_relative_to(root.resolve()):
                broken.append(f"{name} (outside the repository)")
            elif not resolved.exists():
                broken.append(f"{name} (no such file)")
            elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
                broken.append(f"{name} (no such heading)")
    return broken


def reachable_pages(root: Path) -> set[Path]:
    """The Markdown pages of ``docs/`` that the README links to, directly or through others."""
    todo, seen = [root / "README.md"], set()
    while todo:
        page = todo.pop()
        for target in links(page):
            path = target.partition("#")[0]
            linked = (page.parent / path).resolve() if path else page.resolve()
            if linked.suffix == ".md" and linked.is_file() and linked not in seen:
                seen.add(linked)
                todo.append(linked)
    return seen


def test_every_link_of_the_readme_and_docs_resolves():
    assert broken_links(PROJECT_ROOT) == []


def test_every_page_of_docs_is_reached_from_the_readme():
    unreached = [
        page.name
        for page in pages(PROJECT_ROOT)[1:]
        if page.resolve() not in reachable_pages(PROJECT_ROOT)
    ]
    assert unreached == []


def test_the_check_finds_missing_files_headings_and_unreached_pages(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(
        "# Top\n\n## Try it: `make try`\n\n"
        "[ok](docs/a.md#a-section) [self](#try-it-make-try) [gone](docs/missing.md)\n"
        "[no heading](docs/a.md#nowhere) [out](../elsewhere.md) [web](https://example.org/x)\n"
        "`[in code](docs/missing.md)`\n\n```\n[in a block](docs/missing.md)\n```\n",
        encoding="utf-8",
    )
    (tmp_path / "docs" / "a.md").write_text(
        "# A\n\n## A section\n\n## A section\n\n[twice](#a-section-1) [back](../README.md#top)\n",
        encoding="utf-8",
    )
    (tmp_path / "docs" / "orphan.md").write_text("# Orphan\n", encoding="utf-8")

    assert broken_links(tmp_path) == [
        "README.md: docs/missing.md (no such file)",
        "README.md: docs/a.md#nowhere (no such heading)",
        "README.md: ../elsewhere.md (outside the repository)",
    ]
    reached = {page.name for page in reachable_pages(tmp_path)}
    assert reached == {"README.md", "a.md"}
