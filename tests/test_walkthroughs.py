"""The six walkthrough notebooks share one frame: a header that says what a student will learn,
what they need, how long a run takes and which papers are used; and a closing "## Exercises"
cell that points to the matching assignments. Read with nbformat, never executed: fast."""

import re

import nbformat
import pytest

from tests.helpers import REPO

NOTEBOOK_DIR = REPO / "notebooks"
WALKTHROUGHS = sorted(NOTEBOOK_DIR.glob("0[1-6]_*.ipynb"))
HEADER_PARTS = ("You will learn", "You need", "Run time", "Papers")
ASSIGNMENT_LINK = re.compile(r"\]\((assignments/student/[^)\s]+\.ipynb)\)")
NUMBERED_ITEM = re.compile(r"^\d+\.\s", re.MULTILINE)


def markdown_cells(path):
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"]


def test_there_are_six_walkthroughs():
    assert [p.name[:2] for p in WALKTHROUGHS] == ["01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("path", WALKTHROUGHS, ids=lambda p: p.stem)
def test_header_says_what_you_learn_need_and_read(path):
    header = markdown_cells(path)[0]
    missing = [part for part in HEADER_PARTS if part not in header]
    assert not missing, f"{path.name}: the first cell lacks {missing}"
    assert "https://arxiv.org/abs/" in header, f"{path.name}: the header links no paper"
    assert "MINIDIFF_FAST" in header, f"{path.name}: the header does not mention MINIDIFF_FAST=1"


@pytest.mark.parametrize("path", WALKTHROUGHS, ids=lambda p: p.stem)
def test_run_time_is_measured(path):
    header = markdown_cells(path)[0]
    assert "RUNTIME_" not in header, f"{path.name}: fill in the measured run times (RUNTIME_ placeholder left)"


@pytest.mark.parametrize("path", WALKTHROUGHS, ids=lambda p: p.stem)
def test_ends_with_two_to_four_exercises(path):
    last = markdown_cells(path)[-1]
    assert last.startswith("## Exercises"), f"{path.name}: the last markdown cell is not '## Exercises'"
    count = len(NUMBERED_ITEM.findall(last))
    assert 2 <= count <= 4, f"{path.name}: {count} numbered exercises, want 2 to 4"
    assert "**Assignment:**" in last, f"{path.name}: the exercises name no assignment"


@pytest.mark.parametrize("path", WALKTHROUGHS, ids=lambda p: p.stem)
def test_exercises_link_existing_assignments(path):
    links = ASSIGNMENT_LINK.findall(markdown_cells(path)[-1])
    assert links, f"{path.name}: the exercises link no notebooks/assignments/student/*.ipynb"
    missing = [link for link in links if not (NOTEBOOK_DIR / link).is_file()]
    assert not missing, f"{path.name} links assignments that do not exist: {missing}"


def test_guidance_walkthrough_defines_diversity():
    text = "\n".join(markdown_cells(NOTEBOOK_DIR / "04_guidance.ipynb"))
    assert re.search(r"diversity\*\*.*metrics\.diversity", text), \
        "04_guidance.ipynb uses the diversity metric but does not define it (a bold **...diversity** entry)"
    assert "pair" in text and "feature" in text, "the definition of diversity should say: pairwise feature distance"
