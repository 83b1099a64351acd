"""Speed measurements: the U-Net forward pass, a DDIM-50 sampling loop, a training step, and
the machine's float32 matmul peak, all in one run so their ratios are meaningful.

The measurements are taken in rounds: each round times the matmul, the forward passes, the
sampling loop and the training step once, one after another, after one warm-up call of each
(compilation excluded), with jax.block_until_ready around every timed call. A ratio (fraction of
the matmul peak, sampling loop over 50 forward passes) is computed within each round and the
report gives the median over rounds, so a stretch in which the machine runs slower (on a shared
2-core VM the same program's speed can drop by half for a while) hits both sides of a ratio
alike. Times are medians over rounds. FLOPs come from XLA's own cost analysis of the program
compiled for the CPU (so the count is the same on every device), and "achieved GFLOP/s"
is XLA's count divided by measured time.

The XLA_FLAGS in effect are part of the report: minidiff adds one on import (minidiff/xla_flags.py);
MINIDIFF_XLA_DEFAULTS=1 measures XLA's own defaults instead.
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp

from minidiff import models, pipeline, samplers, schedules, train
from minidiff.unet import UNetConfig, count_params


MATMULS_PER_ROUND = 4


def seconds(fn) -> float:
    """Wall time of one call fn(), up to the moment its result is ready."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def timed_rounds(fns: dict, repeats: int = 5) -> dict[str, list[float]]:
    """{name: [seconds of fns[name]() in each round]}: one warm-up call of each, then `repeats`
    rounds that call every fn once, in order."""
    for fn in fns.values():
        seconds(fn)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(seconds(fn))
    return times


def flops_of(fn, *args) -> float:
    """FLOPs of one call fn(*args), from XLA's cost analysis of the program compiled for the CPU.
    The count belongs to the program, not the device, and on a GPU XLA's count leaves out the
    convolutions that cuDNN computes."""
    args = jax.device_put(args, jax.devices("cpu")[0])
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


class _TrainLoop:
    """A jitted training step that consumes its own output, as training does: call it to step."""

    def __init__(self, step, state):
        self.step, self.state = jax.jit(step), state

    def __call__(self):
        self.state = self.step(self.state)
        return self.state


def run_bench(config: UNetConfig | None = None, forward_batch: int = 256, sample_batch: int = 64,
              train_batch: int = 128, repeats: int = 5, matmul_size: int = 2048) -> dict:
    """All measurements as a dict (see the module docstring)."""
    config = config or UNetConfig.mnist()
    model = models.build_model(config)
    s = schedules.linear_schedule()
    eps_fn = pipeline.unet_eps_fn(model, s)
    shape = (config.image_size, config.image_size, config.in_channels)
    key = jax.random.PRNGKey(0)

    def inputs(batch):
        return (jax.random.normal(key, (batch,) + shape), jnp.full((batch,), 500, jnp.int32),
                jnp.arange(batch, dtype=jnp.int32) % config.num_classes)

    forward = jax.jit(lambda fn, x, t, y: fn(x, t, y))
    x_big, t_big, y_big = inputs(forward_batch)
    x_small, t_small, y_small = inputs(sample_batch)
    ts = samplers.make_timesteps(s.num_timesteps, 50)
    cfg = train.TrainConfig(batch_size=train_batch)
    graphdef, state = train.init_state(config, cfg)
    x_train, _, y_train = inputs(train_batch)
    step = lambda state: train.train_step(state, x_train, y_train, key, s, graphdef=graphdef,
                                          cfg=cfg, unet_cfg=config)[0]
    a = jax.random.normal(key, (matmul_size, matmul_size), jnp.float32)
    matmul = jax.jit(jnp.matmul)

    def matmuls():  # back to back, as a peak is measured: a single call after other work is slower
        for _ in range(MATMULS_PER_ROUND - 1):
            jax.block_until_ready(matmul(a, a))
        return matmul(a, a)

    fwd_flops = flops_of(forward, eps_fn, x_big, t_big, y_big) / forward_batch
    train_flops = flops_of(step, state) / train_batch
    times = timed_rounds({
        "matmul": matmuls,
        "forward": lambda: forward(eps_fn, x_big, t_big, y_big),
        "forward_small": lambda: forward(eps_fn, x_small, t_small, y_small),
        "ddim50": lambda: samplers.ddim_sample(eps_fn, s, x_small, ts, y=y_small),
        "train": _TrainLoop(step, state),
    }, repeats)

    med = {name: statistics.median(t) for name, t in times.items()}
    peak = [2 * matmul_size**3 * MATMULS_PER_ROUND / t / 1e9 for t in times["matmul"]]  # GFLOP/s
    forward_gflops = [fwd_flops * forward_batch / t / 1e9 for t in times["forward"]]
    train_gflops = [train_flops * train_batch / t / 1e9 for t in times["train"]]
    per_round = lambda num, den: statistics.median(n / d for n, d in zip(num, den))
    return {
        "device": train.device_description(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "parameters": count_params(model),
        "channels": list(config.channels),
        "rounds": repeats,
        "forward_batch": forward_batch,
        "forward_images_per_s": forward_batch / med["forward"],
        "forward_mflop_per_image": fwd_flops / 1e6,
        "forward_gflop_per_s": statistics.median(forward_gflops),
        "ddim50_batch": sample_batch,
        "ddim50_images_per_s": sample_batch / med["ddim50"],
        "ddim50_over_50_forwards": per_round(times["ddim50"], [50 * t for t in times["forward_small"]]),
        "train_batch": train_batch,
        "train_step_s": med["train"],
        "train_images_per_s": train_batch / med["train"],
        "train_mflop_per_image": train_flops / 1e6,
        "train_gflop_per_s": statistics.median(train_gflops),
        "matmul_peak_gflop_per_s": statistics.median(peak),
        "matmul_peak_range_gflop_per_s": [min(peak), max(peak)],
        "forward_fraction_of_peak": per_round(forward_gflops, peak),
        "train_fraction_of_peak": per_round(train_gflops, peak),
    }


def format_report(r: dict) -> str:
    """The bench results as an aligned text table."""
    rows = [
        ("device", r["device"]),
        ("XLA_FLAGS", r["xla_flags"] or "(none: XLA's defaults)"),
        ("U-Net", f"{r['parameters']:,} parameters, channels {tuple(r['channels'])}"),
        (f"forward, batch {r['forward_batch']}", f"{r['forward_images_per_s']:.0f} images/s, "
         f"{r['forward_mflop_per_image']:.0f} MFLOP/image, {r['forward_gflop_per_s']:.0f} GFLOP/s "
         f"({100 * r['forward_fraction_of_peak']:.0f}% of matmul peak)"),
        (f"DDIM-50, batch {r['ddim50_batch']}", f"{r['ddim50_images_per_s']:.1f} images/s; "
         f"{r['ddim50_over_50_forwards']:.3f} x the time of 50 forward passes"),
        (f"train step, batch {r['train_batch']}", f"{r['train_step_s']:.3f} s, {r['train_images_per_s']:.0f} images/s, "
         f"{r['train_gflop_per_s']:.0f} GFLOP/s ({100 * r['train_fraction_of_peak']:.0f}% of matmul peak)"),
        ("float32 matmul peak", f"{r['matmul_peak_gflop_per_s']:.0f} GFLOP/s (rounds: "
         f"{r['matmul_peak_range_gflop_per_s'][0]:.0f}-{r['matmul_peak_range_gflop_per_s'][1]:.0f}); "
         f"fractions are medians of per-round ratios over {r['rounds']} rounds"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
