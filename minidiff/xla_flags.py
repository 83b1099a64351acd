"""XLA:CPU settings for speed, put into XLA_FLAGS when minidiff is imported.

jaxlib 0.10 hands convolutions on CPU to YNNPACK, which ran the U-Net's narrow 3x3 convolutions
(fewer than ~96 input or output channels) on one core only; XLA's own (Eigen) convolution uses
every core. So minidiff keeps YNNPACK for matmuls and reductions and takes convolutions away
from it:

    --xla_cpu_experimental_ynn_fusion_type=-individual_convolution

The measurements (per-convolution GFLOP/s, the bench before and after) are in docs/speed.md;
tests/test_xla_flags.py checks that both kernels give the same eps and gradients to float32
round-off.

XLA reads XLA_FLAGS once, when JAX starts its backend, so this only works if minidiff is
imported before the first JAX computation; otherwise a warning says so. The flag is
experimental and XLA aborts the process on a flag it does not know, so it is only added for
the jaxlib versions in JAXLIB_VERSIONS: 0.10.2, where it was measured, and the 0.11 series,
which has the flag with the same '-name' syntax but was not measured here. It is left out when
the user's XLA_FLAGS already sets it, or when MINIDIFF_XLA_DEFAULTS=1 (XLA's own defaults).
On a GPU or TPU the flag has no effect (it concerns XLA:CPU only).
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
