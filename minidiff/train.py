"""DDPM training: a jitted, data-parallel train step with EMA, and a resumable loop.

Algorithm 1 of Ho et al. 2020 with the practical additions every diffusion codebase uses:
AdamW with linear warm-up and gradient clipping, an exponential moving average (EMA) of the
weights for sampling, and label dropout to the null class (p_uncond) so that one network
learns both eps(x_t, t, y) and eps(x_t, t, null) for classifier-free guidance
(Ho & Salimans 2021, Algorithm 1).

Reproducibility: the batch at step k and the noise at step k are functions of (seed, k)
alone, so a run killed at any point and resumed from its last checkpoint ends with exactly
the parameters of an uninterrupted run.

Data parallelism: the batch is split over every device along a 'data' mesh axis and the
weights are replicated; XLA inserts the gradient all-reduce. One device, N local devices and P
processes under JAX's multi-controller runtime (minidiff/distributed.py) are the same code: each
process builds the same global batch indices, feeds its own rows, and process 0 alone writes the
run directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from minidiff import captions, checkpoint, data, diffusion, distributed, models, pipeline, plotting, schedules
from minidiff.files import RunLock, atomic_write, remove_temporaries
from minidiff.unet import UNetConfig, count_params


LR_SCHEDULES = ("cosine", "constant")
EMA_WARMUPS = ("ramp", "power", "none")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every training setting; a run directory refuses to resume under different ones (see bookkeeping)."""

    dataset: str = "mnist"  # one of data.DATASETS
    steps: int = 4000  # optimiser steps in total (a resumed run continues to this)
    batch_size: int = 128  # global batch, split over devices
    lr: float = 2e-3  # peak AdamW learning rate
    warmup_steps: int = 100  # linear warm-up from 0 to lr
    lr_schedule: str = "cosine"  # after warm-up: "cosine" decay to 0 at `steps`, or "constant"
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    grad_clip: float = 1.0  # global gradient-norm clip
    ema_decay: float = 0.999  # EMA decay, reached after the warm-up (ema_decay_at)
    ema_warmup: str = "ramp"  # how the EMA decay rises at the start: one of EMA_WARMUPS (ema_decay_at)
    p_uncond: float = 0.1  # probability that a label is replaced by the null class (a caption by "")
    p_drop_word: float = 0.3  # caption models: probability that each style word is dropped on its own
    schedule: str = "linear"  # noise schedule name
    T: int = 1000  # diffusion steps
    seed: int = 0  # model init, data order and noise
    log_every: int = 25  # steps between loss checks / progress updates (one host sync each)
    ckpt_every: int = 100  # steps between checkpoints
    sample_every: int = 500  # steps between sample grids (0: never)
    snapshot_every: int = 0  # steps between kept EMA snapshots snapshots/model_<step>.npz (0: never)
    snr_gamma: float = 0.0  # > 0: Min-SNR-gamma loss weighting (diffusion.ddpm_loss); 0: the prediction's own

    def __post_init__(self):
        for name in ("steps", "batch_size", "T", "log_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("warmup_steps", "sample_every", "snapshot_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in 0..2**32-1, got {self.seed}")
        for name in ("lr", "grad_clip"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a positive, finite number, got {getattr(self, name)}")
        for name in ("weight_decay", "snr_gamma"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.schedule not in schedules.SCHEDULES:
            raise ValueError(f"schedule must be one of {schedules.SCHEDULES}, got {self.schedule!r}")
        for name in ("p_uncond", "p_drop_word"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.ema_warmup not in EMA_WARMUPS:
            raise ValueError(f"ema_warmup must be one of {EMA_WARMUPS}, got {self.ema_warmup!r}")

    @property
    def bookkeeping(self) -> tuple[str, ...]:
        """Fields that change what a run writes or how long it goes, not the parameters it
        computes: these may differ when a run is resumed. Under cosine decay the length of the
        run sets the learning rate of every step, so `steps` is not one of them."""
        writing = ("log_every", "ckpt_every", "sample_every", "snapshot_every")
        return writing if self.lr_schedule == "cosine" else ("steps",) + writing


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the last good checkpoint is kept (a ValueError, so the
    CLI reports it in one line: the settings, usually the learning rate, were bad values)."""


def learning_rate(cfg: TrainConfig) -> optax.Schedule:
    """lr at each step: a linear warm-up from 0, then constant, or a half cosine to 0 at the last
    step (Loshchilov & Hutter 2017, SGDR without restarts)."""
    after = (optax.cosine_decay_schedule(cfg.lr, max(1, cfg.steps - cfg.warmup_steps))
             if cfg.lr_schedule == "cosine" else optax.constant_schedule(cfg.lr))
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps), after],
                                [cfg.warmup_steps])


def ema_decay_at(cfg: TrainConfig, step):
    """The EMA decay applied after optimiser step `step` (0-based), never above cfg.ema_decay.

    An EMA that starts at the initial weights with decay 0.999 still weighs them by 0.999^k
    after k steps (37% at k = 1000), so a short run's EMA is mostly its random start. A warm-up
    lets the decay rise with k:
    - "ramp": (1 + k) / (10 + k), TensorFlow's ExponentialMovingAverage(num_updates) and
      diffusers' EMAModel default; it reaches 0.999 only at k = 8990, so before that the EMA
      averages about the last (10 + k) / 9 steps;
    - "power": 1 - (1 + k)^(-3/4), diffusers' EMAModel(use_ema_warmup=True, power=3/4): Katherine
      Crowson's warm-up with the power its notes there give for runs of under a million steps
      (diffusers' default, 2/3, is for longer ones); it reaches 0.999 at k = 10,000;
    - "none": cfg.ema_decay from the first step."""
    k = jnp.asarray(step, jnp.float32)
    rising = {"ramp": (1.0 + k) / (10.0 + k), "power": 1.0 - (1.0 + k) ** -0.75,
              "none": jnp.ones_like(k)}[cfg.ema_warmup]
    return jnp.minimum(cfg.ema_decay, rising)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW with the learning_rate schedule, on the gradient clipped to norm cfg.grad_clip."""
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                       optax.adamw(learning_rate(cfg), weight_decay=cfg.weight_decay))


def init_state(unet_cfg: UNetConfig, cfg: TrainConfig):
    """(graphdef, state): state = {params, ema, opt_state, step}, a pytree of arrays."""
    graphdef, params = nnx.split(models.build_model(unet_cfg, cfg.seed))
    state = {
        "params": params,
        "ema": jax.tree.map(jnp.copy, params),
        "opt_state": make_optimizer(cfg).init(params),
        "step": jnp.zeros((), jnp.int32),
    }
    return graphdef, state


def condition(key, y, cfg: TrainConfig, unet_cfg: UNetConfig, dropout: bool = True) -> jax.Array:
    """What the network is conditioned on for a batch's y, with training's dropout: labels (B,),
    each replaced by the null class with probability p_uncond; or, for a caption model, y the
    caption word slots (B, captions.SLOTS) turned into tokens (B, L) by captions.drop_words."""
    if unet_cfg.conditioning == "text":
        return captions.drop_words(key, y, cfg.p_drop_word, cfg.p_uncond) if dropout else captions.pack(y)
    if not dropout:
        return y
    return jnp.where(jax.random.uniform(key, y.shape) < cfg.p_uncond, unet_cfg.num_classes, y)  # (B,)


def _loss(params, x0, y, key, s, graphdef, snr_gamma):
    """The DDPM loss of the network with these weights on one batch (labels already dropped, or
    a caption model's tokens): L_simple for an eps-prediction U-Net, the v loss for a
    v-prediction one, or Min-SNR-gamma for either when snr_gamma > 0 (diffusion.ddpm_loss)."""
    model = nnx.merge(graphdef, params)
    eps_fn = lambda x_t, t, labels: pipeline.as_eps(model, s, x_t, t, model(x_t, t, labels))
    return diffusion.ddpm_loss(eps_fn, s, x0, y, key, weighting=model.config.prediction, snr_gamma=snr_gamma)


@partial(jax.jit, static_argnames=("graphdef", "cfg", "unet_cfg"))
def weights_losses(state, x0, y, key, s: schedules.Schedule, *, graphdef, cfg: TrainConfig, unet_cfg: UNetConfig):
    """(loss of state["params"], loss of state["ema"]) on a batch, without label dropout: the
    check that the weights about to be checkpointed are usable (an update can make them huge
    while the loss computed before it was still finite)."""
    y = condition(key, y, cfg, unet_cfg, dropout=False)
    return (_loss(state["params"], x0, y, key, s, graphdef, cfg.snr_gamma),
            _loss(state["ema"], x0, y, key, s, graphdef, cfg.snr_gamma))


@partial(jax.jit, static_argnames=("graphdef", "cfg", "unet_cfg"), donate_argnums=(0,))
def train_step(state, x0, y, key, s: schedules.Schedule, *, graphdef, cfg: TrainConfig, unet_cfg: UNetConfig):
    """One optimiser step on a batch x0 (B, H, W, C) with labels y (B,), or a caption model's
    word slots y (B, captions.SLOTS). Returns (state, loss)."""
    key_drop, key_loss = jax.random.split(key)
    y = condition(key_drop, y, cfg, unet_cfg)  # (B,) labels or (B, L) tokens

    loss, grads = jax.value_and_grad(_loss)(state["params"], x0, y, key_loss, s, graphdef, cfg.snr_gamma)
    updates, opt_state = make_optimizer(cfg).update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    decay = ema_decay_at(cfg, state["step"])
    ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state["ema"], params)
    return {"params": params, "ema": ema, "opt_state": opt_state, "step": state["step"] + 1}, loss


class Trainer:
    """Owns a run directory: ckpt.npz (full state), model.npz (EMA weights), log.jsonl, PNGs.
    Under several processes every one trains and reads the checkpoint, and process 0 alone writes."""

    def __init__(self, unet_cfg: UNetConfig, cfg: TrainConfig, run_dir, images=None, labels=None):
        self.unet_cfg, self.cfg, self.run_dir = unet_cfg, cfg, Path(run_dir)
        if images is None:
            (images, labels), _ = data.load_train_and_heldout(cfg.dataset)
        if images.shape[1:] != (unet_cfg.image_size, unet_cfg.image_size, unet_cfg.in_channels):
            raise ValueError(f"images of shape {images.shape[1:]} do not fit the U-Net config "
                             f"({unet_cfg.image_size}x{unet_cfg.image_size}x{unet_cfg.in_channels})")
        self.images = data.to_model_range(images) if images.dtype == np.uint8 else np.asarray(images, np.float32)
        self.labels = np.asarray(labels, np.int32)  # (N,); a caption model's word slots (N, SLOTS)
        self.terciles = None  # a caption model's style-word cut points (captions.fit_terciles)
        if unet_cfg.conditioning == "text":
            self.terciles = captions.fit_terciles(self.images, self.labels, unet_cfg.num_classes)
            self.labels = captions.caption_words(self.images, self.labels, self.terciles)
        self.schedule = schedules.make_schedule(cfg.schedule, cfg.T)
        mesh = distributed.data_mesh()
        if cfg.batch_size % mesh.size:
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the {mesh.size} devices")
        self.batch_sharding = NamedSharding(mesh, P("data"))
        self.replicated = NamedSharding(mesh, P())
        self.rows = distributed.local_rows(self.batch_sharding, cfg.batch_size)  # this process's rows of a batch
        self.writes = distributed.is_main()  # process 0 alone writes the run directory
        self.graphdef, state = init_state(unet_cfg, cfg)
        self.elapsed = 0.0  # training seconds, summed over resumed sessions
        self.state = jax.device_put(state, self.replicated)
        self._load()

    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / "ckpt.npz"

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def _metadata(self) -> dict:
        meta = {"train": dataclasses.asdict(self.cfg), "unet": dataclasses.asdict(self.unet_cfg),
                "step": self.step, "elapsed": self.elapsed, "device": device_description()}
        return meta if self.terciles is None else dict(meta, captions=self.terciles)

    def save(self) -> None:
        """Full state to ckpt.npz and the EMA weights to model.npz, each atomically (process 0)."""
        if not self.writes:
            return
        meta = self._metadata()
        checkpoint.save_checkpoint(self.ckpt_path, self.state, dict(meta, kind="train_state"))
        models.save_model(self.run_dir / "model.npz", self.ema_model(), meta)

    def _check_same_run(self, meta: dict) -> None:
        free = self.cfg.bookkeeping
        # A setting that the checkpoint's code did not have yet held the default's value then.
        defaults = json.loads(json.dumps(dataclasses.asdict(TrainConfig())))
        saved = {k: v for k, v in {**defaults, **meta["train"]}.items() if k not in free}
        wanted = json.loads(json.dumps({k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in free}))
        differ = [f"{k}: {saved.get(k)!r} in the checkpoint, {wanted.get(k)!r} now"
                  for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
        unet_now = json.loads(json.dumps(dataclasses.asdict(self.unet_cfg)))
        differ += [f"unet.{k}: {meta['unet'].get(k)!r} in the checkpoint, {unet_now.get(k)!r} now"
                   for k in sorted(set(meta["unet"]) | set(unet_now)) if meta["unet"].get(k) != unet_now.get(k)]
        if differ:
            raise ValueError(f"{self.ckpt_path} was written by a different configuration ({'; '.join(differ)}); "
                             f"use another run directory or the same settings (only {', '.join(free)} may change)")

    def _load(self) -> None:
        """Resume from ckpt.npz if there is one (the state, and the training time so far)."""
        if self.ckpt_path.exists():
            meta = checkpoint.read_metadata(self.ckpt_path)  # the settings first: other ones are named as such
            if not (isinstance(meta.get("train"), dict) and isinstance(meta.get("unet"), dict) and "elapsed" in meta):
                raise checkpoint.CheckpointError(f"{self.ckpt_path}: not a training checkpoint "
                                                 "(its metadata lacks the train and unet configs)")
            self._check_same_run(meta)
            state, _ = checkpoint.load_checkpoint(self.ckpt_path, self.state)
            self.elapsed = meta["elapsed"]
            self.state = jax.device_put(state, self.replicated)

    def _trim_log(self) -> None:
        """Drop log records past the checkpoint being resumed (written before a kill), so that a
        resumed run's log.jsonl holds every step once."""
        log = self.run_dir / "log.jsonl"
        if not log.exists():
            return
        lines = log.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= self.step]
        if kept != lines:
            with atomic_write(log) as f:
                f.write("".join(kept).encode())

    def ema_model(self):
        """The EMA weights as a U-Net (what model.npz holds and samples are drawn with)."""
        return nnx.merge(self.graphdef, jax.device_get(self.state["ema"]))

    def sample_grid(self, path, per_label: int = 4, guidance_scale: float = 3.0) -> None:
        """A DDIM-25 grid of the EMA model, per_label samples of each class, written to path."""
        labels = pipeline.label_grid(self.unet_cfg.num_classes, per_label)
        images = pipeline.generate(self.ema_model(), self.schedule, labels, jax.random.PRNGKey(0),
                                   steps=25, guidance_scale=guidance_scale)
        plotting.save_grid(path, images, per_label, row_labels=list(range(self.unet_cfg.num_classes)),
                           title=f"step {self.step}, DDIM-25, w={guidance_scale}")

    def run(self, progress: bool = True) -> list[dict]:
        """Train up to cfg.steps; returns the log records written this session.

        Holds the run directory's lock throughout (a second process on it is refused with
        files.RunDirectoryLocked), first removing what a killed run left: temporary files and
        log records past the checkpoint. Under several processes, process 0 holds the lock and
        tidies; the others only read."""
        if not self.writes:
            return self._train(progress=False)
        with RunLock(self.run_dir):
            if self.ckpt_path.exists() and checkpoint.read_metadata(self.ckpt_path).get("step") != self.step:
                self._load()  # another process trained on since this Trainer was made
            for folder in (self.run_dir, self.run_dir / "snapshots"):
                remove_temporaries(folder)
            self._trim_log()
            return self._train(progress)

    def _diverged(self, what: str) -> TrainingDiverged:
        kept = (f"the last good checkpoint is kept at {self.ckpt_path} (step "
                f"{checkpoint.read_metadata(self.ckpt_path)['step']})" if self.ckpt_path.exists()
                else "no checkpoint had been written")
        return TrainingDiverged(f"{what}; training stopped and {kept}. Try a smaller --lr.")

    def _train(self, progress: bool) -> list[dict]:
        cfg, records = self.cfg, []
        base_key = jax.random.PRNGKey(cfg.seed)
        pending, since = [], time.perf_counter()
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not progress, desc="train", unit="step")
        for step in range(self.step, cfg.steps):
            idx = data.batch_indices(step, len(self.images), cfg.batch_size, cfg.seed)[self.rows]  # this process's
            x0 = distributed.global_batch(self.batch_sharding, self.images[idx], cfg.batch_size)  # (B, H, W, C)
            y = distributed.global_batch(self.batch_sharding, self.labels[idx], cfg.batch_size)  # (B,)
            key = jax.random.fold_in(base_key, step)
            self.state, loss = train_step(self.state, x0, y, key, self.schedule,
                                          graphdef=self.graphdef, cfg=cfg, unet_cfg=self.unet_cfg)
            pending.append(loss)
            done = step + 1  # the log's step numbers: updates done so far
            save_ckpt = done % cfg.ckpt_every == 0 or done == cfg.steps
            snapshot = cfg.snapshot_every and done % cfg.snapshot_every == 0
            grid = cfg.sample_every and (done % cfg.sample_every == 0 or done == cfg.steps)
            if done % cfg.log_every and not (save_ckpt or snapshot or grid):
                continue
            losses = np.asarray(jax.device_get(pending))  # the one host sync per log interval
            if not np.all(np.isfinite(losses)):
                first = int(np.argmin(np.isfinite(losses)))
                raise self._diverged(f"the loss became {losses[first]} at step {done - len(losses) + first + 1}")
            if save_ckpt or snapshot:  # the losses above were computed before their updates
                after = [float(v) for v in weights_losses(self.state, x0, y, key, self.schedule,
                                                          graphdef=self.graphdef, cfg=cfg, unet_cfg=self.unet_cfg)]
                if not all(np.isfinite(after)):
                    raise self._diverged(f"the weights after step {done} give loss {after[0]} "
                                         f"(EMA weights: {after[1]})")
            now = time.perf_counter()
            self.elapsed += now - since  # wall time, checkpoints and sample grids included
            record = {"step": done, "loss": float(losses.mean()), "elapsed": round(self.elapsed, 2),
                      "images_per_s": round(len(losses) * cfg.batch_size / (now - since), 1)}
            since = now
            records.append(record)
            bar.update(len(losses))
            bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=record["images_per_s"])
            pending = []
            if not self.writes:
                continue
            with open(self.run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if save_ckpt:
                self.save()
            if snapshot:
                models.save_model(self.run_dir / "snapshots" / f"model_{done:06d}.npz",
                                  self.ema_model(), self._metadata())
            if grid:
                self.sample_grid(self.run_dir / f"samples_{done:06d}.png")
        bar.close()
        return records


def device_description() -> str:
    """What the computation runs on, e.g. "gpu: NVIDIA H100 80GB HBM3 x 1" or "cpu: 2 cores x 1"."""
    device = jax.devices()[0]
    kind = f"{os.cpu_count()} cores" if device.platform == "cpu" else device.device_kind
    return f"{device.platform}: {kind} x {jax.device_count()}"


def describe(unet_cfg: UNetConfig) -> str:
    """One line for the log: the U-Net's widths, parameter count and device count."""
    model = nnx.eval_shape(lambda: models.build_model(unet_cfg))  # shapes only, no init work
    return f"U-Net {unet_cfg.channels}, {count_params(model):,} parameters, {jax.device_count()} device(s)"
