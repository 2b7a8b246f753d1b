"""Decode matvec kernels at TinyLlama-1.1B shapes: float gemv (kernels/gemv.py) vs int8-activation
gemvq (kernels/gemvq.py, x quantised first), each launch captured REPS times in one CUDA graph.

    python benchmarks/gemv.py [--types F16,Q8_0,Q4_0,Q4_K,Q5_K,Q6_K] [--batches 1,4] [--reps 100]

us per launch and GB/s (weight bytes / time); gemvq's line includes its quantize_x launch
(shown apart too). Expected: gemvq several times faster than gemv on Q8_0 / Q4_0.
"""

import argparse
import time

import numpy as np
from numba import config, cuda

from llcuda_mpi.kernels import gemv, gemvq
from llcuda_mpi.kernels.quant_reference import random_raw

# name -> (rows, cols, epilogue): the decode matvecs of one TinyLlama layer and the output
SHAPES = [("qkv", 2560, 2048, "split"), ("attn_o", 2048, 2048, "acc"), ("gate_up", 11264, 2048, "swiglu"),
          ("ffn_down", 2048, 5632, "acc"), ("output", 32000, 2048, "plain")]


def graph_time(launch, reps):
    """Seconds per launch() with reps launches captured in one CUDA graph, best of 5 replays."""
    from cuda import core
    dev = core.Device()
    dev.set_current()
    launch(0)                                       # compile, outside the capture
    cuda.synchronize()
    gb = dev.create_graph_builder()
    gb.begin_building()
    for _ in range(reps):
        launch(gb)
    graph = gb.end_building().complete()
    stream = dev.create_stream()
    graph.launch(stream)
    stream.sync()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        graph.launch(stream)
        stream.sync()
        best = min(best, (time.perf_counter() - t) / reps)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default="F16,Q8_0,Q4_0,Q4_K,Q5_K,Q6_K")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--reps", type=int, default=100)
    a = ap.parse_args()
    config.CUDA_LOW_OCCUPANCY_WARNINGS = 0
    rng = np.random.default_rng(0)
    print(f"{'type':6} {'matrix':9} {'shape':>11} {'B':>2} {'gemv us':>8} {'GB/s':>6} "
          f"{'gemvq us':>9} {'GB/s':>6} {'(quant us)':>10}")
    for name in a.types.split(","):
        for label, rows, cols, epi in SHAPES:
            raw = random_raw(name, rows, cols, rng)
            p = gemv.to_device(gemv.pack(raw, name), cuda.to_device)
            nbytes = raw.nbytes
            for B in (int(b) for b in a.batches.split(",")):
                x = cuda.to_device(rng.standard_normal((B, cols)).astype(np.float32))
                nw = cuda.to_device(np.ones(cols, np.float32))
                ys = {"split": [cuda.device_array((B, w), np.float32) for w in (2048, 256, 256)],
                      "swiglu": [cuda.device_array((B, rows // 2), np.float32)]}.get(
                          epi, [cuda.device_array((B, rows), np.float32)])
                kw = {"swiglu": "silu"} if epi == "swiglu" else {"accumulate": epi == "acc"}
                norm = nw if epi in ("split", "swiglu") else None
                t_f = graph_time(lambda st: gemv.gemv_fused_cuda(p, x, ys, norm=norm, eps=1e-5, stream=st,
                                                                 **kw), a.reps)
                line = f"{name:6} {label:9} {rows:>5}x{cols:<5} {B:>2} {t_f * 1e6:8.1f} {nbytes / t_f / 1e9:6.0f}"
                if gemvq.supports(p):
                    s = gemvq.scratch(B, cols, cuda.device_array)
                    t_x = graph_time(lambda st: gemvq.quantize_x_cuda(x, s, norm=norm, eps=1e-5, stream=st), a.reps)

                    def both(st):
                        gemvq.quantize_x_cuda(x, s, norm=norm, eps=1e-5, stream=st)
                        gemvq.gemvq_cuda(p, s, ys, stream=st, **kw)
                    t_q = graph_time(both, a.reps)
                    line += f" {t_q * 1e6:9.1f} {nbytes / t_q / 1e9:6.0f} {t_x * 1e6:10.1f}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
