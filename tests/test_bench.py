import jax
import jax.numpy as jnp

import pytest

from minidiff import bench
from tests.helpers import TINY_UNET


@pytest.mark.slow
def test_bench_reports_consistent_numbers_on_a_tiny_model():
    r = bench.run_bench(TINY_UNET, forward_batch=8, sample_batch=4, train_batch=8, repeats=1)
    assert r["parameters"] > 0 and r["device"].startswith("cpu")
    # images/s and seconds describe the same measurement
    assert abs(r["train_images_per_s"] * r["train_step_s"] - 8) < 1e-6
    # XLA counts more FLOPs for a training step (forward + backward) than for a forward pass
    assert r["train_mflop_per_image"] > 2 * r["forward_mflop_per_image"] > 0
    assert 0 < r["forward_fraction_of_peak"] and r["matmul_peak_gflop_per_s"] > 1
    assert r["ddim50_over_50_forwards"] > 0  # a ratio of timings: no bound on its value in a test
    lo, hi = r["matmul_peak_range_gflop_per_s"]
    assert lo <= r["matmul_peak_gflop_per_s"] <= hi
    assert "matmul peak" in bench.format_report(r)


def test_rounds_time_every_measurement_once_per_round_after_a_warm_up():
    calls = []
    times = bench.timed_rounds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b"] * 4  # one warm-up round, then 3 timed ones
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}


def test_flops_are_counted_as_in_closed_form():
    m, k, n = 64, 48, 32
    assert bench.flops_of(jnp.matmul, jnp.ones((m, k)), jnp.ones((k, n))) == 2 * m * k * n
    # A 3x3 'VALID' convolution, NHWC: (size - 2)^2 outputs per channel, each 3 * 3 * C_in
    # multiply-adds (2 FLOPs each).
    batch, size, c_in, c_out = 2, 8, 4, 5
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    flops = bench.flops_of(conv, jnp.ones((batch, size, size, c_in)), jnp.ones((3, 3, c_in, c_out)))
    assert flops == 2 * 9 * c_in * c_out * batch * (size - 2) ** 2
