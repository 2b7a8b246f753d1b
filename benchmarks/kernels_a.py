"""Per-launch GPU time of the part-A kernels at TinyLlama-1.1B decode/prefill shapes.

python3 benchmarks/kernels_a.py   (on a GPU: source .device/gpu-env.sh first)
Each op is timed replayed from a CUDA graph of 20 launches (launch overhead excluded)
and eagerly from Python (launch overhead included).
"""

import time
import warnings

import numpy as np
from numba import cuda

from llcuda_mpi.kernels import activations, attention, elementwise, norm, rope, sampling, softmax


def main():
    from cuda.core import Device
    from numba.cuda.core.errors import NumbaPerformanceWarning
    warnings.simplefilter("ignore", NumbaPerformanceWarning)  # decode grids are small by design
    dev = Device()
    dev.set_current()
    rng = np.random.default_rng(0)

    def d(x):
        return cuda.to_device(np.ascontiguousarray(x))

    H, Hkv, D, n, ff, C = 32, 4, 64, 2048, 5632, 4096
    rows = []
    for B, ctx in [(1, 512), (32, 512), (32, 4096)]:
        x, w = d(rng.standard_normal((B, n)).astype(np.float32)), d(np.ones(n, np.float32))
        xo = cuda.device_array((B, n), np.float32)
        q, k = cuda.device_array((B, H, D), np.float32), cuda.device_array((B, Hkv, D), np.float32)
        kc = d(rng.standard_normal((B, C, Hkv, D)).astype(np.float32))
        vc = d(rng.standard_normal((B, C, Hkv, D)).astype(np.float32))
        slot, pos = d(np.arange(B, dtype=np.int32)), d(np.full(B, ctx - 1, np.int32))
        gu, act = cuda.device_array((B, 2 * ff), np.float32), cuda.device_array((B, ff), np.float32)
        ops = {
            "rmsnorm": lambda s: norm.rmsnorm_cuda(x, w, 1e-5, xo, stream=s),
            "add_rmsnorm": lambda s: norm.add_rmsnorm_cuda(x, xo, w, 1e-5, xo, stream=s),
            "rope": lambda s: rope.rope_cuda(q, k, pos, 10000.0, False, stream=s),
            "kv_store": lambda s: attention.kv_store_cuda(k, k, kc, vc, slot, pos, stream=s),
            f"attention ctx {ctx}": lambda s: attention.attention_cuda(q, kc, vc, slot, pos, 0.125, q, stream=s),
            "silu_mul": lambda s: activations.silu_mul_cuda(gu[:, :ff], gu[:, ff:], act, stream=s),
            "add": lambda s: elementwise.add_cuda(x, xo, stream=s),
        }
        for V in (32000, 262144):
            lg = d(rng.standard_normal((B, V)).astype(np.float32) * 3)
            args = [d(np.asarray(a, t)) for a, t in ((np.full(B, 0.8), np.float32), (np.full(B, 40), np.int32),
                    (np.full(B, 0.95), np.float32), (np.arange(B), np.uint64), (np.zeros(B), np.int32))]
            tok = cuda.device_array(B, np.int32)
            greedy = [d(np.zeros(B, np.float32))] + args[1:]
            ops[f"sample top-k40 top-p.95 V={V}"] = (lambda lg, a, t: lambda s: sampling.sample_cuda(lg, *a, t, stream=s))(lg, args, tok)
            ops[f"sample greedy V={V}"] = (lambda lg, a, t: lambda s: sampling.sample_cuda(lg, *a, t, stream=s))(lg, greedy, tok)
            sm = cuda.device_array((B, V), np.float32)
            ops[f"softmax V={V}"] = (lambda lg, sm: lambda s: softmax.softmax_cuda(lg, sm, stream=s))(lg, sm)
        for name, op in ops.items():
            op(0)
            cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(20):
                op(0)
            cuda.synchronize()
            eager = (time.perf_counter() - t0) / 20
            gb = dev.create_graph_builder()
            gb.begin_building()
            for _ in range(20):
                op(gb)
            graph = gb.end_building().complete()
            graph.launch(dev.default_stream)
            dev.sync()
            t0 = time.perf_counter()
            for _ in range(5):
                graph.launch(dev.default_stream)
            dev.sync()
            g = (time.perf_counter() - t0) / 100
            rows.append((B, name, g * 1e6, eager * 1e6))
    print(f"{'B':>3} {'op':<34} {'graph us':>9} {'eager us':>9}")
    for B, name, g, e in rows:
        print(f"{B:>3} {name:<34} {g:9.1f} {e:9.1f}")


if __name__ == "__main__":
    main()
