"""SPMD entry scripts: run with mpiexec -n N python -m llcuda_mpi.jobs.<name>."""
