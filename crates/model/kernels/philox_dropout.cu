// Inverted dropout with Philox4x32-10 masks, the GPU twin of crates/model/src/philox.rs
// (`apply_dropout_from`): element e of a mask for `seed` is lane e % 4 of the Philox block
// e / 4 under key (seed low, seed high), kept when that word is below `threshold`
// (keep * 2^32). y[i] = x[i] * scale where element first + i is kept, else 0.
//
// One thread per 4-element block, so every block is drawn once. Where a block lies whole in the
// range and the buffers are 16-byte aligned, its four elements move as one 16-byte access: a
// warp's loads and stores then cover 512 contiguous bytes, every byte of the sectors they touch
// (four scalar accesses per lane touched 16 sectors each and used a quarter of them).
// build.rs compiles this file to
// PTX (feature cuda) and, always, as C for the host (kernels/host/), where the tests run it and
// compare it with the Rust twin.

#include <stdint.h>

// kernels/host/ compiles this file as C on the host, one "thread" at a time, for the tests.
#ifndef DYNACT_KERNEL
#define DYNACT_KERNEL extern "C" __global__
#endif

__device__ __forceinline__ void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1) {
    for (int round = 0; round < 10; round++) {
        if (round > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        const uint64_t p0 = (uint64_t)0xD2511F53u * c[0];
        const uint64_t p1 = (uint64_t)0xCD9E8D57u * c[2];
        const uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        const uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        const uint32_t n0 = hi1 ^ c[1] ^ k0;
        const uint32_t n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0;
        c[1] = lo1;
        c[2] = n2;
        c[3] = lo0;
    }
}

DYNACT_KERNEL void philox_dropout_f32(
    const float* x, float* y, uint64_t n, uint64_t first, uint32_t key0, uint32_t key1,
    uint64_t threshold, float scale) {
    if (n == 0) {
        return;
    }
    const uint64_t first_block = first >> 2;
    const uint64_t last_block = (first + n - 1) >> 2;
    const uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    // x[i] with i = 4b - first is then 16-byte aligned for every block b, as y[i] is.
    const int aligned = first % 4 == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)y % 16 == 0;
    for (uint64_t b = first_block + (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
         b <= last_block; b += stride) {
        uint32_t words[4] = {(uint32_t)b, (uint32_t)(b >> 32), 0u, 0u};
        philox4x32_10(words, key0, key1);
        if (aligned && (b << 2) + 4 <= first + n) {
            const uint64_t i = (b << 2) - first;
            const float4 v = *(const float4*)(x + i);
            float4 out;
            out.x = (uint64_t)words[0] < threshold ? v.x * scale : 0.0f;
            out.y = (uint64_t)words[1] < threshold ? v.y * scale : 0.0f;
            out.z = (uint64_t)words[2] < threshold ? v.z * scale : 0.0f;
            out.w = (uint64_t)words[3] < threshold ? v.w * scale : 0.0f;
            *(float4*)(y + i) = out;
            continue;
        }
        for (int lane = 0; lane < 4; lane++) {
            const uint64_t e = (b << 2) + lane;
            if (e < first || e >= first + n) {
                continue;
            }
            const uint64_t i = e - first;
            y[i] = (uint64_t)words[lane] < threshold ? x[i] * scale : 0.0f;
        }
    }
}
