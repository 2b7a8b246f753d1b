# Site settings for the sbatch scripts in slurm/ (sourced, not run). Edit here, not in the scripts.

# Software: load modules / activate the environment that has `pip install llcuda-mpi` in it.
# module load cuda/12.4
# source "$HOME/venvs/llcuda/bin/activate"

# How to start the ranks inside the allocation. Both work with the `mpich` wheel:
#   srun --mpi=pmi2            Slurm starts the tasks (needs the pmi2 plugin; --mpi=pmix does NOT work with the wheel)
#   mpiexec -n $SLURM_NTASKS   Hydra detects the allocation and uses srun underneath
# A plain `srun` works only where MpiDefault=pmi2; with MpiDefault=none it starts N singletons
# of size 1 (caught by the job: LLCUDA_EXPECT_RANKS below).
LLCUDA_LAUNCH=${LLCUDA_LAUNCH:-"srun --mpi=pmi2"}

# The job checks that COMM_WORLD has exactly this many ranks.
export LLCUDA_EXPECT_RANKS=${SLURM_NTASKS:-}

# Python: unbuffered output (logs arrive as they happen), numba's JIT cache per user.
export PYTHONUNBUFFERED=1
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-${TMPDIR:-/tmp}/numba-cache-${USER:-$(id -un)}}

# GPUs: leave CUDA_VISIBLE_DEVICES to Slurm (--gpus-per-node / --gpus-per-task); workers map
# their node-local rank onto the visible GPUs, rank 0 (the master) takes none.
