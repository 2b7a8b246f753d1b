"""The `llcuda-mpi` console script: one subcommand per concern.

Each subcommand lives in its own module, imported only when chosen, so that
`llcuda-mpi report` never pays for numba and `--help` stays instant. A module
provides `add_arguments(parser)` and `run(args) -> int`.
"""

import argparse
import importlib
import sys

from llcuda_mpi import __version__

# name -> (module, one-line help). MPI jobs are also runnable as
# `mpiexec -n N python -m llcuda_mpi.jobs.<name>`.
SUBCOMMANDS = {
    "bench": ("llcuda_mpi.jobs.bench", "the main job: dispatch prompts to workers, write an HDF5 results file (under mpiexec)"),
    "report": ("llcuda_mpi.results.report", "summarise, compare and plot HDF5 results files"),
    "generate": ("llcuda_mpi.engine.generate", "generate text from a GGUF model with the engine, streaming to the terminal"),
    "make-model": ("llcuda_mpi.model.make", "write a GGUF file with seeded random weights and real tokenizer metadata"),
    "inspect": ("llcuda_mpi.model.inspect", "describe a GGUF model: architecture, shapes, tensor types, tokenizer, sha256"),
    "tokenize": ("llcuda_mpi.model.tokenize", "tokenize text with a GGUF model's tokenizer"),
    "serve": ("llcuda_mpi.jobs.serve", "serve the cluster over HTTP and the binary protocol (under mpiexec)"),
    "client": ("llcuda_mpi.transport.client", "talk to a serve gateway over the binary protocol"),
    "store": ("llcuda_mpi.storage.cli", "content-addressed model store: add, ls, rm, verify, gc, path, import"),
    "stage": ("llcuda_mpi.jobs.stage", "copy a model into every node's local store over MPI (under mpiexec)"),
    "kernels": ("llcuda_mpi.jobs.kernels", "kernel microbenchmarks: bandwidth, FLOP/s, launch cost"),
}


def _top_parser():
    parser = argparse.ArgumentParser(
        prog="llcuda-mpi",
        description="LLM inference and LLM-serving benchmarks on GPU clusters, in pure MPI.",
        epilog="Run `llcuda-mpi COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"llcuda-mpi {__version__}")
    parser.add_argument("command", choices=sorted(SUBCOMMANDS), metavar="COMMAND",
                        help="; ".join(f"{name}: {text}" for name, (_, text) in SUBCOMMANDS.items()))
    return parser


def build_parser(name):
    """The argparse parser of one subcommand."""
    module_name, text = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"llcuda-mpi {name}", description=text)
    module.add_arguments(parser)
    return module, parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    top = _top_parser()
    if not argv:
        top.error(f"give a COMMAND ({', '.join(sorted(SUBCOMMANDS))}); `llcuda-mpi --help` describes them")
    if argv[0] in ("-h", "--help", "--version"):
        top.parse_args(argv[:1])                         # prints, exits 0
    if argv[0].startswith("-"):
        top.error(f"unknown option {argv[0]!r} (a command's options go after it: llcuda-mpi COMMAND {argv[0]})")
    if argv[0] not in SUBCOMMANDS:
        top.error(f"unknown command {argv[0]!r} (choose from {', '.join(sorted(SUBCOMMANDS))})")
    module, parser = build_parser(argv[0])
    args = parser.parse_args(argv[1:])
    return module.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
