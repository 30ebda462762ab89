// e^x as the CPU kernels compute it (crates/model/src/ops/exp.rs, Cephes' expf: within 1 ulp,
// 0 under 2^-126), bit for bit, so that the SwiGLU and dynActGLU kernels take the CPU's exp.
// The same steps: each fused multiply-add rounds once (__fmaf_rn, the CPU's mul_add), each
// other multiply and add on its own (__fmul_rn, __fadd_rn), since nvcc would otherwise fuse
// them. Shared by swiglu.cu and dynact_glu.cu.
#pragma once

#include <stdint.h>

__device__ __forceinline__ float dynact_exp(float x) {
    const float round = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    const float ln2_hi = 0.6933594f, ln2_lo = -2.1219444e-4f;
    const float overflow = 88.72283f, underflow = -87.33655f;
    // Keeps n within the exponent's range; a NaN stays NaN.
    float c = x < underflow ? underflow : x;
    c = c > overflow ? overflow : c;
    const float rounded = __fmaf_rn(c, 1.4426950408889634f, round);
    const float n = __fsub_rn(rounded, round);
    const float r = __fmaf_rn(n, -ln2_lo, __fmaf_rn(n, -ln2_hi, c));
    float p = 1.9875692e-4f;
    p = __fmaf_rn(p, r, 1.3981999e-3f);
    p = __fmaf_rn(p, r, 8.333452e-3f);
    p = __fmaf_rn(p, r, 4.1665796e-2f);
    p = __fmaf_rn(p, r, 1.6666665e-1f);
    p = __fmaf_rn(p, r, 0.5f);
    const float e_r = __fadd_rn(__fmaf_rn(p, __fmul_rn(r, r), r), 1.0f);
    // 2^n as two factors, since 2^128 is not a float; n is in the low bits of `rounded`.
    const int32_t k = (int32_t)(__float_as_uint(rounded) - __float_as_uint(round));
    const int32_t low = k < 127 ? k : 127;
    const float two_to_low = __uint_as_float((uint32_t)(low + 127) << 23);
    const float y = __fmul_rn(__fmul_rn(e_r, two_to_low), k > low ? 2.0f : 1.0f);
    return x > overflow ? __uint_as_float(0x7f800000u) : (x < underflow ? 0.0f : y);
}
