"""Lecture assignments: student versions from solution notebooks, and an autograder.

Solution notebooks (notebooks/assignments/solutions/ID/ID.ipynb, nbgrader's source layout; the
course configuration is notebooks/assignments/nbgrader_config.py) follow the nbgrader
conventions, so an instructor can use nbgrader itself or just this module:

- in answer cells, code between `### BEGIN SOLUTION` and `### END SOLUTION` is the reference
  answer; the student version replaces it with `# YOUR CODE HERE` and a NotImplementedError;
- in test cells (metadata nbgrader.grade = true, with a grade_id and points), code between
  `### BEGIN HIDDEN TESTS` and `### END HIDDEN TESTS` is removed from the student version.

Grading puts the solution's test cells, hidden tests included, back into a submission (matched by
grade_id, as nbgrader's autograde does), runs it top to bottom and reports each test cell's points
and, for failures, the error a student can act on.

    python -m minidiff.assignments generate      # solutions/ -> student/
    python -m minidiff.assignments grade notebooks/assignments/student/01_forward_process_and_loss.ipynb
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re
import sys
from pathlib import Path

import nbformat

ASSIGNMENTS_DIR = Path(__file__).resolve().parents[1] / "notebooks" / "assignments"
SOLUTIONS_DIR = ASSIGNMENTS_DIR / "solutions"
STUDENT_DIR = ASSIGNMENTS_DIR / "student"

_SOLUTION = re.compile(r"^([ \t]*)### BEGIN SOLUTION[^\n]*\n.*?^[ \t]*### END SOLUTION[^\n]*$", re.S | re.M)
_HIDDEN = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS[^\n]*\n.*?^[ \t]*### END HIDDEN TESTS[^\n]*\n?", re.S | re.M)


def _grading(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def student_source(source: str) -> str:
    """Solution code -> the student's: answers become stubs, hidden tests disappear."""

    def stub(match) -> str:
        names = re.findall(r"def (\w+)\(", source[: match.start()])
        where = f"{names[-1]}()" if names else "this cell"
        indent = match.group(1)
        return f'{indent}# YOUR CODE HERE\n{indent}raise NotImplementedError("write your answer in {where}")'

    return _HIDDEN.sub("", _SOLUTION.sub(stub, source))


def make_student(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The student version of a solution notebook, with outputs cleared."""
    nb = copy.deepcopy(solution)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = student_source(cell.source)
            cell.outputs, cell.execution_count = [], None
    return nb


def solution_paths(solutions_dir=SOLUTIONS_DIR) -> list[Path]:
    """Every solution notebook, in nbgrader's layout solutions_dir/ASSIGNMENT/NOTEBOOK.ipynb."""
    return sorted(Path(solutions_dir).glob("*/*.ipynb"))


def generate(solutions_dir=SOLUTIONS_DIR, out_dir=STUDENT_DIR) -> list[Path]:
    """Write the student version of every solution notebook; returns the paths written."""
    paths = solution_paths(solutions_dir)
    if not paths:
        raise FileNotFoundError(f"no solution notebooks in {solutions_dir}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        nbformat.write(make_student(nbformat.read(path, as_version=4)), out_dir / path.name)
        written.append(out_dir / path.name)
    return written


@dataclasses.dataclass
class TestResult:
    grade_id: str
    points: float
    max_points: float
    error: str | None  # None: passed


def _with_solution_tests(submission, solution):
    """The submission with every graded test cell replaced by the solution's (hidden tests in)."""
    tests = {_grading(c)["grade_id"]: c for c in solution.cells if _grading(c).get("grade")}
    nb = copy.deepcopy(submission)
    present = set()
    for i, cell in enumerate(nb.cells):
        grade_id = _grading(cell).get("grade_id")
        if grade_id in tests:
            nb.cells[i] = copy.deepcopy(tests[grade_id])
            present.add(grade_id)
    missing = set(tests) - present
    if missing:
        raise ValueError(f"the submission lacks the test cells {sorted(missing)}; was it made from this assignment?")
    return nb, list(tests)


def grade(submission_path, solution_path=None, timeout: int = 600, cwd=None) -> list[TestResult]:
    """Run a submission with the solution's tests; one TestResult per graded test cell."""
    from nbclient import NotebookClient

    submission_path = Path(submission_path)
    solution_path = Path(solution_path or SOLUTIONS_DIR / submission_path.stem / submission_path.name)
    if not solution_path.exists():
        raise FileNotFoundError(f"no solution notebook {solution_path} for {submission_path.name}")
    nb, order = _with_solution_tests(nbformat.read(submission_path, as_version=4),
                                     nbformat.read(solution_path, as_version=4))
    NotebookClient(nb, timeout=timeout, allow_errors=True,
                   resources={"metadata": {"path": str(cwd or submission_path.parent)}}).execute()
    results = {}
    for cell in nb.cells:
        info = _grading(cell)
        if not info.get("grade"):
            continue
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        message = f"{errors[0]['ename']}: {errors[0]['evalue']}" if errors else None
        points = float(info.get("points", 1))
        results[info["grade_id"]] = TestResult(info["grade_id"], 0.0 if errors else points, points, message)
    return [results[g] for g in order]


def report(results: list[TestResult]) -> str:
    lines = [f"{'PASS' if r.error is None else 'FAIL'}  {r.grade_id}  {r.points:g}/{r.max_points:g}"
             + ("" if r.error is None else f"\n      {r.error}") for r in results]
    total, most = sum(r.points for r in results), sum(r.max_points for r in results)
    return "\n".join(lines + [f"score: {total:g} / {most:g}"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minidiff.assignments", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write student versions of the solution notebooks")
    g.add_argument("--solutions", type=Path, default=SOLUTIONS_DIR)
    g.add_argument("--out", type=Path, default=STUDENT_DIR)
    r = sub.add_parser("grade", help="autograde a submitted notebook against its solution's tests")
    r.add_argument("submission", type=Path)
    r.add_argument("--solution", type=Path, default=None, help="default: solutions/<name>/<same file name>")
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            for path in generate(args.solutions, args.out):
                print(f"wrote {path}")
            return 0
        results = grade(args.submission, args.solution)
    except (ValueError, FileNotFoundError) as err:
        print(f"minidiff.assignments {args.command}: error: {err}", file=sys.stderr)
        return 2
    print(report(results))
    return 0 if all(r.error is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
