"""nbgrader's configuration for the minidiff course: this folder is the course directory.

    cd notebooks/assignments
    nbgrader generate_assignment 01_forward_process_and_loss   # solutions/ID/ -> release/ID/
    nbgrader autograde 01_forward_process_and_loss             # submitted/STUDENT/ID/ -> autograded/

The solutions are nbgrader's source notebooks (solutions/ID/ID.ipynb); nbgrader writes
release/, submitted/, autograded/, feedback/, gradebook.db and grades.csv here (all
git-ignored).
student/ holds the same release made by `python -m minidiff.assignments generate`.
Measured 2026-12-07 on 2 CPU cores (a machine on which `minidiff bench`'s training step takes
1.68 s): alone, the slowest solution cells are assignment 5's edits (24.4 s) and assignment 3's
null-class inversion (22.1 s); beside two busy loops that each hold a core, as on a grading server
that grades several students at once, they take 45.2 s and 41.2 s. nbgrader's default of 30 s per
cell fails both there (on an earlier, faster machine assignment 3 scored 6 of 9 points with one other
job on the cores, and 0 under heavier load, all from timeouts). The limit below, 150 s, is a 3.3x
margin over the slowest loaded cell, and still finite, so a student's endless loop is stopped
(docs/teaching.md).
"""

c = get_config()  # noqa: F821 (nbgrader defines it)
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "release"
c.Execute.timeout = 150  # seconds per cell: see above
