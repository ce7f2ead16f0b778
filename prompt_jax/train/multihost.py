"""Multi-host runs: start-up before the backend exists, one writer, gathered host values.

A multi-host job (a TPU pod slice, a SLURM / Open MPI job, or processes given an explicit
coordinator) runs the same program in every process. Three things differ from one process:

* `initialize` must run before anything touches the JAX backend (no `jax.devices()`, no
  `jax.process_count()`, no array), and a failure is an error: a process that silently
  trains alone would see the whole batch and collide with the others in the model dir.
* Files that are not Orbax checkpoints (prompt exports, metrics, `best.json`, inference) are
  written once, by process 0 (`is_primary`); Orbax checkpoints are saved by every process.
* Arrays spanning devices of other processes cannot be fetched with `jax.device_get`:
  `to_host` gathers them (`process_allgather`) first.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import jax
import numpy as np

# Environment of an explicit launch (read when the flags do not give the values).
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"
# Set to 1 by a launcher (tpu_scripts/launch.sh): join the job, JAX detects the cluster.
AUTO_ENV = "PROMPT_JAX_DISTRIBUTED"


class DistributedError(RuntimeError):
  """A multi-host start-up that cannot proceed (the CLI prints it, exit status 2)."""


def _count(env: Mapping[str, str], name: str) -> int:
  try:
    return int(env.get(name, "0") or 0)
  except ValueError:
    return 0


def detect_launch(env: Mapping[str, str], coordinator_address: str | None = None) -> str | None:
  """How this process was launched as one of several: 'explicit', 'auto', 'tpu', 'slurm',
  'mpi' ('auto': PROMPT_JAX_DISTRIBUTED=1, the cluster is JAX's to detect).

  None: a single-process run (nothing to initialise). A TPU VM of one host, a SLURM or MPI
  job of one task are single-process runs.
  """
  if coordinator_address or env.get(COORDINATOR_ENV):
    return "explicit"
  if env.get(AUTO_ENV, "") not in ("", "0"):  # tpu_scripts/launch.sh sets it on every worker.
    return "auto"
  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  if len(hosts) > 1:
    return "tpu"
  if _count(env, "SLURM_NTASKS") > 1:
    return "slurm"
  if _count(env, "OMPI_COMM_WORLD_SIZE") > 1:
    return "mpi"
  return None


def _explicit_args(env: Mapping[str, str], coordinator_address: str | None,
                   num_processes: int | None, process_id: int | None) -> dict[str, Any]:
  address = coordinator_address or env.get(COORDINATOR_ENV)
  values = {}
  for name, flag, env_name in (("num_processes", num_processes, NUM_PROCESSES_ENV),
                               ("process_id", process_id, PROCESS_ID_ENV)):
    raw = flag if flag is not None else env.get(env_name)
    try:
      values[name] = int(raw)
    except (TypeError, ValueError):
      raise DistributedError(
          f"A coordinator is set ({address}) but the {name.replace('_', ' ')} is "
          f"{'missing' if raw is None else repr(raw)}: pass --{name}=N or set {env_name} "
          "in every process.") from None
  n, i = values["num_processes"], values["process_id"]
  if n < 1 or not 0 <= i < n:
    raise DistributedError(f"process_id={i} must be in [0, num_processes={n}).")
  return {"coordinator_address": address, **values}


def initialize(*, coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, env: Mapping[str, str] | None = None,
               timeout_s: int = 300) -> bool:
  """Joins the multi-host job this process belongs to, if any; returns whether it did.

  Call it first (before any JAX computation). Explicit launches take the coordinator
  (`host:port`) and the process count and id from the arguments or from
  JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID; TPU pods, SLURM and Open MPI
  are detected by JAX itself.

  Raises:
    DistributedError: the backend was already started, the explicit settings are
      incomplete, or `jax.distributed.initialize` failed (the message says which).
  """
  env = os.environ if env is None else env
  if jax.distributed.is_initialized():
    return True
  kind = detect_launch(env, coordinator_address)
  if kind is None:
    return False
  kwargs = (_explicit_args(env, coordinator_address, num_processes, process_id)
            if kind == "explicit" else {})
  from jax._src import xla_bridge  # The public API has no "is the backend up" query.
  if xla_bridge.backends_are_initialized():
    raise DistributedError(
        f"This process was launched as part of a multi-host job ({kind}) but the JAX backend "
        "was started before jax.distributed.initialize; call "
        "prompt_jax.train.multihost.initialize() before any JAX computation.")
  try:
    jax.distributed.initialize(initialization_timeout=timeout_s, **kwargs)
  except Exception as e:  # pylint: disable=broad-except  Every failure is the same error.
    where = kwargs.get("coordinator_address") or f"the {kind} launcher's coordinator"
    raise DistributedError(f"jax.distributed.initialize failed ({kind} launch, coordinator "
                           f"{where}): {e}. Check that every process of the job started "
                           "with the same coordinator and process count.") from None
  return True


def is_primary() -> bool:
  """Process 0 writes the run's files other than Orbax checkpoints."""
  return jax.process_index() == 0


def to_host(tree: Any) -> Any:
  """A pytree of (possibly non-addressable) arrays as numpy, identical in every process.

  Arrays that every process can read whole (fully addressable or fully replicated) are
  copied out directly; the rest are gathered across processes (a collective: every process
  must call this with the same tree).
  """
  from jax.experimental import multihost_utils  # Local: only multi-process runs gather.

  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
      return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree_util.tree_map(one, tree)


def sync(name: str) -> None:
  """A barrier across processes (no-op in one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


_LOGGED: set[str] = set()


def log_topology(mesh: jax.sharding.Mesh) -> str:
  """Logs (once per process and mesh) this process's index, devices and the mesh."""
  local = [d.id for d in jax.local_devices()]
  ids = np.vectorize(lambda d: d.id, otypes=[int])(mesh.devices)
  where = [tuple(int(i) for i in p) for p in np.argwhere(np.isin(ids, local))]
  line = (f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} "
          f"local {jax.default_backend()} devices {local} of {jax.device_count()}; mesh "
          f"{dict(mesh.shape)} ({'x'.join(str(s) for s in mesh.devices.shape)}), this "
          f"process at (data, model) {where}")
  if line not in _LOGGED:
    _LOGGED.add(line)
    (logging.warning if jax.process_count() > 1 else logging.info)("%s", line)
  return line
