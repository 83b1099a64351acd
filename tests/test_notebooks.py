"""Every notebook runs top to bottom in fast mode, and the assignments' autograder works: the
reference solutions pass their tests (hidden ones included) and the student versions fail them
with messages a student can act on."""

import nbformat
import pytest

from minidiff import assignments
from tests.helpers import REPO, data_dir

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
SOLUTIONS = sorted(assignments.SOLUTIONS_DIR.glob("*.ipynb"))


@pytest.fixture(autouse=True)
def fast_kernel(monkeypatch):
    monkeypatch.setenv("MINIDIFF_FAST", "1")  # the kernels inherit the environment
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    if data_dir() is not None:  # kernels run in notebooks/: a relative path would point elsewhere
        monkeypatch.setenv("MINIDIFF_DATA_DIR", str(data_dir().resolve()))


def test_there_are_five_walkthroughs_and_three_assignments():
    assert len(NOTEBOOKS) == 5 and len(SOLUTIONS) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path):
    from nbclient import NotebookClient

    if data_dir() is None:
        pytest.skip("MNIST files not available")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, resources={"metadata": {"path": str(path.parent)}}).execute()  # raises on error
    assert sum(1 for c in nb.cells if c.cell_type == "code" and c.outputs) >= 3


def test_committed_notebooks_show_their_figures():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
        assert images, f"{path.name} was committed without its figures"
        assert path.stat().st_size < 2_000_000, f"{path.name} is larger than 2 MB"


def test_committed_student_versions_are_generated_from_the_solutions(tmp_path):
    for path in assignments.generate(out_dir=tmp_path):
        committed = assignments.STUDENT_DIR / path.name
        assert committed.exists(), f"run python -m minidiff.assignments generate ({path.name} missing)"
        fresh, saved = nbformat.read(path, as_version=4), nbformat.read(committed, as_version=4)
        assert [c.source for c in fresh.cells] == [c.source for c in saved.cells], \
            f"{committed} is stale: run python -m minidiff.assignments generate"


def test_student_source_removes_answers_and_hidden_tests():
    source = ("def f(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION\n"
              "assert f(1) == 2\n### BEGIN HIDDEN TESTS\nassert f(2) == 4\n### END HIDDEN TESTS\n")
    student = assignments.student_source(source)
    assert "return 2 * x" not in student and "f(2)" not in student and "assert f(1) == 2" in student
    assert "    raise NotImplementedError" in student  # indented like the answer it replaces


@pytest.mark.slow
@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.stem)
def test_solution_passes_and_student_version_fails(solution, tmp_path):
    passed = assignments.grade(solution, solution, cwd=REPO / "notebooks")
    assert passed and all(r.error is None for r in passed), assignments.report(passed)
    student = assignments.generate(solution.parent, tmp_path)
    mine = next(p for p in student if p.name == solution.name)
    failed = assignments.grade(mine, solution, cwd=REPO / "notebooks")
    assert [r.grade_id for r in failed] == [r.grade_id for r in passed]
    assert all(r.error is not None and r.points == 0 for r in failed), assignments.report(failed)
    assert all("NotImplementedError" in r.error or "not defined" in r.error for r in failed)
