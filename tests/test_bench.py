from minidiff import bench
from tests.helpers import TINY_UNET


def test_bench_reports_consistent_numbers_on_a_tiny_model():
    r = bench.run_bench(TINY_UNET, forward_batch=8, sample_batch=4, train_batch=8, repeats=1)
    assert r["parameters"] > 0 and r["device"].startswith("cpu")
    # images/s and seconds describe the same measurement
    assert abs(r["train_images_per_s"] * r["train_step_s"] - 8) < 1e-6
    # XLA counts more FLOPs for a training step (forward + backward) than for a forward pass
    assert r["train_mflop_per_image"] > 2 * r["forward_mflop_per_image"] > 0
    assert 0 < r["forward_fraction_of_peak"] and r["matmul_peak_gflop_per_s"] > 1
    assert r["ddim50_over_50_forwards"] > 0  # a ratio of timings: no bound on its value in a test
    assert "matmul peak" in bench.format_report(r)
