"""minidiff: diffusion models from scratch in JAX."""

from minidiff import xla_flags

xla_flags.apply()  # before any JAX computation: XLA reads XLA_FLAGS once, when its backend starts
