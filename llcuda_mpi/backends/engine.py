"""`engine`: our own numba engine, in-process on the worker (the default backend)."""

import time
from dataclasses import dataclass

from llcuda_mpi.backends.base import Backend, Completion


@dataclass
class EngineBackendConfig:
    model: str = ""            # GGUF path; "" = the built-in default model
    slots: int = 8             # sequences decoded together
    n_ctx: int = 0             # positions per slot; 0 = min(model context, 2048)
    prefill_chunk: int = 128   # prompt tokens per step
    cuda_graphs: bool = True   # replay captured decode steps on CUDA
    cpu_threads: int = 1       # numba threads per worker on the CPU (ranks often outnumber cores)


def open_model(path):
    """Load `path`, `store:NAME[:TAG]` (this node's model store) or, when empty, the built-in
    default model; ModelError for bad files, StoreError for bad store references."""
    from llcuda_mpi.model.gguf import load_model
    from llcuda_mpi.model.make import ensure_default_model
    from llcuda_mpi.storage import resolve_model
    return load_model(resolve_model(path) or ensure_default_model())


def build_engine(model, device_kind, slots, n_ctx, prefill_chunk, cuda_graphs=True, cpu_threads=1):
    from llcuda_mpi.engine.engine import Engine, EngineConfig
    from llcuda_mpi.engine.ops import make_ops
    return Engine(model, make_ops(device_kind, graphs=cuda_graphs, cpu_threads=cpu_threads),
                  EngineConfig(n_slots=slots, n_ctx=n_ctx, prefill_chunk=prefill_chunk))


class EngineBackend(Backend):
    name = "engine"

    def __init__(self, engine, device="cpu"):
        self.engine = engine
        self.device = str(device)
        self._ready = []                     # Completions produced outside a step
        self._deadline = {}                  # request id -> absolute timeout

    @classmethod
    def add_arguments(cls, group):
        d = EngineBackendConfig()
        group.add_argument("--model", default=d.model, metavar="GGUF",
                           help="GGUF model file or store:NAME[:TAG] (node-local store, see `llcuda-mpi store`); "
                                "default: the built-in default model, made on first use")
        group.add_argument("--slots", type=int, default=d.slots, metavar="N",
                           help="engine: sequences decoded together per worker (default %(default)s)")
        group.add_argument("--n-ctx", type=int, default=d.n_ctx, metavar="N",
                           help="engine: context positions per slot; 0 = min(model's, 2048) (default %(default)s)")
        group.add_argument("--prefill-chunk", type=int, default=d.prefill_chunk, metavar="N",
                           help="engine: prompt tokens per step (default %(default)s)")
        group.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                           help="engine: launch every kernel eagerly instead of replaying captured "
                                "decode steps (debugging)")
        group.add_argument("--cpu-threads", type=int, default=d.cpu_threads, metavar="N",
                           help="engine on the CPU: numba threads per worker (default %(default)s)")

    @classmethod
    def from_args(cls, args, worker_index, device):
        for name in ("slots", "prefill_chunk", "cpu_threads"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if args.n_ctx < 0:
            raise ValueError(f"--n-ctx must be >= 0, got {args.n_ctx}")
        model = open_model(args.model)
        kind = getattr(device, "kind", str(device))
        engine = build_engine(model, kind, args.slots, args.n_ctx, args.prefill_chunk, args.cuda_graphs,
                              args.cpu_threads)
        engine.warm_up()           # kernels loaded / compiled before the first request's clock starts
        return cls(engine, device)

    def submit(self, request):
        t = time.time()
        done = self.engine.submit(request, t)
        if done is not None:
            self._ready.append(done)
        else:
            self._deadline[request.id] = t + request.timeout

    def poll(self, timeout):
        events, self._ready = self._ready, []
        if self.engine.busy():
            events.extend(self.engine.step())
        elif not events:
            time.sleep(min(timeout, 0.01))
        now = time.time()
        for rid, deadline in list(self._deadline.items()):
            if now > deadline:
                done = self.engine.cancel(rid, reason=f"timeout after {deadline - now:+.3f} s", status="timeout")
                if done is not None:
                    events.append(done)
        for e in events:
            if isinstance(e, Completion):
                self._deadline.pop(e.request_id, None)
        return events

    def cancel(self, request_id):
        done = self.engine.cancel(request_id)
        if done is not None:
            self._deadline.pop(request_id, None)
            self._ready.append(done)

    def busy(self):
        return self.engine.busy() + len(self._ready)

    def describe(self):
        m = self.engine.model
        return {"backend": self.name, "device": self.device, "model_path": m.path, "model_sha256": m.sha256(),
                "model_arch": m.config.arch, "model_quant": m.file_type, "slots": self.engine.n_slots,
                "n_ctx": self.engine.n_ctx}
