"""The repository documents itself: no file points outside it, and every docs/ link resolves.

A clone has only what is tracked, so a docstring that sends the reader to a file beside the
checkout (a shared spec folder, a path on one machine) is a dead end; the spec lives in docs/.
"""

import re
import subprocess
from pathlib import Path

import pytest

from conftest import PARAMS, REPO

# Citations of files that live outside the repository: the spec files the project began from
# (by name, or "METHODS §n"), the folder beside the checkout that held them, and machine paths.
OUTSIDE = re.compile(r"(?<![\w/])(?:METHODS|DESIGN|STYLE)(?:\.md|\s*§)|\.\./shared\b|/work(?=/)")
# Pipeline outputs record the machine they ran on (e.g. an absolute sqlite tracking URI); they
# are rewritten by `dvc repro`, not by hand. reports/benchmarks/ is hand-written.
GENERATED = re.compile(r"dvc\.lock|reports/(?!benchmarks/).*")
DOC_ANCHOR = re.compile(r"docs/methods\.md#([\w-]+)")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def tracked_text_files() -> list[Path]:
    """Tracked text files, less generated outputs and this file (its examples are the patterns)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    files = []
    for name in listed.stdout.split("\0"):
        path = PARAMS if name == "params.yaml" else REPO / name  # the committed one, not the workspace's
        if not name or GENERATED.fullmatch(name) or not path.is_file() or path == Path(__file__).resolve():
            continue
        try:
            path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # images and other binaries
            continue
        files.append(path)
    return files


def _shown(path: Path) -> str:
    return "params.yaml" if path == PARAMS else str(path.relative_to(REPO))


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors: lower case, punctuation dropped, spaces to hyphens, -1, -2 on repeats."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        candidate, repeat = slug, 0
        while candidate in anchors:
            repeat += 1
            candidate = f"{slug}-{repeat}"
        anchors.add(candidate)
    return anchors


def test_heading_anchors_follow_github():
    text = "# Top\n## ViT-LoRA\n### Shared parts: the AdaIN family\n### StyTr2\n## Notes\n## Notes\n"
    assert heading_anchors(text) == {
        "top",
        "vit-lora",
        "shared-parts-the-adain-family",
        "stytr2",
        "notes",
        "notes-1",
    }


def test_no_tracked_file_cites_a_path_outside_the_repository():
    offenders = []
    for path in tracked_text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            match = OUTSIDE.search(line)
            if match:
                offenders.append(f"{_shown(path)}:{number}: {match.group(0)!r}")
    assert not offenders, "cite docs/methods.md#<section> instead:\n" + "\n".join(offenders)


def test_the_check_catches_each_kind_of_outside_citation():
    for line in (
        "Numbers: ../shared/METHODS.md §2.",
        "(METHODS §3)",
        "see DESIGN.md",
        "/work/main/mlruns.db",
    ):
        assert OUTSIDE.search(line), line
    for line in ("docs/methods.md#sanet", "dvc remote add -d store /shared/nstlab-dvc", "CNN_METHODS = ()"):
        assert not OUTSIDE.search(line), line


def test_every_cited_methods_section_exists():
    anchors = heading_anchors((REPO / "docs" / "methods.md").read_text(encoding="utf-8"))
    cited = {}
    for path in tracked_text_files():
        for anchor in DOC_ANCHOR.findall(path.read_text(encoding="utf-8")):
            cited.setdefault(anchor, _shown(path))
    assert cited, "nothing cites docs/methods.md#<section>: the pattern is wrong"
    missing = {anchor: where for anchor, where in cited.items() if anchor not in anchors}
    assert not missing, f"no such heading in docs/methods.md: {missing}"


DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_the_readme_is_read_in_five_minutes():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 250


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_links_inside_docs_resolve(doc):
    """Relative links name files that exist, and their #anchors name headings of the target."""
    broken = []
    for target in MARKDOWN_LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (doc.parent / file_part).resolve() if file_part else doc
        if not linked.exists():
            broken.append(target)
        elif anchor and (
            linked.suffix != ".md" or anchor not in heading_anchors(linked.read_text(encoding="utf-8"))
        ):
            broken.append(target)
    assert not broken, f"{doc.name}: broken links {broken}"


def test_every_parameter_count_in_the_spec_is_a_test_literal():
    """docs/methods.md#parameter-counts and the tests that assert the counts cannot drift apart."""
    methods = (REPO / "docs" / "methods.md").read_text(encoding="utf-8")
    section = methods.split("\n## Parameter counts\n", 1)[1].split("\n## ", 1)[0]
    documented = {int(number.replace(",", "")) for number in re.findall(r"\b\d{1,3}(?:,\d{3})+\b", section)}
    in_tests = set()
    for path in (REPO / "tests").glob("test_*.py"):
        if path.name != Path(__file__).name:
            in_tests |= {
                int(n.replace("_", "")) for n in re.findall(r"\b\d{1,3}(?:_\d{3})+\b", path.read_text())
            }
    assert len(documented) >= 25, "the Parameter counts section lost its numbers"
    assert not documented - in_tests, f"documented but asserted by no test: {sorted(documented - in_tests)}"
