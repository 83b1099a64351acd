"""Every notebook runs top to bottom in fast mode, and the assignments' autograder works: the
reference solutions pass their tests (hidden ones included) and the student versions fail them
with messages a student can act on; and nbgrader itself, run on the shipped course, agrees."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from minidiff import assignments
from tests.helpers import REPO, data_dir

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
SOLUTIONS = assignments.solution_paths()


@pytest.fixture(autouse=True)
def fast_kernel(monkeypatch):
    monkeypatch.setenv("MINIDIFF_FAST", "1")  # the kernels inherit the environment
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    if data_dir() is not None:  # kernels run in notebooks/: a relative path would point elsewhere
        monkeypatch.setenv("MINIDIFF_DATA_DIR", str(data_dir().resolve()))


def test_there_are_six_walkthroughs_and_six_assignments():
    assert len(NOTEBOOKS) == 6 and len(SOLUTIONS) == 6


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
    mine = tmp_path / solution.name
    nbformat.write(assignments.make_student(nbformat.read(solution, as_version=4)), mine)
    failed = assignments.grade(mine, solution, cwd=REPO / "notebooks")
    assert [r.grade_id for r in failed] == [r.grade_id for r in passed]
    assert all(r.error is not None and r.points == 0 for r in failed), assignments.report(failed)
    actionable = ("NotImplementedError", "not defined", "did not finish")  # the stub, an unset answer, a cell it needs
    assert all(any(m in r.error for m in actionable) for r in failed), assignments.report(failed)


def _nbgrader(course, *args):
    """Run the real nbgrader command line in a course directory, with its own configuration."""
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # its alembic
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stderr  # nbgrader logs there


@pytest.mark.slow
@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.stem)
def test_nbgrader_gives_the_solution_full_marks_and_the_release_zero(solution, tmp_path):
    """nbgrader's own pipeline with the shipped course configuration (nbgrader_config.py: nbgrader's
    defaults but a per-cell timeout of 150 s, a margin for shared grading machines): generate_assignment,
    then autograde the untouched release and the solution; the scores are read from its gradebook."""
    pytest.importorskip("nbgrader")
    from nbgrader.api import Gradebook

    course = tmp_path / "course"
    shutil.copytree(assignments.SOLUTIONS_DIR, course / "solutions")  # what nbgrader reads: the sources
    shutil.copy(assignments.ASSIGNMENTS_DIR / "nbgrader_config.py", course)  # and the course configuration
    assignment = solution.parent.name
    _nbgrader(course, "generate_assignment", assignment)
    for student, notebook in (("untouched", course / "release" / assignment / solution.name), ("solution", solution)):
        (course / "submitted" / student / assignment).mkdir(parents=True)
        shutil.copy(notebook, course / "submitted" / student / assignment / solution.name)
    log = _nbgrader(course, "autograde", assignment, "--create")
    assert "Timeout" not in log, f"a cell ran past nbgrader's timeout:\n{log[-3000:]}"
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        submissions = {student: gradebook.find_submission(assignment, student) for student in ("untouched", "solution")}
        scores = {student: (sub.score, sub.max_score) for student, sub in submissions.items()}
    print(f"nbgrader autograde {assignment}: " + ", ".join(f"{k} {v[0]:g}/{v[1]:g}" for k, v in scores.items()))
    score, most = scores["solution"]
    assert most > 0 and score == most, f"the solution scored {score:g}/{most:g}"
    assert scores["untouched"][0] == 0, f"the untouched release scored {scores['untouched'][0]:g}"
