"""Backends behind one interface (see base.py), chosen by name.

Each backend class provides:
  name                                    registry key
  add_arguments(group)   (classmethod)    its own command-line options (unique names)
  from_args(args, worker_index, device)   (classmethod) build it on a worker rank
"""

import importlib

# name -> "module:Class"; imported lazily so that a job pays only for what it uses.
BACKENDS = {
    "engine": "llcuda_mpi.backends.engine:EngineBackend",
    "synthetic": "llcuda_mpi.backends.synthetic:SyntheticBackend",
    "llama-server": "llcuda_mpi.backends.http:LlamaServerBackend",
    "openai": "llcuda_mpi.backends.http:OpenAIBackend",
}


def backend_class(name):
    """The class registered under `name`; ValueError names the choices."""
    try:
        module_name, class_name = BACKENDS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})") from None
    return getattr(importlib.import_module(module_name), class_name)
