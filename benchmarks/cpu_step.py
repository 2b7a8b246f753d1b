"""Where a CPU engine step's time goes: engine.step, then each op of one forward timed through CpuOps.

    python benchmarks/cpu_step.py [--model GGUF] [--threads 1] [--batch 1] [--prefill 0]

Decode (default): `--batch` sequences decoded together, 20 warm-up steps, then 200
timed engine.step calls and 100 forwards with every CpuOps method wrapped in a
timer. `--prefill N`: one forward of an N-token prompt instead (best of 3).
The model defaults to the built-in one (made on first use).
"""

import argparse
import time
from collections import defaultdict

import numpy as np

from llcuda_mpi.backends.base import Request
from llcuda_mpi.engine.engine import Engine, EngineConfig
from llcuda_mpi.engine.forward import forward
from llcuda_mpi.engine.ops import CpuOps
from llcuda_mpi.model.gguf import load_model
from llcuda_mpi.model.make import ensure_default_model


class Timed:
    """CpuOps with each method call's wall time added to spent[name]."""

    def __init__(self, ops, spent, count):
        self._ops, self._spent, self._count = ops, spent, count

    def __getattr__(self, name):
        f = getattr(self._ops, name)
        if not callable(f) or name in ("flat", "rows"):
            return f

        def timed(*args, **kwargs):
            t = time.perf_counter()
            r = f(*args, **kwargs)
            self._spent[name] += time.perf_counter() - t
            self._count[name] += 1
            return r
        return timed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="GGUF file (default: the built-in model)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1, help="sequences decoded together")
    ap.add_argument("--prefill", type=int, default=0, help="time one N-token prompt instead of decode")
    a = ap.parse_args()
    model = load_model(a.model or ensure_default_model())
    ops = CpuOps(a.threads)
    n_ctx = max(512, a.prefill + 8)
    eng = Engine(model, ops, EngineConfig(n_slots=a.batch, n_ctx=n_ctx, prefill_chunk=max(64, a.prefill)))
    spent, count = defaultdict(float), defaultdict(int)
    if a.prefill:
        toks = np.random.default_rng(0).integers(3, model.config.n_vocab, a.prefill).astype(np.int32)
        eng.submit(Request(0, prompt_tokens=toks.tolist(), max_tokens=1, ignore_eos=True))
        while eng.busy():                                  # compiles everything once
            eng.step()
        host = {"tokens": toks, "pos": np.arange(a.prefill, dtype=np.int32),
                "slot": np.zeros(a.prefill, np.int32), "out_rows": np.array([a.prefill - 1], np.int32)}
        ops.load_inputs(eng.state, host, a.prefill, 1)
        best = float("inf")
        for _ in range(3):
            spent.clear()
            count.clear()
            t = time.perf_counter()
            forward(eng.cfg, eng.weights, eng.state, Timed(ops, spent, count), a.prefill, 1)
            best = min(best, time.perf_counter() - t)
        reps, head = 1, f"prefill {a.prefill}, {a.threads} thread(s): forward {best * 1e3:.1f} ms " \
                         f"({a.prefill / best:.0f} tok/s)"
    else:
        for i in range(a.batch):
            eng.submit(Request(i, prompt_tokens=[1, 100 + i, 200, 300], max_tokens=400, ignore_eos=True))
        for _ in range(20):
            eng.step()
        n = 200
        t0 = time.perf_counter()
        for _ in range(n):
            eng.step()
        step = (time.perf_counter() - t0) / n
        reps = 100
        for _ in range(reps):
            forward(eng.cfg, eng.weights, eng.state, Timed(ops, spent, count), a.batch, a.batch)
        head = f"decode B={a.batch}, {a.threads} thread(s): engine.step {step * 1e3:.3f} ms " \
               f"({a.batch / step:.0f} tok/s); forward ops sum {sum(spent.values()) / reps * 1e3:.3f} ms"
    print(head)
    for k in sorted(spent, key=spent.get, reverse=True):
        print(f"  {k:14s} x{count[k] // reps:3d}  {1e3 * spent[k] / reps:8.3f} ms")


if __name__ == "__main__":
    main()
