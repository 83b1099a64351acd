"""Model files: build a network, save it with the config that rebuilds it, load it back.

A model file is a checkpoint (minidiff/checkpoint.py: named arrays, no pickle) holding one
network's weights; its metadata names the kind ("unet" or "classifier"), stores that kind's
config under metadata[kind], and for a U-Net the training settings (metadata["train"]), from
which `schedule_of` rebuilds the noise schedule it was trained with.

    model, meta = load_model()                       # the released MNIST U-Net
    s = schedule_of(meta)

Every field that sizes something (T, the widths, the image size, the parameter count) is checked
against the bounds below before anything is built, so that a damaged or hostile file is refused
by name instead of filling the machine's memory. A U-Net file also records a digest of its
schedule's arrays (schedule_digest), so a file whose T or schedule was changed after training is
refused rather than sampled with the wrong schedule (files from before the digest pass unchecked).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from minidiff import checkpoint, data, schedules
from minidiff.classifier import Classifier, ClassifierConfig
from minidiff.unet import UNet, UNetConfig

CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "data" / "checkpoints"  # the released files
DEFAULT_CHECKPOINT = CHECKPOINT_DIR / "mnist.npz"

# kind -> (network class, its config class)
MODEL_KINDS = {"unet": (UNet, UNetConfig), "classifier": (Classifier, ClassifierConfig)}

MAX_T = 100_000  # diffusion steps (DDPM's is 1000)
MAX_PARAMETERS = 1_000_000_000  # 4 GB of float32 weights
# the largest value of each sizing field of a config (channels: each entry); a field of another
# type, or below 1, is left to the config's own checks
MAX_FIELD = {"image_size": 1024, "in_channels": 16, "channels": 16384, "num_res_blocks": 16,
             "attention_heads": 1024, "num_classes": 1_000_000, "emb_dim": 16384, "vocab_size": 1_000_000,
             "text_length": 4096, "context_dim": 16384, "feature_dim": 16384, "num_groups": 16384}
MAX_LEVELS = 8  # entries of channels


def build_model(config: UNetConfig, seed: int = 0) -> UNet:
    """A freshly initialised U-Net."""
    return UNet(config, rngs=nnx.Rngs(seed))


def _kind_of(model) -> str:
    return next(kind for kind, (cls, _) in MODEL_KINDS.items() if isinstance(model, cls))


def save_model(path, model, metadata: dict) -> None:
    """Write a model file (a U-Net or a classifier) with the config that rebuilds it, atomically."""
    kind = _kind_of(model)
    meta = dict(metadata, kind=kind, **{kind: dataclasses.asdict(model.config)})
    if kind == "unet":
        meta["schedule_digest"] = schedule_digest(schedule_of(meta))
    checkpoint.save_checkpoint(path, nnx.state(model), meta)


def schedule_digest(s: schedules.Schedule) -> str:
    """The first 16 hex digits of the SHA-256 of alphas_cumprod (float32 bytes): what a model
    file records of the schedule it was trained with."""
    return hashlib.sha256(np.asarray(s.alphas_cumprod, np.float32).tobytes()).hexdigest()[:16]


def config_from_dict(config_cls, d: dict):
    """Rebuild a frozen config dataclass from its JSON form (lists back to tuples)."""
    return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def load_model(path=None, kind: str = "unet"):
    """Load a model file -> (model, metadata). Default: the released MNIST U-Net.

    Raises CheckpointError naming the file if it is missing, damaged, or holds another kind."""
    path = DEFAULT_CHECKPOINT if path is None else Path(path)
    meta = checkpoint.read_metadata(path)
    if meta.get("kind", "unet") != kind or kind not in meta:
        raise checkpoint.CheckpointError(f"{path}: not a {kind} model file "
                                         f"(it holds a {meta.get('kind', 'training state')})")
    cls, config_cls = MODEL_KINDS[kind]
    if kind == "unet":
        check_training_metadata(meta, path)
    _check_sizes(meta[kind], path, kind)
    try:
        config = config_from_dict(config_cls, meta[kind])
    except (TypeError, ValueError, AttributeError) as err:  # a field missing, unknown or of a bad value
        raise checkpoint.CheckpointError(f"{path}: its {kind} config is malformed ({err})") from err
    graphdef, template = nnx.split(nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0))))
    parameters = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(template))
    if parameters > MAX_PARAMETERS:
        raise checkpoint.CheckpointError(f"{path}: its {kind} config describes {parameters:,} parameters, "
                                         f"more than the {MAX_PARAMETERS:,} minidiff loads")
    state, _ = checkpoint.load_checkpoint(path, template)
    return nnx.merge(graphdef, state), meta


def _check_sizes(config: dict, path, kind: str) -> None:
    """Refuse a config whose sizing fields exceed MAX_FIELD (or MAX_LEVELS), naming the file."""
    if not isinstance(config, dict):
        raise checkpoint.CheckpointError(f"{path}: its {kind} config is malformed (a JSON "
                                         f"{type(config).__name__}, not an object)")
    for name, limit in MAX_FIELD.items():
        value = config.get(name)
        values = value if isinstance(value, list) else [value]
        if name == "channels" and isinstance(value, list) and len(value) > MAX_LEVELS:
            raise checkpoint.CheckpointError(f"{path}: its {kind} config has {len(value)} levels of channels, "
                                             f"more than {MAX_LEVELS}")
        if any(isinstance(v, int) and v > limit for v in values):
            raise checkpoint.CheckpointError(f"{path}: its {kind} config's {name} {_shown(value)} exceeds "
                                             f"{limit}, the most minidiff builds")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def check_training_metadata(meta: dict, path) -> None:
    """Refuse, naming the file, a U-Net file whose training settings (metadata["train"]) cannot
    rebuild a sane schedule: not an object, T not an integer in 1..MAX_T, an unknown schedule or
    data set, or a schedule whose digest differs from the one recorded when it was saved."""
    train = meta.get("train", {})
    if not isinstance(train, dict):
        raise checkpoint.CheckpointError(f"{path}: its training settings (metadata 'train') are a JSON "
                                         f"{type(train).__name__}, not an object")
    T, name = train.get("T", 1000), train.get("schedule", "linear")
    if isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= MAX_T:
        raise checkpoint.CheckpointError(f"{path}: its T (diffusion steps) must be an integer in 1..{MAX_T}, "
                                         f"got {_shown(T)}")
    if name not in schedules.SCHEDULES:
        raise checkpoint.CheckpointError(f"{path}: its schedule {_shown(name)} is not one of {schedules.SCHEDULES}")
    dataset = train.get("dataset")
    if dataset is not None and dataset not in data.DATASETS:
        raise checkpoint.CheckpointError(f"{path}: its data set {_shown(dataset)} is not one of {data.DATASETS}")
    recorded = meta.get("schedule_digest")
    if recorded is not None and recorded != schedule_digest(schedule_of(meta)):
        raise checkpoint.CheckpointError(f"{path}: its schedule ({name}, T={T}) is not the one it was trained "
                                         "with (the recorded schedule digest differs): the metadata was changed")


def schedule_of(meta: dict) -> schedules.Schedule:
    """The noise schedule a model was trained with (recorded in its metadata)."""
    train = meta.get("train") or {}
    return schedules.make_schedule(train.get("schedule", "linear"), train.get("T", 1000))


def captions_of(meta: dict, path=None) -> dict:
    """A caption model's style-word cut points (captions.fit_terciles, recorded by training), with
    which the captions of other digits are computed; CheckpointError if the file has none."""
    cuts = meta.get("captions")
    if not isinstance(cuts, dict) or set(cuts) != {"thickness", "slant"}:
        raise checkpoint.CheckpointError(f"{path or 'this model file'}: no caption terciles in its metadata "
                                         "(not a caption model trained by `minidiff train --conditioning text`)")
    return cuts


def dataset_of(meta: dict) -> str | None:
    """The data set a model file was trained on: metadata["train"]["dataset"] for a U-Net,
    metadata["dataset"] for a classifier; None if the file does not say."""
    train = meta.get("train")
    return (train if isinstance(train, dict) else {}).get("dataset", meta.get("dataset"))


def check_same_dataset(dataset: str | None, other_meta: dict, other_path, flag: str) -> None:
    """Refuse a classifier (other_meta, from other_path) trained on another data set than the
    U-Net's: its accuracy or gradient would be meaningless. Unknown data sets pass."""
    other = dataset_of(other_meta)
    if dataset is not None and other is not None and other != dataset:
        raise ValueError(f"{flag} {other_path} was trained on {other}, but the model on {dataset}; "
                         f"give a {dataset} classifier")
