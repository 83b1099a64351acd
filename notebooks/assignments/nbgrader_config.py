"""nbgrader's configuration for the minidiff course: this folder is the course directory.

    cd notebooks/assignments
    nbgrader generate_assignment 01_forward_process_and_loss   # solutions/ID/ -> release/ID/
    nbgrader autograde 01_forward_process_and_loss             # submitted/STUDENT/ID/ -> autograded/

The solutions are nbgrader's source notebooks (solutions/ID/ID.ipynb); nbgrader writes
release/, submitted/, autograded/, feedback/, gradebook.db and grades.csv here (all
git-ignored).
student/ holds the same release made by `python -m minidiff.assignments generate`.
Every cell of the solutions runs in under 20 s on 2 CPU cores (the slowest, 16 s, is in
assignment 3), so nbgrader's default 30 s per cell is kept; on a slower or shared grading
machine raise it here, e.g. c.Execute.timeout = 120 (docs/teaching.md).
"""

c = get_config()  # noqa: F821 (nbgrader defines it)
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "release"
