"""Multi-process start-up on JAX's distributed runtime.

A run spans several processes (one per host, or per GPU) in one of three ways:
  * launcher flags `--coordinator_address=HOST:PORT --num_processes=N
    --process_id=I`, the same on every process except the id: GPU clusters
    without a scheduler, and local multi-process CPU runs;
  * no flags, inside a cluster that JAX detects by itself: Cloud TPU pod
    slices (TPU metadata), SLURM (`srun`: SLURM_JOB_ID, SLURM_NTASKS,
    SLURM_PROCID, ...), Open MPI (`mpirun`) and Kubernetes TPU jobs; JAX then
    fills in the coordinator, the process count and this process's id;
  * otherwise a single process.

Everything after start-up is the same code on every process: each reads its
own data shards for training (the global batches do not depend on the process
count, see data/pipeline.py) and its own slice of eval splits, metrics and
summaries are written by process 0 only, and Orbax writes checkpoints
collectively.
"""
from absl import logging
import jax


def detected_cluster() -> str | None:
  """Name of the cluster JAX's auto-detection would use here, or None."""
  # jax.distributed.initialize() runs the same detectors but raises when none
  # matches, and JAX has no public API that only asks them (jax 0.10.2), so
  # this reads the detector list from jax._src. Should a later JAX move it,
  # runs go on as single processes, and say how to join several.
  try:
    # pylint: disable-next=import-outside-toplevel
    from jax._src import clusters
    # pylint: disable-next=protected-access
    cluster_types = clusters.ClusterEnv._cluster_types
  except (ImportError, AttributeError):
    logging.warning(
        "distributed: this JAX (%s) does not expose its cluster detection "
        "where mrl_jax looks; running as a single process. For several, pass "
        "--coordinator_address, --num_processes and --process_id",
        jax.__version__)
    return None
  for env in cluster_types:
    if not env.opt_in_only_method and env.is_env_present():
      return env.name or env.__name__
  return None


def _check_flags(coordinator_address: str | None, num_processes: int | None,
                 process_id: int | None) -> bool:
  """True if all three flags are given; ValueError if they are inconsistent."""
  given = [x is not None for x in
           (coordinator_address, num_processes, process_id)]
  if not any(given):
    return False
  if not all(given):
    raise ValueError("--coordinator_address, --num_processes and --process_id "
                     "go together; pass all three (or none on a TPU pod or "
                     "under SLURM, where JAX finds them)")
  host, _, port = coordinator_address.rpartition(":")
  if not host or not port.isdigit():
    raise ValueError(f"--coordinator_address={coordinator_address!r} is not "
                     "HOST:PORT; write e.g. --coordinator_address="
                     "10.0.0.1:1234 (process 0's host)")
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} is not in [0, "
                     f"--num_processes={num_processes}); number the "
                     "processes 0..N-1")
  return True


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins the run's processes; call before anything touches a device.

  Args:
    coordinator_address: HOST:PORT of process 0's coordinator service.
    num_processes: how many processes the run has.
    process_id: this process's index in [0, num_processes).
  Raises:
    ValueError: for inconsistent flags (one line, naming the fix).
  """
  explicit = _check_flags(coordinator_address, num_processes, process_id)
  # CPU devices of different processes reduce over TCP with gloo. It is the
  # default in jax 0.10.2; set it so a change of default cannot silently
  # break local multi-process runs.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif (cluster := detected_cluster()) is not None:
    logging.info("distributed: %s cluster detected", cluster)
    jax.distributed.initialize()
  else:
    return
  logging.info("distributed: process %d of %d, %d local of %d devices",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
