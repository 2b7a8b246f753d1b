"""The main job: prompts -> master dispatches to workers -> HDF5 results + a printed summary.

    mpiexec -n 3 python -m llcuda_mpi.jobs.bench [options]     # rank 0 + 2 workers
    mpiexec -n 3 python jobs/bench.py [options]
    mpiexec -n 3 llcuda-mpi bench [options]

Everything lives in llcuda_mpi.scheduler (config.py: options and defaults;
bench.py: the SPMD phases); this file only wires it to the command line.
"""

import argparse
import sys

from llcuda_mpi.scheduler import bench


def add_arguments(parser: argparse.ArgumentParser) -> None:
    bench.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return bench.run(args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench", description="dispatch prompts to MPI workers; write an HDF5 results file")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
