"""The stage job: copy a model into every node's local content-addressed store over MPI, verified.

    mpiexec -n NODES python -m llcuda_mpi.jobs.stage model.gguf --name tinyllama:Q4_K_M
    mpiexec -n NODES python jobs/stage.py store:tinyllama:Q4_K_M
    mpiexec -n NODES llcuda-mpi stage MODEL [options]

Then `--model store:tinyllama:Q4_K_M` in bench/serve loads the node-local copy.
The SPMD phases live in llcuda_mpi.storage.stage; this file only wires them to
the command line.
"""

import argparse
import sys

from llcuda_mpi.storage import stage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    stage.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return stage.run(args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="stage", description="copy a model into every node's store over MPI")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
