# Site settings for the sbatch scripts in slurm/ (sourced, not run). Edit here, not in the scripts.
# docs/cluster.md explains the choices.

# Software: load modules / activate the environment that has `pip install llcuda-mpi` in it.
# module load cuda/12.4
# source "$HOME/venvs/llcuda/bin/activate"

# How to start the ranks inside the allocation. With the `mpich` wheel from PyPI:
#   srun --mpi=pmi2   Slurm starts the tasks and wires them with PMI-2 (the default here)
#   mpiexec           Hydra reads the allocation (every task, every node) and starts the ranks
#                     through srun itself; `mpiexec -n N` for fewer
#   srun              only where the site's MpiDefault is pmi2 (or SLURM_MPI_TYPE=pmi2 is set)
# Not with the wheel: `srun --mpi=none` / MpiDefault=none start N singletons of size 1, and
# `srun --mpi=pmix` fails (the wheel has no PMIx). With mpi4py built against the site's MPI use
# what the site says (often `srun --mpi=pmix`). Whatever the launcher, the job checks that
# COMM_WORLD has SLURM_NTASKS ranks (LLCUDA_EXPECT_RANKS below) and stops if not.
LLCUDA_LAUNCH=${LLCUDA_LAUNCH:-"srun --mpi=pmi2"}

# Read here, in the batch script: under mpiexec every rank sees SLURM_NTASKS=1.
export LLCUDA_EXPECT_RANKS=${SLURM_NTASKS:-}

# Python: unbuffered output (log lines arrive as they happen). Numba keeps its compiled kernels
# beside the installed sources, or in ~/.cache when those are read-only: do not point
# NUMBA_CACHE_DIR at a per-job TMPDIR, or every job compiles for minutes first.
export PYTHONUNBUFFERED=1

# Model store (`--model store:NAME[:TAG]`): stage.sbatch writes it, bench/serve read it, so all
# of them must agree. Put it on node-local disk that outlives a job (not a per-job TMPDIR).
export LLCUDA_MPI_STORE=${LLCUDA_MPI_STORE:-/tmp/llcuda-mpi-store-${USER:-$(id -un)}}

# GPUs: leave CUDA_VISIBLE_DEVICES to Slurm (--gpus-per-node / --gpus-per-task); workers map
# their node-local rank onto the visible GPUs, rank 0 (the master) takes none.
