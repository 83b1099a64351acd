"""minidiff: diffusion models from scratch in JAX."""
