"""The serve job: rank 0 is a network gateway (HTTP + binary protocol), ranks 1.. generate.

    mpiexec -n 3 python -m llcuda_mpi.jobs.serve [options]     # gateway + 2 workers
    mpiexec -n 3 python jobs/serve.py [options]
    mpiexec -n 3 llcuda-mpi serve [options]

Everything lives in llcuda_mpi.scheduler.serve (options, SPMD phases, the
master loop) and llcuda_mpi.transport (gateway, protocol, client); this file
only wires it to the command line. SIGTERM shuts down gracefully (exit 0).
"""

import argparse
import sys

from llcuda_mpi.scheduler import serve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    serve.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return serve.run(args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="serve", description="serve the cluster over HTTP and the binary protocol (under mpiexec)")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
