"""Batched-decode / prefill matmuls at TinyLlama-1.1B shapes: the FP32-FMA tiled gemm (kernels/gemm.py)
vs the int8 tensor-core gemmq (kernels/gemmq.py, x quantised first), each launch captured REPS times
in one CUDA graph (benchmarks/gemv.py's timer).

    python benchmarks/gemm.py [--types Q8_0,Q4_0] [--tokens 32,512] [--reps 20] [--splits]

us per launch and TFLOP/s (2 * T * rows * cols / time); gemmq's time includes its quantize_x launch
(not for F16: x is rounded to half inside gemmq)
(ks: the K split gemmq.k_splits chose). --splits: gemmq's time at every K split too (us).
"""

import argparse

import numpy as np
from numba import config, cuda

from gemv import SHAPES, graph_time
from llcuda_mpi.kernels import gemm, gemmq, gemv, gemvq
from llcuda_mpi.kernels.quant_reference import random_raw


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default="Q8_0,Q4_0")
    ap.add_argument("--tokens", default="32,512")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--splits", action="store_true", help="also time gemmq at every K split")
    a = ap.parse_args()
    config.CUDA_LOW_OCCUPANCY_WARNINGS = 0
    rng = np.random.default_rng(0)
    head = f"{'type':6} {'matrix':9} {'shape':>11} {'T':>4} {'gemm us':>9} {'TF/s':>6} {'gemmq us':>9} {'TF/s':>6}"
    print(head + f" {'ks':>3}" + "".join(f" {'ks=' + str(k):>7}" for k in gemmq.SPLITS if a.splits))
    for name in a.types.split(","):
        for label, rows, cols, _ in SHAPES:
            raw = random_raw(name, rows, cols, rng)
            w = cuda.to_device(raw)
            p = gemv.to_device(gemv.pack(raw, name), cuda.to_device)
            for T in (int(t) for t in a.tokens.split(",")):
                x = cuda.to_device(rng.standard_normal((T, cols)).astype(np.float32))
                y = cuda.device_array((T, rows), np.float32)
                flop = 2.0 * T * rows * cols
                t_g = graph_time(lambda st: gemm.gemm_cuda(w, name, x, y, stream=st), a.reps)
                line = f"{name:6} {label:9} {rows:>5}x{cols:<5} {T:>4} {t_g * 1e6:9.1f} {flop / t_g / 1e12:6.1f}"
                if gemmq.supports(p):
                    s = gemvq.scratch(T, cols, cuda.device_array)

                    def both(st, ks=None):
                        if p.kind == "F16":                  # x itself, rounded to half in the kernel
                            gemmq.gemmq_cuda(p, x, y, stream=st, ks=ks)
                            return
                        gemvq.quantize_x_cuda(x, s, stream=st)
                        gemmq.gemmq_cuda(p, s, y, stream=st, ks=ks)
                    t_q = graph_time(both, a.reps)
                    nblocks = cols // (16 if p.kind == "F16" else 32)
                    line += f" {t_q * 1e6:9.1f} {flop / t_q / 1e12:6.1f} {gemmq.k_splits(rows, T, nblocks):3}"
                    for ks in gemmq.SPLITS if a.splits else ():
                        line += f" {graph_time(lambda st: both(st, ks), a.reps) * 1e6:7.1f}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
