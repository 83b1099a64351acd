"""Model files: build a network, save it with the config that rebuilds it, load it back.

A model file is a checkpoint (minidiff/checkpoint.py: named arrays, no pickle) holding one
network's weights; its metadata names the kind ("unet" or "classifier"), stores that kind's
config under metadata[kind], and for a U-Net the training settings (metadata["train"]), from
which `schedule_of` rebuilds the noise schedule it was trained with.

    model, meta = load_model()                       # the released MNIST U-Net
    s = schedule_of(meta)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flax import nnx

from minidiff import checkpoint, schedules
from minidiff.classifier import Classifier, ClassifierConfig
from minidiff.unet import UNet, UNetConfig

CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "data" / "checkpoints"  # the released files
DEFAULT_CHECKPOINT = CHECKPOINT_DIR / "mnist.npz"

# kind -> (network class, its config class)
MODEL_KINDS = {"unet": (UNet, UNetConfig), "classifier": (Classifier, ClassifierConfig)}


def build_model(config: UNetConfig, seed: int = 0) -> UNet:
    """A freshly initialised U-Net."""
    return UNet(config, rngs=nnx.Rngs(seed))


def _kind_of(model) -> str:
    return next(kind for kind, (cls, _) in MODEL_KINDS.items() if isinstance(model, cls))


def save_model(path, model, metadata: dict) -> None:
    """Write a model file (a U-Net or a classifier) with the config that rebuilds it, atomically."""
    kind = _kind_of(model)
    meta = dict(metadata, kind=kind, **{kind: dataclasses.asdict(model.config)})
    checkpoint.save_checkpoint(path, nnx.state(model), meta)


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
    try:
        config = config_from_dict(config_cls, meta[kind])
    except (TypeError, ValueError, AttributeError) as err:  # a field missing, unknown or of a bad value
        raise checkpoint.CheckpointError(f"{path}: its {kind} config is malformed ({err})") from err
    graphdef, template = nnx.split(nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0))))
    state, _ = checkpoint.load_checkpoint(path, template)
    return nnx.merge(graphdef, state), meta


def schedule_of(meta: dict) -> schedules.Schedule:
    """The noise schedule a model was trained with (recorded in its metadata)."""
    train = meta.get("train", {})
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
    return meta.get("train", {}).get("dataset", meta.get("dataset"))


def check_same_dataset(dataset: str | None, other_meta: dict, other_path, flag: str) -> None:
    """Refuse a classifier (other_meta, from other_path) trained on another data set than the
    U-Net's: its accuracy or gradient would be meaningless. Unknown data sets pass."""
    other = dataset_of(other_meta)
    if dataset is not None and other is not None and other != dataset:
        raise ValueError(f"{flag} {other_path} was trained on {other}, but the model on {dataset}; "
                         f"give a {dataset} classifier")
