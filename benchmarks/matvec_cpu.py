"""GB/s of the CPU matvec per format next to numpy's float32 `x @ W.T`, measured in the same run.

    python benchmarks/matvec_cpu.py                      # 1 thread, default-model + TinyLlama shapes
    python benchmarks/matvec_cpu.py --threads 2 --batch 1 8 --formats F32 Q4_K
    python benchmarks/matvec_cpu.py --compile            # cold compile time (empties the numba cache first)
    python benchmarks/matvec_cpu.py --generate           # + end-to-end `llcuda-mpi generate` tok/s

The box this runs on is shared: every number is CPU time of this process
(time.process_time: all its threads), not wall time, and each format's
GB/s is printed as a ratio to the numpy f32 matvec of the same shape timed
right before it. GB/s = weight bytes / CPU seconds per call (so with
2 threads, per-core GB/s). numpy uses one BLAS thread (set below).
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")      # before numpy loads its BLAS
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse      # noqa: E402
import re            # noqa: E402
import resource      # noqa: E402
import subprocess    # noqa: E402
import sys           # noqa: E402
import time          # noqa: E402

import numba         # noqa: E402
import numpy as np   # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))   # subprocess cwd: the package as this process imports it
NAMES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"]
SHAPES = {"default attn 256x256": (256, 256), "default ffn_up 768x256": (768, 256),
          "default ffn_down 256x768": (256, 768), "default output 32000x256": (32000, 256),
          "tinyllama attn 2048x2048": (2048, 2048), "tinyllama ffn_up 5632x2048": (5632, 2048)}


def _cpu_per_call(fn, min_s):
    """CPU seconds per call of fn(), repeated for at least min_s CPU seconds after a warm-up call."""
    fn()
    n, t0 = 0, time.process_time()
    while True:
        fn()
        n += 1
        dt = time.process_time() - t0
        if dt >= min_s:
            return dt / n


def bench_shapes(names, shapes, batches, min_s):
    from llcuda_mpi.kernels import matvec as mv
    from llcuda_mpi.kernels.quant_reference import random_raw
    rng = np.random.default_rng(0)
    print(f"threads={numba.get_num_threads()}  GB/s = weight bytes / CPU s per call; ratio = / numpy f32")
    print(f"{'shape':28s} {'B':>3s} {'fmt':5s} {'us/call':>9s} {'GB/s':>7s} {'np f32 GB/s':>11s} {'ratio':>6s}")
    for label, (rows, cols) in shapes.items():
        for batch in batches:
            x = rng.standard_normal((batch, cols)).astype(np.float32)
            y = np.zeros((batch, rows), np.float32)
            w32 = rng.standard_normal((rows, cols)).astype(np.float32)
            for name in names:
                raw = random_raw(name, rows, cols, rng)
                t_np = _cpu_per_call(lambda: x @ w32.T, min_s)
                t = _cpu_per_call(lambda: mv.matvec_cpu(raw, name, x, y), min_s)
                gbs, gbs_np = raw.nbytes / t / 1e9, w32.nbytes / t_np / 1e9
                print(f"{label:28s} {batch:3d} {name:5s} {t * 1e6:9.1f} {gbs:7.2f} {gbs_np:11.2f} "
                      f"{gbs / gbs_np:6.2f}", flush=True)


def bench_compile(names):
    """Cold compile (empty on-disk cache) of the matvec + embedding of each format, in a fresh process."""
    from llcuda_mpi.kernels import matvec_cpu
    cache = os.path.join(os.path.dirname(matvec_cpu.__file__), "__pycache__")
    for f in os.listdir(cache) if os.path.isdir(cache) else ():
        if f.startswith("matvec_cpu.") and (f.endswith(".nbi") or f.endswith(".nbc")):
            os.remove(os.path.join(cache, f))
    code = ("import time, numpy as np; t=time.perf_counter(); c=time.process_time()\n"
            "from llcuda_mpi.kernels import matvec as mv, embedding as emb\n"
            "from llcuda_mpi.kernels.quant_reference import random_raw\n"
            f"for n in {names!r}:\n"
            "    r = random_raw(n, 64, 256, np.random.default_rng(0)); x = np.ones((1, 256), np.float32)\n"
            "    mv.matvec_cpu(r, n, x, np.zeros((1, 64), np.float32))\n"
            "    mv.matvec_cpu(r, n, np.ones((8, 256), np.float32), np.zeros((8, 64), np.float32))\n"
            "    emb.embedding_cpu(r, n, np.zeros(2, np.int32), np.zeros((2, 256), np.float32))\n"
            "print(f'{time.perf_counter()-t:.1f} s wall, {time.process_time()-c:.1f} s CPU')\n")
    for label in ("cold (empty cache)", "warm (from cache)"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=_HERE)
        print(f"compile+first calls, all of {len(names)} formats, {label}: {out.stdout.strip()}")


def _generate_cpu_s(n_tokens, threads):
    """(CPU seconds of a `llcuda-mpi generate` child process, its tok/s line)."""
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "llcuda_mpi", "generate", "-p", "Hello", "-n", str(n_tokens),
           "--device", "cpu", "--ignore-eos"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, cwd=_HERE)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    line = [s for s in (out.stdout + out.stderr).splitlines() if "tok/s" in s]
    return cpu, line[-1] if line else "no tok/s line"


def bench_generate(threads, short=64, long=320):
    """Decode CPU time per token of the default model: CPU seconds of a long minus a short run
    (start-up, load and prefill cancel), per extra token; plus the CLI's own (wall-clock) line."""
    _generate_cpu_s(8, threads)                          # numba cache warm
    c_short, _ = _generate_cpu_s(short, threads)
    c_long, line = _generate_cpu_s(long, threads)
    per_tok = (c_long - c_short) / (long - short)
    print(f"python -m llcuda_mpi generate -p Hello --device cpu --ignore-eos, NUMBA_NUM_THREADS={threads}: "
          f"{per_tok * 1e3:.2f} ms CPU per decoded token = {1 / per_tok:.0f} tok/s per CPU-second "
          f"(-n {long} minus -n {short}); CLI (wall): {line.strip()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", nargs="+", default=NAMES)
    ap.add_argument("--shapes", default="", help="regex on shape labels (default: all)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-s", type=float, default=0.2, help="CPU seconds per measurement")
    ap.add_argument("--compile", action="store_true", help="also time the cold compile")
    ap.add_argument("--generate", action="store_true", help="also: decode CPU ms/token of llcuda-mpi generate")
    args = ap.parse_args()
    numba.set_num_threads(args.threads)
    from llcuda_mpi.kernels import matvec_cpu
    print(f"load average {os.getloadavg()}; kernels from {matvec_cpu.__file__}")
    if args.compile:
        bench_compile(args.formats)
    shapes = {k: v for k, v in SHAPES.items() if re.search(args.shapes, k)}
    bench_shapes(args.formats, shapes, args.batch, args.min_s)
    if args.generate:
        bench_generate(args.threads)


if __name__ == "__main__":
    main()
