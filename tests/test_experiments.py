import json

import pytest

from minidiff import experiments
from tests.helpers import data_dir


def test_inversion_experiment_on_tiny_settings(tmp_path):
    if data_dir() is None:
        pytest.skip("MNIST files not available")
    result = experiments.inversion_experiment(num=2, guidance=(1.0, 7.5), steps=4, keep_source_steps=1,
                                              batch=2, data_dir=data_dir(), out_dir=tmp_path)
    rows = {(r["guidance"], r["method"]): r for r in result["rows"]}
    assert set(rows) == {(1.0, "ddim"), (1.0, "null"), (7.5, "ddim"), (7.5, "null")}
    # At w = 1 the null embedding cancels out of the guided eps: both methods agree exactly.
    assert rows[1.0, "null"]["psnr_mean"] == pytest.approx(rows[1.0, "ddim"]["psnr_mean"], abs=1e-4)
    assert rows[7.5, "null"]["psnr_mean"] > rows[7.5, "ddim"]["psnr_mean"]
    assert 0 <= rows[7.5, "null"]["inner_steps_mean"] <= 10
    saved = json.loads((tmp_path / "inversion.json").read_text())
    assert saved["num_images"] == 2 and (tmp_path / "inversion_null_w7.5.png").exists()
