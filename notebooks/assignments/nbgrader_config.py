"""nbgrader's configuration for the minidiff course: this folder is the course directory.

    cd notebooks/assignments
    nbgrader generate_assignment 01_forward_process_and_loss   # solutions/ID/ -> release/ID/
    nbgrader autograde 01_forward_process_and_loss             # submitted/STUDENT/ID/ -> autograded/

The solutions are nbgrader's source notebooks (solutions/ID/ID.ipynb); nbgrader writes
release/, submitted/, autograded/, feedback/, gradebook.db and grades.csv here (all
git-ignored).
student/ holds the same release made by `python -m minidiff.assignments generate`.
Every cell of the solutions runs in under 20 s on 2 free CPU cores (the slowest, 16 s, is
assignment 3's null-class inversion). nbgrader's default of 30 s per cell is under 2x that: with
one other job on the cores that assignment scored 6 of 9 points, and 0 under heavier load, all
from timeouts. A grading server grades many students at once, so the limit below is 120 s: a 3x
margin over the slowest cell's time with two jobs sharing the cores (about 2 x 16 s), and still
finite, so a student's endless loop is stopped (docs/teaching.md).
"""

c = get_config()  # noqa: F821 (nbgrader defines it)
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "release"
c.Execute.timeout = 120  # seconds per cell: see above
