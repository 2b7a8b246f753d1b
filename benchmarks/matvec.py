"""GB/s of the block-format matvec kernels at TinyLlama-1.1B shapes.

    python benchmarks/matvec.py            # CUDA if a real GPU is there, else the njit CPU kernels
    python benchmarks/matvec.py --cpu      # force the CPU kernels

GB/s = weight bytes read / time per call (x and y are small next to W).
CUDA: "us/call" from cuda events around `reps` back-to-back eager launches
(Python launcher overhead included, as in an eager decode step); "graph"
from `reps` launches captured in one CUDA graph and replayed (the kernel's
own throughput, as the engine's graph-captured step sees it). CPU times from
time.perf_counter around `reps` calls after one warm-up (JIT) call.
"""

import argparse
import time

import numpy as np
from numba import config, cuda

from llcuda_mpi.kernels import matvec as mv
from llcuda_mpi.kernels.quant_reference import random_raw

NAMES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"]
# TinyLlama-1.1B: n_embd 2048, n_ff 5632, n_vocab 32000 (attn_q/attn_output 2048x2048)
SHAPES = {"attn_q 2048x2048": (2048, 2048), "ffn_up 5632x2048": (5632, 2048),
          "ffn_down 2048x5632": (2048, 5632), "output 32000x2048": (32000, 2048)}


def _time_cuda(raw, name, x, y, reps):
    mv.matvec_cuda(raw, name, x, y)                     # compile
    start, stop = cuda.event(), cuda.event()
    start.record()
    for _ in range(reps):
        mv.matvec_cuda(raw, name, x, y)
    stop.record()
    stop.synchronize()
    return cuda.event_elapsed_time(start, stop) / 1e3 / reps


def _time_cuda_graph(raw, name, x, y, reps):
    """Seconds per launch with `reps` launches captured in one CUDA graph (no Python in the loop)."""
    from cuda import core
    dev = core.Device()
    dev.set_current()
    gb = dev.create_graph_builder()
    gb.begin_building()
    for _ in range(reps):
        mv.matvec_cuda(raw, name, x, y, stream=gb)
    graph = gb.end_building().complete()
    stream = dev.create_stream()
    graph.launch(stream)
    stream.sync()
    t = time.perf_counter()
    for _ in range(5):
        graph.launch(stream)
    stream.sync()
    return (time.perf_counter() - t) / (5 * reps)


def _time_cpu(raw, name, x, y, reps):
    mv.matvec_cpu(raw, name, x, y)                      # compile / warm
    t = time.perf_counter()
    for _ in range(reps):
        mv.matvec_cpu(raw, name, x, y)
    return (time.perf_counter() - t) / reps


def run(use_cuda, names=NAMES, shapes=SHAPES, batches=(1, 8), reps=None):
    """Print one line per (format, shape, batch): microseconds per call and GB/s; return the rows."""
    rng = np.random.default_rng(0)
    results = []
    graph_col = f" {'graph us':>9} {'graph GB/s':>10}" if use_cuda else ""
    print(f"{'type':6} {'shape':20} {'B':>3} {'us/call':>10} {'GB/s':>8}" + graph_col)
    for name in names:
        for label, (rows, cols) in shapes.items():
            raw = random_raw(name, rows, cols, rng)
            for batch in batches:
                x = rng.standard_normal((batch, cols)).astype(np.float32)
                y = np.zeros((batch, rows), np.float32)
                extra, gsec = "", None
                if use_cuda:
                    args = (cuda.to_device(raw.view(np.uint16)), name, cuda.to_device(x), cuda.to_device(y))
                    sec = _time_cuda(*args, reps or 50)
                    gsec = _time_cuda_graph(*args, reps or 50)
                    extra = f" {gsec * 1e6:9.1f} {raw.nbytes / gsec / 1e9:10.1f}"
                else:
                    sec = _time_cpu(raw, name, x, y, reps or 3)
                gbs = raw.nbytes / sec / 1e9
                results.append((name, label, batch, sec, gbs, gsec))
                print(f"{name:6} {label:20} {batch:3d} {sec * 1e6:10.1f} {gbs:8.2f}" + extra, flush=True)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="time the njit CPU kernels even if a GPU is there")
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated subset of: " + ", ".join(SHAPES))
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--types", default=",".join(NAMES))
    p.add_argument("--reps", type=int, default=None)
    a = p.parse_args(argv)
    use_cuda = not a.cpu and not config.ENABLE_CUDASIM and cuda.is_available()
    shapes = {k: SHAPES[k] for k in a.shapes.split(",")}
    name = cuda.get_current_device().name if use_cuda else "CPU (numba njit, parallel)"
    print("device:", name.decode() if isinstance(name, bytes) else name)
    run(use_cuda, a.types.split(","), shapes, tuple(int(b) for b in a.batches.split(",")), a.reps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
