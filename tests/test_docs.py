"""The docs point only inside the repository: every link and repository path they name exists in it.

A user reads these files in their own clone, where nothing outside the
repository exists: a link to a file elsewhere on the machine the kit was
written on (an absolute path, or one that climbs out with ``../``) is a dead
end for them. Checked: markdown links ``[text](target)`` (with their
``#anchor`` when it points into a markdown file) and paths written as inline
code (`selmask_lib/config.py`), in README.md, docs/*.md, benchmarks/README.md
and figures/README.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted({REPO / "README.md", *(REPO / "docs").glob("*.md"),
               *(path for path in (REPO / "benchmarks" / "README.md", REPO / "figures" / "README.md")
                 if path.exists())})

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
FILE_SUFFIXES = (".py", ".md", ".ipynb", ".txt", ".toml", ".yml", ".yaml", ".png", ".cfg")
PLACEHOLDER_MARKS = ("<", ">", "{", "}", "*", "$", "~", "...", " ", "(", "=")
# Where a path of the machine the kit was made on would start. A user's data paths in examples
# (/data/voc) are fine: they do not exist here, they are the user's.
MACHINE_PREFIXES = ("/work/", "/tmp/", "/root/", "/home/", "/Users/", "/opt/", "/mnt/", "/var/", "/etc/")


def prose(text: str) -> str:
    """The text outside fenced code blocks (command examples there are not links)."""
    return FENCE.sub("", text)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown_file: Path) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose(markdown_file.read_text()), re.M)
    return {github_anchor(heading) for heading in headings}


def link_problems(doc: Path) -> list[str]:
    """Links of ``doc`` that are not web addresses and do not resolve to a file or anchor inside the repository."""
    problems = []
    for target in LINK.findall(prose(doc.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.is_relative_to(REPO) or not path.exists():
            problems.append(f"{doc.relative_to(REPO)}: link ({target}) does not resolve inside the repository")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            problems.append(f"{doc.relative_to(REPO)}: link ({target}) names no heading of {path.name}")
    return problems


def looks_like_repository_path(code: str) -> bool:
    """Inline code that names a file or folder of the repository, not a command, a placeholder or user data.

    A path counts when its first part is a top-level entry of the repository
    (`selmask_lib/...`, `tests/...`) or when it has a folder and a file suffix
    (`docs/METHOD.md`), so a misspelt top folder is caught too.
    """
    if any(mark in code for mark in PLACEHOLDER_MARKS) or code.startswith(("/", "-", "http")):
        return False
    first = code.split("/")[0]
    return ("/" in code and (REPO / first).exists()) or ("/" in code.rstrip("/") and code.endswith(FILE_SUFFIXES))


def path_problems(doc: Path) -> list[str]:
    problems = []
    for code in INLINE_CODE.findall(prose(doc.read_text())):
        code = code.split("::")[0]  # a pytest node id names a file of the repository
        if looks_like_repository_path(code) and not (REPO / code).exists() and not (doc.parent / code).exists():
            problems.append(f"{doc.relative_to(REPO)}: `{code}` is not a path of the repository")
    return problems


def outside_pointers(doc: Path) -> list[str]:
    """Mentions of places outside the repository: ../shared, this machine's absolute paths."""
    text, problems = doc.read_text(), []
    if "../shared" in text or "shared/METHOD.md" in text:
        problems.append(f"{doc.relative_to(REPO)}: mentions ../shared, which a clone does not have")
    for prefix in (str(REPO), str(Path.home()), *MACHINE_PREFIXES):
        for match in re.finditer(r"(?<![\w.:/~-])" + re.escape(prefix.rstrip("/")) + r"(?=[/\s`)\]]|$)", text):
            line = text.count("\n", 0, match.start()) + 1
            problems.append(f"{doc.relative_to(REPO)}:{line}: absolute path {prefix.rstrip('/')}... of a machine")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(REPO)))
def test_every_link_and_path_of_a_doc_resolves_inside_the_repository(doc):
    assert link_problems(doc) + path_problems(doc) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(REPO)))
def test_no_doc_points_outside_the_repository(doc):
    assert outside_pointers(doc) == []


def test_the_checks_catch_dead_links_outside_paths_and_missing_anchors(tmp_path, monkeypatch):
    """The checker itself, on a doc written to fail every way (placed inside the repository's docs folder)."""
    doc = REPO / "docs" / "METHOD.md"
    bad = ("# Title\n\n[team notes](../../shared/METHOD.md) [gone](docs/NOPE.md) [ok](DESIGN.md)\n"
           "[bad anchor](../README.md#no-such-heading) [good anchor](#title) [web](https://arxiv.org)\n"
           "See `selmask_lib/nope.py`, `selmask_lb/config.py`, `selmask_lib/config.py`, `runs/<name>/run.json`.\n"
           "Read /work/main/README.md or " + str(REPO) + "/docs, not /data/voc.\n")
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: bad if self == doc else REAL_READ_TEXT(self, *a, **k))
    problems = "\n".join(link_problems(doc) + path_problems(doc) + outside_pointers(doc))
    for expected in ("(../../shared/METHOD.md)", "(docs/NOPE.md)", "#no-such-heading", "`selmask_lib/nope.py`",
                     "`selmask_lb/config.py`", "mentions ../shared", "absolute path /work", str(REPO)):
        assert expected in problems
    for fine in ("(DESIGN.md)", "(#title)", "arxiv", "`selmask_lib/config.py`", "runs/<name>", "/data"):
        assert fine not in problems


REAL_READ_TEXT = Path.read_text


def test_github_anchors_are_made_as_github_makes_them():
    assert github_anchor("The authors' code and the `paper` preset") == "the-authors-code-and-the-paper-preset"
    assert github_anchor("Several GPUs (torchrun, DDP)") == "several-gpus-torchrun-ddp"
    assert github_anchor("The controlled comparison: random IR, same loss as selective") == \
        "the-controlled-comparison-random-ir-same-loss-as-selective"
