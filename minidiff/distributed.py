"""Training on many processes: JAX's multi-controller runtime, nothing home-made.

One program runs on every host (process); `jax.distributed.initialize` connects them through a
coordinator, after which `jax.devices()` lists every process's devices and a jitted step over a
mesh of all of them is one computation, whose gradient all-reduce XLA inserts (NCCL on GPUs, ICI
on TPUs, gloo between CPU processes). What the code here adds is the bookkeeping around it:

- `initialize`: start the runtime when the command line or the environment asks for it, with
  JAX's heartbeat and shutdown timeouts, so that when one process dies the others stop with an
  error instead of waiting in a collective for ever;
- `data_mesh`: a 1-D mesh 'data' over every device of every process, in process order;
- `local_rows` and `global_batch`: each process feeds only its own rows of each global batch
  (`jax.make_array_from_process_local_data`), and the global batch is the one a single process
  with the same seed would have built, row for row;
- `is_main`: process 0 alone writes files.

A single process is the same code: one process owns every row, and `initialize` does nothing.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

# Seconds a process waits for all the others to connect to the coordinator (JAX's default: 300),
INITIALIZATION_TIMEOUT = 300
# seconds without a heartbeat after which the runtime declares a process dead and stops the others
# (JAX's default is 100; heartbeats have their own thread, so a long step does not miss one), and
# seconds a process waits for the others at shutdown (JAX's: 300).
HEARTBEAT_TIMEOUT = 60
SHUTDOWN_TIMEOUT = 60


def requested(coordinator_address: str | None = None, num_processes: int | None = None,
              process_id: int | None = None, auto: bool = False) -> bool:
    """Whether a run asks for the multi-process runtime: any of the flags, or JAX's own
    JAX_COORDINATOR_ADDRESS in the environment."""
    given = (coordinator_address, num_processes, process_id)
    return auto or any(v is not None for v in given) or bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False) -> bool:
    """Start JAX's multi-controller runtime if `requested`; returns whether it was started.

    coordinator_address: "HOST:PORT" of process 0's coordinator; num_processes: P; process_id:
    this process, 0..P-1. What is not given, JAX fills in from the environment
    (JAX_COORDINATOR_ADDRESS) or its cluster detection (SLURM, TPU pods, Open MPI, Kubernetes);
    auto=True asks for that detection alone. Must run before any other JAX computation. Between
    CPU processes the collectives are gloo's. A process that stops sending heartbeats for
    HEARTBEAT_TIMEOUT seconds is declared dead, and JAX then ends every other process with an
    error naming it.
    """
    if not requested(coordinator_address, num_processes, process_id, auto):
        return False
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"--num-processes must be at least 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id must lie in 0..{num_processes - 1} (--num-processes {num_processes}), "
                         f"got {process_id}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices only; GPUs keep NCCL
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   initialization_timeout=INITIALIZATION_TIMEOUT,
                                   heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT,
                                   shutdown_timeout_seconds=SHUTDOWN_TIMEOUT)
    except ValueError as e:  # JAX found no cluster to fill in what was not given
        raise ValueError(f"cannot start several processes: {e} Give --coordinator-address HOST:PORT, "
                         "--num-processes and --process-id, or run under SLURM, on a TPU pod or under "
                         "Open MPI, where JAX finds them") from None
    return True


def is_main() -> bool:
    """Whether this process writes files (process 0; always true in a single process)."""
    return jax.process_index() == 0


def data_mesh() -> Mesh:
    """A 1-D mesh 'data' over every device of every process, process 0's first (jax.devices()'
    order), so that process p's devices hold one contiguous block of rows of a batch."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def local_rows(sharding: NamedSharding, batch_size: int) -> slice:
    """The rows of a global batch (batch_size, ...) split along `sharding` that this process's
    devices hold: one contiguous block (all of them in a single process)."""
    blocks = sorted({(index[0].start or 0, batch_size if index[0].stop is None else index[0].stop)
                     for index in sharding.addressable_devices_indices_map((batch_size,)).values()})
    start, stop = blocks[0][0], blocks[-1][1]
    if sum(b - a for a, b in blocks) != stop - start:
        raise ValueError(f"this process's rows of the batch are not one block: {blocks}")
    return slice(start, stop)


def global_batch(sharding: NamedSharding, local: np.ndarray, batch_size: int) -> jax.Array:
    """The global (batch_size, ...) array of which this process holds `local`, its local_rows."""
    return jax.make_array_from_process_local_data(sharding, local, (batch_size,) + local.shape[1:])
