"""MPI process model: init, communicators, device mapping.

COMM_WORLD rank 0 is the master (never takes a GPU); ranks 1.. are workers.

    ctx = mpi.init()                  # installs the abort-on-exception hook
    if ctx.size < 2: ...              # see `need_workers_message`
    device = mpi.pick_device(ctx, "auto")
    mpi.activate(device)              # select the GPU once, before any allocation

Device mapping is a pure function of the environment (`map_device`), so it is
tested with env dicts instead of clusters. The node-local rank comes from the
launcher's variables in this order:

  OMPI_COMM_WORLD_LOCAL_RANK   Open MPI mpirun
  MPI_LOCALRANKID              MPICH Hydra mpiexec (also inside Slurm)
  PMI_LOCAL_RANK               MPICH/PMI launchers
  SLURM_LOCALID                srun
  (fallback)                   rank in Split_type(COMM_TYPE_SHARED)

SLURM_LOCALID comes last on purpose: under `mpiexec` inside an sbatch script
every rank inherits the batch step's SLURM_LOCALID=0, which would put every
worker on GPU 0. A launcher-provided local rank counts the master too when it
shares the node (it is always the node's first rank), so one is subtracted.
"""

import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass

from mpi4py import MPI

ABORT_GRACE_S = 0.5             # between printing a rank's traceback and MPI_Abort
LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "SLURM_LOCALID")
DEVICE_CHOICES = ("auto", "cpu", "cuda")


class DeviceError(ValueError):
    """A device request this machine cannot satisfy (a user-facing error)."""


# ---------------------------------------------------------------- init / abort

def _abort_hook(exc_type, exc, tb):
    """Print the traceback with a rank prefix, then abort every rank of the job."""
    rank = MPI.COMM_WORLD.Get_rank() if MPI.Is_initialized() and not MPI.Is_finalized() else "?"
    text = "".join(traceback.format_exception(exc_type, exc, tb)).rstrip("\n")
    lines = [f"[rank {rank}] {line}" for line in text.split("\n")]
    lines.append(f"[rank {rank}] uncaught exception: aborting every rank of the job (MPI_Abort)")
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()
    if MPI.Is_initialized() and not MPI.Is_finalized():
        # the launcher forwards output asynchronously: an abort at once can take the forwarding
        # down before these lines are out (seen under load: exit 1 and an empty stderr)
        time.sleep(ABORT_GRACE_S)
        MPI.COMM_WORLD.Abort(1)
    sys.__excepthook__(exc_type, exc, tb)


def install_abort_hook():
    sys.excepthook = _abort_hook


@dataclass
class Context:
    world: MPI.Comm
    rank: int
    size: int
    is_master: bool
    workers: MPI.Comm              # ranks 1..; MPI.COMM_NULL on the master
    node: MPI.Comm                 # ranks sharing this node (COMM_TYPE_SHARED)
    node_rank: int
    node_size: int
    is_node_leader: bool           # node_rank == 0
    node_index: int                # 0..n_nodes-1
    n_nodes: int
    master_on_node: bool
    local_worker_index: int | None  # among this node's workers; None on the master
    host: str

    @property
    def n_workers(self) -> int:
        return self.size - 1


def init(abort_on_exception: bool = True, comm: MPI.Comm | None = None) -> Context:
    """Build the job's Context; collective over `comm` (default COMM_WORLD)."""
    if abort_on_exception:
        install_abort_hook()
    world = comm or MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    is_master = rank == 0
    workers = world.Split(MPI.UNDEFINED if is_master else 0, rank)
    node = world.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    node_ranks = node.allgather(rank)
    master_on_node = 0 in node_ranks
    local_workers = [r for r in node_ranks if r != 0]
    leaders = world.Split(0 if node.Get_rank() == 0 else MPI.UNDEFINED, rank)
    if leaders != MPI.COMM_NULL:
        node_index, n_nodes = leaders.Get_rank(), leaders.Get_size()
        leaders.Free()
    else:
        node_index = n_nodes = None
    node_index, n_nodes = node.bcast((node_index, n_nodes), root=0)
    return Context(
        world=world, rank=rank, size=size, is_master=is_master, workers=workers,
        node=node, node_rank=node.Get_rank(), node_size=node.Get_size(),
        is_node_leader=node.Get_rank() == 0, node_index=node_index, n_nodes=n_nodes,
        master_on_node=master_on_node,
        local_worker_index=None if is_master else local_workers.index(rank),
        host=socket.gethostname(),
    )


def quiet_barrier(comm, max_sleep: float = 0.01) -> None:
    """A barrier that sleeps while it waits.

    MPICH busy-polls inside blocking collectives: a rank waiting in one keeps a core at 100 %. At a
    job's start the master waits while the workers load models and compile kernels; on a node where
    they share cores, its spinning took a third of the CPU (2 cores, 2 CPU workers compiling: the
    master used 18 s of CPU in the first 24 s). Here the wait is an Ibarrier tested between sleeps
    (50 us doubling to max_sleep), so a collective right after it finds every rank there."""
    from llcuda_mpi.scheduler.messages import Backoff
    req = comm.Ibarrier()
    backoff = Backoff(max_s=max_sleep)
    while not req.Test():
        backoff.sleep()


def agree(ctx, error: str | None, job: str) -> bool:
    """Collective: True on every rank if any rank had an error; rank 0 prints them all, one line each.
    Waits without spinning (quiet_barrier): ranks reach it after unequal work (model loads, compiles)."""
    quiet_barrier(ctx.world)
    errors = ctx.world.allgather(error)
    failed = [(rank, e) for rank, e in enumerate(errors) if e]
    if len(failed) == len(errors) and len(set(errors)) == 1:
        failed = failed[:1]              # a bad option: every rank found the same, say it once
    if failed and ctx.is_master:
        for rank, e in failed:
            print(f"llcuda-mpi {job}: error: {'' if rank == 0 else f'rank {rank}: '}{e}", file=sys.stderr)
    return bool(failed)


def need_workers_message(job: str, size: int) -> str | None:
    """The one-line error for a job started with too few ranks, else None."""
    if size >= 2:
        return None
    return (f"error: {job} needs at least two MPI ranks (rank 0 is the master, ranks 1.. are "
            f"workers); started with {size}. Run e.g. `mpiexec -n 3 python -m llcuda_mpi.jobs.{job}`")


def launch_mismatch_message(size: int, env) -> str | None:
    """Error if the batch script's LLCUDA_EXPECT_RANKS (its SLURM_NTASKS) differs from the MPI size.

    `srun --mpi=none` (or MpiDefault=none) silently starts N singletons of size
    1; `mpiexec -n 2` inside a 4-task allocation leaves tasks idle.
    """
    expected = env.get("LLCUDA_EXPECT_RANKS", "").strip()
    if not expected or not expected.isdigit() or int(expected) == size:
        return None
    hint = (" (N singletons: srun without PMI? use `srun --mpi=pmi2` or mpiexec; see slurm/env.sh)"
            if size == 1 else "")
    return (f"error: the job has {size} MPI ranks but the allocation has {expected} tasks "
            f"(LLCUDA_EXPECT_RANKS){hint}")


def vendor() -> str:
    """MPI library name and version, first line."""
    return MPI.Get_library_version().replace("\x00", "").strip().splitlines()[0].strip()  # Open MPI ends it with a NUL


# ---------------------------------------------------------------- devices (pure)

@dataclass(frozen=True)
class Device:
    kind: str                       # "cpu" | "cuda"
    ordinal: int | None = None      # index among the visible GPUs
    physical: str | None = None     # CUDA_VISIBLE_DEVICES entry, or the ordinal
    simulator: bool = False         # numba's CUDA simulator (tests)

    def __str__(self):
        return "cpu" if self.kind == "cpu" else f"cuda:{self.ordinal}"

    def describe(self) -> dict:
        return {"device": str(self), "physical_gpu": self.physical or "", "simulator": self.simulator}


def env_local_rank(env) -> int | None:
    """The node-local rank a launcher exported, or None (see the module docstring)."""
    for name in LOCAL_RANK_VARS:
        value = env.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise DeviceError(f"{name}={value!r} is not an integer local rank") from None
    return None


def visible_devices(env) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as a list (None when unset; [] when it hides every GPU)."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    # CUDA stops at the first invalid entry; "-1" / "NoDevFiles" are the usual "none".
    out = []
    for item in items:
        if item.startswith("-") or item == "NoDevFiles":
            break
        out.append(item)
    return out


def map_device(env, local_worker_index: int, n_visible: int, master_on_node: bool = False) -> int:
    """Visible GPU ordinal for a worker: node-local worker slot % visible GPUs.

    `local_worker_index` (from COMM_TYPE_SHARED) is the fallback when no
    launcher variable is set; `master_on_node` says the launcher's local rank
    counts the master, which never takes a GPU.
    """
    if n_visible <= 0:
        raise DeviceError("no GPU visible")
    local = env_local_rank(env)
    slot = local_worker_index if local is None else max(local - (1 if master_on_node else 0), 0)
    return slot % n_visible


def resolve_device(requested: str, env, *, is_master: bool, local_worker_index: int | None,
                   n_visible: int, master_on_node: bool = False, simulator: bool = False,
                   host: str = "") -> Device:
    """The device a rank uses for `--device requested` (pure; raises DeviceError)."""
    if requested not in DEVICE_CHOICES:
        raise DeviceError(f"--device {requested!r}: choose from {', '.join(DEVICE_CHOICES)}")
    if is_master or requested == "cpu":
        return Device("cpu")
    if requested == "auto" and (n_visible <= 0 or simulator):
        return Device("cpu")  # the simulator is not a GPU: auto means real hardware
    if n_visible <= 0:
        cvd = env.get("CUDA_VISIBLE_DEVICES")
        hint = f" (CUDA_VISIBLE_DEVICES={cvd!r})" if cvd is not None else ""
        where = f" on {host}" if host else ""
        raise DeviceError(f"--device cuda: no CUDA GPU visible{where}{hint}; use --device cpu or auto")
    ordinal = map_device(env, local_worker_index or 0, n_visible, master_on_node)
    visible = visible_devices(env)
    physical = visible[ordinal] if visible and ordinal < len(visible) else str(ordinal)
    return Device("cuda", ordinal, physical, simulator)


# ---------------------------------------------------------------- devices (MPI side)

def detect_gpus() -> tuple[int, bool]:
    """(number of visible CUDA GPUs, running on numba's simulator)."""
    from numba import config, cuda  # lazy: numba costs a second to import
    if config.ENABLE_CUDASIM:
        return 1, True
    return (len(cuda.gpus) if cuda.is_available() else 0), False


def pick_device(ctx: Context, requested: str, probe: bool = True) -> Device:
    """This rank's device; `probe=False` skips GPU detection (backends with no device)."""
    if ctx.is_master or requested == "cpu" or (requested == "auto" and not probe):
        return Device("cpu")
    n_visible, simulator = detect_gpus()
    return resolve_device(requested, os.environ, is_master=ctx.is_master,
                          local_worker_index=ctx.local_worker_index, n_visible=n_visible,
                          master_on_node=ctx.master_on_node, simulator=simulator, host=ctx.host)


def activate(device: Device) -> None:
    """Make `device` current for this process; call once, before any allocation."""
    if device.kind == "cuda" and not device.simulator:
        from numba import cuda
        cuda.select_device(device.ordinal)
