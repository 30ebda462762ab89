// f32 <-> bf16: the operands of every bf16 matrix product down (their products come back in
// f32 from the GEMM, crates/model/src/ops/matmul.rs), and bf16 up where a model holds one, one
// element per thread so that a warp's loads and stores cover whole 32-byte
// sectors. (Candle 0.11's cast kernel converts eight elements per thread and writes them as
// eight scalar stores, so each of its store instructions touches 32 sectors, one per lane.)
// The rounding is written out in integer arithmetic: to nearest, ties to even, a NaN kept with
// its quiet bit set, as the half crate's bf16::from_f32 that Candle's CPU backend uses; the
// same source runs on the host and on a GPU, so they agree bit for bit.

#include <stdint.h>
#include <string.h>

#ifndef DYNACT_KERNEL
#define DYNACT_KERNEL extern "C" __global__
#endif

__device__ __forceinline__ uint32_t f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

__device__ __forceinline__ float f32_from_bits(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

__device__ __forceinline__ uint16_t bf16_from_f32(float value) {
    const uint32_t x = f32_bits(value);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t)((x >> 16) | 0x0040u);
    }
    const uint32_t round_bit = 0x00008000u;
    const uint16_t truncated = (uint16_t)(x >> 16);
    // Round up when the dropped half is over a tie, or a tie with an odd kept part.
    return ((x & round_bit) != 0 && (x & (3 * round_bit - 1)) != 0) ? (uint16_t)(truncated + 1)
                                                                      : truncated;
}

__device__ __forceinline__ float f32_from_bf16(uint16_t b) {
    const uint32_t x = b;
    const uint32_t quiet = ((x & 0x7fffu) > 0x7f80u) ? 0x0040u : 0;
    return f32_from_bits((x | quiet) << 16);
}

DYNACT_KERNEL void cast_f32_to_bf16(const float* x, uint16_t* y, uint64_t n) {
    const uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        y[i] = bf16_from_f32(x[i]);
    }
}

DYNACT_KERNEL void cast_bf16_to_f32(const uint16_t* x, float* y, uint64_t n) {
    const uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        y[i] = f32_from_bf16(x[i]);
    }
}
