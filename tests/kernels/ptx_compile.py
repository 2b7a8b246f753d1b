"""Compile CUDA kernels to sm_90 PTX on a machine with no GPU: numba's typing and NVVM, no driver.

The CUDA simulator runs kernels as Python and so never types them: a shared-array shape that is
not a compile-time constant, an int64 where an intrinsic wants int32, pass there and fail on the
first GPU. This script compiles them for real. It needs NVVM and NVRTC (the
nvidia-cuda-nvcc-cu12 / nvidia-cuda-nvrtc-cu12 wheels); where they are missing it exits 3.
Run it as a script (NUMBA_ENABLE_CUDASIM must be 0 before numba loads):

    python3 tests/kernels/ptx_compile.py          # one line per kernel variant, exit 1 on any failure
"""

import os
import shutil
import subprocess
import sys
import tempfile

os.environ["NUMBA_ENABLE_CUDASIM"] = "0"

import numpy as np  # noqa: E402
import numba  # noqa: E402
from numba import cuda  # noqa: E402
import numba.cuda.dispatcher as _dispatcher  # noqa: E402

CC = (9, 0)
NO_TOOLKIT = 3


class _Device:
    """Stands in for the current device: device functions compile for its compute capability."""
    compute_capability = CC


_dispatcher.get_current_device = lambda: _Device()

from llcuda_mpi.kernels import attention, attention_tiled, gemmq, gemv, gemvq, intrin, quant_blocks as qb  # noqa: E402


def _typed(*args):
    return tuple(numba.typeof(a) for a in args)


VARIANTS = [(1, gemv.PLAIN), (1, gemv.SPLIT), (1, gemv.SWIGLU), (gemv.MAX_B, gemv.PLAIN)]


def gemvq_cases():
    """(name, python function, signature) for every gemvq kind: each epilogue at batch 1, the largest
    batch bucket plain (the bucket only sizes constant loops; compiling is ~1 s per variant)."""
    rng = np.random.default_rng(0)
    rows, cols = 16, 256
    for kind in gemvq.KINDS:
        fmt = qb.format_of(kind)
        p = gemv.pack(rng.integers(0, 255, (rows, qb.row_bytes(fmt.qtype, cols)), dtype=np.uint8), fmt.qtype)
        for nb, epi in VARIANTS:
            xq = np.zeros((nb, cols // 8), np.int64)
            xd = np.zeros((nb, cols // 32), np.float32)
            y = np.zeros((nb, rows), np.float32)
            k = gemvq._kernel(kind, nb, epi, gemv.SILU)
            yield (f"gemvq {kind} NB={nb} epi={epi}", k.py_func,
                   _typed(p.q, p.s, xq, xd, xd, y, y, y, y, True, False, 8, rows, rows, 0))
        if kind in ("Q8_0", "Q4_0"):                 # QKV with rope + the KV-cache store in the epilogue
            for nb in (1, gemv.MAX_B):
                xq = np.zeros((nb, cols // 8), np.int64)
                xd = np.zeros((nb, cols // 32), np.float32)
                yq = np.zeros((nb, 8), np.float32)
                kc = np.zeros((12, 4), np.float32)
                idx = np.zeros(nb, np.int32)
                yield (f"gemvq_rope {kind} NB={nb}", gemvq._kernel(kind, nb, "rope", 0).py_func,
                       _typed(p.q, p.s, xq, xd, xd, yq, kc, kc, yq, True, 8, rows, 8, 4, 4, idx, idx, 6,
                              1e4, np.zeros(2, np.float32), True))
    x = np.zeros((2, cols), np.float32)
    s = gemvq.Scratch(np.zeros((2, cols // 8), np.int64), np.zeros((2, cols // 32), np.float32),
                      np.zeros((2, cols // 32), np.float32), 2, cols)
    yield ("quantize_x", gemvq.quantize_x_kernel.py_func,
           _typed(x, x[0], True, np.float32(1e-5), s.xq, s.xd, s.xs))


def gemv_cases():
    """The float gemv for every format it packs: batch 1 with the norm prologue, the largest bucket without."""
    rng = np.random.default_rng(1)
    rows, cols = 16, 256
    for kind in ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"):
        fmt = qb.format_of(kind)
        p = gemv.pack(rng.integers(0, 255, (rows, qb.row_bytes(fmt.qtype, cols)), dtype=np.uint8), fmt.qtype)
        for nb, norm in ((1, True), (gemv.MAX_B, False)):
            x = np.zeros((nb, cols), np.float32)
            y = np.zeros((nb, rows), np.float32)
            k = gemv._kernel(kind, nb, norm, gemv.PLAIN, gemv.SILU)
            yield (f"gemv {kind} NB={nb} norm={norm}", k.py_func,
                   _typed(p.q, p.s, x, y, y, y, y, True, False, p.nw, rows, rows, 0, x[0], np.float32(1e-5)))


def gemmq_cases():
    """The int8 tensor-core matmul for each type, and the MMA helper's own check kernel."""
    rng = np.random.default_rng(2)
    rows, cols, T = 70, 256, 40
    for kind in gemmq.KINDS:
        fmt = qb.format_of(kind)
        p = gemv.pack(rng.integers(0, 255, (rows, qb.row_bytes(fmt.qtype, cols)), dtype=np.uint8), fmt.qtype)
        y = np.zeros((T, rows), np.float32)
        if kind == "F16":                          # x itself, float32
            xq, xd, nb = np.zeros((T, cols), np.float32), np.zeros((T, cols), np.float32), cols // 16
        else:
            xq, xd, nb = np.zeros((T, cols // 8), np.int64), np.zeros((T, cols // 32), np.float32), cols // 32
        for ks, epi in ((1, gemv.PLAIN), (gemmq.NW, gemv.SPLIT), (gemmq.NW // 2, gemv.SWIGLU)):
            yield (f"gemmq {kind} ks={ks} epi={epi}", gemmq._kernel(kind, ks, epi, gemv.SILU).py_func,
                   _typed(p.q, p.s, xq, xd, xd, y, y, y, y, True, False, nb, rows, rows, 0))
    yield ("mma_s8 check", intrin._mma_check_kernel.py_func,
           _typed(np.zeros((32, 4), np.int32), np.zeros((32, 2), np.int32), np.zeros((32, 4), np.int32)))
    yield ("mma_s8k16 check", intrin._mma16_check_kernel.py_func,
           _typed(np.zeros((32, 2), np.int32), np.zeros((32, 1), np.int32), np.zeros((32, 4), np.int32)))
    yield ("mma_f16 check", intrin._mma_f16_check_kernel.py_func,
           _typed(np.zeros((32, 4), np.int32), np.zeros((32, 4), np.float32), np.zeros((32, 4), np.float32)))


def other_cases():
    """(name, python function, signature) of the other kernels rewritten since their last GPU run."""
    q = np.zeros((2, 8, 64), np.float32)
    cache = np.zeros((3, 16, 4, 64), np.float32)
    idx = np.zeros(2, np.int32)
    flat = cache.reshape(-1)
    yield ("attention", attention._attention_kernel.py_func,
           _typed(q, flat, flat, 3, 16, 4, idx, idx, np.float32(0.125), 0, q, True,
                  np.zeros((2, 64), np.int64), np.zeros((2, 16), np.float32), np.zeros((2, 16), np.float32)))
    for D in (64, 128):
        qd = np.zeros((2, 8, D), np.float32)
        fd = np.zeros((3, 16, 4, D), np.float32).reshape(-1)
        yield (f"attention_tiled D={D}", attention_tiled._kernel(D).py_func,
               _typed(qd, fd, fd, 3, 16, 4, idx, idx, np.float32(0.125), 0, qd))


def _trivial(a):
    a[0] = gemvq.dp4a(1, 2, 3)                    # a linked CUDA C helper: NVRTC too


def _ptxas():
    """The ptxas of the nvidia-cuda-nvcc wheel (or on PATH), or None."""
    try:
        import nvidia.cuda_nvcc
        path = os.path.join(os.path.dirname(nvidia.cuda_nvcc.__file__), "bin", "ptxas")
        if os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    return shutil.which("ptxas")


def assemble(ptxas, ptx, name):
    """ptxas -c for sm_90 (relocatable: the linked helpers stay external): '' or the error text;
    on success the register count (ptxas -v) is printed."""
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run([ptxas, f"-arch=sm_{CC[0]}{CC[1]}", "-c", "-v", src, "-o", os.path.join(d, "k.o")],
                           capture_output=True, text=True)
    if r.returncode:
        return r.stderr.strip()[:2000] or f"ptxas exit {r.returncode}"
    regs = [line.split(":", 1)[1].strip() for line in r.stderr.splitlines() if "registers" in line]
    print(f"     {name}: {regs[-1] if regs else ''}")
    return ""


def intrin_ptx():
    """kernels/intrin.cu through NVRTC (as numba links it on a GPU) -> PTX text; None if NVRTC is absent."""
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        return None
    with open(intrin.CU, "rb") as f:
        src = f.read()
    ok = nvrtc.nvrtcResult.NVRTC_SUCCESS
    err, prog = nvrtc.nvrtcCreateProgram(src, b"intrin.cu", 0, [], [])
    if err != ok:
        return None
    opts = [f"--gpu-architecture=compute_{CC[0]}{CC[1]}".encode(), b"-rdc=true"]
    err, = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
    _, n = nvrtc.nvrtcGetProgramLogSize(prog)
    log = b" " * n
    nvrtc.nvrtcGetProgramLog(prog, log)
    if err != ok:
        raise RuntimeError(f"NVRTC: {log.decode(errors='replace').strip()}")
    _, n = nvrtc.nvrtcGetPTXSize(prog)
    ptx = b" " * n
    nvrtc.nvrtcGetPTX(prog, ptx)
    return ptx.rstrip(b"\x00").decode()


def main():
    try:                                          # the toolchain itself: NVVM (and NVRTC for linked .cu)
        cuda.compile_ptx(_trivial, _typed(np.zeros(1, np.int32)), cc=CC)
    except Exception as e:                        # noqa: BLE001 - any failure here is a missing toolkit
        print(f"ptx_compile: no usable NVVM here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        return NO_TOOLKIT
    failed = 0
    ptxas = _ptxas()
    try:
        helpers = intrin_ptx()
    except RuntimeError as e:
        print(f"FAIL kernels/intrin.cu: {e}")
        return 1
    if helpers is not None and ptxas:
        err = assemble(ptxas, helpers, "intrin.cu")
        if err:
            print(f"FAIL kernels/intrin.cu (ptxas): {err}")
            return 1
        print("ok   intrin.cu (NVRTC + ptxas)")
    for name, fn, sig in list(gemvq_cases()) + list(gemv_cases()) + list(gemmq_cases()) + list(other_cases()):
        try:
            ptx, _ = cuda.compile_ptx(fn, sig, cc=CC)
            err = assemble(ptxas, ptx, name) if ptxas else ""
        except Exception as e:                    # noqa: BLE001 - report every kernel, then fail
            err = f"{type(e).__name__}: {str(e)[:2000]}"
        if err:
            failed += 1
            print(f"FAIL {name}: {err}")
            continue
        print(f"ok   {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
