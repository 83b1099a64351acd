"""Imports run one way: every module's imports (those inside functions too) against a layer table.

A module may import only modules of a lower layer, so there can be no cycle and no upward
import. On top of the order: the teaching core imports nothing from minidiff but the core, and
nothing outside the standard library but JAX, NumPy and optax; the networks import only
networks (and Flax); the command line never imports the experiments package. Every module must
have a place in the table, so a new file is placed on purpose.
"""

import ast
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

# Lowest first. A module may import modules of lower layers only. Names are module paths
# under minidiff/ ("experiments.common"; "experiments" is the package's __init__.py).
LAYERS = [
    ("core", {"schedules", "contracts"}),
    ("core", {"diffusion"}),
    ("core", {"samplers", "analytic"}),
    ("core", {"guidance"}),
    ("core", {"inversion"}),
    ("core", {"editing"}),
    ("networks", {"layers"}),
    ("networks", {"text_layers"}),
    ("networks", {"unet", "classifier"}),
    ("files, data and numbers", {"files", "metrics", "xla_flags", "distributed"}),
    ("files, data and numbers", {"checkpoint", "data", "captions"}),
    ("files, data and numbers", {"plotting"}),
    ("models and training", {"models"}),
    ("models and training", {"pipeline"}),
    ("models and training", {"evaluation", "train", "word_maps"}),
    ("models and training", {"classifier_train"}),
    ("tools", {"bench", "assignments", "experiments.common", "arguments"}),
    ("tools", {"experiments.sampling", "experiments.inversion", "experiments.reconstruction",
               "experiments.time_to_quality", "experiments.diagnosis", "experiments.prompts"}),
    ("tools", {"experiments", "experiments.calibrated"}),  # calibrated: the course's scores, over sampling's sweeps
    ("tools", {"experiments.__main__", "cli"}),
    ("tools", {"__main__"}),
]
PACKAGE_INIT_MAY_IMPORT = {"xla_flags"}  # minidiff/__init__.py, which every import runs first
THIRD_PARTY = {"core": {"jax", "numpy", "optax"}, "networks": {"jax", "numpy", "flax"}}
FORBIDDEN = {("cli", "experiments")}  # (importer, imported package): never, at any depth


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "__init__"


def imports_of(path: Path, root: Path) -> tuple[set[str], set[str]]:
    """(minidiff modules, top-level external packages) that a file imports, anywhere in it.

    `from minidiff import x` counts as importing module x when minidiff/x(.py) exists, else
    the package itself; `from minidiff.a.b import c` as importing a.b (or a.b.c, a module)."""
    package = root.name
    exists = lambda name: (root / name.replace(".", "/")).with_suffix(".py").exists() or \
        (root / name.replace(".", "/") / "__init__.py").exists()
    here = module_name(path, root)
    internal, external = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top, _, rest = alias.name.partition(".")
                (internal.add(rest or "__init__") if top == package else external.add(top))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = here.split(".")[: -node.level] if here != "__init__" else []
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module.split(".")[0] == package:
                target = node.module.partition(".")[2]
            else:
                external.add(node.module.split(".")[0])
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}" if target else alias.name
                internal.add(full if exists(full) else (target or "__init__"))
    internal.discard(here)
    return internal, external - set(sys.stdlib_module_names)


def violations(root: Path, layers=LAYERS) -> list[str]:
    """Every import of the package under root that breaks the table, as readable lines."""
    rank = {m: i for i, (_, mods) in enumerate(layers) for m in mods}
    group = {m: g for g, mods in layers for m in mods}
    problems = []
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        internal, external = imports_of(path, root)
        if name == "__init__":
            problems += [f"minidiff/__init__.py imports {m}" for m in internal - PACKAGE_INIT_MAY_IMPORT]
            continue
        if name not in rank:
            problems.append(f"{name} has no place in the layer table")
            continue
        for m in sorted(internal):
            if m not in rank:
                problems.append(f"{name} imports {m}, which has no place in the layer table")
            elif rank[m] >= rank[name]:
                problems.append(f"{name} ({group[name]}, layer {rank[name]}) imports {m} "
                                f"({group[m]}, layer {rank[m]}): an upward or sideways import")
            elif group[name] in THIRD_PARTY and group[m] != group[name]:
                problems.append(f"{name} ({group[name]}) imports {m} ({group[m]})")
            if any(name == a and (m == b or m.startswith(b + ".")) for a, b in FORBIDDEN):
                problems.append(f"{name} imports {m}, which it must never import")
        allowed = THIRD_PARTY.get(group[name])
        if allowed is not None:
            problems += [f"{name} ({group[name]}) imports {pkg}" for pkg in sorted(external - allowed)]
    return problems


def test_minidiff_imports_follow_the_layer_table():
    assert violations(REPO / "minidiff") == []


def test_every_layer_name_is_a_module():
    root = REPO / "minidiff"
    for _, mods in LAYERS:
        for m in mods:
            path = root / m.replace(".", "/")
            assert path.with_suffix(".py").exists() or (path / "__init__.py").exists(), m


def _write(root: Path, files: dict) -> Path:
    for name, text in files.items():
        path = root / "minidiff" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "minidiff"


@pytest.mark.parametrize("files, expected", [
    # a cycle hidden inside a function: samplers -> train, while train sits above the core
    ({"samplers.py": "def f():\n    from minidiff import train\n", "train.py": "import minidiff.samplers\n"},
     "samplers (core, layer 2) imports train"),
    ({"unet.py": "from minidiff.diffusion import q_sample\n", "diffusion.py": ""}, "unet (networks) imports diffusion"),
    ({"cli.py": "def f():\n    from minidiff.experiments import common\n", "experiments/__init__.py": "",
      "experiments/common.py": ""}, "cli imports experiments.common, which it must never import"),
    ({"guidance.py": "import matplotlib.pyplot\n"}, "guidance (core) imports matplotlib"),
    ({"newthing.py": "import numpy\n"}, "newthing has no place in the layer table"),
    ({"__init__.py": "from minidiff import train\n", "train.py": ""}, "minidiff/__init__.py imports train"),
])
def test_the_checker_catches_planted_violations(tmp_path, files, expected):
    problems = violations(_write(tmp_path, files))
    assert any(expected in p for p in problems), problems
