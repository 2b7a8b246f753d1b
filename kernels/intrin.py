"""dp4a, half <-> float and the int8 / f16 tensor-core MMAs: one PTX instruction each.

Numba has neither: its float16 support needs a float16 array to load from, and
it has no 4-way int8 dot product. On a GPU they are inline PTX (an LLVM inline-asm
call in the kernel's own IR, so always inlined); LLCUDA_LINKED_INTRIN=1 links the
same instructions as CUDA C device functions from intrin.cu instead (inlined only
where numba links with nvJitLink LTO; a call with a stack-passed result where not).
On the simulator they are the Python functions below, the reference they are
tested against.

mma_s8(sh, tx, a0, a1, a2, a3, b0, b1) -> (c0, c1, c2, c3): one warp's
C (16 x 8, int32) = A (16 x 32, int8) . B (32 x 8, int8), the PTX m16n8k32
fragment layouts (g = lane // 4, t = lane % 4; register bytes are consecutive k):
  a0: A[g, 4t..4t+3]   a1: A[g+8, 4t..]   a2: A[g, 16+4t..]   a3: A[g+8, 16+4t..]
  b0: B[4t..4t+3, g]   b1: B[16+4t.., g]
  c0, c1: C[g, 2t], C[g, 2t+1]            c2, c3: C[g+8, 2t], C[g+8, 2t+1]
mma_s8k16(sh, tx, a0, a1, b0): the m16n8k16 int8 shape (16 columns: a0 = A[g, 4t..4t+3],
a1 = A[g+8, 4t..], b0 = B[4t..4t+3, g]; C as above), for formats with a scale per 16 columns.
mma_f16(sh, tx, a0..a3, b0, b1, c0..c3) -> (d0..d3): D (16 x 8, float32) = A (16 x 16, f16)
. B (16 x 8, f16) + C, m16n8k16: the same register positions with two halves per register
(a0: A[g, 2t..2t+1], a2: A[g, 8+2t..], b0: B[2t..2t+1, g], b1: B[8+2t.., g]); f2h2(lo, hi)
packs two floats into such a register.
Every thread of the block must call them together. sh (shared int32 (blockDim, 6))
is where the simulator's lanes exchange fragments; the GPU ignores it.
"""

import os

import numpy as np
from numba import config, cuda, float32, int32, types

CU = os.path.join(os.path.dirname(__file__), "intrin.cu")


def _i8(v):
    return v - 256 if v >= 128 else v


def dp4a_reference(a, b, c):
    """c + sum of the products of the four signed bytes of a and b (int32 bit patterns)."""
    a, b = int(a) & 0xFFFFFFFF, int(b) & 0xFFFFFFFF
    t = int(c) + sum(_i8((a >> s) & 0xFF) * _i8((b >> s) & 0xFF) for s in (0, 8, 16, 24))
    return np.int32(np.int64(t).astype(np.uint32).view(np.int32) if not -2**31 <= t < 2**31 else t)


def h2f_reference(h):
    """float32 of the IEEE half whose bits are the low 16 bits of h."""
    return np.float32(np.array([int(h) & 0xFFFF], np.uint16).view(np.float16)[0])


def _byte(word, k):
    """Signed byte k (0..3) of an int32 bit pattern."""
    return _i8((int(word) >> (8 * k)) & 0xFF)


if config.ENABLE_CUDASIM:
    dp4a, h2f = dp4a_reference, h2f_reference

    @cuda.jit(device=True)
    def mma_s8(sh, tx, a0, a1, a2, a3, b0, b1):
        lane = tx % 32
        base = tx - lane
        for i, v in enumerate((a0, a1, a2, a3, b0, b1)):
            sh[tx, i] = v
        cuda.syncthreads()                       # the warp's fragments are in sh

        def a_at(row, k):                        # A[row, k] from its owner lane's register
            return _byte(sh[base + 4 * (row % 8) + (k % 16) // 4, 2 * (k // 16) + row // 8], k % 4)

        def b_at(k, col):
            return _byte(sh[base + 4 * col + (k % 16) // 4, 4 + k // 16], k % 4)

        g, t = lane // 4, lane % 4
        c = [sum(a_at(row, k) * b_at(k, col) for k in range(32))
             for row, col in ((g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1))]
        cuda.syncthreads()                       # every lane has read sh
        return int32(c[0]), int32(c[1]), int32(c[2]), int32(c[3])

    @cuda.jit(device=True)
    def mma_s8k16(sh, tx, a0, a1, b0):
        lane = tx % 32
        base = tx - lane
        for i, v in enumerate((a0, a1, b0)):
            sh[tx, i] = v
        cuda.syncthreads()                       # the warp's fragments are in sh

        def a_at(row, k):                        # A[row, k]: byte k % 4 of register row // 8 of lane 4 (row % 8) + k // 4
            return _byte(sh[base + 4 * (row % 8) + k // 4, row // 8], k % 4)

        def b_at(k, col):
            return _byte(sh[base + 4 * col + k // 4, 2], k % 4)

        g, t = lane // 4, lane % 4
        c = [sum(a_at(row, k) * b_at(k, col) for k in range(16))
             for row, col in ((g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1))]
        cuda.syncthreads()                       # every lane has read sh
        return int32(c[0]), int32(c[1]), int32(c[2]), int32(c[3])

    def f2h2(lo, hi):
        """Two float32 -> one int32 holding their IEEE halves (lo in the low 16 bits), round to nearest."""
        return int32(np.array([lo, hi], np.float16).view(np.int32)[0])

    def _half(word, k):
        """Half k (0, 1) of an int32 bit pattern, as a float."""
        return float(np.array([int(word) & 0xFFFFFFFF], np.uint32).view(np.float16)[k])

    @cuda.jit(device=True)
    def mma_f16(sh, tx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        lane = tx % 32
        base = tx - lane
        for i, v in enumerate((a0, a1, a2, a3, b0, b1)):
            sh[tx, i] = v
        cuda.syncthreads()                       # the warp's fragments are in sh

        def a_at(row, k):                        # A[row, k]: half k % 2 of register 2 (k // 8) + row // 8
            return _half(sh[base + 4 * (row % 8) + (k % 8) // 2, 2 * (k // 8) + row // 8], k % 2)

        def b_at(k, col):
            return _half(sh[base + 4 * col + (k % 8) // 2, 4 + k // 8], k % 2)

        g, t = lane // 4, lane % 4
        c = [acc + sum(a_at(row, k) * b_at(k, col) for k in range(16))
             for acc, (row, col) in zip((c0, c1, c2, c3), ((g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1)))]
        cuda.syncthreads()                       # every lane has read sh
        return float32(c[0]), float32(c[1]), float32(c[2]), float32(c[3])
else:
    # inline PTX (LLVM inline asm, as numba's own activemask / fp16 conversions): always inlined,
    # whether or not numba links with nvJitLink
    try:
        from numba.cuda.extending import intrinsic
    except ImportError:                          # older numba-cuda: the core decorator serves CUDA
        from numba.extending import intrinsic
    from llvmlite import ir

    _I32 = ir.IntType(32)

    def _i32_args(context, builder, sig, args):
        return [context.cast(builder, v, t, types.int32) for v, t in zip(args, sig.args)]

    @intrinsic
    def dp4a(typingctx, a, b, c):
        """c + the dot product of a's and b's four signed bytes (dp4a.s32.s32)."""
        def codegen(context, builder, sig, args):
            fn = ir.InlineAsm(ir.FunctionType(_I32, [_I32] * 3), "dp4a.s32.s32 $0, $1, $2, $3;", "=r,r,r,r")
            return builder.call(fn, _i32_args(context, builder, sig, args))
        return types.int32(a, b, c), codegen

    @intrinsic
    def h2f(typingctx, h):
        """IEEE half bits (the low 16 of h) -> float32, exactly (cvt.f32.f16)."""
        def codegen(context, builder, sig, args):
            bits = builder.trunc(_i32_args(context, builder, sig, args)[0], ir.IntType(16))
            fn = ir.InlineAsm(ir.FunctionType(ir.FloatType(), [ir.IntType(16)]), "cvt.f32.f16 $0, $1;", "=f,h")
            return builder.call(fn, [bits])
        return types.float32(h), codegen

    def _mma_s32(asm, n):
        """codegen of an int8 MMA with n int32 fragment operands and C = 0 (operand n): four int32."""
        def codegen(context, builder, sig, args):
            out = ir.LiteralStructType([_I32] * 4)
            fn = ir.InlineAsm(ir.FunctionType(out, [_I32] * (n + 1)), asm,
                              ",".join(["=r"] * 4 + ["r"] * (n + 1)), side_effect=True)
            c = builder.call(fn, _i32_args(context, builder, sig, args) + [ir.Constant(_I32, 0)])
            return context.make_tuple(builder, sig.return_type, [builder.extract_value(c, i) for i in range(4)])
        return codegen

    @intrinsic
    def _mma(typingctx, a0, a1, a2, a3, b0, b1):
        return types.UniTuple(types.int32, 4)(a0, a1, a2, a3, b0, b1), _mma_s32(
            "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, "
            "{$10, $10, $10, $10};", 6)

    @cuda.jit(device=True)
    def mma_s8(sh, tx, a0, a1, a2, a3, b0, b1):
        return _mma(a0, a1, a2, a3, b0, b1)

    @intrinsic
    def _mma16(typingctx, a0, a1, b0):
        return types.UniTuple(types.int32, 4)(a0, a1, b0), _mma_s32(
            "mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {$0, $1, $2, $3}, {$4, $5}, {$6}, {$7, $7, $7, $7};", 3)

    @cuda.jit(device=True)
    def mma_s8k16(sh, tx, a0, a1, b0):
        return _mma16(a0, a1, b0)

    @intrinsic
    def f2h2(typingctx, lo, hi):
        """Two float32 -> one int32 holding their IEEE halves (lo in the low 16 bits), round to nearest."""
        def codegen(context, builder, sig, args):
            v = [context.cast(builder, a, t, types.float32) for a, t in zip(args, sig.args)]
            fn = ir.InlineAsm(ir.FunctionType(_I32, [ir.FloatType()] * 2), "cvt.rn.f16x2.f32 $0, $1, $2;", "=r,f,f")
            return builder.call(fn, [v[1], v[0]])      # the first source goes to the upper half
        return types.int32(lo, hi), codegen

    @intrinsic
    def _mma_f16(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        def codegen(context, builder, sig, args):
            f32 = ir.FloatType()
            ints = [context.cast(builder, v, t, types.int32) for v, t in zip(args[:6], sig.args[:6])]
            flts = [context.cast(builder, v, t, types.float32) for v, t in zip(args[6:], sig.args[6:])]
            fn = ir.InlineAsm(ir.FunctionType(ir.LiteralStructType([f32] * 4), [_I32] * 6 + [f32] * 4),
                              "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {$0, $1, $2, $3}, "
                              "{$4, $5, $6, $7}, {$8, $9}, {$10, $11, $12, $13};",
                              "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f", side_effect=True)
            c = builder.call(fn, ints + flts)
            return context.make_tuple(builder, sig.return_type, [builder.extract_value(c, i) for i in range(4)])
        return types.UniTuple(types.float32, 4)(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3), codegen

    @cuda.jit(device=True)
    def mma_f16(sh, tx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        return _mma_f16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)


if not config.ENABLE_CUDASIM and os.environ.get("LLCUDA_LINKED_INTRIN", "0") == "1":
    # dp4a, h2f and the int8 MMA as the CUDA C helpers of intrin.cu, linked (inlined only where numba
    # links with nvJitLink LTO): the previous form, kept to compare against
    dp4a = cuda.declare_device("llc_dp4a", "int32(int32, int32, int32)", link=CU)
    h2f = cuda.declare_device("llc_h2f", "float32(int32)", link=CU)
    _mma = cuda.declare_device("llc_mma_s8", types.UniTuple(types.int32, 4)(*[types.int32] * 6), link=CU)

    @cuda.jit(device=True)
    def mma_s8(sh, tx, a0, a1, a2, a3, b0, b1):
        return _mma(a0, a1, a2, a3, b0, b1)


def _word(v):
    """int32 whose four bytes are the int8 values v[0..3] (low to high)."""
    return np.frombuffer(np.asarray(v, np.int8).tobytes(), np.int32)[0]


@cuda.jit
def _mma_check_kernel(af, bf, c):
    tx = cuda.threadIdx.x
    sh = cuda.shared.array((32, 6), int32)
    r = mma_s8(sh, tx, af[tx, 0], af[tx, 1], af[tx, 2], af[tx, 3], bf[tx, 0], bf[tx, 1])
    for i in range(4):
        c[tx, i] = r[i]


def mma_s8_check(A, B):
    """C = A (16 x 32 int8) . B (32 x 8 int8) through mma_s8, the fragments laid out as documented
    above: a check of the instruction (GPU) or of its emulation (simulator) against A @ B."""
    A, B = np.asarray(A, np.int8), np.asarray(B, np.int8)
    af, bf = np.zeros((32, 4), np.int32), np.zeros((32, 2), np.int32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        af[lane] = [_word(A[g, 4 * t:4 * t + 4]), _word(A[g + 8, 4 * t:4 * t + 4]),
                    _word(A[g, 16 + 4 * t:20 + 4 * t]), _word(A[g + 8, 16 + 4 * t:20 + 4 * t])]
        bf[lane] = [_word(B[4 * t:4 * t + 4, g]), _word(B[16 + 4 * t:20 + 4 * t, g])]
    c = cuda.device_array((32, 4), np.int32)
    _mma_check_kernel[1, 32](cuda.to_device(af), cuda.to_device(bf), c)
    return _tile(c.copy_to_host())


def _tile(c):
    """The 16 x 8 C tile from each lane's four values (c: (32, 4)), as the fragment layout places them."""
    C = np.zeros((16, 8), c.dtype)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        C[g, 2 * t], C[g, 2 * t + 1], C[g + 8, 2 * t], C[g + 8, 2 * t + 1] = c[lane]
    return C


@cuda.jit
def _mma_f16_check_kernel(af, bx, c):
    # the B fragments packed in the kernel from float32 pairs (f2h2), C starting at 1
    tx = cuda.threadIdx.x
    sh = cuda.shared.array((32, 6), int32)
    b0 = f2h2(bx[tx, 0], bx[tx, 1])
    b1 = f2h2(bx[tx, 2], bx[tx, 3])
    one = float32(1.0)
    r = mma_f16(sh, tx, af[tx, 0], af[tx, 1], af[tx, 2], af[tx, 3], b0, b1, one, one, one, one)
    for i in range(4):
        c[tx, i] = r[i]


def _pair(v):
    """int32 holding the float16 values v[0] (low half) and v[1]."""
    return np.asarray(v, np.float16).view(np.int32)[0]


def mma_f16_check(A, B):
    """1 + A (16 x 16) . B (16 x 8) through mma_f16 (A as float16 bits, B packed by f2h2 from
    float32): a check of the instruction (GPU) or of its emulation (simulator) against numpy."""
    A, B = np.asarray(A, np.float16), np.asarray(B, np.float32)
    af, bx = np.zeros((32, 4), np.int32), np.zeros((32, 4), np.float32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        af[lane] = [_pair(A[g, 2 * t:2 * t + 2]), _pair(A[g + 8, 2 * t:2 * t + 2]),
                    _pair(A[g, 8 + 2 * t:10 + 2 * t]), _pair(A[g + 8, 8 + 2 * t:10 + 2 * t])]
        bx[lane] = [B[2 * t, g], B[2 * t + 1, g], B[8 + 2 * t, g], B[9 + 2 * t, g]]
    c = cuda.device_array((32, 4), np.float32)
    _mma_f16_check_kernel[1, 32](cuda.to_device(af), cuda.to_device(bx), c)
    return _tile(c.copy_to_host())


@cuda.jit
def _mma16_check_kernel(af, bf, c):
    tx = cuda.threadIdx.x
    sh = cuda.shared.array((32, 6), int32)
    r = mma_s8k16(sh, tx, af[tx, 0], af[tx, 1], bf[tx, 0])
    for i in range(4):
        c[tx, i] = r[i]


def mma_s8k16_check(A, B):
    """C = A (16 x 16 int8) . B (16 x 8 int8) through mma_s8k16: the instruction (GPU) or its
    emulation (simulator) against A @ B."""
    A, B = np.asarray(A, np.int8), np.asarray(B, np.int8)
    af, bf = np.zeros((32, 2), np.int32), np.zeros((32, 1), np.int32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        af[lane] = [_word(A[g, 4 * t:4 * t + 4]), _word(A[g + 8, 4 * t:4 * t + 4])]
        bf[lane] = [_word(B[4 * t:4 * t + 4, g])]
    c = cuda.device_array((32, 4), np.int32)
    _mma16_check_kernel[1, 32](cuda.to_device(af), cuda.to_device(bf), c)
    return _tile(c.copy_to_host())
