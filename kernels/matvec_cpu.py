"""Fast CPU (numba njit) matvec and embedding on raw GGUF rows, one tight row decoder per format.

w: uint8 (rows, bytes_per_row), the tensor's GGUF bytes. Each weight row is
decoded ONCE into a float32 scratch of cols elements (F32 rows are not
decoded at all: the row's bytes are viewed as float32) by 16-wide LLVM vector
steps (intrinsics below: numba's own loops over 32-element blocks do not
vectorise); the scratch (in L1) is then dotted with each of the B rows of x.
Decoded values are bit-identical to quant_reference.dequantize_rows (same
float32 operation order, no fastmath in the decoders); only the dot products
reassociate (see _dot). Decode steps (B = 1) of K-quant rows and of Q8_0 / Q4_0
rows of FUSED_MIN_COLS+ elements fuse decode and dot in one pass (_fdot_*), block
scales applied once per 16-32 products: equal up to float32 reassociation.

Every njit function of this module is cached on disk; numba keys the cache on
this file's content, so the kernels and every helper and intrinsic they call
stay in this one file (an edited helper in another file would be served stale).
That is why this module is longer than the ~200 lines of the other kernels.

The launchers (matvec.matvec_cpu through decode_cpu.norm_matvecs, and
embedding.embedding_cpu) validate and call the entry points here; on one thread
a plain build of the kernel runs, on more its parallel build, which splits weights of
PAR_MIN_BYTES of work or more into row chunks over the threads.

Entry points are made per format (`_entry`: embedding, and decode_cpu's norm +
up-to-three-weight kernel per mix of formats), the format a compile-time
constant, so a process compiles only the decoders its model uses (a cold start
of the F32 default model: 17.8 s instead of 29.9 s of compiling).
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils, errors
from numba.extending import intrinsic, overload

from .quant_blocks import BF16, F16, F32, Q4_0, Q4_K, Q5_K, Q6_K, Q8_0

PAR_MIN_BYTES = 1 << 19      # weight bytes x B below which the matvec runs on one thread
CHUNKS_PER_THREAD = 4        # row chunks per thread in the parallel matvec (one scratch per chunk)
FUSED_MIN_COLS = 1024        # B = 1: K-quant rows always use the fused decode+dot, Q8_0/Q4_0 rows from
                             # this length (1.1-1.4x on 2048; 0.65-0.8x on 256: one short accumulator chain)
_ONES32 = np.ones(32, np.float32)


# ---------------------------------------------------------------- 16-wide vector steps
# numba has no restrict: LLVM cannot prove the scratch and the row bytes apart, so it neither
# vectorises a 32-element block loop (fully unrolled first) nor runs a runtime-checked one
# fast (its 64-wide main loop never runs). These intrinsics emit one <16 x float> step each
# (load, integer ops, convert, multiply, store: the float32 operation order of the reference).
# src: uint8 1-D array (a row's bytes) and byte offsets; dst: float32 1-D array and element offset.

_I32 = ir.IntType(32)
_V16F = ir.VectorType(ir.FloatType(), 16)


def _splat(builder, x):
    vt = ir.VectorType(x.type, 16)
    v = builder.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(_I32, 16), [0] * 16))


def _at(context, builder, aty, a, off, vt):
    """Pointer to a <16 x ...> vector at element `off` of array a."""
    p = builder.gep(context.make_array(aty)(context, builder, a).data, [off])
    return builder.bitcast(p, vt.as_pointer())


def _load16(context, builder, aty, a, off, bits):
    vt = ir.VectorType(ir.IntType(bits), 16)
    return builder.load(_at(context, builder, aty, a, off, vt), align=1)


def _store16(context, builder, aty, a, off, v):
    builder.store(v, _at(context, builder, aty, a, off, _V16F), align=4)


def _i32s(builder, v):
    return [builder.trunc(x, _I32) if x.type.width > 32 else builder.sext(x, _I32) if x.type.width < 32 else x
            for x in v]


@intrinsic
def _v_f16(typingctx, dst, doff, src, soff):
    """dst[doff:doff+16] = the 16 f16 values at bytes src[soff:soff+32] (exact: fpext)."""
    def codegen(context, builder, sig, args):
        h = _load16(context, builder, sig.args[2], args[2], args[3], 16)
        v = builder.fpext(builder.bitcast(h, ir.VectorType(ir.HalfType(), 16)), _V16F)
        _store16(context, builder, sig.args[0], args[0], args[1], v)
        return context.get_dummy_value()
    return types.void(dst, doff, src, soff), codegen


@intrinsic
def _h2f(typingctx, src, soff):
    """float32 of the f16 at bytes src[soff:soff+2] (block scales; exact: fpext, no branches)."""
    def codegen(context, builder, sig, args):
        p = builder.gep(context.make_array(sig.args[0])(context, builder, args[0]).data, [args[1]])
        h = builder.load(builder.bitcast(p, ir.IntType(16).as_pointer()), align=1)
        return builder.fpext(builder.bitcast(h, ir.HalfType()), ir.FloatType())
    return types.float32(src, soff), codegen


@intrinsic
def _v_bf16(typingctx, dst, doff, src, soff):
    """dst[doff:doff+16] = the 16 bf16 values at bytes src[soff:soff+32] (bits << 16)."""
    def codegen(context, builder, sig, args):
        h = _load16(context, builder, sig.args[2], args[2], args[3], 16)
        u = builder.shl(builder.zext(h, ir.VectorType(_I32, 16)), _splat(builder, ir.Constant(_I32, 16)))
        _store16(context, builder, sig.args[0], args[0], args[1], builder.bitcast(u, _V16F))
        return context.get_dummy_value()
    return types.void(dst, doff, src, soff), codegen


@intrinsic
def _v_i8(typingctx, dst, doff, src, soff, d):
    """dst[doff:doff+16] = d * float32(int8 src[soff:soff+16])  (Q8_0)."""
    def codegen(context, builder, sig, args):
        q = _load16(context, builder, sig.args[2], args[2], args[3], 8)
        v = builder.fmul(_splat(builder, args[4]), builder.sitofp(q, _V16F))
        _store16(context, builder, sig.args[0], args[0], args[1], v)
        return context.get_dummy_value()
    return types.void(dst, doff, src, soff, d), codegen


@intrinsic
def _v_q(typingctx, dst, doff, src, lo, lo_sh, hi, hi_sh, hi_mask, sub, a, m):
    """dst[doff:doff+16] = a * float32(q - sub) - m, q = ((src[lo+l] >> lo_sh) & 15)
    | (((src[hi+l] >> hi_sh) & hi_mask) << 4) for l < 16 (Q4_0, Q4_K, Q5_K, Q6_K; m = 0 is exact)."""
    def codegen(context, builder, sig, args):
        v32 = ir.VectorType(_I32, 16)
        s = lambda x: _splat(builder, x)                                    # noqa: E731
        lo_sh_, hi_sh_, hi_mask_, sub_ = _i32s(builder, (args[4], args[6], args[7], args[8]))
        ql = builder.zext(_load16(context, builder, sig.args[2], args[2], args[3], 8), v32)
        qh = builder.zext(_load16(context, builder, sig.args[2], args[2], args[5], 8), v32)
        q = builder.and_(builder.lshr(ql, s(lo_sh_)), s(ir.Constant(_I32, 15)))
        h = builder.and_(builder.lshr(qh, s(hi_sh_)), s(hi_mask_))
        q = builder.sub(builder.or_(q, builder.shl(h, s(ir.Constant(_I32, 4)))), s(sub_))
        v = builder.fsub(builder.fmul(s(args[9]), builder.sitofp(q, _V16F)), s(args[10]))
        _store16(context, builder, sig.args[0], args[0], args[1], v)
        return context.get_dummy_value()
    return types.void(dst, doff, src, lo, lo_sh, hi, hi_sh, hi_mask, sub, a, m), codegen


# ---------------------------------------------------------------- fused row . x (B = 1)
# Decode and dot in one pass over the row, with a <16 x float> accumulator (an alloca that LLVM
# keeps in a register) and the block scale applied once per 16-32 products:
# sum_k d_k * sum_j q_kj x_kj. Same value as the decoded row . x up to float32 reassociation.

def _vfma(builder, a, b, c):
    """a * b + c on <16 x float> (llvm.fma: one rounding)."""
    f = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16F, [_V16F] * 3), "llvm.fma.v16f32")
    return builder.call(f, [a, b, c])


def _hsum(builder, v):
    """Sum of the 16 lanes as a tree (4 dependent adds, not 15)."""
    n = 16
    while n > 1:
        n //= 2
        lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), list(range(n))))
        hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), list(range(n, 2 * n))))
        v = builder.fadd(lo, hi)
    return builder.extract_element(v, ir.Constant(_I32, 0))


def _row_loop(context, builder, sig, args, size, body):
    """Emit: acc = 0; for k in range(row bytes // size): acc = body(k, acc, ptrs); return hsum(acc)."""
    row = context.make_array(sig.args[0])(context, builder, args[0])
    xa = context.make_array(sig.args[1])(context, builder, args[1])
    nbytes = cgutils.unpack_tuple(builder, row.shape, 1)[0]
    acc = cgutils.alloca_once_value(builder, ir.Constant(_V16F, None))
    xbase = builder.gep(xa.data, [args[2]])
    with cgutils.for_range(builder, builder.sdiv(nbytes, ir.Constant(nbytes.type, size))) as loop:
        builder.store(body(builder, loop.index, builder.load(acc), row.data, xbase), acc)
    return _hsum(builder, builder.load(acc))


def _vload(builder, base, off, vt, align):
    return builder.load(builder.bitcast(builder.gep(base, [off]), vt.as_pointer()), align=align)


def _c(v, like):
    return ir.Constant(like.type, v)


@intrinsic
def _fdot_q8_0(typingctx, row, x, xoff):
    """Q8_0 row . x[flat xoff : flat xoff + cols] (x a C-contiguous float32 array)."""
    def codegen(context, builder, sig, args):
        def body(b, k, acc, w, xp):
            o = b.mul(k, _c(34, k))
            d = b.fpext(b.bitcast(_vload(b, w, o, ir.IntType(16), 1), ir.HalfType()), ir.FloatType())
            t = None
            for h in range(2):
                q = b.sitofp(_vload(b, w, b.add(o, _c(2 + 16 * h, o)), ir.VectorType(ir.IntType(8), 16), 1), _V16F)
                xv = _vload(b, xp, b.add(b.mul(k, _c(32, k)), _c(16 * h, k)), _V16F, 4)
                t = b.fmul(q, xv) if t is None else _vfma(b, q, xv, t)
            return _vfma(b, _splat(b, d), t, acc)
        return _row_loop(context, builder, sig, args, 34, body)
    return types.float32(row, x, xoff), codegen


@intrinsic
def _fdot_q4_0(typingctx, row, x, xoff):
    """Q4_0 row . x[flat xoff : flat xoff + cols]: sum_k d_k * sum_j (nibble_kj - 8) x_kj."""
    def codegen(context, builder, sig, args):
        v8 = ir.VectorType(ir.IntType(8), 16)
        c8 = lambda b, v: _splat(b, ir.Constant(ir.IntType(8), v))      # noqa: E731

        def body(b, k, acc, w, xp):
            o = b.mul(k, _c(18, k))
            d = b.fpext(b.bitcast(_vload(b, w, o, ir.IntType(16), 1), ir.HalfType()), ir.FloatType())
            q = _vload(b, w, b.add(o, _c(2, o)), v8, 1)
            t = None
            for n, qn in enumerate((b.and_(q, c8(b, 15)), b.lshr(q, c8(b, 4)))):
                qf = b.sitofp(b.sub(qn, c8(b, 8)), _V16F)
                xv = _vload(b, xp, b.add(b.mul(k, _c(32, k)), _c(16 * n, k)), _V16F, 4)
                t = b.fmul(qf, xv) if t is None else _vfma(b, qf, xv, t)
            return _vfma(b, _splat(b, d), t, acc)
        return _row_loop(context, builder, sig, args, 18, body)
    return types.float32(row, x, xoff), codegen


def _k_codegen(size, qoff, five):
    """Codegen of the Q4_K (five=False) / Q5_K fused dot: sum over sub-blocks s of asc[s] * (q_s . x_s)
    (the dmin*m terms are the caller's). Sub-blocks 2p, 2p+1 = low, high nibbles of qs[32p:32p+32];
    Q5_K's 5th bit of element l of sub-block s = bit s of qh[l] (qh at byte 16)."""
    def codegen(context, builder, sig, args):
        sc = context.make_array(sig.args[3])(context, builder, args[3]).data
        v8 = ir.VectorType(ir.IntType(8), 16)
        c8 = lambda b, v: _splat(b, ir.Constant(ir.IntType(8), v))      # noqa: E731

        def body(b, k, acc, w, xp):
            o = b.mul(k, _c(size, k))
            for p in range(4):
                t = [None, None]
                for h in range(2):
                    q = _vload(b, w, b.add(o, _c(qoff + 32 * p + 16 * h, o)), v8, 1)
                    qs = [b.and_(q, c8(b, 15)), b.lshr(q, c8(b, 4))]
                    if five:
                        qh = _vload(b, w, b.add(o, _c(16 + 16 * h, o)), v8, 1)
                        for n in range(2):
                            bit = b.and_(b.lshr(qh, c8(b, 2 * p + n)), c8(b, 1))
                            qs[n] = b.or_(qs[n], b.shl(bit, c8(b, 4)))
                    for n in range(2):
                        xv = _vload(b, xp, b.add(b.mul(k, _c(256, k)), _c(64 * p + 32 * n + 16 * h, k)), _V16F, 4)
                        qf = b.uitofp(qs[n], _V16F)
                        t[n] = b.fmul(qf, xv) if t[n] is None else _vfma(b, qf, xv, t[n])
                for n in range(2):
                    a = b.load(b.gep(sc, [b.add(b.mul(k, _c(8, k)), _c(2 * p + n, k))]))
                    acc = _vfma(b, _splat(b, a), t[n], acc)
            return acc
        return _row_loop(context, builder, sig, args, size, body)
    return codegen


@intrinsic
def _fdot_q4_k(typingctx, row, x, xoff, asc):
    """Q4_K row . x without the mins (see _k_codegen)."""
    return types.float32(row, x, xoff, asc), _k_codegen(144, 16, False)


@intrinsic
def _fdot_q5_k(typingctx, row, x, xoff, asc):
    """Q5_K row . x without the mins (see _k_codegen)."""
    return types.float32(row, x, xoff, asc), _k_codegen(176, 48, True)


@intrinsic
def _fdot_q6_k(typingctx, row, x, xoff, asc):
    """sum over 16-element groups g of asc[g] * (q_g . x_g) for a Q6_K row (asc[g] = d * scales[g])."""
    def codegen(context, builder, sig, args):
        sc = context.make_array(sig.args[3])(context, builder, args[3]).data
        v8 = ir.VectorType(ir.IntType(8), 16)
        c8 = lambda b, v: _splat(b, ir.Constant(ir.IntType(8), v))      # noqa: E731

        def body(b, k, acc, w, xp):
            o = b.mul(k, _c(210, k))
            for h in range(2):
                for j in range(4):
                    for half in range(2):
                        g = 8 * h + 2 * j + half
                        ql = _vload(b, w, b.add(o, _c(64 * h + 32 * (j & 1) + 16 * half, o)), v8, 1)
                        qh = _vload(b, w, b.add(o, _c(128 + 32 * h + 16 * half, o)), v8, 1)
                        lo = b.and_(b.lshr(ql, c8(b, 4 * (j >> 1))), c8(b, 15))
                        hi = b.shl(b.and_(b.lshr(qh, c8(b, 2 * j)), c8(b, 3)), c8(b, 4))
                        q = b.sitofp(b.sub(b.or_(lo, hi), c8(b, 32)), _V16F)
                        xv = _vload(b, xp, b.add(b.mul(k, _c(256, k)), _c(16 * g, k)), _V16F, 4)
                        a = b.load(b.gep(sc, [b.add(b.mul(k, _c(16, k)), _c(g, k))]))
                        acc = _vfma(b, _splat(b, a), b.fmul(q, xv), acc)
            return acc
        return _row_loop(context, builder, sig, args, 210, body)
    return types.float32(row, x, xoff, asc), codegen


# ---------------------------------------------------------------- scalar helpers

@njit(cache=True)
def _scale_min(row, o, s):
    """6-bit (scale, min) of sub-block s of the Q4_K/Q5_K block whose scales[12] start at byte o."""
    if s < 4:
        return np.int32(row[o + s] & 63), np.int32(row[o + s + 4] & 63)
    lo = np.int32(row[o + s + 4])
    return (lo & 0xF) | ((np.int32(row[o + s - 4]) >> 6) << 4), (lo >> 4) | ((np.int32(row[o + s]) >> 6) << 4)


# ---------------------------------------------------------------- row decoders: row bytes -> buf (cols,)

@njit(cache=True)
def _row_f16(row, buf):
    n = buf.shape[0]
    for i in range(0, n - 15, 16):
        _v_f16(buf, i, row, 2 * i)
    for i in range(n - n % 16, n):                      # rows of 8 mod 16 elements
        buf[i] = _h2f(row, 2 * i)


@njit(cache=True)
def _row_bf16(row, buf):
    n = buf.shape[0]
    for i in range(0, n - 15, 16):
        _v_bf16(buf, i, row, 2 * i)
    bits = buf.view(np.uint32)
    for i in range(n - n % 16, n):
        bits[i] = (np.uint32(row[2 * i]) << 16) | (np.uint32(row[2 * i + 1]) << 24)


@njit(cache=True)
def _row_q8_0(row, buf):
    # block (34 bytes): d f16 | qs int8[32]
    for k in range(row.shape[0] // 34):
        o = 34 * k
        d = _h2f(row, o)
        _v_i8(buf, 32 * k, row, o + 2, d)
        _v_i8(buf, 32 * k + 16, row, o + 18, d)


@njit(cache=True)
def _row_q4_0(row, buf):
    # block (18 bytes): d f16 | qs[16]; element j = low nibble of qs[j], j + 16 = its high nibble; minus 8
    zero = np.float32(0.0)
    for k in range(row.shape[0] // 18):
        o = 18 * k
        d = _h2f(row, o)
        _v_q(buf, 32 * k, row, o + 2, 0, o + 2, 0, 0, 8, d, zero)
        _v_q(buf, 32 * k + 16, row, o + 2, 4, o + 2, 0, 0, 8, d, zero)


@njit(cache=True)
def _row_q45_k(row, buf, five):
    # Q4_K (144 bytes): d, dmin f16 | scales[12] | qs[128]
    # Q5_K (176 bytes): d, dmin f16 | scales[12] | qh[32] | qs[128]
    # sub-blocks 2p, 2p+1 (32 elements each) = low, high nibbles of qs[32p:32p+32]; Q5_K's 5th bit
    # of element l of sub-block s = bit s of qh[l]; value = (d*sc)*q - dmin*m
    size = 176 if five else 144
    qoff = 48 if five else 16
    mask = 1 if five else 0
    for k in range(row.shape[0] // size):
        o = size * k
        d = _h2f(row, o)
        dmin = _h2f(row, o + 2)
        for s in range(8):
            sc, m = _scale_min(row, o + 4, s)
            ds, dm = d * np.float32(sc), dmin * np.float32(m)
            q0, e0 = o + qoff + 32 * (s >> 1), 256 * k + 32 * s
            sh = 4 * (s & 1)
            _v_q(buf, e0, row, q0, sh, o + 16, s, mask, 0, ds, dm)
            _v_q(buf, e0 + 16, row, q0 + 16, sh, o + 32, s, mask, 0, ds, dm)


@njit(cache=True)
def _row_q6_k(row, buf):
    # block (210 bytes): ql[128] | qh[64] | scales int8[16] | d f16. Half h (128 elements), t = 32j + l:
    # low 4 bits = nibble j>>1 of ql[64h + 32(j&1) + l], high 2 bits = bits 2j of qh[32h + l];
    # value = (d * scales[8h + 2j + l//16]) * (q - 32)
    zero = np.float32(0.0)
    for k in range(row.shape[0] // 210):
        o = 210 * k
        d = _h2f(row, o + 208)
        for h in range(2):
            for j in range(4):
                for half in range(2):
                    sc = np.int32(row[o + 192 + 8 * h + 2 * j + half])
                    ds = d * np.float32(sc - ((sc & 0x80) << 1))
                    _v_q(buf, 256 * k + 128 * h + 32 * j + 16 * half, row,
                         o + 64 * h + 32 * (j & 1) + 16 * half, 4 * (j >> 1),
                         o + 128 + 32 * h + 16 * half, 2 * j, 3, 32, ds, zero)


@njit(cache=True)
def _k_scales(row, size, asc, msc):
    """Per sub-block d*sc -> asc, dmin*m -> msc of a Q4_K / Q5_K row (block of size bytes)."""
    for k in range(row.shape[0] // size):
        o = size * k
        d = _h2f(row, o)
        dmin = _h2f(row, o + 2)
        for s in range(8):
            sc, m = _scale_min(row, o + 4, s)
            asc[8 * k + s] = d * np.float32(sc)
            msc[8 * k + s] = dmin * np.float32(m)


@njit(cache=True)
def _q6_scales(row, asc):
    """d * scales[g] of every 16-element group of a Q6_K row -> asc."""
    for k in range(row.shape[0] // 210):
        o = 210 * k
        d = _h2f(row, o + 208)
        for g in range(16):
            sc = np.int32(row[o + 192 + g])
            asc[16 * k + g] = d * np.float32(sc - ((sc & 0x80) << 1))


# ---------------------------------------------------------------- the format, chosen while compiling
# The format code qt reaches the row kernels as a compile-time constant: the entry points are made
# per format (`_entry`, below), and `_decode` / `_fused` pick the format's code while numba types
# the call, so a process compiles the decoders of the formats it meets and no others. (A runtime
# switch over all eight made every entry point compile, and LLVM optimise, every decoder: ~17 s of
# a cold start for a model with one format.)

def _format(qt):
    """The value of a compile-time constant format code (at typing time)."""
    if not isinstance(qt, types.IntegerLiteral):
        raise errors.TypingError(f"matvec_cpu: the format code must be a compile-time constant, got {qt}")
    return qt.literal_value


def _decode(qt, row, buf):
    """Row bytes (uint8) -> buf float32 (cols,) in format qt (a constant); F32: nothing (read in place)."""
    raise NotImplementedError("compiled by numba only")


_DECODERS = {
    Q4_K: lambda qt, row, buf: _row_q45_k(row, buf, False),
    Q5_K: lambda qt, row, buf: _row_q45_k(row, buf, True),
    Q6_K: lambda qt, row, buf: _row_q6_k(row, buf),
    Q8_0: lambda qt, row, buf: _row_q8_0(row, buf),
    Q4_0: lambda qt, row, buf: _row_q4_0(row, buf),
    F16: lambda qt, row, buf: _row_f16(row, buf),
    BF16: lambda qt, row, buf: _row_bf16(row, buf),
}


@overload(_decode)
def _decode_for(qt, row, buf):
    return _DECODERS.get(_format(qt), lambda qt, row, buf: None)


# ---------------------------------------------------------------- matvec

@njit(fastmath={"reassoc", "contract"}, cache=True)
def _dot(a, b):
    # reassoc lets LLVM keep several vector partial sums (the float32 rounding of a sum of n
    # terms stays within ~n*eps*sum|terms| either way: the tests' tolerance); contract = FMA.
    s = np.float32(0.0)
    for i in range(a.shape[0]):
        s += a[i] * b[i]
    return s


@njit(cache=True)
def _finish(y, b, r, s, bias, has_bias, accumulate):
    """y[b, r] [+]= s [+ bias[r]]."""
    if has_bias:
        s += bias[0, r]
    if accumulate:
        s += y[b, r]
    y[b, r] = s


@njit(cache=True, inline="always")
def _out(v, x, y, r, bias, has_bias, accumulate):
    """y[:, r] [+]= x @ v [+ bias[r]]; rows of x four at a time, one pass over v for four dots
    (4 FMAs per 5 loads; a dot each is 1 per 2). Written out here and inlined into the caller,
    whose fastmath flags it takes: the same through a function returning a 4-tuple ran 1.5-2x
    slower (a call per row, four array structs each)."""
    B = x.shape[0]
    K = v.shape[0]
    b = 0
    while b + 4 <= B:
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for k in range(K):
            w = v[k]
            a0 += w * x[b, k]
            a1 += w * x[b + 1, k]
            a2 += w * x[b + 2, k]
            a3 += w * x[b + 3, k]
        for j in range(4):
            s = a0 if j == 0 else (a1 if j == 1 else (a2 if j == 2 else a3))
            if has_bias:
                s += bias[0, r]
            if accumulate:
                s += y[b + j, r]
            y[b + j, r] = s
        b += 4
    while b < B:                    # (written out: a nested inline="always" _finish here ran 1.5-2.5x slower)
        s = _dot(v, x[b])
        if has_bias:
            s += bias[0, r]
        if accumulate:
            s += y[b, r]
        y[b, r] = s
        b += 1


# fastmath for _out's dot products, inlined here; the decoders are functions of their own and stay exact
@njit(fastmath={"reassoc", "contract"}, cache=True)
def _rows_decoded(qt, w, x, y, bias, has_bias, accumulate, r0, r1, buf):
    """y[:, r0:r1] [+]= x @ W[r0:r1].T [+ bias]; each row decoded once (into buf) for all B rows of x.
    One row loop (qt is a constant)."""
    if qt == F32:
        wf = w.view(np.float32)                     # once per call: a view per row costs ~15 ns
        for r in range(r0, r1):
            _out(wf[r], x, y, r, bias, has_bias, accumulate)
    else:
        for r in range(r0, r1):
            _decode(qt, w[r], buf)
            _out(buf, x, y, r, bias, has_bias, accumulate)


def _fused_q8_0(qt, w, x, y, bias, has_bias, accumulate, r0, r1, buf):
    for r in range(r0, r1):
        _finish(y, 0, r, _fdot_q8_0(w[r], x, 0), bias, has_bias, accumulate)


def _fused_q4_0(qt, w, x, y, bias, has_bias, accumulate, r0, r1, buf):
    for r in range(r0, r1):
        _finish(y, 0, r, _fdot_q4_0(w[r], x, 0), bias, has_bias, accumulate)


def _fused_q45_k(qt, w, x, y, bias, has_bias, accumulate, r0, r1, buf):
    nsb = x.shape[1] // 32                          # sub-blocks: scales, mins, x sums in buf
    asc, msc, xs = buf[:nsb], buf[nsb:2 * nsb], buf[2 * nsb:3 * nsb]
    for i in range(nsb):
        xs[i] = _dot(x[0, 32 * i:32 * i + 32], _ONES32)
    for r in range(r0, r1):
        if qt == Q5_K:                              # a constant: one of the two is compiled in
            _k_scales(w[r], 176, asc, msc)
            d = _fdot_q5_k(w[r], x, 0, asc)
        else:
            _k_scales(w[r], 144, asc, msc)
            d = _fdot_q4_k(w[r], x, 0, asc)
        _finish(y, 0, r, d - _dot(msc, xs), bias, has_bias, accumulate)


def _fused_q6_k(qt, w, x, y, bias, has_bias, accumulate, r0, r1, buf):
    for r in range(r0, r1):
        _q6_scales(w[r], buf)
        _finish(y, 0, r, _fdot_q6_k(w[r], x, 0, buf), bias, has_bias, accumulate)


def _fused(qt, w, x, y, bias, has_bias, accumulate, r0, r1, buf):
    raise NotImplementedError("compiled by numba only")


_FUSED = {Q8_0: _fused_q8_0, Q4_0: _fused_q4_0, Q4_K: _fused_q45_k, Q5_K: _fused_q45_k, Q6_K: _fused_q6_k}


@overload(_fused)
def _fused_for(qt, w, x, y, bias, has_bias, accumulate, r0, r1, buf):
    return _FUSED.get(_format(qt), lambda qt, w, x, y, bias, has_bias, accumulate, r0, r1, buf: None)


@njit(cache=True)
def _rows_fused(qt, w, x, y, bias, has_bias, accumulate, r0, r1, buf):
    """B = 1, Q8_0 / Q4_0 / Q4_K / Q5_K / Q6_K: y[0, r0:r1] [+]= W[r0:r1] . x[0] [+ bias], decode fused into the dot
    (a function of its own: inlined into _rows_decoded, these unrolled loops crowd out the
    inlining there and slow the other formats ~1.5x)."""
    _fused(qt, w, x, y, bias, has_bias, accumulate, r0, r1, buf)


@njit(fastmath={"reassoc", "contract"}, cache=True)
def _dot4x4(w0, w1, w2, w3, x0, x1, x2, x3):
    """The 16 dot products of 4 weight rows with 4 rows of x: 16 FMAs per 8 loads (a dot per
    (row, x row) is 1 per 2); 16 vector accumulators fit AVX-512's registers."""
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = np.float32(0.0)
    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = np.float32(0.0)
    for k in range(w0.shape[0]):
        p0 = w0[k]
        p1 = w1[k]
        p2 = w2[k]
        p3 = w3[k]
        q0 = x0[k]
        q1 = x1[k]
        q2 = x2[k]
        q3 = x3[k]
        a00 += p0 * q0
        a01 += p0 * q1
        a02 += p0 * q2
        a03 += p0 * q3
        a10 += p1 * q0
        a11 += p1 * q1
        a12 += p1 * q2
        a13 += p1 * q3
        a20 += p2 * q0
        a21 += p2 * q1
        a22 += p2 * q2
        a23 += p2 * q3
        a30 += p3 * q0
        a31 += p3 * q1
        a32 += p3 * q2
        a33 += p3 * q3
    return a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33


@njit(cache=True)
def _rows_tiled(qt, w, x, y, bias, has_bias, accumulate, r0, r1, buf):
    """B >= 4 (prefill, batched decode): rows r0..r1 in tiles of 4 rows x 4 rows of x (_dot4x4);
    leftover x rows by single dots, leftover weight rows by _rows_decoded."""
    B, cols = x.shape
    tile = np.empty((4, cols), np.float32)
    r = r0
    while r + 4 <= r1:
        if qt == F32:                               # F32 rows are read in place
            wf = w[r:r + 4].view(np.float32)
            t0, t1, t2, t3 = wf[0], wf[1], wf[2], wf[3]
        else:
            for i in range(4):
                _decode(qt, w[r + i], tile[i])
            t0, t1, t2, t3 = tile[0], tile[1], tile[2], tile[3]
        b = 0
        while b + 4 <= B:
            s = _dot4x4(t0, t1, t2, t3, x[b], x[b + 1], x[b + 2], x[b + 3])
            for i in range(4):                      # written out: a call per output costs as much as a tile
                for j in range(4):
                    v = s[4 * i + j]
                    if has_bias:
                        v += bias[0, r + i]
                    if accumulate:
                        v += y[b + j, r + i]
                    y[b + j, r + i] = v
            b += 4
        while b < B:
            _finish(y, b, r, _dot(t0, x[b]), bias, has_bias, accumulate)
            _finish(y, b, r + 1, _dot(t1, x[b]), bias, has_bias, accumulate)
            _finish(y, b, r + 2, _dot(t2, x[b]), bias, has_bias, accumulate)
            _finish(y, b, r + 3, _dot(t3, x[b]), bias, has_bias, accumulate)
            b += 1
        r += 4
    if r < r1:
        _rows_decoded(qt, w, x, y, bias, has_bias, accumulate, r, r1, buf)


@njit(cache=True)
def _rows(qt, w, x, y, bias, has_bias, accumulate, r0, r1, buf):
    """y[:, r0:r1] [+]= x @ W[r0:r1].T [+ bias]."""
    k_quant = qt == Q4_K or qt == Q5_K or qt == Q6_K
    if x.shape[0] == 1 and (k_quant or (x.shape[1] >= FUSED_MIN_COLS and (qt == Q8_0 or qt == Q4_0))):
        _rows_fused(qt, w, x, y, bias, has_bias, accumulate, r0, r1, buf)
    elif x.shape[0] >= 16 or (x.shape[0] >= 4 and x.shape[1] >= 512):
        # tiles pay once a pass over 4 rows is long (wide rows) or reused (many x rows); short rows
        # of a streamed matrix at small B (32000x256, B = 4-8) ran 1.3-1.9x slower tiled than row by row
        _rows_tiled(qt, w, x, y, bias, has_bias, accumulate, r0, r1, buf)
    else:
        _rows_decoded(qt, w, x, y, bias, has_bias, accumulate, r0, r1, buf)


# ---------------------------------------------------------------- entry points, one per format (mix)

_NAMES = {F32: "F32", F16: "F16", BF16: "BF16", Q8_0: "Q8_0", Q4_0: "Q4_0", Q4_K: "Q4_K", Q5_K: "Q5_K",
          Q6_K: "Q6_K"}
_MAKERS = {}
_ENTRIES = {}           # (kind, parallel, format codes...) -> the compiled entry point


def _maker(fn):
    _MAKERS[fn.__name__[len("_make_"):]] = fn
    return fn


def _entry(kind, *qts, parallel=False):
    """The entry point `kind` for these format codes: made on first use in a process; numba's disk
    cache keeps each one's machine code under its own name (the formats in it). parallel: the
    parallel=True build (prange over numba's threads), else a plain one (prange runs as range)."""
    key = (kind, parallel) + qts
    fn = _ENTRIES.get(key)
    if fn is None:
        if any(q not in _NAMES for q in qts):
            raise ValueError(f"matvec_cpu: unsupported format code in {qts}")
        fn = _MAKERS[kind](*qts)
        fn.__name__ = fn.__qualname__ = "_".join([kind] + ["parallel"] * parallel + [_NAMES[q] for q in qts])
        fn = _ENTRIES[key] = njit(cache=True, parallel=parallel)(fn)
    return fn


def parallel_chunk(rows, work_bytes, threads):
    """Rows per chunk over `threads` threads, or 0: run serially (one thread, or too little work)."""
    if threads == 1 or work_bytes < PAR_MIN_BYTES or rows < 2 * threads:
        return 0
    return -(-rows // (CHUNKS_PER_THREAD * threads))


# ---------------------------------------------------------------- exp

# exp on the CPU: libm's expf is a scalar call (~4.4 ns here) that keeps loops from vectorising;
# this one (Cody-Waite range reduction, degree-7 polynomial, the exponent set through the bits)
# vectorises (~0.4 ns) and is within 8e-8 relative of exp on [-87, 88] (tests/kernels/test_decode_cpu.py).
# A copy lives in each module that uses it: numba's disk cache keys a function on its own file only.

@intrinsic
def _f32_from_bits(typingctx, v):
    sig = types.float32(types.int32)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())
    return sig, codegen


@njit(inline="always")
def exp32(x):
    """float32 exp(x); 0-ish below -87.3 (1.2e-38), inf above 88.7."""
    x = min(max(x, np.float32(-87.3)), np.float32(88.7))
    t = x * np.float32(1.4426950408889634)
    n = np.float32(np.int32(t + np.float32(0.5) if t >= np.float32(0.0) else t - np.float32(0.5)))
    r = x - n * np.float32(0.693145751953125) - n * np.float32(1.428606765330187e-06)
    p = np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    return p * _f32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))


# ---------------------------------------------------------------- fused decode steps (kernels/decode_cpu.py)

NONE, SILU, GELU = -1, 0, 1      # activation epilogue codes (kernels/activations.py's SILU / GELU)


@njit(cache=True)
def _rmsnorm_into(x, w, eps, out):
    T, n = x.shape
    for t in range(T):
        acc = np.float32(0.0)
        for i in range(n):
            acc += x[t, i] * x[t, i]
        inv = np.float32(1.0) / np.float32(math.sqrt(acc / np.float32(n) + eps))
        for i in range(n):
            out[t, i] = x[t, i] * inv * w[i]


@njit(cache=True, error_model="numpy")
def _gate_into(y1, y2, act, hb):
    """hb = act(y1) * y2 (kernels/activations.py's CPU formulas). The SiLU loop vectorises: exp32
    is no libm call, and error_model="numpy" drops the zero-divisor check Python semantics put
    on every division (with it: 2.5 ms for 512 x 768, without: 0.22 ms)."""
    T, n = hb.shape
    if act == SILU:
        for t in range(T):
            for i in range(n):
                g = y1[t, i]
                hb[t, i] = g / (np.float32(1.0) + exp32(-g)) * y2[t, i]
    else:                           # GELU-tanh: 0.5 g (1 + tanh(u)) = g sigmoid(2u), no libm tanh
        for t in range(T):
            for i in range(n):
                g = y1[t, i]
                u = np.float32(0.7978845608028654) * (g + np.float32(0.044715) * g * g * g)
                hb[t, i] = g / (np.float32(1.0) + exp32(np.float32(-2.0) * u)) * y2[t, i]


@_maker
def _make_norm_matvecs(Q1, Q2, Q3):
    def norm_matvecs(x, nw, use_norm, eps, xn, nmat, w1, b1, hb1, y1, w2, b2, hb2, y2, w3, b3, hb3, y3,
                     accumulate, act, hb, chunk):
        """kernels/decode_cpu.norm_matvecs, weights of formats Q1, Q2, Q3: the rows of up to three
        weights in chunks (over numba's threads in the parallel build; a chunk >= every weight's
        rows: one chunk per weight)."""
        src = x
        if use_norm:
            _rmsnorm_into(x, nw, eps, xn)
            src = xn
        c1 = (w1.shape[0] + chunk - 1) // chunk
        c2 = (w2.shape[0] + chunk - 1) // chunk if nmat > 1 else 0
        c3 = (w3.shape[0] + chunk - 1) // chunk if nmat > 2 else 0
        for c in prange(c1 + c2 + c3):                  # row chunks of all the weights
            buf = np.empty(src.shape[1], np.float32)
            if c < c1:
                r0 = c * chunk
                _rows(Q1, w1, src, y1, b1, hb1, accumulate, r0, min(w1.shape[0], r0 + chunk), buf)
            elif c < c1 + c2:
                r0 = (c - c1) * chunk
                _rows(Q2, w2, src, y2, b2, hb2, accumulate, r0, min(w2.shape[0], r0 + chunk), buf)
            else:
                r0 = (c - c1 - c2) * chunk
                _rows(Q3, w3, src, y3, b3, hb3, accumulate, r0, min(w3.shape[0], r0 + chunk), buf)
        if act != NONE:
            _gate_into(y1, y2, act, hb)
    return norm_matvecs


# ---------------------------------------------------------------- embedding

@_maker
def _make_embedding(QT):
    def embedding(w, ids, out, scale):
        for t in range(ids.shape[0]):
            if QT == F32:
                out[t, :] = w[ids[t]].view(np.float32)
            else:
                _decode(QT, w[ids[t]], out[t])
            if scale != 1.0:
                for i in range(out.shape[1]):
                    out[t, i] *= scale
    return embedding


def embedding(qt, w, ids, out, scale):
    """out (T, cols) = rows ids of w (uint8), dequantised, times scale (float32); ids checked by the caller."""
    _entry("embedding", qt)(w, ids, out, scale)
