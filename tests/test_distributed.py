"""Training on several processes (minidiff/distributed.py): JAX's multi-controller runtime on
local CPU processes talking over 127.0.0.1 (gloo collectives), each with two forced host devices.

The slow tests run `minidiff train` itself in child processes. Each child records, through a
Python audit hook, every file it opens for writing, renames, removes or creates under the run
directory, so the test can see that process 0 alone writes there.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from minidiff import checkpoint, distributed, models, pipeline
from tests.helpers import REPO, data_dir

# `minidiff train` with an audit hook: argv[1] the run directory to watch, argv[2] the report file,
# argv[3] a heartbeat timeout (s), the rest the command line.
CHILD = """
import json, os, signal, sys
import jax
run_dir, report, heartbeat = os.path.realpath(sys.argv[1]), sys.argv[2], int(sys.argv[3])
writes = []
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def inside(path):
    return isinstance(path, (str, bytes, os.PathLike)) and os.path.realpath(os.fsdecode(path)).startswith(run_dir)

def hook(event, args):
    if event == "open" and isinstance(args[2], int) and args[2] & WRITE and inside(args[0]):
        writes.append(os.path.basename(os.fsdecode(args[0])))
    elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir") and inside(args[0]):
        writes.append(event)

sys.addaudithook(hook)
from minidiff import cli, distributed, train
distributed.HEARTBEAT_TIMEOUT = heartbeat
die_at = int(os.environ.get("DIE_AT_STEP", 0))
if die_at:  # end this process as a crash would, at step die_at's checkpoint (its last collective)
    check = train.weights_losses
    def check_and_die(state, *args, **kwargs):
        out = jax.block_until_ready(check(state, *args, **kwargs))
        if int(state["step"]) >= die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    train.weights_losses = check_and_die
code = cli.main(sys.argv[4:])
with open(report, "w") as f:
    json.dump(writes, f)
sys.exit(code)
"""
TINY = ["--channels", "8,16", "--batch-size", "16", "--warmup-steps", "5", "--lr-schedule", "constant",
        "--sample-every", "0", "--log-every", "5", "--ckpt-every", "5", "--no-progress"]
TWO_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(run_dir, report, steps, extra=(), env_extra=None, heartbeat=60):
    env = dict(os.environ, JAX_PLATFORMS="cpu", MINIDIFF_DATA_DIR=str(data_dir()), **(env_extra or {}))
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    argv = [sys.executable, "-c", CHILD, str(run_dir), str(report), str(heartbeat), "train", *TINY,
            "--steps", str(steps), "--out", str(run_dir), *extra]
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def train_processes(tmp_path, run_dir, steps, count=2, heartbeat=60, wait=True, die_at=None):
    """`minidiff train` as `count` processes of two host devices each; returns them (and, when
    waited for, each one's list of writes under run_dir). die_at {process: step}: that process
    kills itself after that step's checkpoint."""
    port = free_port()
    procs = [start(run_dir, tmp_path / f"writes_{run_dir.name}_{i}.json", steps,
                   ["--coordinator-address", f"127.0.0.1:{port}", "--num-processes", str(count),
                    "--process-id", str(i)], dict(TWO_DEVICES, DIE_AT_STEP=str((die_at or {}).get(i, 0))),
                   heartbeat) for i in range(count)]
    if not wait:
        return procs
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    return [json.loads((tmp_path / f"writes_{run_dir.name}_{i}.json").read_text()) for i in range(count)]


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "log.jsonl").read_text().splitlines()]


def params(run_dir):
    with np.load(run_dir / "model.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files if f[k].dtype.kind == "f"}


needs_mnist = pytest.mark.skipif(data_dir() is None, reason="MNIST files not available")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """20 steps by 1 process and by 2 processes of 2 devices each, started together; returns
    (tmp dir, one's run dir, two's run dir, each of the 2 processes' writes under its run dir)."""
    tmp = tmp_path_factory.mktemp("straight")
    one = start(tmp / "one", tmp / "writes_one.json", 20)
    writes = train_processes(tmp, tmp / "two", 20)
    _, err = one.communicate(timeout=600)
    assert one.returncode == 0, err[-3000:]
    return tmp, tmp / "one", tmp / "two", writes


@pytest.mark.slow
@needs_mnist
def test_two_processes_train_as_one_and_only_process_0_writes(straight):
    _, one, two, writes = straight
    # The same global batches and noise: the losses agree to float32 round-off at every logged step.
    assert len(losses(two)) == len(losses(one)) == 4
    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-5)
    # The weights after 20 Adam steps: per-parameter updates of up to lr = 2e-3 per step, and Adam
    # divides each gradient by its own running scale, so summation-order round-off in near-zero
    # gradients grows to ~1e-4; one process with 1 against 4 devices differs as much (2-3e-4).
    a, b = params(one), params(two)
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst < 1e-3, worst
    print(f"max |param difference|, 2 processes x 2 devices against 1 process: {worst:.2e}")

    assert writes[1] == [], f"process 1 wrote into the run directory: {writes[1]}"
    assert {"ckpt.npz", "model.npz", "log.jsonl"} <= {os.path.basename(p) for p in os.listdir(two)}
    assert writes[0], "process 0 wrote nothing"


@pytest.mark.slow
@needs_mnist
def test_a_killed_process_stops_the_other_and_both_resume_from_the_kept_checkpoint(straight):
    tmp, _, two, _ = straight
    run_dir, heartbeat = tmp / "killed", 5
    # Process 1 SIGKILLs itself at step 10's checkpoint, after the last collective of the step (the
    # check that the weights are finite); process 0 writes the checkpoint and waits in step 11's
    # gradient all-reduce for a process that is gone.
    procs = train_processes(tmp, run_dir, 20, heartbeat=heartbeat, wait=False, die_at={1: 10})
    procs[1].wait(timeout=600)
    assert procs[1].returncode == -signal.SIGKILL, procs[1].communicate()[1][-3000:]
    died = time.time()
    try:
        procs[0].wait(timeout=heartbeat + 60)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        pytest.fail(f"process 0 still ran {heartbeat + 60} s after process 1 died")
    took = time.time() - died
    _, err = procs[0].communicate()
    assert procs[0].returncode != 0
    assert "task" in err and "died" in err, err[-2000:]  # JAX's error names the dead process
    print(f"process 0 exited with {procs[0].returncode} {took:.1f} s after process 1 died")

    # The checkpoint of step 10 is kept, and its model samples finite images.
    assert checkpoint.read_metadata(run_dir / "ckpt.npz")["step"] == 10
    model, meta = models.load_model(run_dir / "model.npz")
    images = pipeline.generate(model, models.schedule_of(meta), np.arange(4), jax.random.PRNGKey(0),
                               steps=5, guidance_scale=3.0)
    assert np.all(np.isfinite(np.asarray(images)))

    # Both processes resume from it and end exactly where the uninterrupted run did.
    train_processes(tmp, run_dir, 20)
    assert losses(run_dir) == losses(two)
    resumed, straight_params = params(run_dir), params(two)
    for k in straight_params:
        np.testing.assert_array_equal(resumed[k], straight_params[k], err_msg=k)


def test_one_process_owns_every_row_of_the_batch():
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    assert distributed.local_rows(NamedSharding(mesh, P("data")), 8 * mesh.size) == slice(0, 8 * mesh.size)
    batch = np.arange(8 * mesh.size, dtype=np.float32).reshape(-1, 1)
    out = distributed.global_batch(NamedSharding(mesh, P("data")), batch, len(batch))
    np.testing.assert_array_equal(np.asarray(out), batch)
    assert distributed.is_main()


def test_the_runtime_starts_only_when_asked(monkeypatch):
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    assert not distributed.requested()
    assert not distributed.initialize()  # a single process: nothing to start
    assert distributed.requested(num_processes=2) and distributed.requested(auto=True)
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    assert distributed.requested()


@pytest.mark.parametrize("kwargs, message", [
    ({"coordinator_address": "127.0.0.1:1", "num_processes": 0, "process_id": 0}, "--num-processes must be at least 1"),
    ({"coordinator_address": "127.0.0.1:1", "num_processes": 2, "process_id": 2}, r"--process-id must lie in 0\.\.1"),
])
def test_bad_process_flags_are_refused_before_starting(kwargs, message):
    with pytest.raises(ValueError, match=message):
        distributed.initialize(**kwargs)


def test_no_cluster_to_detect_is_a_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri", "TPU_WORKER_HOSTNAMES")}
    out = subprocess.run([sys.executable, "-m", "minidiff", "train", "--distributed", "--steps", "1",
                          "--out", str(tmp_path / "run")], env=dict(env, JAX_PLATFORMS="cpu"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "cannot start several processes" in out.stderr and "--coordinator-address HOST:PORT" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()  # nothing written before the runtime started
