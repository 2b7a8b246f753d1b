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
