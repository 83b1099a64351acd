import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from minidiff import checkpoint, data, models, train
from tests.helpers import REPO, TINY_UNET, data_dir

# A training run in a child process, on fixed random images, so it can be killed and resumed.
RUNNER = """
import json, sys
import numpy as np
from minidiff import models, train
from minidiff.unet import UNetConfig
tiny = models.config_from_dict(UNetConfig, json.loads(sys.argv[3]))
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (256, 28, 28, 1), dtype=np.uint8)
labels = rng.integers(0, 10, 256)
cfg = train.TrainConfig(steps=int(sys.argv[2]), batch_size=16, warmup_steps=5, log_every=1,
                        ckpt_every=5, sample_every=0)
records = train.Trainer(tiny, cfg, sys.argv[1], images, labels).run(progress=False)
print(json.dumps([r["loss"] for r in records]))
"""


def run_child(run_dir, steps, env_extra=None, wait=True):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **(env_extra or {}))
    tiny = json.dumps({**TINY_UNET.__dict__, "channels": list(TINY_UNET.channels)})
    args = [sys.executable, "-c", RUNNER, str(run_dir), str(steps), tiny]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def final_params(run_dir):
    template = train.init_state(TINY_UNET, train.TrainConfig())[1]
    state, meta = checkpoint.load_checkpoint(run_dir / "ckpt.npz", template)
    return state, meta


def test_batch_order_is_a_function_of_seed_and_step():
    a = [data.batch_indices(k, 100, 10, seed=3) for k in range(10)]  # one epoch
    assert sorted(np.concatenate(a).tolist()) == list(range(100))
    np.testing.assert_array_equal(data.batch_indices(4, 100, 10, seed=3), a[4])
    assert not np.array_equal(data.batch_indices(10, 100, 10, seed=3), a[0])  # next epoch reshuffles
    with pytest.raises(ValueError, match="larger than the dataset"):
        data.batch_indices(0, 5, 10, seed=0)


@pytest.mark.slow
def test_sigkill_and_resume_ends_with_exactly_the_uninterrupted_parameters(tmp_path):
    steps = 40
    run_child(tmp_path / "straight", steps)
    killed = tmp_path / "killed"
    proc = run_child(killed, steps, wait=False)
    log = killed / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 8:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, meta = final_params(killed)
    assert 5 <= meta["step"] < steps  # it was killed part-way, after a checkpoint
    run_child(killed, steps)  # resume
    a, meta_a = final_params(tmp_path / "straight")
    b, meta_b = final_params(killed)
    assert meta_a["step"] == meta_b["step"] == steps
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_four_host_devices_give_the_one_device_losses(tmp_path):
    one = run_child(tmp_path / "one", 4)
    four = run_child(tmp_path / "four", 4, {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    np.testing.assert_allclose(four, one, rtol=2e-5)


def tiny_trainer(run_dir, images, labels, steps, **overrides):
    cfg = train.TrainConfig(steps=steps, batch_size=32, warmup_steps=20, log_every=50,
                            ckpt_every=50, sample_every=0, **overrides)
    return train.Trainer(TINY_UNET, cfg, run_dir, images, labels)


@pytest.fixture(scope="module")
def mnist_subset():
    root = data_dir()
    if root is None:
        pytest.skip("MNIST files not available")
    images, labels = data.load_split("mnist", "test", root, download=False)
    return images[:1024], labels[:1024]


@pytest.mark.slow
def test_a_few_hundred_steps_lower_the_loss(tmp_path, mnist_subset):
    records = tiny_trainer(tmp_path, *mnist_subset, steps=300).run(progress=False)
    first, last = records[0]["loss"], records[-1]["loss"]
    assert last < 0.6 * first, (first, last)  # ~1.0 at init (eps = 0) down to ~0.1-0.2


def test_a_v_prediction_run_lowers_its_v_loss(tmp_path, mnist_subset):
    images, labels = mnist_subset
    cfg = train.TrainConfig(steps=100, batch_size=32, lr=2e-3, warmup_steps=10, log_every=10, ckpt_every=100,
                            sample_every=0)
    unet = dataclasses.replace(TINY_UNET, prediction="v")
    records = train.Trainer(unet, cfg, tmp_path, images, labels).run(progress=False)
    assert records[-1]["loss"] < 0.7 * records[0]["loss"], records
    model, meta = models.load_model(tmp_path / "model.npz")
    assert model.config.prediction == "v" and meta["unet"]["prediction"] == "v"


@pytest.mark.slow
def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, mnist_subset):
    images, labels = mnist_subset
    # constant lr: the run is extended from 50 to 100 steps, which cosine decay would refuse
    tiny_trainer(tmp_path, images, labels, steps=50, lr_schedule="constant").run(progress=False)
    poisoned = data.to_model_range(images)
    poisoned[:, 0, 0, 0] = np.nan
    with pytest.raises(train.TrainingDiverged, match="last good checkpoint is kept"):
        tiny_trainer(tmp_path, poisoned, labels, steps=100, lr_schedule="constant").run(progress=False)
    _, meta = final_params(tmp_path)
    assert meta["step"] == 50
    state, _ = final_params(tmp_path)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state["params"]))


def test_resuming_with_other_settings_is_refused(tmp_path, mnist_subset):
    tiny_trainer(tmp_path, *mnist_subset, steps=2).run(progress=False)
    with pytest.raises(ValueError, match="different configuration"):
        tiny_trainer(tmp_path, *mnist_subset, steps=4, lr=1e-4)
    with pytest.raises(ValueError, match="do not fit the U-Net"):
        tiny_trainer(tmp_path / "b", np.zeros((64, 32, 32, 3), np.uint8), np.zeros(64), steps=2)


@pytest.mark.slow
def test_snapshots_keep_the_ema_weights_of_their_step(tmp_path, mnist_subset):
    tiny_trainer(tmp_path, *mnist_subset, steps=4, snapshot_every=2, lr_schedule="constant").run(progress=False)
    snaps = sorted((tmp_path / "snapshots").glob("model_*.npz"))
    assert [p.name for p in snaps] == ["model_000002.npz", "model_000004.npz"]
    (_, first), (last_model, last) = (models.load_model(p) for p in snaps)
    assert (first["step"], last["step"]) == (2, 4) and 0 < first["elapsed"] <= last["elapsed"]
    final, _ = models.load_model(tmp_path / "model.npz")
    for a, b in zip(jax.tree.leaves(nnx.state(last_model)), jax.tree.leaves(nnx.state(final))):
        np.testing.assert_array_equal(a, b)
    # bookkeeping settings may change on resume; the run goes on
    tiny_trainer(tmp_path, *mnist_subset, steps=6, snapshot_every=3, lr_schedule="constant").run(progress=False)
    assert (tmp_path / "snapshots" / "model_000006.npz").exists()


def test_cosine_decay_reaches_zero_at_the_last_step_so_steps_is_fixed_for_the_run(tmp_path, mnist_subset):
    cfg = train.TrainConfig(steps=50, warmup_steps=10, lr=1e-3)
    lr = train.learning_rate(cfg)
    assert lr(0) == 0 and lr(10) == pytest.approx(1e-3) and lr(30) == pytest.approx(5e-4, rel=1e-5)
    assert lr(50) == pytest.approx(0.0, abs=1e-12)
    assert train.learning_rate(dataclasses.replace(cfg, lr_schedule="constant"))(50) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="lr_schedule"):
        train.TrainConfig(lr_schedule="linear")
    # the run's length sets every step's learning rate, so it may not change on resume
    tiny_trainer(tmp_path, *mnist_subset, steps=2).run(progress=False)
    tiny_trainer(tmp_path, *mnist_subset, steps=2, snapshot_every=7)  # bookkeeping: accepted
    with pytest.raises(ValueError, match="different configuration"):
        tiny_trainer(tmp_path, *mnist_subset, steps=4)


def test_bad_settings_are_refused_by_name():
    for change, message in [({"grad_clip": -1.0}, "grad_clip"), ({"warmup_steps": -1}, "warmup_steps"),
                            ({"weight_decay": -0.1}, "weight_decay"), ({"lr": float("nan")}, "lr"),
                            ({"ckpt_every": 0}, "ckpt_every"), ({"log_every": 0}, "log_every"),
                            ({"seed": 2**40}, "seed"), ({"schedule": "quadratic"}, "schedule"),
                            ({"snr_gamma": -1.0}, "snr_gamma"), ({"snr_gamma": float("inf")}, "snr_gamma")]:
        with pytest.raises(ValueError, match=message):
            train.TrainConfig(**change)


def test_min_snr_gamma_reaches_the_training_loss(mnist_subset):
    """TrainConfig.snr_gamma is the loss train_step and the checkpoint check compute: the same
    number as diffusion.ddpm_loss with that gamma on the U-Net, and not the unweighted one."""
    from minidiff import diffusion, pipeline, schedules
    s = schedules.make_schedule("linear", 1000)
    x0 = jax.numpy.asarray(data.to_model_range(mnist_subset[0][:64]))  # 64 draws of t: some with SNR > 5
    y, key = jax.numpy.asarray(mnist_subset[1][:64], jax.numpy.int32), jax.random.PRNGKey(0)
    losses = {}
    for gamma in (0.0, 5.0):
        cfg = train.TrainConfig(snr_gamma=gamma)
        graphdef, state = train.init_state(TINY_UNET, cfg)
        losses[gamma] = float(train.weights_losses(state, x0, y, key, s, graphdef=graphdef, cfg=cfg,
                                                   unet_cfg=TINY_UNET)[0])
    model = nnx.merge(graphdef, state["params"])
    eps_fn = lambda x_t, t, labels: pipeline.as_eps(model, s, x_t, t, model(x_t, t, labels))
    expected = float(diffusion.ddpm_loss(eps_fn, s, x0, y, key, weighting=TINY_UNET.prediction, snr_gamma=5.0))
    assert losses[5.0] == pytest.approx(expected, rel=1e-5)
    assert abs(losses[5.0] - losses[0.0]) > 1e-3 * losses[0.0]


def test_ema_warmups_follow_their_closed_forms():
    for k in (0, 9, 100, 2999, 8990, 10**5):
        decay = {w: float(train.ema_decay_at(train.TrainConfig(ema_warmup=w), k)) for w in train.EMA_WARMUPS}
        assert decay["ramp"] == pytest.approx(min(0.999, (1 + k) / (10 + k)), rel=1e-6)
        assert decay["power"] == pytest.approx(min(0.999, 1 - (1 + k) ** -0.75), rel=1e-6, abs=1e-7)
        assert decay["none"] == pytest.approx(0.999)
    assert float(train.ema_decay_at(train.TrainConfig(), 8989)) < 0.999 <= float(train.ema_decay_at(train.TrainConfig(), 8991))
    with pytest.raises(ValueError, match="ema_warmup"):
        train.TrainConfig(ema_warmup="linear")


@pytest.mark.parametrize("warmup", train.EMA_WARMUPS)
def test_train_step_moves_the_ema_by_the_warmups_decay(mnist_subset, warmup):
    """One step from an EMA 1 away from the weights: ema' = d * ema + (1 - d) * params', with d
    ema_decay_at's value at step 0 (0.1 ramped, 0 under the power warm-up, 0.999 without)."""
    from minidiff import schedules
    cfg = train.TrainConfig(ema_warmup=warmup, batch_size=8)
    graphdef, state = train.init_state(TINY_UNET, cfg)
    state["ema"] = jax.tree.map(lambda p: p + 1.0, state["params"])
    ema_before = jax.tree.map(np.array, state["ema"])
    x0 = jax.numpy.asarray(data.to_model_range(mnist_subset[0][:8]))
    y = jax.numpy.asarray(mnist_subset[1][:8], jax.numpy.int32)
    state, _ = train.train_step(state, x0, y, jax.random.PRNGKey(0), schedules.make_schedule("linear", 1000),
                                graphdef=graphdef, cfg=cfg, unet_cfg=TINY_UNET)
    d = float(train.ema_decay_at(cfg, 0))
    expected = jax.tree.map(lambda e, p: d * e + (1 - d) * np.asarray(p), ema_before, state["params"])
    for got, want in zip(jax.tree.leaves(state["ema"]), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_checkpoint_from_before_a_setting_existed_resumes_with_its_default(tmp_path, mnist_subset):
    trainer = tiny_trainer(tmp_path, *mnist_subset, steps=2)
    meta = json.loads(json.dumps(trainer._metadata()))  # as read back from the file
    del meta["train"]["snr_gamma"]  # as written before --snr-gamma existed
    trainer._check_same_run(meta)  # the default, 0, is what that code trained with
    meta["train"]["snr_gamma"] = 5.0
    with pytest.raises(ValueError, match=r"snr_gamma: 5\.0 in the checkpoint, 0\.0 now"):
        trainer._check_same_run(meta)


def test_a_resume_refusal_names_the_setting_that_differs(tmp_path, mnist_subset):
    tiny_trainer(tmp_path, *mnist_subset, steps=2).run(progress=False)
    with pytest.raises(ValueError, match=r"lr: 0\.002 in the checkpoint, 0\.0001 now"):
        tiny_trainer(tmp_path, *mnist_subset, steps=2, lr=1e-4)


@pytest.mark.slow
def test_a_resumed_run_removes_leftover_temporaries_and_logs_every_step_once(tmp_path, mnist_subset):
    cfg = dict(log_every=1, ckpt_every=5, lr_schedule="constant")
    train.Trainer(TINY_UNET, train.TrainConfig(steps=5, batch_size=16, sample_every=0, **cfg), tmp_path,
                  *mnist_subset).run(progress=False)
    # As a kill -9 after step 7 leaves it: log records past the checkpoint, a half-written file.
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write(json.dumps({"step": 6, "loss": 1.0}) + "\n" + json.dumps({"step": 7, "loss": 1.0}) + "\n")
    (tmp_path / ".ckpt.npz.x1y2z3.tmp").write_bytes(b"half a checkpoint")
    train.Trainer(TINY_UNET, train.TrainConfig(steps=8, batch_size=16, sample_every=0, **cfg), tmp_path,
                  *mnist_subset).run(progress=False)
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
    assert not list(tmp_path.glob(".*.tmp"))
