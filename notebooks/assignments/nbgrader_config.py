"""nbgrader's configuration for the minidiff course: this folder is the course directory.

    cd notebooks/assignments
    nbgrader generate_assignment 01_forward_process_and_loss   # solutions/ID/ -> release/ID/
    nbgrader autograde 01_forward_process_and_loss             # submitted/STUDENT/ID/ -> autograded/

The solutions are nbgrader's source notebooks (solutions/ID/ID.ipynb); nbgrader writes
release/, submitted/, autograded/, feedback/ and gradebook.db here (all git-ignored).
student/ holds the same release made by `python -m minidiff.assignments generate`.
Every cell runs in well under nbgrader's default 30 s per cell on 2 CPU cores, so the
timeout is left at its default; set c.Execute.timeout here if your machine is slower.
"""

c = get_config()  # noqa: F821 (nbgrader defines it)
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "release"
