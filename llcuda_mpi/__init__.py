"""llcuda-mpi: a pure-MPI SPMD suite for LLM inference and serving benchmarks."""

__version__ = "0.1.0"
