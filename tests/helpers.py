"""Small shared pieces for the tests: a tiny U-Net config and the local data directory."""

import os
from pathlib import Path

from minidiff.unet import UNetConfig

REPO = Path(__file__).resolve().parents[1]
TINY_UNET = UNetConfig(image_size=28, in_channels=1, channels=(8, 16), num_res_blocks=1,
                       attention=False, emb_dim=32, num_groups=4)


def data_dir() -> Path | None:
    """../shared/data beside the checkout, or $MINIDIFF_DATA_DIR; None when neither exists."""
    for candidate in (os.environ.get("MINIDIFF_DATA_DIR"), REPO.parent / "shared" / "data"):
        if candidate and Path(candidate, "mnist").is_dir():
            return Path(candidate)
    return None
