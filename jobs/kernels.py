"""Kernel microbenchmarks on every worker's device, gathered into one HDF5 file.

    mpiexec -n 2 python -m llcuda_mpi.jobs.kernels [--types Q8_0,Q4_K] [--shapes 2048x2048]
"""

import argparse
import sys

from llcuda_mpi import kernelbench


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kernelbench.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return kernelbench.run(args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="kernels", description=kernelbench.__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
