// Two single-instruction helpers numba has no intrinsic for, linked into numba kernels
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
