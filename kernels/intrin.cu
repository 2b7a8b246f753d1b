// Single-instruction helpers numba has no intrinsic for, linked into numba kernels
// (cuda.declare_device; with nvJitLink present numba links them as LTO-IR, so they inline).
// Numba's device ABI: the result through the first pointer, an int status (always 0).
// Inline PTX only: no headers, so NVRTC needs no include path.

extern "C" __device__ int llc_dp4a(int *out, int a, int b, int c)
{
    // c + the dot product of a's and b's four signed bytes
    int r;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    *out = r;
    return 0;
}

extern "C" __device__ int llc_h2f(float *out, int h)
{
    // IEEE half bits (low 16 bits of h) -> float32, exactly
    float f;
    unsigned short u = (unsigned short)h;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(u));
    *out = f;
    return 0;
}

struct llc_i32x4 { int c0, c1, c2, c3; };   // numba's UniTuple(int32, 4): [4 x i32]

extern "C" __device__ int llc_mma_s8(llc_i32x4 *out, int a0, int a1, int a2, int a3, int b0, int b1)
{
    // one warp: C (16 x 8, int32) = A (16 x 32, int8, row-major) . B (32 x 8, int8, column-major);
    // this lane's fragments in, its four C values out (PTX ISA, mma.m16n8k32 fragment layouts)
    int c0, c1, c2, c3;
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%10, %10, %10, %10};"
                 : "=r"(c0), "=r"(c1), "=r"(c2), "=r"(c3)
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "r"(0));
    out->c0 = c0;
    out->c1 = c1;
    out->c2 = c2;
    out->c3 = c3;
    return 0;
}
