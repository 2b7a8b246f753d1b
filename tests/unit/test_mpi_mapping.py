"""Device mapping as a pure function of the environment (no MPI launch needed)."""

import pytest

from llcuda_mpi.mpi import (Device, DeviceError, env_local_rank, map_device, need_workers_message,
                            resolve_device, visible_devices)


def resolve(requested="auto", env=None, *, is_master=False, index=0, n=4, master_on_node=False, sim=False):
    return resolve_device(requested, env or {}, is_master=is_master, local_worker_index=index,
                          n_visible=n, master_on_node=master_on_node, simulator=sim, host="node7")


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"SLURM_LOCALID": "3"}, 3),
    ({"OMPI_COMM_WORLD_LOCAL_RANK": "2"}, 2),
    ({"MPI_LOCALRANKID": "5"}, 5),
    ({"PMI_LOCAL_RANK": "1"}, 1),
    # mpiexec inside sbatch: every rank inherits SLURM_LOCALID=0; Hydra's variable wins
    ({"SLURM_LOCALID": "0", "MPI_LOCALRANKID": "2"}, 2),
    ({"SLURM_LOCALID": "0", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}, 1),
    ({"SLURM_LOCALID": " "}, None),
])
def test_env_local_rank(env, expected):
    assert env_local_rank(env) == expected


def test_env_local_rank_rejects_garbage():
    with pytest.raises(DeviceError, match="SLURM_LOCALID='x'"):
        env_local_rank({"SLURM_LOCALID": "x"})


def test_fallback_is_the_shared_memory_worker_index():
    assert [map_device({}, i, 4) for i in range(6)] == [0, 1, 2, 3, 0, 1]


def test_slurm_localid_counts_the_master_on_its_node():
    # node 0: master (local 0) + workers local 1..4 -> GPUs 0..3, not 1,2,3,0
    assert [map_device({"SLURM_LOCALID": str(l)}, 0, 4, master_on_node=True) for l in (1, 2, 3, 4)] == [0, 1, 2, 3]
    # node 1: no master -> local 0..3 -> GPUs 0..3
    assert [map_device({"SLURM_LOCALID": str(l)}, 0, 4) for l in range(4)] == [0, 1, 2, 3]


def test_openmpi_and_mpich_variables():
    assert map_device({"OMPI_COMM_WORLD_LOCAL_RANK": "3"}, 0, 2) == 1
    assert map_device({"MPI_LOCALRANKID": "2"}, 0, 8, master_on_node=True) == 1
    assert map_device({"PMI_LOCAL_RANK": "6"}, 0, 4) == 2


def test_one_gpu_per_rank_binding():
    # srun --gpus-per-task=1: each rank sees one GPU, whatever its local rank
    for local in range(4):
        assert map_device({"SLURM_LOCALID": str(local), "CUDA_VISIBLE_DEVICES": str(local)}, 0, 1) == 0


def test_restricted_cuda_visible_devices():
    env = {"CUDA_VISIBLE_DEVICES": "2,3", "SLURM_LOCALID": "1"}
    d = resolve("cuda", env, n=2)
    assert d == Device("cuda", 1, "3")
    assert str(d) == "cuda:1"
    assert resolve("auto", {"CUDA_VISIBLE_DEVICES": "GPU-abc,GPU-def"}, index=0, n=2).physical == "GPU-abc"


@pytest.mark.parametrize("value, expected", [
    (None, None), ("", []), ("0,1", ["0", "1"]), ("-1", []), ("1,-1,2", ["1"]), ("NoDevFiles", []),
])
def test_visible_devices(value, expected):
    env = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}
    assert visible_devices(env) == expected


def test_master_never_takes_a_gpu():
    assert resolve("cuda", {"SLURM_LOCALID": "0"}, is_master=True, n=8) == Device("cpu")
    assert resolve("auto", is_master=True, n=8) == Device("cpu")


def test_auto_and_cpu():
    assert resolve("auto", n=0) == Device("cpu")
    assert resolve("cpu", n=8) == Device("cpu")
    assert resolve("auto", index=5, n=4) == Device("cuda", 1, "1")
    # the simulator is not a GPU for `auto`; `cuda` may use it (tests of the CUDA path)
    assert resolve("auto", n=1, sim=True) == Device("cpu")
    assert resolve("cuda", n=1, sim=True) == Device("cuda", 0, "0", simulator=True)


def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(DeviceError, match=r"--device cuda: no CUDA GPU visible on node7 \(CUDA_VISIBLE_DEVICES=''\)"):
        resolve("cuda", {"CUDA_VISIBLE_DEVICES": ""}, n=0)
    with pytest.raises(DeviceError, match="choose from auto, cpu, cuda"):
        resolve("gpu")


def test_one_rank_message():
    assert need_workers_message("bench", 3) is None
    msg = need_workers_message("bench", 1)
    assert "at least two MPI ranks" in msg and "mpiexec -n 3" in msg


def test_launch_mismatch_with_the_allocation():
    from llcuda_mpi.mpi import launch_mismatch_message
    assert launch_mismatch_message(4, {}) is None
    assert launch_mismatch_message(4, {"LLCUDA_EXPECT_RANKS": "4"}) is None
    assert "singletons" in launch_mismatch_message(1, {"LLCUDA_EXPECT_RANKS": "4"})
    assert "has 2 MPI ranks but the allocation has 4 tasks" in launch_mismatch_message(2, {"LLCUDA_EXPECT_RANKS": "4"})


# ---------------------------------------------------------------- whole nodes, as launchers set them up

def node_devices(envs, *, master_on_node, n_visible=None):
    """Every rank of one node: (device, physical GPU) for `--device cuda`; rank 0 is the master
    when master_on_node. n_visible defaults to each rank's CUDA_VISIBLE_DEVICES length."""
    out = []
    for i, env in enumerate(envs):
        is_master = master_on_node and i == 0
        index = i - 1 if master_on_node else i
        n = n_visible if n_visible is not None else len(visible_devices(env) or [])
        d = resolve("cuda", env, is_master=is_master, index=None if is_master else index, n=n,
                    master_on_node=master_on_node)
        out.append((str(d), d.physical))
    return out


FIVE_ON_FOUR = [("cpu", None), ("cuda:0", "0"), ("cuda:1", "1"), ("cuda:2", "2"), ("cuda:3", "3")]


@pytest.mark.parametrize("var", ["SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK"])
def test_master_and_four_workers_on_a_four_gpu_node(var):
    # srun --ntasks-per-node=5 --gpus-per-node=4, mpirun -npernode 5, mpiexec -ppn 5
    envs = [{var: str(local), "CUDA_VISIBLE_DEVICES": "0,1,2,3"} for local in range(5)]
    assert node_devices(envs, master_on_node=True) == FIVE_ON_FOUR


@pytest.mark.parametrize("var", ["SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK"])
def test_a_second_node_has_no_master(var):
    envs = [{var: str(local)} for local in range(4)]
    assert node_devices(envs, master_on_node=False, n_visible=4) == [(f"cuda:{i}", str(i)) for i in range(4)]


def test_mpiexec_inside_sbatch_every_rank_inherits_slurm_localid_0():
    # Hydra's ranks carry the batch step's SLURM_LOCALID=0 (seen on Slurm 22.05) and MPI_LOCALRANKID
    envs = [{"SLURM_LOCALID": "0", "SLURM_PROCID": "0", "MPI_LOCALRANKID": str(local),
             "CUDA_VISIBLE_DEVICES": "0,1,2,3"} for local in range(5)]
    assert node_devices(envs, master_on_node=True) == FIVE_ON_FOUR


def test_launcher_variables_in_order_of_trust():
    every = {"OMPI_COMM_WORLD_LOCAL_RANK": "1", "MPI_LOCALRANKID": "2", "PMI_LOCAL_RANK": "3", "SLURM_LOCALID": "4"}
    assert env_local_rank(every) == 1
    assert env_local_rank({k: v for k, v in every.items() if k != "OMPI_COMM_WORLD_LOCAL_RANK"}) == 2
    assert env_local_rank({"PMI_LOCAL_RANK": "3", "SLURM_LOCALID": "4"}) == 3


@pytest.mark.parametrize("master_on_node, physical", [
    (True, ["1", "2", "3", "0"]),    # node 0: the master took GPU 0 (srun gives it one too)
    (False, ["0", "1", "2", "3"]),   # node 1
    (True, ["0", "0", "0", "0"]),    # ConstrainDevices=yes: every task sees its own GPU as 0
    (True, ["GPU-a1", "GPU-b2", "MIG-c3/1/0", "GPU-d4"]),
])
def test_gpus_per_task_every_worker_takes_ordinal_0_of_its_own_gpu(master_on_node, physical):
    # srun --gpus-per-task=1 (or --gpu-bind=single:1): CUDA_VISIBLE_DEVICES is one GPU per task
    start = 1 if master_on_node else 0
    envs = [{"SLURM_LOCALID": str(start + i), "CUDA_VISIBLE_DEVICES": p} for i, p in enumerate(physical)]
    if master_on_node:
        envs.insert(0, {"SLURM_LOCALID": "0", "CUDA_VISIBLE_DEVICES": "7"})
    got = node_devices(envs, master_on_node=master_on_node)
    assert got == ([("cpu", None)] if master_on_node else []) + [("cuda:0", p) for p in physical]


def test_two_gpus_per_task_keeps_workers_on_distinct_gpus():
    # srun --gpus-per-task=2: each worker sees its own pair and uses one of it
    envs = [{"SLURM_LOCALID": "0", "CUDA_VISIBLE_DEVICES": "6,7"},
            {"SLURM_LOCALID": "1", "CUDA_VISIBLE_DEVICES": "0,1"},
            {"SLURM_LOCALID": "2", "CUDA_VISIBLE_DEVICES": "2,3"}]
    got = node_devices(envs, master_on_node=True)
    assert got[0] == ("cpu", None)
    workers = [p for _, p in got[1:]]
    assert workers[0] in ("0", "1") and workers[1] in ("2", "3")


def test_rank_0_needs_no_gpu():
    # the master's node has no GPU (or hides them) while the workers need one: not an error
    for env, n in [({"CUDA_VISIBLE_DEVICES": ""}, 0), ({"CUDA_VISIBLE_DEVICES": "-1"}, 0), ({}, 0),
                   ({"SLURM_LOCALID": "0", "CUDA_VISIBLE_DEVICES": "0"}, 1)]:
        assert resolve("cuda", env, is_master=True, index=None, n=n) == Device("cpu")
        assert resolve("auto", env, is_master=True, index=None, n=n) == Device("cpu")
    # ...and a worker on such a node is told clearly
    with pytest.raises(DeviceError, match=r"no CUDA GPU visible on node7 \(CUDA_VISIBLE_DEVICES='-1'\)"):
        resolve("cuda", {"CUDA_VISIBLE_DEVICES": "-1", "SLURM_LOCALID": "1"}, index=0, n=0)
    assert resolve("auto", {"CUDA_VISIBLE_DEVICES": "-1"}, index=0, n=0) == Device("cpu")


def test_more_workers_than_gpus_share_them_round_robin():
    # 6 workers + master on a node with 4 GPUs: GPUs 0 and 1 take two workers each
    envs = [{"SLURM_LOCALID": str(local), "CUDA_VISIBLE_DEVICES": "0,1,2,3"} for local in range(7)]
    got = node_devices(envs, master_on_node=True)
    assert [p for _, p in got[1:]] == ["0", "1", "2", "3", "0", "1"]
    # restricted to two GPUs: ordinals 0/1, physical 4/5
    envs = [{"MPI_LOCALRANKID": str(local), "CUDA_VISIBLE_DEVICES": "4,5"} for local in range(4)]
    assert node_devices(envs, master_on_node=True)[1:] == [("cuda:0", "4"), ("cuda:1", "5"), ("cuda:0", "4")]


def test_no_launcher_variable_falls_back_to_the_shared_memory_index():
    # e.g. a launcher that exports nothing: the worker index from COMM_TYPE_SHARED decides
    envs = [{"CUDA_VISIBLE_DEVICES": "0,1"} for _ in range(4)]
    assert node_devices(envs, master_on_node=True) == [("cpu", None), ("cuda:0", "0"), ("cuda:1", "1"), ("cuda:0", "0")]
