"""Small shared pieces for the tests: a tiny U-Net config and the local data directory."""

import os
from pathlib import Path

from minidiff.unet import UNetConfig

REPO = Path(__file__).resolve().parents[1]
TINY_UNET = UNetConfig(image_size=28, in_channels=1, channels=(8, 16), num_res_blocks=1,
                       attention=False, emb_dim=32, num_groups=4)


def randomised_unet(config: UNetConfig = TINY_UNET):
    """A freshly built U-Net whose zero-initialised output layer is randomised, so that eps
    depends on x, t and the class (inversion and editing tests)."""
    import jax

    from minidiff import models

    model = models.build_model(config, seed=0)
    kernel = model.conv_out.conv.kernel
    kernel[...] = 0.05 * jax.random.normal(jax.random.PRNGKey(1), kernel.shape)
    return model


def data_dir() -> Path | None:
    """../shared/data beside the checkout, or $MINIDIFF_DATA_DIR; None when neither exists."""
    for candidate in (os.environ.get("MINIDIFF_DATA_DIR"), REPO.parent / "shared" / "data"):
        if candidate and Path(candidate, "mnist").is_dir():
            return Path(candidate)
    return None


# The tiny U-Net conditioned on prompts: cross-attention at 14x14 (level 1) and the middle.
TINY_TEXT_UNET = UNetConfig(image_size=28, in_channels=1, channels=(8, 16), num_res_blocks=1, attention=True,
                            attention_heads=2, emb_dim=32, num_groups=4, conditioning="text", context_dim=16,
                            cross_attention_levels=(1,))
