"""Devices and meshes: the ``("data",)`` mesh of one run, the ``("runs", "data")`` mesh of a sweep."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

DATA_AXIS = "data"
RUNS_AXIS = "runs"


def maybe_initialize_distributed() -> None:
    """``jax.distributed.initialize()`` when the environment describes a multi-process job.

    Set ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``), or run
    under SLURM / a Cloud TPU pod where JAX detects the cluster itself and
    ``VQJAX_DISTRIBUTED=1`` is set. A single-process run does nothing. On CPU the collectives
    across processes go through gloo.
    """
    if jax.distributed.is_initialized():
        return
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address or os.environ.get("VQJAX_DISTRIBUTED") == "1":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        kwargs = {}
        # JAX (0.10) reads only the coordinator's address from the environment; the process count
        # and id come from a detected cluster (SLURM, a TPU pod, ...) or from these two variables.
        for name, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
            if os.environ.get(name):
                kwargs[key] = int(os.environ[name])
        # A loopback coordinator (several processes on one machine) listens on loopback only, not
        # on every interface ("[::]:port", JAX's default), unless JAX_COORDINATOR_BIND_ADDRESS says so.
        host = address.rsplit(":", 1)[0].strip("[]") if address else ""
        if host in ("localhost", "::1") or host.startswith("127."):
            if not os.environ.get("JAX_COORDINATOR_BIND_ADDRESS"):
                kwargs["coordinator_bind_address"] = address
        jax.distributed.initialize(**kwargs)


def use_cpu_cores_as_devices(batch_sizes: tuple[int, ...], *, max_devices: int | None = None) -> int:
    """Expose one XLA:CPU device per core, so data parallelism replaces intra-op threading.

    XLA's CPU backend parallelises a small convolution poorly across threads; splitting the batch
    over one single-threaded device per core (the same sharded step as on a pod) runs the VQ-VAE
    step ~1.8× faster on 2 cores. Uses the largest device count ≤ the usable cores that divides
    every batch size. Only the CPU backend is affected (GPU/TPU runs are unchanged), and it must
    be called before JAX's first computation; afterwards it does nothing and returns 0.

    The gradient all-reduce between these devices can deadlock (XLA aborts after 40 s): XLA's CPU
    client runs the devices' computations on a pool of ``max(cores, devices)`` threads and queues
    up to 32 per device, so a host that runs far ahead fills the pool with one device's steps while
    the other device's half of the all-reduce waits for a thread (docs/cpu-devices.md,
    ``benchmarks/cpu_deadlock.py`` reproduces it). Two guards: this sets ``PJRT_NPROC`` to 2 threads
    per device (unless set), and :func:`vqjax.training.train_and_evaluate` keeps at most
    ``MAX_STEPS_IN_FLIGHT`` steps queued. Sweeps that place one run per device need no all-reduce.

    Returns:
      The number of CPU devices configured, or 0 if JAX had already started or the environment sets the
      count (``JAX_NUM_CPU_DEVICES``, ``--xla_force_host_platform_device_count``).
    """
    if device_count_from_environment():
        return 0  # the user chose the device count
    cores = usable_cores()
    n = min(cores, max_devices or cores)
    while n > 1 and any(b % n for b in batch_sizes):
        n -= 1
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # backends already initialised: leave them as they are
        return 0
    if n > 1 and "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    if n > 1:  # a client pool of 2 threads per device: a device waiting in the all-reduce never starves another
        os.environ.setdefault("PJRT_NPROC", str(2 * n))
    return n


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def device_count_from_environment() -> bool:
    """Whether the environment sets the CPU device count (``JAX_NUM_CPU_DEVICES`` or
    ``--xla_force_host_platform_device_count``): then vqjax leaves the devices as they are."""
    return bool(os.environ.get("JAX_NUM_CPU_DEVICES")) or \
        "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")


def make_mesh(devices: list | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: every device of every process).

    The axis is ``Auto``: shardings of intermediate values (the code gather, the gradient
    all-reduce) are left to the compiler, as in classic ``jit`` data parallelism.
    """
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), (jax.sharding.AxisType.Auto,), devices=devices)


def sweep_mesh_shape(num_runs: int, num_devices: int) -> tuple[int, int]:
    """``(runs, data)`` sizes for ``num_runs`` runs on ``num_devices`` devices: runs first.

    The runs axis is the largest divisor of ``num_devices`` that is at most ``num_runs``, so as
    many runs as possible train side by side with no gradient all-reduce between devices; the
    devices left over split each run's batch. 8 runs on 2 devices: ``(2, 1)``, 4 runs each; 2 runs
    on 8 devices: ``(2, 4)``.
    """
    if num_runs < 1 or num_devices < 1:
        raise ValueError(f"num_runs and num_devices must be >= 1; got {num_runs}, {num_devices}.")
    runs = max(d for d in range(1, num_devices + 1) if num_devices % d == 0 and d <= num_runs)
    return runs, num_devices // runs


def make_sweep_mesh(num_runs: int, devices: list | None = None) -> jax.sharding.Mesh:
    """A 2-D mesh ``("runs", "data")`` over ``devices`` (default: all), shaped by :func:`sweep_mesh_shape`.

    Devices of one process stay together on the data axis where they can, so a run's gradient
    all-reduce stays inside a host and runs spread across hosts.
    """
    devices = jax.devices() if devices is None else list(devices)
    runs, data = sweep_mesh_shape(num_runs, len(devices))
    grid = np.array(sorted(devices, key=lambda d: (d.process_index, d.id)), dtype=object).reshape(runs, data)
    return jax.sharding.Mesh(grid, (RUNS_AXIS, DATA_AXIS),
                             axis_types=(jax.sharding.AxisType.Auto, jax.sharding.AxisType.Auto))


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Place every array of ``tree`` on all devices of ``mesh`` (replicated)."""
    return jax.device_put(tree, jax.NamedSharding(mesh, jax.P()))


def shard_batch(batch: Any, mesh: jax.sharding.Mesh) -> Any:
    """Process-local ``[b, ...]`` NumPy arrays -> global arrays sharded over ``"data"``.

    Each process passes its own rows; the global batch is their concatenation in process order.
    """
    sharding = jax.NamedSharding(mesh, jax.P(DATA_AXIS))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def put_global(tree: Any, mesh: jax.sharding.Mesh, spec: jax.P) -> Any:
    """Arrays every process holds whole (a sweep's batch, per-run values) -> global arrays laid out by ``spec``."""
    sharding = jax.NamedSharding(mesh, spec)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
    """NumPy copies of global arrays, gathered from every process where a process holds only part."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(get, tree)
