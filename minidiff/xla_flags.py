"""XLA:CPU settings for speed, put into XLA_FLAGS when minidiff is imported.

jaxlib 0.10 hands convolutions on CPU to YNNPACK, which ran the U-Net's 3x3 convolutions with
fewer than ~96 input or output channels on one core of two: 70-90 GFLOP/s against a ~180 GFLOP/s
matmul, the same speed as when the process is pinned to one core. XLA's own (Eigen) convolution
uses every core and runs those from 14x14 down at 145-190 GFLOP/s (the 28x28 ones with 16-32
channels stay at 70-85 either way). So minidiff keeps YNNPACK for matmuls and reductions and
takes convolutions away from it:

    --xla_cpu_experimental_ynn_fusion_type=-individual_convolution

On the 2-core CPU this project is developed on, that made the MNIST U-Net's forward pass and its
training step ~1.3x faster (`python -m minidiff bench`, three runs of each setting alternated:
658 vs 511 images/s, 0.73 vs 0.94 s per step; README "Speed"), with results equal to float32
round-off (tests/test_xla_flags.py).

XLA reads XLA_FLAGS once, when JAX starts its backend, so this only works if minidiff is
imported before the first JAX computation; otherwise a warning says so. The flag is
experimental and XLA aborts the process on a flag it does not know, so it is only added for
the jaxlib versions in JAXLIB_VERSIONS: 0.10.2, where it was measured, and the 0.11 series,
which has the flag with the same '-name' syntax (a JAX issue report uses '=-reduce' with jaxlib
0.11.0) but was not run here. It is left out when the user's XLA_FLAGS already sets it, or when
MINIDIFF_XLA_DEFAULTS=1 (to measure XLA's own defaults).
"""

from __future__ import annotations

import os
import re
import warnings

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
JAXLIB_VERSIONS = ((0, 10, 2), (0, 12, 0))  # [first, last) jaxlib version the flag is added for


def parse_version(version: str) -> tuple[int, ...]:
    """'0.10.2' (or '0.10.2.dev20261101', '0.10.2rc1') -> (0, 10, 2); () if it does not parse."""
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    return tuple(int(g) for g in match.groups()) if match else ()


def with_minidiff_flags(xla_flags: str, jaxlib_version: tuple[int, ...], *,
                        opt_out: bool = False) -> str:
    """XLA_FLAGS with FLAG added, unless opted out, already set by the user, or an untested jaxlib."""
    name = FLAG.split("=")[0]
    first, last = JAXLIB_VERSIONS
    if opt_out or name in xla_flags or not first <= jaxlib_version < last:
        return xla_flags
    return f"{xla_flags} {FLAG}".strip()


def apply() -> None:
    """Put the flag into os.environ['XLA_FLAGS'] if JAX's backend has not started yet."""
    import jaxlib
    from jax._src import xla_bridge

    current = os.environ.get("XLA_FLAGS", "")
    wanted = with_minidiff_flags(current, parse_version(jaxlib.__version__),
                                 opt_out=os.environ.get("MINIDIFF_XLA_DEFAULTS") == "1")
    if wanted == current:
        return
    if xla_bridge.backends_are_initialized():
        warnings.warn("minidiff was imported after JAX started its backend, so its XLA:CPU flag "
                      f"({FLAG}) cannot take effect and convolutions run up to ~2x slower on CPU; "
                      "import minidiff before running any JAX computation.", stacklevel=3)
        return
    os.environ["XLA_FLAGS"] = wanted
