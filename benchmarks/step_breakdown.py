"""Where a batch-1 decode step's time goes: full engine.step vs graph replay vs per-op (eager, synced).

    python benchmarks/step_breakdown.py --quant Q8_0 [--batch 1]

Per-op times are eager with a device sync after each call, so each includes
one launch (~20-40 us from Python); the empty-kernel cost is printed to subtract.
"""

import argparse
import os
import time
from collections import defaultdict

from numba import cuda

from llcuda_mpi.backends.base import Request
from llcuda_mpi.engine.engine import Engine, EngineConfig
from llcuda_mpi.engine.forward import forward
from llcuda_mpi.engine.cuda_ops import CudaOps
from llcuda_mpi.model.gguf import load_model
from llcuda_mpi.model.make import make_model


@cuda.jit
def _empty():
    pass


def decode_engine(quant, batch, model_dir, n_ctx=256, max_tokens=200):
    """(Engine on CudaOps with graphs, ops) decoding `batch` sequences of the TinyLlama shape,
    warmed up (kernels compiled, the decode graph captured); the model is made when missing."""
    path = os.path.join(model_dir, f"tinyllama-1.1b-{quant}.gguf")
    if not os.path.exists(path):
        make_model("tinyllama-1.1b", path, quant=quant)
    ops = CudaOps(graphs=True)
    eng = Engine(load_model(path), ops, EngineConfig(n_slots=batch, n_ctx=n_ctx, prefill_chunk=64))
    for i in range(batch):
        eng.submit(Request(i, prompt_tokens=[1, 100 + i, 200, 300], max_tokens=max_tokens, ignore_eos=True))
    for _ in range(8):
        eng.step()
    return eng, ops


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quant", default="Q8_0")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--model-dir", default=os.environ.get("TMPDIR", "/tmp"))
    a = ap.parse_args()
    eng, ops = decode_engine(a.quant, a.batch, a.model_dir)
    n = 30
    t0 = time.perf_counter()
    for _ in range(n):
        eng.step()
    full = (time.perf_counter() - t0) / n
    (graph, stream), = ops.graphs.values()
    t0 = time.perf_counter()
    for _ in range(n):
        graph.launch(stream)
    cuda.synchronize()
    replay = (time.perf_counter() - t0) / n
    _empty[1, 1]()
    cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(50):
        _empty[1, 1]()
        cuda.synchronize()
    empty = (time.perf_counter() - t0) / 50
    spent, count = defaultdict(float), defaultdict(int)

    class Timed:
        def __getattr__(self, name):
            f = getattr(ops, name)
            if name in ("flat", "rows") or not callable(f):
                return f

            def timed(*args, **kw):
                t = time.perf_counter()
                r = f(*args, **kw)
                cuda.synchronize()
                spent[name] += time.perf_counter() - t
                count[name] += 1
                return r
            return timed
    B = a.batch
    n_eager = ops.launches
    forward(eng.cfg, eng.weights, eng.state, Timed(), B, B)
    print(f"kernels per decode step (forward, eager count): {ops.launches - n_eager} + 1 sampling")
    t = time.perf_counter()
    ops._sample(eng.state, B)
    cuda.synchronize()
    spent["sample"] += time.perf_counter() - t
    count["sample"] += 1
    print(f"{a.quant} B={B}: engine.step {1e3 * full:.3f} ms, graph replay {1e3 * replay:.3f} ms, "
          f"host side {1e3 * (full - replay):.3f} ms; empty launch+sync {1e6 * empty:.1f} us")
    for k in sorted(spent, key=spent.get, reverse=True):
        net = spent[k] - count[k] * empty
        print(f"  {k:10s} x{count[k]:3d}  {1e3 * spent[k]:7.3f} ms  (minus launches {1e3 * net:7.3f} ms)")


if __name__ == "__main__":
    main()
