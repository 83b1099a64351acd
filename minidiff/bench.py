"""Speed measurements: the U-Net forward pass, a DDIM-50 sampling loop, a training step, and
the machine's float32 matmul peak, all in one run so their ratios are meaningful.

Every timing is the median of several runs after a warm-up run (compilation excluded), with
jax.block_until_ready around the timed call. FLOPs come from XLA's own cost analysis of the
compiled program, so "achieved GFLOP/s" is XLA's count divided by measured time. The sampling
loop and the forward pass it is compared with are timed alternately, so that a drift in the
machine's speed hits both alike, and their ratio is the median of the per-round ratios.

The XLA_FLAGS in effect are part of the report: minidiff adds one on import (minidiff/xla_flags.py);
MINIDIFF_XLA_DEFAULTS=1 measures XLA's own defaults instead.
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp

from minidiff import pipeline, samplers, schedules, train
from minidiff.unet import UNetConfig, count_params


def seconds(fn) -> float:
    """Wall time of one call fn(), up to the moment its result is ready."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def median_seconds(fn, *args, repeats: int = 5) -> float:
    """Median wall time of fn(*args) over repeats, after one warm-up call."""
    seconds(lambda: fn(*args))
    return statistics.median(seconds(lambda: fn(*args)) for _ in range(repeats))


def paired_seconds(fn_a, fn_b, repeats: int = 5) -> tuple[list[float], list[float]]:
    """Wall times of fn_a() and fn_b(), taken alternately after one warm-up call of each."""
    seconds(fn_a), seconds(fn_b)
    pairs = [(seconds(fn_a), seconds(fn_b)) for _ in range(repeats)]
    return [a for a, _ in pairs], [b for _, b in pairs]


def flops_of(jitted, *args) -> float:
    """FLOPs of one call, from XLA's cost analysis of the compiled program."""
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Achieved GFLOP/s of one float32 (n x n) @ (n x n) matmul: the machine's practical peak."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    return 2 * n**3 / median_seconds(matmul, a, a, repeats=repeats) / 1e9


def run_bench(config: UNetConfig | None = None, forward_batch: int = 256, sample_batch: int = 64,
              train_batch: int = 128, repeats: int = 5) -> dict:
    """All measurements as a dict (see the module docstring)."""
    config = config or UNetConfig.mnist()
    model = pipeline.build_model(config)
    eps_fn = pipeline.unet_eps_fn(model)
    s = schedules.linear_schedule()
    shape = (config.image_size, config.image_size, config.in_channels)
    key = jax.random.PRNGKey(0)

    def inputs(batch):
        return (jax.random.normal(key, (batch,) + shape), jnp.full((batch,), 500, jnp.int32),
                jnp.arange(batch, dtype=jnp.int32) % config.num_classes)

    forward = jax.jit(lambda fn, x, t, y: fn(x, t, y))
    x, t, y = inputs(forward_batch)
    fwd_s = median_seconds(forward, eps_fn, x, t, y, repeats=repeats)
    fwd_flops = flops_of(forward, eps_fn, x, t, y) / forward_batch

    x, t, y = inputs(sample_batch)
    ts = samplers.make_timesteps(s.num_timesteps, 50)
    fwd_small, ddim = paired_seconds(lambda: forward(eps_fn, x, t, y),
                                     lambda: samplers.ddim_sample(eps_fn, s, x, ts, y=y), repeats)
    ddim_s = statistics.median(ddim)
    ddim_over_forwards = statistics.median(d / (50 * f) for f, d in zip(fwd_small, ddim))

    cfg = train.TrainConfig(batch_size=train_batch)
    graphdef, state = train.init_state(config, cfg)
    x, _, y = inputs(train_batch)
    step = lambda state: train.train_step(state, x, y, key, s, graphdef=graphdef, cfg=cfg,
                                          null_class=config.num_classes)[0]
    train_flops = flops_of(jax.jit(step), state) / train_batch
    train_s = _time_train(step, state, repeats)

    peak = matmul_peak(repeats=repeats)
    forward_gflops = fwd_flops * forward_batch / fwd_s / 1e9
    train_gflops = train_flops * train_batch / train_s / 1e9
    return {
        "device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind} x {jax.device_count()}",
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "parameters": count_params(model),
        "channels": list(config.channels),
        "forward_batch": forward_batch,
        "forward_images_per_s": forward_batch / fwd_s,
        "forward_mflop_per_image": fwd_flops / 1e6,
        "forward_gflop_per_s": forward_gflops,
        "ddim50_batch": sample_batch,
        "ddim50_images_per_s": sample_batch / ddim_s,
        "ddim50_over_50_forwards": ddim_over_forwards,
        "train_batch": train_batch,
        "train_step_s": train_s,
        "train_images_per_s": train_batch / train_s,
        "train_mflop_per_image": train_flops / 1e6,
        "train_gflop_per_s": train_gflops,
        "matmul_peak_gflop_per_s": peak,
        "forward_fraction_of_peak": forward_gflops / peak,
        "train_fraction_of_peak": train_gflops / peak,
    }


def _time_train(step, state, repeats: int) -> float:
    """Median seconds of a jitted train step that consumes its own output (as training does)."""
    jitted = jax.jit(step)
    state = jax.block_until_ready(jitted(state))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state = jax.block_until_ready(jitted(state))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
        ("float32 matmul peak", f"{r['matmul_peak_gflop_per_s']:.0f} GFLOP/s"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
