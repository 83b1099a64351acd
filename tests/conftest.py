"""Shared test settings: float32 everywhere, CPU only; and the two tiers.

`python -m pytest tests` runs the fast tier (about 4 minutes on 2 CPU cores). Tests marked
`@pytest.mark.slow` (executing notebooks and assignments, large-sample statistics, kill -9 and
resume, hundreds of training steps, the command line end to end) run only with `--slow`;
`--slow -m slow` runs the slow tier alone.

Compiled programs go to JAX's persistent compilation cache (a folder in the system's temporary
directory, unless JAX_COMPILATION_CACHE_DIR says otherwise), set here through the environment so
that the command-line runs, training children and notebook kernels the tests start share it:
many tests compile the same sampler or training step, and a second run of the suite compiles
little at all.
"""

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(tempfile.gettempdir()) / "minidiff-jax-cache"))


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the slow tier (tests marked slow); with -m slow, only it")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: the slow tier, run only with --slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow tier: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
